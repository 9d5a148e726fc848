"""Failures a user acts on: the CLI prints their message as one line and exits non-zero.

Library code raises these (or `ConfigError`, `FileNotFoundError`) for anything
the user can fix or must know; a traceback means a bug.
"""

from __future__ import annotations


class RunError(RuntimeError):
    """A run cannot go on; the message says what failed, where, and what is intact."""


class CheckpointSaveError(RunError):
    """A checkpoint could not be written (disk full, permissions, an unreachable path)."""


class CheckpointRestoreError(RunError):
    """No checkpoint under a folder can be read although one was complete (or a named step cannot be read)."""
