"""Where the studio's training jobs run: `local` subprocesses (default) or a Ray cluster (`ray`, optional)."""

from studio.backends.base import Ended, Job, JobBackend, describe_host
from studio.backends.local import LocalBackend

__all__ = ["Ended", "Job", "JobBackend", "LocalBackend", "describe_host"]
