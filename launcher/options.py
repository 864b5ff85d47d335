"""Argument helpers shared by the commands: KEY=VALUE pairs, S3 and local locations, AWS flags."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from urllib.parse import urlparse

from .aws import AwsOptions
from .errors import LaunchError

S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
AWS_INSTANCE = re.compile(r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")


def aws_parent() -> argparse.ArgumentParser:
    """Flags every command takes: where to run."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("where to run (default: your AWS configuration)")
    g.add_argument("--region", help="AWS region (default: the profile's region, AWS_REGION or AWS_DEFAULT_REGION)")
    g.add_argument("--profile", help="AWS CLI profile to use (default: AWS_PROFILE or the default profile)")
    g.add_argument("--role", help="SageMaker execution role ARN or name (default: $SAGEMAKER_ROLE_ARN, else "
                                  "SageMaker.TrainingJob.RoleArn in the SDK config file)")
    g.add_argument("--bucket", help="S3 bucket for uploads and outputs (default: the SDK's sagemaker-REGION-ACCOUNT)")
    g.add_argument("--local", action="store_true",
                   help="local mode: the images run here (training: the SDK v3's local container mode under docker "
                        "compose; endpoints and transforms: docker run), "
                        "no AWS account needed")
    g.add_argument("--local-gpu", action="store_true", help="local mode with the host's GPUs (implies --local)")
    return p


def aws_options(ns: argparse.Namespace) -> AwsOptions:
    if ns.region is not None:
        from .aws import check_region

        check_region(ns.region)
    return AwsOptions(region=ns.region, profile=ns.profile, role=ns.role, bucket=ns.bucket,
                      local=ns.local or ns.local_gpu, local_gpu=ns.local_gpu)


def pairs(items: list[str] | None, what: str, *, env_names: bool = False) -> dict[str, str]:
    """['a=1', 'b=x=y'] -> {'a': '1', 'b': 'x=y'}; a missing '=' or empty key is an error naming the flag."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise LaunchError(f"{what} {item!r} must look like NAME=VALUE")
        if env_names and not ENV_NAME.match(key):
            raise LaunchError(f"{what} {item!r}: {key!r} is not a valid environment variable name")
        out[key] = value
    return out


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def check_s3(uri: str, what: str) -> str:
    if not S3_URI.match(uri):
        raise LaunchError(f"{what} {uri!r} is not an S3 URI like s3://bucket/prefix")
    return uri


def local_dir(location: str, what: str, *, must_exist: bool = True) -> Path:
    """A local folder given as a path or file:// URI."""
    path = Path(urlparse(location).path if location.startswith("file://") else location).expanduser().resolve()
    if must_exist and not path.is_dir():
        raise LaunchError(f"{what} {location!r} is not an existing folder")
    return path


def location(value: str, what: str, *, local: bool, must_exist: bool = True) -> str:
    """An S3 URI as is; a local folder as file:///abs/path (local mode) or as a Path string to upload (AWS)."""
    if is_s3(value):
        if local:
            raise LaunchError(f"{what} {value!r}: local mode takes local folders, not S3 URIs")
        return check_s3(value, what)
    if "://" in value and not value.startswith("file://"):
        raise LaunchError(f"{what} {value!r}: give an s3:// URI or a local folder")
    path = local_dir(value, what, must_exist=must_exist)
    return f"file://{path}" if local else str(path)


def instance_type(value: str | None, default: str, *, local: bool, local_type: str) -> str:
    if local:
        return local_type
    value = value or default
    if not AWS_INSTANCE.match(value):
        raise LaunchError(f"--instance-type {value!r} is not a SageMaker instance type like ml.g5.xlarge")
    return value


def positive(value: int, what: str) -> int:
    if value < 1:
        raise LaunchError(f"{what} must be at least 1 (got {value})")
    return value
