"""The launcher's one error type: a problem the user can fix; the message says how."""
from __future__ import annotations


class LaunchError(Exception):
    """Bad arguments, missing AWS set-up, or a failed job; printed without a traceback."""

    exit_code = 2


class JobFailed(LaunchError):
    """A job ran and failed; the message carries its failure reason."""

    exit_code = 1
