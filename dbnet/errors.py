"""The exceptions dbnet raises for problems a user can fix.

Every error a user can cause (a bad config, a missing or corrupt file, a wrong
rank count, a NaN) is raised as a :class:`DbnetError` subclass with a one-line
message naming what was found and how to fix it.  The command line prints that
line and exits with status 2; no traceback is shown for these.
"""

from __future__ import annotations


class DbnetError(Exception):
    """Base class: a problem the user can fix, reported in one line."""


class ConfigError(DbnetError):
    """A config file or ``--set`` override is invalid."""


class DataError(DbnetError):
    """A dataset file is missing, truncated, corrupt or of the wrong shape."""


class CheckpointError(DbnetError):
    """A checkpoint or run directory is missing, corrupt or does not match."""


class TrainingDiverged(DbnetError):
    """The loss or a gradient became NaN or Inf."""


class PartnerLost(DbnetError):
    """A model partition of this replica stopped answering within ``comm.timeout_seconds``.

    The replica cannot compute without every partition: Downpour marks it failed and goes on with the
    others (like a failed replica); SGD on one replica ends the job (resumable from its checkpoint).
    """
