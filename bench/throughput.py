"""Closed-loop throughput at 1, 2, 4, 8 (and 16) clients, embedded and distributed: jobs/s, images/s, p50/p99
latency, mean batch size. Each client submits a 1-image, 10-step digits job and long-polls it.

    python bench/throughput.py [--seconds 20] [--clients 1,2,4,8,16] [--modes embedded,distributed]

Distributed mode runs real processes: uvicorn, one Celery worker, redis-server and moto_server (S3).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.load import distributed_stack, embedded_server, run_load  # noqa: E402


def mean_batch(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    s = sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("diffuserve_batch_size_sum"))
    n = sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("diffuserve_batch_size_count"))
    return s / n if n else float("nan")


def sweep(url: str, clients: list[int], seconds: float) -> list[tuple]:
    rows = []
    for c in clients:
        r = run_load(url, seconds, c)
        rows.append((c, r["jobs_per_s"], r["jobs_per_s"], r["p50_ms"], r["p99_ms"], mean_batch(url), len(r["errors"])))
    return rows


def distributed(tmp: Path, clients: list[int], seconds: float) -> list[tuple]:
    with distributed_stack(tmp, {"MAX_ACTIVE_JOBS_PER_TENANT": "1000"}) as stack:
        return sweep(stack.url, clients, seconds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--modes", default="embedded,distributed")
    a = p.parse_args()
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
