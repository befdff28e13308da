"""The failure taxonomy shared by the gateway and the workers (torch-free, no HTTP status codes).

Every error carries a stable ``code`` and a ``message`` safe to show a client (no hosts, paths or tracebacks).
``api/errors.py`` maps the classes to status codes in one table; workers record ``code`` and ``message`` on the
failed job. Retry only what is transient (:class:`Unavailable`), never a validation error.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service means to tell a client about."""

    code = "error"

    def __init__(self, message: str, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code


class InputError(ServiceError, ValueError):
    """Client input that cannot be served; ``field`` names it."""

    code = "invalid_input"


class TooLarge(InputError):
    """An input bigger than its limit (bytes, pixels, decoded size)."""

    code = "too_large"


class Conflict(ServiceError):
    """The request contradicts what the service already holds (e.g. an idempotency key reused)."""

    code = "conflict"


class NotFound(ServiceError):
    code = "not_found"


class QuotaExceeded(ServiceError):
    """A tenant's quota (active jobs, open streams) is used up; try again after ``retry_after`` seconds."""

    code = "quota_exceeded"

    def __init__(self, message: str, retry_after: float = 5.0, field: str | None = None, code: str | None = None):
        super().__init__(message, field, code)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """A backend (job store, broker, storage) cannot be reached now; transient, worth a retry."""

    code = "unavailable"

    def __init__(
        self,
        message: str = "a backend of the service is unavailable; retry shortly",
        retry_after: float = 5.0,
        code: str | None = None,
    ):
        super().__init__(message, None, code)
        self.retry_after = retry_after


class StorageUnavailable(Unavailable):
    code = "storage_unavailable"

    def __init__(self, message: str = "object storage is unavailable; retry shortly", retry_after: float = 5.0):
        super().__init__(message, retry_after)


class JobError(ServiceError):
    """A job that failed for a reason worth telling the client (recorded; the worker lives on)."""

    def __init__(self, code: str, message: str):
        super().__init__(message, None, code)


class InvalidDataset(JobError):
    def __init__(self, message: str):
        super().__init__("invalid_dataset", message)


class RequestUnreadable(JobError):
    """A queued request the worker cannot parse: the gateway built and validated it with the same model, so this is
    the service's bug (an old record, a version skew), never the client's input."""

    def __init__(self, job_type: str):
        super().__init__(
            "internal_error", f"the queued {job_type} request could not be read; this is a fault of the service"
        )


class InputExpired(JobError):
    """An upload the job reads was deleted by retention before the job read it."""

    def __init__(self, message: str):
        super().__init__("input_expired", message)


class DeadlineExceeded(JobError):
    def __init__(self, message: str):
        super().__init__("deadline_exceeded", message)


class OutOfMemory(JobError):
    def __init__(self, message: str = "the job ran out of memory; ask for fewer or smaller images"):
        super().__init__("out_of_memory", message)


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is seen."""


class LeaseLost(Exception):
    """Raised inside a job when its worker no longer owns it (the lease expired and the job moved on):
    the worker stops at once and writes nothing."""
