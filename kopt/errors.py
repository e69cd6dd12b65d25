"""The one exception type a user sees.

Every error kopt can explain becomes a `KoptError`: the CLI prints its message on one line (plus the hint)
and exits 1, with no traceback. Anything else is a bug in kopt and gets a traceback and exit code 3.
"""

from __future__ import annotations


class KoptError(Exception):
    """A problem the user can act on. `hint` says what to do next."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class TaskError(KoptError):
    """The TARGET cannot be turned into a task (missing file, no class, forward fails, ...)."""


class SamplerError(KoptError):
    """A sampler backend cannot produce samples (not installed, endpoint down, no logprobs, ...)."""


class ConfigError(KoptError):
    """A bad value in kopt.toml, [tool.kopt] or a flag."""
