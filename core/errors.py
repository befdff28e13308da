"""The small error taxonomy shared by the gateway and the workers (torch-free)."""

from __future__ import annotations


class InputError(ValueError):
    """Client input that cannot be served; the gateway maps it to a 4xx naming ``field``."""

    def __init__(self, message: str, field: str | None = None, code: str = "invalid_input", status: int = 422):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code
        self.status = status


class JobError(Exception):
    """A job that failed for a reason worth telling the client (recorded; the worker lives on)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is seen."""
