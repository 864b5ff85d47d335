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
"""
from __future__ import annotations

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
