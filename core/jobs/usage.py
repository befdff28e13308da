"""Device-time accounting: what each tenant's jobs cost, per UTC day and model (jobs, images, device milliseconds),
and the daily quota on it. A job's device time is the time a worker spent running it (a batch's time split by its
images), recorded once by the worker that ran it (``metrics.device_ms``); ``GET /v1/usage`` reads it back, and a
submit past ``device_seconds_per_day`` is refused until the day ends.

Redis layout: ``ds:usage:{tenant}:{YYYY-MM-DD}`` a hash of ``{model}\\t{jobs|images|ms}`` counters, kept 100 days.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from core.errors import QuotaExceeded

KEEP_DAYS = 100
FIELDS = ("jobs", "images", "ms")


class Usage(Protocol):
    def add(self, tenant: str, day: date, model: str, images: int, device_ms: float) -> None:
        """One finished job of ``tenant`` on ``model``: a job, its images and its device time."""

    def days(self, tenant: str, days: list[date]) -> dict[date, dict[str, dict[str, float]]]:
        """Per day, per model: {"jobs", "images", "ms"} (days with nothing left out)."""


class MemoryUsage:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, date], dict[str, dict[str, float]]] = defaultdict(
            lambda: defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))
        )

    def add(self, tenant, day, model, images, device_ms):
        with self._lock:
            row = self._rows[(tenant, day)][model]
            row["jobs"] += 1
            row["images"] += images
            row["ms"] += device_ms

    def days(self, tenant, days):
        with self._lock:
            return {
                d: {m: dict(v) for m, v in self._rows[(tenant, d)].items()} for d in days if (tenant, d) in self._rows
            }


class RedisUsage:
    def __init__(self, r, prefix: str = "ds:usage:"):
        self.r = r
        self.prefix = prefix

    def _key(self, tenant: str, day: date) -> str:
        return f"{self.prefix}{tenant}:{day.isoformat()}"

    def add(self, tenant, day, model, images, device_ms):
        pipe = self.r.pipeline(transaction=True)
        self.add_to(pipe, tenant, day, model, images, device_ms)
        pipe.execute()

    def add_to(self, pipe, tenant, day, model, images, device_ms) -> None:
        """The commands of ``add``, appended to ``pipe`` (a batch of writes sent together)."""
        key = self._key(tenant, day)
        pipe.hincrbyfloat(key, f"{model}\tjobs", 1)
        pipe.hincrbyfloat(key, f"{model}\timages", images)
        pipe.hincrbyfloat(key, f"{model}\tms", device_ms)
        pipe.expire(key, KEEP_DAYS * 86400)

    def days(self, tenant, days):
        pipe = self.r.pipeline(transaction=False)
        for d in days:
            pipe.hgetall(self._key(tenant, d))
        out: dict[date, dict[str, dict[str, float]]] = {}
        for d, found in zip(days, pipe.execute(), strict=True):
            for field, value in found.items():
                field = field.decode() if isinstance(field, bytes) else field
                model, _, what = field.rpartition("\t")
                out.setdefault(d, {}).setdefault(model, dict.fromkeys(FIELDS, 0.0))[what] = float(value)
        return out


def today(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).date()


def device_seconds_today(usage: Usage, tenant: str, now: datetime | None = None) -> float:
    day = today(now)
    return sum(row["ms"] for row in usage.days(tenant, [day]).get(day, {}).values()) / 1000


def check_quota(usage: Usage, tenant: str, per_day: float | None, now: datetime | None = None) -> None:
    """429 ``quota_exceeded`` (naming the quota, ``Retry-After`` until the UTC day ends) when the tenant's jobs have
    used ``per_day`` device-seconds today; the job that crosses the line finishes, the next submit is refused."""
    if per_day is None:
        return
    now = now or datetime.now(UTC)
    used = device_seconds_today(usage, tenant, now)
    if used >= per_day:
        midnight = datetime.combine(today(now) + timedelta(days=1), datetime.min.time(), UTC)
        raise QuotaExceeded(
            f"device_seconds_per_day: {used:.1f} of {per_day:g} device-seconds used today (UTC); it resets at "
            "midnight UTC",
            retry_after=max(1, int((midnight - now).total_seconds()) + 1),
            code="quota_exceeded",
        )


def report(usage: Usage, tenant: str, days: int, now: datetime | None = None) -> dict:
    """The tenant's totals over the last ``days`` UTC days (today included): in all, by model and by day."""
    last = today(now)
    span = [last - timedelta(days=i) for i in range(days)][::-1]
    found = usage.days(tenant, span)
    total = dict.fromkeys(FIELDS, 0.0)
    by_model: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))
    by_day = []
    for d in span:
        day_total = dict.fromkeys(FIELDS, 0.0)
        for model, row in found.get(d, {}).items():
            for f in FIELDS:
                total[f] += row[f]
                by_model[model][f] += row[f]
                day_total[f] += row[f]
        if day_total["jobs"]:
            by_day.append({"day": d.isoformat(), **_shown(day_total)})
    return {
        "tenant": tenant,
        "since": span[0].isoformat(),
        "until": last.isoformat(),
        **_shown(total),
        "by_model": {m: _shown(v) for m, v in sorted(by_model.items())},
        "by_day": by_day,
    }


def _shown(row: dict[str, float]) -> dict:
    return {"jobs": int(row["jobs"]), "images": int(row["images"]), "device_seconds": round(row["ms"] / 1000, 3)}
