"""Every AWS-side limit the launcher enforces before it calls AWS, with where each comes from.

Sources (checked 2026-11-30):
  [async]      https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference.html
               "large payload sizes (up to 1GB), long processing times (up to one hour)"
  [async-inv]  https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-invoke-endpoint.html
               InvocationTimeoutSeconds "a maximum of 3600 seconds (one hour)", default 15 minutes
  [rt-api]     SageMaker Runtime API, InvokeEndpointAsync (botocore 1.44.8's service model carries the same
               bounds): InvocationTimeoutSeconds 1-3600, RequestTTLSeconds 60-21600 (default 6 h)
  [sm-api]     SageMaker API: AsyncInferenceClientConfig.MaxConcurrentInvocationsPerInstance 1-1000;
               ProductionVariantServerlessConfig: MemorySizeInMB 1024-6144 "in 1 GB increments",
               MaxConcurrency 1-200, ProvisionedConcurrency 1-200 and <= MaxConcurrency
               (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ProductionVariantServerlessConfig.html)
  [sl-invoke]  https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints-invoke.html
               "The maximum request and response payload size for serverless invocations is 4 MB"; /ping
               within 3 minutes; /invocations within 1 minute
  [sl]         https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints.html
               feature exclusions: GPUs (and VPC, network isolation, data capture, multiple variants, ...);
               "the memory size should be at least as large as your model size"; one worker recommended
  [rt-invoke]  https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html
               real-time payloads up to 6 MB (6,291,456 bytes), 60 s per call
  [health]     CreateEndpointConfig ProductionVariant.ContainerStartupHealthCheckTimeoutInSeconds 60-3600
  [drivers]    https://docs.aws.amazon.com/sagemaker/latest/dg/inference-gpu-drivers.html ("GPU driver upgrades"):
               the NVIDIA driver each family runs unless an AMI version is set ("SageMaker AI does not
               automatically apply AMI overrides"). Real-time and asynchronous: 470 (CUDA 11.4) on ml.p2, p3, p4d,
               p4de, g4dn, g5; 535 on ml.p5, g6 (the asynchronous row prints "470, CUDA 12.2" there: read as 535);
               550 on ml.p5e, p5en. Batch: 470 on ml.p2, p3, p4d, p4de, g4dn, g5, no other family listed. The
               page groups al2-ami-sagemaker-inference-gpu-2 and -gpu-2-1 in one row.
  [ami-api]    ProductionVariant.InferenceAmiVersion (API_ProductionVariant.html); botocore 1.44.8's service model
               accepts exactly: al2-ami-sagemaker-inference-gpu-2 and -gpu-2-1 (NVIDIA driver 535, CUDA 12.2),
               -gpu-3-1 (550, CUDA 12.4), al2023-ami-sagemaker-inference-gpu-4-1 (580, CUDA 13.0),
               al2-ami-sagemaker-inference-neuron-2 (Inferentia2 and Trainium). Its text up to botocore 1.36.13
               (2025-02) gave gpu-2's "Supported instance types: ml.g4dn.*, ml.g5.*, ml.g6.*, ml.p3.*, ml.p4d.*,
               ml.p4de.*, ml.p5.*"; no other version has a family list there.
  [batch-api]  TransformResources.TransformAmiVersion (API_TransformResources.html): a string of 1-63 characters
               ([a-zA-Z0-9]+(-[a-zA-Z0-9]+)*), no enum; documented values al2-ami-sagemaker-batch-gpu-470 (driver
               470) and al2-ami-sagemaker-batch-gpu-535 (535); no family list.
  [torch]      README "torch, CUDA and the NVIDIA driver": the images' torch 2.10.0 (CUDA 12.8) needs driver
               >= 525.60.13; its wheel has no code for the K80 of ml.p2 (sm_37).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import LaunchError

MB = 2**20

# Real-time endpoints [rt-invoke].
REALTIME_MAX_BYTES = 6 * MB
STARTUP_TIMEOUT_RANGE_S = (60, 3600)  # [health]

# Asynchronous endpoints.
ASYNC_MAX_BYTES = 1024 * MB  # [async]: 1 GB through S3
INVOCATION_TIMEOUT_RANGE_S = (1, 3600)  # [async-inv], [rt-api]
REQUEST_TTL_RANGE_S = (60, 21600)  # [rt-api]
MAX_CONCURRENT_INVOCATIONS_RANGE = (1, 1000)  # [sm-api]

# Serverless endpoints.
SERVERLESS_MAX_BYTES = 4 * MB  # [sl-invoke]
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)  # [sm-api]
SERVERLESS_CONCURRENCY_RANGE = (1, 200)  # [sm-api], MaxConcurrency and ProvisionedConcurrency
# GPU instance families (ml.g*, ml.p*) and AWS accelerators (Inferentia, Trainium): none is offered to
# serverless endpoints [sl], which take no instance type at all.
ACCELERATED_FAMILIES = ("ml.g", "ml.p", "ml.inf", "ml.trn")

# What the serving program needs in memory as a serverless endpoint runs it (one worker, float32 on a CPU,
# one 4 MB request): runtime + factor x model.tar.gz. Measured with bench/serverless_memory (tiny and
# wav2vec2-base-sized models; README "Hosting modes" has the figures): peak RSS 733 MB with an 8 MB
# archive, 1,474 MB with a 333 MB one.
SERVERLESS_RUNTIME_MB = 714
SERVERLESS_MODEL_FACTOR = 2.28


def in_range(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def is_accelerated(instance_type: str) -> bool:
    return instance_type.startswith(ACCELERATED_FAMILIES)


def serverless_memory_needed_mb(model_archive_bytes: int) -> int:
    """Estimated peak memory of the serving program for a model.tar.gz of this size (see above)."""
    return int(SERVERLESS_RUNTIME_MB + SERVERLESS_MODEL_FACTOR * model_archive_bytes / MB + 0.5)


def smallest_serverless_memory_mb(needed_mb: int) -> int | None:
    """The smallest serverless memory size that holds needed_mb, or None when even 6 GB does not."""
    return next((m for m in SERVERLESS_MEMORY_MB if m >= needed_mb), None)


# NVIDIA drivers and SageMaker's machine images (AMI versions). The images bring every CUDA library; the host
# brings only the driver, which must be a CUDA 12 one [torch]. Families are the instance type without its size.
IMAGES_MIN_DRIVER = 525  # branch of 525.60.13 [torch]
NVIDIA_FAMILIES = ("ml.g", "ml.p")
# Families no machine image makes usable for the images: refused, whatever the AMI version.
UNUSABLE_FAMILIES = {
    "ml.p2": "its K80 GPUs (sm_37) are not in the images' torch, and SageMaker offers it only driver 470",
}


@dataclass(frozen=True)
class AmiVersion:
    driver: int | None  # NVIDIA driver branch; None: not an NVIDIA image (AWS Neuron)
    families: tuple[str, ...] | None = None  # the families AWS lists it for; None: AWS lists none


_GPU_2_FAMILIES = ("ml.g4dn", "ml.g5", "ml.g6", "ml.p3", "ml.p4d", "ml.p4de", "ml.p5")  # [ami-api]
# InferenceAmiVersion: every value the API accepts [ami-api] (tests check this against botocore's enum).
INFERENCE_AMI_VERSIONS = {
    "al2-ami-sagemaker-inference-gpu-2": AmiVersion(535, _GPU_2_FAMILIES),
    "al2-ami-sagemaker-inference-gpu-2-1": AmiVersion(535, _GPU_2_FAMILIES),  # gpu-2's row in [drivers]
    "al2-ami-sagemaker-inference-gpu-3-1": AmiVersion(550),
    "al2023-ami-sagemaker-inference-gpu-4-1": AmiVersion(580),
    "al2-ami-sagemaker-inference-neuron-2": AmiVersion(None),
}
# TransformAmiVersion: the values AWS documents [batch-api].
TRANSFORM_AMI_VERSIONS = {
    "al2-ami-sagemaker-batch-gpu-470": AmiVersion(470),
    "al2-ami-sagemaker-batch-gpu-535": AmiVersion(535),
}
# The driver each family runs when no AMI version is set [drivers]; families not here: AWS lists none.
ENDPOINT_DEFAULT_DRIVER = {"ml.p2": 470, "ml.p3": 470, "ml.p4d": 470, "ml.p4de": 470, "ml.g4dn": 470,
                           "ml.g5": 470, "ml.g6": 535, "ml.p5": 535, "ml.p5e": 550, "ml.p5en": 550}
TRANSFORM_DEFAULT_DRIVER = {"ml.p2": 470, "ml.p3": 470, "ml.p4d": 470, "ml.p4de": 470, "ml.g4dn": 470,
                            "ml.g5": 470}
# What the launcher asks for where the default driver is too old: driver 535, on every such family [ami-api].
ENDPOINT_AMI = "al2-ami-sagemaker-inference-gpu-2"
TRANSFORM_AMI = "al2-ami-sagemaker-batch-gpu-535"


@dataclass(frozen=True)
class AmiChoice:
    version: str | None  # the AMI version to request; None: SageMaker's default
    reason: str  # why, for the deploy or transform line; empty for CPU instance types


def family(instance_type: str) -> str:
    """ml.g5.xlarge -> ml.g5, ml.p6-b200.48xlarge -> ml.p6-b200."""
    return instance_type.rpartition(".")[0]


def choose_ami(instance_type: str, override: str | None, *, transform: bool) -> AmiChoice:
    """The AMI version (InferenceAmiVersion, or TransformAmiVersion with transform=True) for this instance type:
    `override` checked against the values the API accepts and the families AWS lists for it, else the launcher's
    pick where the family's default driver cannot run the images' CUDA 12 torch.
    Raises LaunchError (before any AWS call) for a value the API does not accept, a non-NVIDIA image or an old
    driver, a CPU instance type, a family AWS does not list for the value, and for ml.p2."""
    flag = "--transform-ami-version" if transform else "--inference-ami-version"
    versions = TRANSFORM_AMI_VERSIONS if transform else INFERENCE_AMI_VERSIONS
    fam = family(instance_type)
    gpu = instance_type.startswith(NVIDIA_FAMILIES)
    if fam in UNUSABLE_FAMILIES:
        raise LaunchError(f"{instance_type} cannot run the images: {UNUSABLE_FAMILIES[fam]}; use ml.g4dn, ml.g5, "
                          "ml.g6 or newer")
    if override is not None:
        if override not in versions:
            raise LaunchError(f"{flag} {override!r} is not one SageMaker accepts: {', '.join(versions)}")
        ami = versions[override]
        if ami.driver is None:
            raise LaunchError(f"{flag} {override} is the AWS Neuron (Inferentia, Trainium) image: the images run on "
                              "NVIDIA GPUs or CPUs only")
        if ami.driver < IMAGES_MIN_DRIVER:
            raise LaunchError(f"{flag} {override} runs NVIDIA driver {ami.driver}, too old for the images' CUDA 12 "
                              f"torch (driver >= 525.60.13): use {TRANSFORM_AMI if transform else ENDPOINT_AMI}")
        if not gpu:
            raise LaunchError(f"{flag} only applies to NVIDIA GPU instance types (ml.g*, ml.p*), not {instance_type}")
        if ami.families is not None and fam not in ami.families:
            raise LaunchError(f"{flag} {override}: AWS lists it for {', '.join(ami.families)} only, not {fam}")
        listed = "" if ami.families is not None else "; AWS lists no instance families for it"
        return AmiChoice(override, f"NVIDIA driver {ami.driver}, from {flag}{listed}")
    if not gpu:
        return AmiChoice(None, "")
    default = (TRANSFORM_DEFAULT_DRIVER if transform else ENDPOINT_DEFAULT_DRIVER).get(fam)
    if default is None:
        hint = f"{flag} {TRANSFORM_AMI}" if transform else f"{flag} (docs/images.md: torch, CUDA and the NVIDIA driver)"
        return AmiChoice(None, f"SageMaker's default machine image: AWS lists no default NVIDIA driver for {fam}; if "
                               f"the container cannot start, pass {hint}")
    if default >= IMAGES_MIN_DRIVER:
        return AmiChoice(None, f"SageMaker's default machine image: {fam} runs NVIDIA driver {default}, enough for "
                               "the images' CUDA 12 torch")
    pick = TRANSFORM_AMI if transform else ENDPOINT_AMI
    return AmiChoice(pick, f"NVIDIA driver {versions[pick].driver}: {fam} runs driver {default} by default, too old "
                           "for the images' CUDA 12 torch")
