"""Liveness, readiness and Prometheus metrics (open even when API keys are required)."""

from __future__ import annotations

import asyncio
import hmac
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from api.deps import backends
from api.errors import ApiError
from api.state import Backends
from core.jobs.queue import QUEUES
from core.jobs.schedule import PRIORITIES
from core.schemas import JobStatus

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


READY_TIMEOUT_S = 3.0
_checks = ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


@router.get("/readyz")
async def readyz(b: Backends = Depends(backends)):
    """The job store, the queue and the storage are reachable (503 naming the failing checks otherwise)."""
    # the three run at once and each gets READY_TIMEOUT_S: a frozen backend fails its check, not the probe
    loop = asyncio.get_running_loop()
    probes = {"store": b.store.ping, "queue": b.queue.ping, "storage": b.storage.ping}
    futures = {name: loop.run_in_executor(_checks, fn) for name, fn in probes.items()}
    done, _ = await asyncio.wait(futures.values(), timeout=READY_TIMEOUT_S)
    checks = {name: f in done and f.exception() is None and bool(f.result()) for name, f in futures.items()}
    ok = all(checks.values())
    failing = [name for name, good in checks.items() if not good]
    body = {"status": "ready" if ok else "unavailable", "mode": b.mode, "checks": checks, "failing": failing}
    return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})


def render_metrics(b: Backends) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    counters, hists = b.store.limits.metrics_snapshot()
    served = {e.id for e in b.registry.list()}

    def public(labels: tuple) -> tuple:
        # a tenant's own model names are the tenant's data: never in an unauthenticated scrape; tenants' names and
        # what each costs only behind METRICS_TOKEN
        return tuple(
            (k, v if k != "model" or v in served else "tenant_model")
            if k != "tenant" or b.settings.metrics_token
            else (k, "all")
            for k, v in labels
        )

    merged_c: dict = {}
    for (name, labels), v in counters.items():
        k = (name, public(labels))
        merged_c[k] = merged_c.get(k, 0.0) + v
    merged_h: dict = {}
    for (name, labels), h in hists.items():
        k = (name, public(labels))
        if k not in merged_h:
            merged_h[k] = {"buckets": dict(h["buckets"]), "sum": h["sum"], "count": h["count"]}
        else:
            m = merged_h[k]
            m["buckets"] = {le: m["buckets"].get(le, 0) + n for le, n in h["buckets"].items()}
            m["sum"] += h["sum"]
            m["count"] += h["count"]
    counters, hists = merged_c, merged_h
    depth = len(b.store.jobs.ids_with_status(JobStatus.queued))
    running = len(b.store.jobs.ids_with_status(JobStatus.running))
    backlog = {q: b.store.backlog.depth(q) for q in QUEUES}  # what autoscaling reads: queued by queue, level, model
    now = time.time()
    oldest = {q: min((w.since for w in b.store.backlog.heads(q)), default=None) for q in QUEUES}

    class Collector:
        def collect(self):
            fams: dict[str, object] = {}
            for (name, labels), value in sorted(counters.items()):
                keys = [k for k, _ in labels]
                fam = fams.setdefault(name, CounterMetricFamily(name.removesuffix("_total"), name, labels=keys))
                fam.add_metric([v for _, v in labels], value)
            for (name, labels), h in sorted(hists.items()):
                keys = [k for k, _ in labels]
                fam = fams.setdefault(name, HistogramMetricFamily(name, name, labels=keys))
                buckets = [(str(le), n) for le, n in sorted(h["buckets"].items())] + [("+Inf", h["count"])]
                fam.add_metric([v for _, v in labels], buckets, h["sum"])
            yield from fams.values()
            g = GaugeMetricFamily("diffuserve_queue_depth", "jobs queued and not yet started")
            g.add_metric([], depth)
            yield g
            g = GaugeMetricFamily("diffuserve_jobs_running", "jobs running now")
            g.add_metric([], running)
            yield g
            g = GaugeMetricFamily(
                "diffuserve_queued_jobs",
                "jobs waiting, by queue, priority and model",
                labels=["queue", "priority", "model"],
            )
            for q, rows in backlog.items():
                for (level, model), n in sorted(rows.items()):
                    g.add_metric([q, PRIORITIES[level], model if model in served else "tenant_model"], n)
            yield g
            g = GaugeMetricFamily("diffuserve_oldest_queued_seconds", "age of the oldest waiting job", labels=["queue"])
            for q, since in oldest.items():
                g.add_metric([q], max(0.0, now - since) if since is not None else 0.0)
            yield g

    reg = CollectorRegistry()
    reg.register(Collector())
    return generate_latest(reg)


@router.get("/metrics")
async def metrics(request: Request, b: Backends = Depends(backends)):
    """Prometheus text format: jobs by type and status, queue depth, wait/run/model-load histograms."""
    token = b.settings.metrics_token
    if token and not hmac.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "unauthorized", "/metrics needs Authorization: Bearer <METRICS_TOKEN>", "Authorization")
    body = await run_in_threadpool(render_metrics, b)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
