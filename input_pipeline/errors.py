"""The one exception every input stage raises for a file it cannot use."""

from __future__ import annotations

import os


class BadInputError(ValueError):
    """A user's file that cannot be used, with the reason a person understands.

    `prepare` catches it, writes `{"path": ..., "reason": ...}` to `rejects.jsonl` and goes on;
    single-file commands (`features`, `generate`) print it and exit non-zero.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ServiceError(Exception):
    """The tf.data service (`v2f data-service`) cannot be reached or stopped answering; the
    message names the address and how to start or restart the servers."""
