"""The run context of one attempt of a job (:class:`core.contract.RunContext`): what an executor or a trainer may
do while it runs (progress, cancel checks, previews, checkpoints, inputs, registrations), and nothing more."""

from __future__ import annotations

import base64
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import DeadlineExceeded, InputExpired, JobCancelled, LeaseLost, StorageUnavailable, Unavailable
from core.jobs import lifecycle
from core.jobs.store import JobStore
from core.schemas import JobRecord, Registration
from core.storage import Storage, upload_key

log = logging.getLogger("diffuserve.worker")

MAX_PREVIEWS = 64  # preview events per job
MAX_PREVIEW_BYTES = 256 * 1024
PROGRESS_RECORD_S = 0.5  # the record's progress is rewritten at most this often (events carry every step)
# a progress report that found the job ours this recently stands for the ownership read before an output or
# checkpoint write, while the lease is known to live longer than this still: a takeover needs the lease gone (and
# the reaper's pass), and the read proves no more than the report (the write after either one races alike)
OWNED_FRESH_S = 0.25


class JobContext:
    """The :class:`core.contract.RunContext` of one attempt of a job: progress (raises JobCancelled when asked to
    stop, LeaseLost when the job moved on to another worker, DeadlineExceeded past ``timeout_s``), checkpoints,
    inputs and registrations. Only this class touches the store and the storage on an executor's behalf."""

    def __init__(
        self,
        store: JobStore,
        job: JobRecord,
        storage: Storage,
        token: str | None = None,
        deadline: float | None = None,
        cache_dir: Path | None = None,
        lost: threading.Event | None = None,
        leased_until: Callable[[], float] | None = None,
    ):
        self.store = store
        self.job = job
        self.job_id = job.id
        self.tenant = job.tenant
        self.storage = storage
        self.token = token if token is not None else job.lease_token
        self.deadline = deadline
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "diffuserve-cache"
        self.lost = lost or threading.Event()  # set by the heartbeat when the lease is no longer ours
        self.leased_until = leased_until or (lambda: float("-inf"))  # the heartbeat's: until when the lease lives
        self._cancel = False
        self._recorded = 0.0  # when the record's progress was last rewritten
        self._confirmed = float("-inf")  # when the store last answered that the job is ours (before that call)
        self._previews = 0

    def check(self) -> None:
        """Raise if the job must stop now: its lease is gone or its deadline passed."""
        if self.lost.is_set():
            raise LeaseLost(f"job {self.job.id} is no longer ours")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded(f"the job ran past its timeout_s of {self.job.options.timeout_s}")

    def progress(self, step: int, total: int, **extra: float) -> None:
        """Every step is an event (what streams show) and a cancel check; the record's ``progress`` is rewritten at
        the first and last steps and at most every ``PROGRESS_RECORD_S`` in between."""
        self.check()
        now = time.monotonic()
        record = step <= 1 or step >= total or now - self._recorded >= PROGRESS_RECORD_S
        try:
            self._cancel = lifecycle.report_progress(
                self.store, self.job.id, self.token, step, total, record=record, **extra
            )
            self._confirmed = now  # report_progress raises LeaseLost unless the job is running under our token
            if record:
                self._recorded = now
        except Unavailable:
            return  # a store blip costs one progress event; the heartbeat decides whether the job is still ours
        if self._cancel:
            raise JobCancelled(f"canceled at step {step}")

    def cancelled(self) -> bool:
        return self._cancel

    def preview(self, step: int, total: int, png: bytes) -> None:
        """A ``preview`` event: the PNG as a data URI, at most ``MAX_PREVIEWS`` per job and ``MAX_PREVIEW_BYTES`` each
        (what the event log holds stays bounded whatever the request)."""
        if self._previews >= MAX_PREVIEWS or len(png) > MAX_PREVIEW_BYTES:
            return
        self._previews += 1
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        try:
            self.store.events.add_event(self.job.id, "preview", {"step": step, "total": total, "image": uri})
        except Exception:  # noqa: BLE001 - a preview is a courtesy: never fails the job
            log.debug("preview of %s dropped", self.job.id)

    def _owned(self, recent_report: bool = True) -> None:
        """Raise LeaseLost unless the job is ours: the lease (the heartbeat's flag), the deadline, then the store,
        unless (``recent_report``) a progress report found it ours within ``OWNED_FRESH_S`` and the lease is known
        to live longer than that still (a 1-step job writes its outputs right after its one report: one read fewer
        on every job's critical path)."""
        self.check()
        now = time.monotonic()
        if recent_report and now - self._confirmed <= OWNED_FRESH_S and self.leased_until() - now > OWNED_FRESH_S:
            return
        if not lifecycle.owns(self.store, self.job.id, self.token):  # only the lease owner writes
            raise LeaseLost(f"job {self.job.id} is no longer ours")

    def save_checkpoint(self, name: str, data: bytes) -> bool:
        """A failed save is skipped, not fatal: the run goes on and the next checkpoint tries again."""
        self._owned()
        try:
            self.storage.put(f"jobs/{self.job.id}/{name}", data, "application/octet-stream")
            return True
        except StorageUnavailable:
            log.warning("checkpoint of %s skipped: storage unavailable", self.job.id)
            return False

    def load_checkpoint(self, name: str) -> bytes | None:
        try:
            return self.storage.get(f"jobs/{self.job.id}/{name}")
        except KeyError:
            return None

    def open_input(self, upload_id: str) -> bytes:
        try:
            return self.storage.get(upload_key(self.tenant, upload_id))
        except KeyError:
            raise InputExpired(f"upload {upload_id!r} expired before the job read it; upload it again") from None

    def registration(self, kind: str, name: str) -> Registration | None:
        from core import tenant_models

        return tenant_models.registration(self.store.registrations, self.tenant, kind, name)

    def registered(self, kind: str, name: str) -> tuple[Registration, Path] | None:
        from core import tenant_models

        record = self.registration(kind, name)
        if record is None:
            return None
        return record, tenant_models.materialize(self.storage, record, self.cache_dir)

    def register(self, kind: str, name: str, folder: Path, extra: dict | None = None) -> Registration:
        from core import tenant_models

        self._owned(recent_report=False)  # rare, and what it publishes outlives the job: always read
        registrations = self.store.registrations
        return tenant_models.publish(registrations, self.storage, self.tenant, kind, name, folder, self.job.id, extra)
