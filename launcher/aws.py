"""Where jobs run: region, credentials, account, execution role and bucket, checked before anything is created.

Order of the checks (each fails with a message that says what to do, and nothing has been created yet):
  1. region      --region, else the profile / AWS_REGION / AWS_DEFAULT_REGION; checked against botocore's
                 partition data (the regions where SageMaker exists), with the closest names when unknown
  2. credentials the standard chain (env, ~/.aws, SSO, container or instance role); none -> error
  3. role        --role (ARN or name), else $SAGEMAKER_ROLE_ARN, else the SDK defaults config
                 (SageMaker.TrainingJob.RoleArn / SageMaker.Model.ExecutionRoleArn); none -> error
  4. identity    one STS GetCallerIdentity with short timeouts and no retries: bad or expired
                 credentials and an unreachable AWS fail here, in seconds
Only then may the bucket be resolved (--bucket, else the SDK's default bucket, which the SDK creates).

Local mode (`--local`) runs the images on this machine: no AWS call at all. It sets placeholder
credentials when none exist, turns the SDK's telemetry off, and points every AWS endpoint at a closed
loopback port so that an unexpected AWS call fails at once instead of leaving the machine.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from common import suggest
from .errors import LaunchError

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")
ROLE_ENV = "SAGEMAKER_ROLE_ARN"
LOCAL_REGION = "us-east-1"
# Nothing listens on port 9 (discard): any AWS call in local mode is refused immediately.
LOCAL_DEAD_ENDPOINT = "http://127.0.0.1:9"
# Telemetry off: the SDK would otherwise call STS and S3 for it.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}

ROLE_HELP = ("pass --role with the ARN (or name) of an IAM role SageMaker can assume, or set "
             f"${ROLE_ENV}; docs/sagemaker.md (IAM permissions) lists what the role needs")


@dataclass(frozen=True)
class AwsOptions:
    region: str | None = None
    profile: str | None = None
    role: str | None = None
    bucket: str | None = None
    local: bool = False
    local_gpu: bool = False


@dataclass
class Target:
    """A checked place to run: everything the SDK session needs."""

    region: str
    local: bool
    boto_session: Any
    account: str | None = None
    role_arn: str | None = None
    bucket: str | None = None
    instance_type_local: str = "local"

    def ecr_image(self, repository: str, tag: str = "latest") -> str:
        """Default image URI: the repository build_and_push.sh pushes to, or the local tag in local mode."""
        if self.local:
            return f"{repository}:{tag}"
        suffix = ".cn" if self.region.startswith("cn-") else ""
        return f"{self.account}.dkr.ecr.{self.region}.amazonaws.com{suffix}/{repository}:{tag}"


def _boto_session(opts: AwsOptions):
    import boto3
    import botocore.exceptions

    try:
        # AWS_REGION as the AWS CLI v2 reads it (botocore itself only reads AWS_DEFAULT_REGION).
        return boto3.Session(profile_name=opts.profile, region_name=opts.region or os.environ.get("AWS_REGION"))
    except botocore.exceptions.ProfileNotFound:
        raise LaunchError(f"AWS profile {opts.profile!r} is not in your AWS config: run `aws configure "
                          f"--profile {opts.profile}` or pass another --profile") from None


def role_arn(role: str | None, account: str | None) -> str | None:
    """An ARN as given, or a bare role name made into one (needs the account)."""
    if not role:
        return None
    if ROLE_ARN.match(role):
        return role
    if ROLE_NAME.match(role) and account:
        return f"arn:aws:iam::{account}:role/{role}"
    if ROLE_NAME.match(role):
        return role  # a name: completed once the account is known
    raise LaunchError(f"--role {role!r} is neither a role ARN (arn:aws:iam::123456789012:role/NAME) nor a role name")


def sagemaker_regions() -> set[str]:
    """Every region of every partition where botocore's endpoint data has SageMaker (no AWS call)."""
    import botocore.session

    session = botocore.session.get_session()
    return {r for partition in session.get_available_partitions()
            for r in session.get_available_regions("sagemaker", partition)}


def check_region(region: str, where: str = "--region") -> str:
    regions = sagemaker_regions()
    if region not in regions:
        raise LaunchError(f"{where} {region!r} is not an AWS region with SageMaker (botocore's partition data): "
                          f"{suggest.did_you_mean(region, regions, where='`aws ec2 describe-regions` lists them')}; "
                          "nothing was created")
    return region


def configured_region(opts: AwsOptions) -> str | None:
    """The region the profile or the environment names, without any AWS call."""
    try:
        return _boto_session(AwsOptions(profile=opts.profile)).region_name
    except LaunchError:
        return None


def sdk_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("sagemaker")


class offline:
    """Within: every AWS endpoint is a closed loopback port and the SDK's role check is off, so that building
    a plan with the SDK cannot reach AWS (a dry run)."""

    NAMES = ("AWS_ENDPOINT_URL", "SAGEMAKER_VALIDATE_ROLE", "AWS_EC2_METADATA_DISABLED")

    def __enter__(self):
        self.saved = {n: os.environ.get(n) for n in self.NAMES}
        os.environ.update(AWS_ENDPOINT_URL=LOCAL_DEAD_ENDPOINT, SAGEMAKER_VALIDATE_ROLE="false",
                          AWS_EC2_METADATA_DISABLED="true")
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        return False


def _role_from_config() -> str | None:
    """The execution role from the SDK's own defaults file (~/.config/sagemaker/config.yaml), if any."""
    try:
        from sagemaker.core.common_utils import get_config_value
        from sagemaker.core.config.config import load_sagemaker_config
    except ImportError:
        return None
    try:
        cfg = load_sagemaker_config()
    except Exception:  # a broken or unreachable config file is not our concern here
        return None
    return (get_config_value("SageMaker.TrainingJob.RoleArn", cfg)
            or get_config_value("SageMaker.Model.ExecutionRoleArn", cfg))


def resolve(opts: AwsOptions, *, need_role: bool) -> Target:
    """Check region, credentials, role and identity, in that order, before anything is created."""
    if opts.local:
        return local_target(opts)
    session = _boto_session(opts)
    region = session.region_name
    if not region:
        raise LaunchError("no AWS region: pass --region (e.g. --region us-east-1), set AWS_REGION, or run "
                          "`aws configure`")
    check_region(region, "--region" if opts.region else "the configured region")
    if session.get_credentials() is None:
        raise LaunchError(
            "no AWS credentials found: run `aws configure` (or `aws sso login`), set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or pass --profile; nothing was created")
    role = opts.role or os.environ.get(ROLE_ENV) or (_role_from_config() if need_role else None)
    role = role_arn(role, None)
    if need_role and not role:
        raise LaunchError(f"no SageMaker execution role: {ROLE_HELP}; nothing was created")
    account = _caller_account(session, region)
    return Target(region=region, local=False, boto_session=session, account=account,
                  role_arn=role_arn(role, account), bucket=opts.bucket)


def _caller_account(session, region: str) -> str:
    import botocore.config
    import botocore.exceptions

    quick = botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1, "mode": "standard"})
    try:
        return session.client("sts", region_name=region, config=quick).get_caller_identity()["Account"]
    except botocore.exceptions.NoCredentialsError:
        raise LaunchError("no AWS credentials found: run `aws configure` or pass --profile; nothing was created") from None
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise LaunchError(f"AWS rejected the credentials ({code}: {exc.response.get('Error', {}).get('Message', '')}): "
                          "refresh them (`aws sso login`, new keys) or pick another --profile; nothing was created") from None
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        raise LaunchError(f"cannot reach AWS STS in {region} ({exc}): check the network, proxy "
                          "(HTTPS_PROXY) and --region; nothing was created") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise LaunchError(f"AWS credentials could not be used ({exc}); nothing was created") from None


def local_target(opts: AwsOptions) -> Target:
    """Local mode: the images run under docker compose here; make sure nothing reaches AWS."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local-mode")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local-mode")
    os.environ["AWS_ENDPOINT_URL"] = LOCAL_DEAD_ENDPOINT
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    region = opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or LOCAL_REGION
    import boto3

    session = boto3.Session(region_name=region, aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    # The SDK wants a role string even in local mode; it is never used.
    role = opts.role or "arn:aws:iam::000000000000:role/local-mode"
    return Target(region=region, local=True, boto_session=session, account="000000000000", role_arn=role,
                  bucket=opts.bucket, instance_type_local="local_gpu" if opts.local_gpu else "local")


def bucket(target: Target, session) -> str:
    """--bucket as given (no check, no creation), else the SDK's default bucket, which the SDK creates if needed."""
    return target.bucket or session.default_bucket()


def sdk_session(target: Target):
    """The SDK v3's sagemaker.core Session over the checked boto3 session (AWS only: local mode needs none)."""
    from sagemaker.core.helper.session_helper import Session

    return Session(boto_session=target.boto_session, default_bucket=target.bucket,
                   sagemaker_config=_user_config_without_telemetry())


def _user_config_without_telemetry() -> dict:
    """The user's SDK defaults (VPC, KMS, tags...) kept, telemetry turned off."""
    from sagemaker.core.config.config import load_sagemaker_config

    cfg = load_sagemaker_config() or {}
    cfg.setdefault("SchemaVersion", "1.0")
    cfg.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})["TelemetryOptOut"] = True
    return cfg
