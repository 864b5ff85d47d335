"""Command line: parse, check the arguments into one typed options object per command, run it.

Argument errors exit 2 with a one-line message before any AWS call; AWS set-up problems (no credentials,
no role, no region) exit 2 too, before anything is created. The SDK is imported only by the commands that
need it, so --help stays fast.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from . import batch, hosting, options, prepare, stream, training
from .errors import LaunchError

# command -> (options class, runner)
COMMANDS = {
    "prepare": (prepare.PrepareOptions, prepare.run),
    "train": (training.TrainOptions, training.run),
    "deploy": (hosting.DeployOptions, hosting.deploy),
    "invoke": (hosting.InvokeOptions, hosting.invoke),
    "delete": (hosting.DeleteOptions, hosting.delete),
    "transform": (batch.TransformOptions, batch.run),
    "stream": (stream.StreamOptions, stream.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launcher/launch",
        description="Train, deploy and batch-transcribe with the wav2vec2 images on Amazon SageMaker (SageMaker "
                    "Python SDK v3: ModelTrainer and sagemaker.core resources; docs/sagemaker.md gives "
                    "the version and the Python). Every command takes --local to run the same images here.",
        epilog="steps: prepare -> train -> deploy -> invoke -> delete (or transform for batches). "
               "`launcher/launch COMMAND --help` for each.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [options.aws_parent()]
    prepare.add_parser(sub, parents)
    training.add_parser(sub, parents)
    hosting.add_deploy_parser(sub, parents)
    hosting.add_invoke_parser(sub, parents)
    hosting.add_delete_parser(sub, parents)
    batch.add_parser(sub, parents)
    stream.add_parser(sub, parents)
    return parser


def _quiet_sdk() -> None:
    # The SDK logs its config-file search and ModelTrainer's defaults at INFO; the launcher says what it does. The
    # sagemaker.core.resources logger stays: TrainingJob/TransformJob.wait(logs=True) prints the job's log with it.
    for name in ("sagemaker.config", "sagemaker.core.config", "sagemaker.train", "sagemaker.core.telemetry"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    _quiet_sdk()
    opts_cls, runner = COMMANDS[ns.command]
    try:
        return runner(opts_cls.from_args(ns))
    except ImportError as exc:
        if not (exc.name or "").startswith(("sagemaker", "boto3", "botocore")):
            raise
        print(f"launch {ns.command}: error: {exc.name} is not installed in this Python ({sys.executable}): run "
              "./setup.sh, which builds the launcher's environment .venv-launch", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"launch {ns.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"launch {ns.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _from_aws(exc):
            raise
        # AWS refused a call or a job failed: its own message says why; a traceback would bury it.
        print(f"launch {ns.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _from_aws(exc: BaseException) -> bool:
    """Errors of botocore (ClientError, ...) or of the SDK (a failed job; in local mode, a container that
    exited), whose messages say what happened; the container's own log is already above them."""
    if type(exc).__module__.split(".")[0] in ("botocore", "sagemaker"):
        return True
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and f"{os.sep}sagemaker{os.sep}" in frames[-1].filename
