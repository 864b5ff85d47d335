"""The launcher's one error type: a problem the user can fix; the message says how."""
from __future__ import annotations


class LaunchError(Exception):
    """Bad arguments, missing AWS set-up, or a failed job; printed without a traceback."""

    exit_code = 2
