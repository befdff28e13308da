"""Closed-loop throughput: does cross-request batching pay, per model and size?

    python bench/throughput.py [--rows digits,mnist,sd-64,sd-256,flux-256] [--seconds 20] [--runs 2]
                               [--mode embedded|distributed] [--torch-threads 1]
    python bench/throughput.py --sweep [--seconds 20] [--clients 1,2,4,8,16] [--modes embedded,distributed]

The per-model table (the default) serves the bundled engine models and tiny pipelines built from configs
(tests/fixtures/tiny.py: a Stable Diffusion and a Flux-class transformer, in a temporary MODELS_DIR) from two
services side by side (``--mode``: embedded gateways, or distributed stacks of gateway, one Celery worker, Redis and
S3): one batching (MAX_BATCH 8, the catalog's batching policy lifted so every size is measured) and one that never
batches (MAX_BATCH 1). Each row is a 1-image job of one model and size; each client submits it and long-polls the
result. It prints jobs/s and p50 at 1 client and at 8 clients on both services, the mean batch size (from /metrics
``diffuserve_batch_size``), the gain of batching (8 clients batched over 8 clients alone), the spread between runs,
and what the service does for that family and size on this device (``core.catalog.BATCHING_PAYS_UP_TO``).

``--sweep`` is the headline figure: digits 16², 1-image 10-step jobs at 1..16 clients, embedded and distributed
(distributed runs real processes: uvicorn, one Celery worker, redis-server and moto_server as S3).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.load import distributed_stack, embedded_server, run_load  # noqa: E402
from core.catalog import batching_pays  # noqa: E402

# one row per model and size: (family as the catalog names it, the job); steps and guidance keep a row short on a CPU
ROWS: dict[str, tuple[str, dict]] = {
    "digits": ("engine", {"model": "digits", "prompt": "7", "width": 16, "height": 16, "num_inference_steps": 10}),
    "mnist": ("engine", {"model": "mnist", "prompt": "7", "width": 28, "height": 28, "num_inference_steps": 10}),
    "sd-64": (
        "StableDiffusionPipeline",
        {"model": "tiny-sd", "prompt": "a photo of a cat", "width": 64, "height": 64, "num_inference_steps": 10},
    ),
    "sd-256": (
        "StableDiffusionPipeline",
        {"model": "tiny-sd", "prompt": "a photo of a cat", "width": 256, "height": 256, "num_inference_steps": 10},
    ),
    "flux-256": (
        "FluxPipeline",
        {"model": "tiny-flux", "prompt": "a photo of a cat", "width": 256, "height": 256, "num_inference_steps": 4},
    ),
}
GUIDANCE = {"engine": 2.0, "StableDiffusionPipeline": 5.0, "FluxPipeline": 3.5}
TINY = ("tiny-sd", "tiny-flux")


def batch_sizes(url: str) -> tuple[float, float]:
    """(sum, count) of ``diffuserve_batch_size`` so far: a run's mean batch is the difference across it."""
    text = httpx.get(f"{url}/metrics").text
    s = sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("diffuserve_batch_size_sum"))
    n = sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("diffuserve_batch_size_count"))
    return s, n


def mean_batch(url: str) -> float:
    s, n = batch_sizes(url)
    return s / n if n else float("nan")


def measured(url: str, seconds: float, clients: int, body: dict) -> dict:
    """One closed-loop run and the mean batch size of the jobs it ran (1 where the service never batched)."""
    s0, n0 = batch_sizes(url)
    r = run_load(url, seconds, clients, body=body)
    s1, n1 = batch_sizes(url)
    return {**r, "mean_batch": (s1 - s0) / (n1 - n0) if n1 > n0 else 1.0}


def _warm(url: str, body: dict) -> None:
    """One job of the row's model first: its load is not measured."""
    job = httpx.post(f"{url}/v1/txt2img", json={**body, "seed": 0}).json()
    while job["status"] not in ("succeeded", "failed", "canceled"):
        job = httpx.get(f"{url}/v1/jobs/{job['id']}?wait=30", timeout=60).json()
    assert job["status"] == "succeeded", job


def _policy_lifted(tmp: Path) -> dict:
    """Environment that lifts the catalog's batching policy in every process of a service (a ``sitecustomize`` on
    PYTHONPATH empties ``BATCHING_PAYS_UP_TO`` at start), so a batch is measured where the policy turns it off."""
    lift = tmp / "lift"
    lift.mkdir(parents=True, exist_ok=True)
    (lift / "sitecustomize.py").write_text("import core.catalog\n\ncore.catalog.BATCHING_PAYS_UP_TO.clear()\n")
    return {"PYTHONPATH": os.pathsep.join([str(lift), str(REPO)])}


@contextmanager
def service(mode: str, tmp: Path, env: dict) -> Iterator[str]:
    """An embedded gateway, or a distributed stack (gateway, one Celery worker, Redis, S3), with ``env``; its URL."""
    if mode == "embedded":
        proc, url = embedded_server(tmp, tmp / "gateway.log", env)
        try:
            yield url
        finally:
            proc.stop()
    else:
        with distributed_stack(tmp, env) as stack:
            yield stack.url


def per_model(tmp: Path, rows: list[str], seconds: float, runs: int, threads: int, mode: str) -> dict[str, list[dict]]:
    """{row: [one dict a run]}: two services side by side, batched and alone; within a run the three cells of a row
    follow each other, so load on the machine falls on both alike."""
    from tests.fixtures.tiny import build_tiny_models

    models = tmp / "models"
    build_tiny_models(models, TINY)
    env = {"MODELS_DIR": str(models), "TORCH_THREADS": str(threads), "MAX_ACTIVE_JOBS_PER_TENANT": "1000"}
    (tmp / "batched").mkdir()
    (tmp / "alone").mkdir()
    with (
        service(mode, tmp / "batched", {**env, **_policy_lifted(tmp), "MAX_BATCH": "8"}) as url_b,
        service(mode, tmp / "alone", {**env, "MAX_BATCH": "1"}) as url_a,
    ):
        out: dict[str, list[dict]] = {row: [] for row in rows}
        for row in rows:
            family, job = ROWS[row]
            body = {**job, "guidance_scale": GUIDANCE[family], "num_images": 1}
            _warm(url_b, body)
            _warm(url_a, body)
            for _ in range(runs):
                one = measured(url_b, seconds, 1, body)
                eight = measured(url_b, seconds, 8, body)
                eight_alone = measured(url_a, seconds, 8, body)
                out[row].append({"one": one, "eight": eight, "alone": eight_alone})
                print(f"{row}: {_brief(one)} | {_brief(eight)} | {_brief(eight_alone)}", file=sys.stderr, flush=True)
        return out


def _brief(r: dict) -> str:
    errors = len(r["errors"])
    return f"{r['jobs_per_s']:.2f} jobs/s p50 {r['p50_ms']:.0f} ms batch {r['mean_batch']:.2f} errors {errors}"


def print_per_model(
    results: dict[str, list[dict]], seconds: float, threads: int, mode: str, device: str = "cpu"
) -> None:
    runs = max(len(v) for v in results.values())
    print(
        f"\nBatching per model and size, {mode}, {device}, TORCH_THREADS={threads}: 1-image jobs, {seconds:.0f} s a "
        f"row, {runs} runs (one line each). Steps and guidance as listed (chosen to keep a row short on a CPU). "
        "Batched: MAX_BATCH 8 with the catalog's policy lifted; alone: MAX_BATCH 1. Gain: 8 clients batched over "
        "8 clients alone; spread: the largest difference between runs of one cell, over their mean."
    )
    print(
        "| row | size | steps | guidance | run | 1 client jobs/s | p50 ms | 8 batched jobs/s | p50 ms | mean batch "
        "| 8 alone jobs/s | p50 ms | 8 vs 1 | gain of batching | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row, per_run in results.items():
        family, job = ROWS[row]
        for i, r in enumerate(per_run, 1):
            one, eight, alone = r["one"], r["eight"], r["alone"]
            errors = sum(len(x["errors"]) for x in (one, eight, alone))
            print(
                f"| {row} | {job['width']}² | {job['num_inference_steps']} | {GUIDANCE[family]} | {i} "
                f"| {one['jobs_per_s']:.2f} | {one['p50_ms']:.0f} | {eight['jobs_per_s']:.2f} | {eight['p50_ms']:.0f} "
                f"| {eight['mean_batch']:.2f} | {alone['jobs_per_s']:.2f} | {alone['p50_ms']:.0f} "
                f"| {eight['jobs_per_s'] / one['jobs_per_s']:.2f}x | {_gain(r):.2f}x | {errors} |"
            )
    print("\n| row | gain of batching (runs) | spread between runs | verdict | catalog on " + device + " |")
    print("|---|---|---|---|---|")
    for row, per_run in results.items():
        family, job = ROWS[row]
        gains = [_gain(r) for r in per_run]
        noise = _spread(per_run)
        verdict = "pays" if min(gains) - 1 > noise and _batched(per_run) else "does not pay"
        if not _batched(per_run):
            served = "runs alone (its executor has no batch key)"
        elif batching_pays(device, family, job["width"] * job["height"]):
            served = "batches"
        else:
            served = "runs alone"
        print(f"| {row} | {', '.join(f'{g:.2f}x' for g in gains)} | {noise:.0%} | {verdict} | {served} |")


def _gain(r: dict) -> float:
    return r["eight"]["jobs_per_s"] / r["alone"]["jobs_per_s"]


def _spread(per_run: list[dict]) -> float:
    """The largest difference between runs of one cell (jobs/s at 1, 8 batched, 8 alone), over their mean."""
    worst = 0.0
    for cell in ("one", "eight", "alone"):
        values = [r[cell]["jobs_per_s"] for r in per_run]
        worst = max(worst, (max(values) - min(values)) / (sum(values) / len(values)))
    return worst


def _batched(per_run: list[dict]) -> bool:
    """Whether the batched service batched at all (an executor without a batch key runs every job alone)."""
    return min(r["eight"]["mean_batch"] for r in per_run) > 1.05


def sweep(url: str, clients: list[int], seconds: float) -> list[tuple]:
    rows = []
    for c in clients:
        r = run_load(url, seconds, c)
        rows.append((c, r["jobs_per_s"], r["jobs_per_s"], r["p50_ms"], r["p99_ms"], mean_batch(url), len(r["errors"])))
    return rows


def distributed(tmp: Path, clients: list[int], seconds: float) -> list[tuple]:
    with distributed_stack(tmp, {"MAX_ACTIVE_JOBS_PER_TENANT": "1000"}) as stack:
        return sweep(stack.url, clients, seconds)


def headline(a: argparse.Namespace) -> None:
    clients = [int(c) for c in a.clients.split(",")]
    tables = {}
    with tempfile.TemporaryDirectory() as d:
        if "embedded" in a.modes:
            proc, url = embedded_server(Path(d) / "embedded", Path(d) / "embedded.log")
            try:
                tables["embedded"] = sweep(url, clients, a.seconds)
            finally:
                proc.stop()
        if "distributed" in a.modes:
            tables["distributed"] = distributed(Path(d), clients, a.seconds)
    for mode, rows in tables.items():
        base = rows[0]
        print(f"\nClosed loop, {mode}, 1-image 10-step digits jobs, {a.seconds:.0f} s per row")
        print("| clients | jobs/s | images/s | vs 1 client | p50 ms | p50 vs 1 | p99 ms | mean batch so far | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        for c, jps, ips, p50, p99, mb, err in rows:
            print(
                f"| {c} | {jps:.2f} | {ips:.2f} | {jps / base[1]:.2f}x | {p50:.0f} | {p50 / base[3]:.2f}x | {p99:.0f} "
                f"| {mb:.2f} | {err} |"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--rows", default=",".join(ROWS), help="per-model rows: " + ", ".join(ROWS))
    p.add_argument("--runs", type=int, default=2, help="per-model table: runs of every row, interleaved")
    p.add_argument("--torch-threads", type=int, default=1, help="per-model table: TORCH_THREADS of both services")
    p.add_argument("--mode", default="embedded", choices=("embedded", "distributed"), help="per-model table")
    p.add_argument("--sweep", action="store_true", help="the digits sweep over --clients and --modes instead")
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--modes", default="embedded,distributed")
    a = p.parse_args()
    if a.sweep:
        headline(a)
        return 0
    rows = a.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    with tempfile.TemporaryDirectory() as d:
        results = per_model(Path(d), rows, a.seconds, a.runs, a.torch_threads, a.mode)
    print_per_model(results, a.seconds, a.torch_threads, a.mode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
