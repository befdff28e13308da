"""A bounded closed-loop load run against the embedded service: N clients, each submitting a 1-image, 10-step
digits job and long-polling it, for a fixed time. Every answer must be a success.

    python bench/load.py [--seconds 60] [--clients 8]

Prints jobs/s, end-to-end p50/p99 and the error count. ``tests/reliability/test_load.py`` runs the same loop
(``LOAD_SECONDS``, default 60) and fails on any error.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.conftest import Proc, bin_path, free_port, gateway_cmd, wait_for  # noqa: E402

BODY = {"prompt": "7", "num_inference_steps": 10, "num_images": 1}


def run_load(
    base_url: str, seconds: float, clients: int, headers: dict | None = None, body: dict | None = None
) -> dict:
    """Closed loop: each client submits ``body`` (default: the digits job), long-polls to a terminal status, and
    starts again until ``seconds`` pass."""
    body = body or BODY
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=90, headers=headers or {}) as http:
            n = 0
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/txt2img", json={**body, "seed": i * 100_000 + n})
                    if r.status_code != 202:
                        raise RuntimeError(f"POST {r.status_code}: {r.text[:120]}")
                    job = r.json()
                    while job["status"] not in ("succeeded", "failed", "canceled"):
                        g = http.get(f"/v1/jobs/{job['id']}?wait=30")
                        if g.status_code != 200:
                            raise RuntimeError(f"GET {g.status_code}: {g.text[:120]}")
                        job = g.json()
                    if job["status"] != "succeeded":
                        raise RuntimeError(f"job {job['status']}: {job.get('error')}")
                    with lock:
                        latencies.append((time.perf_counter() - t0) * 1000)
                except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                    with lock:
                        errors.append(repr(e))
                n += 1

    t_start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t_start
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "jobs": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "jobs_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": q[98],
    }


def embedded_server(tmp: Path, log: Path, extra_env: dict | None = None) -> tuple[Proc, str]:
    """The gateway with its in-process worker on a free port (``extra_env`` beside the bench's own), warmed by one
    digits job; (process, URL)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET", "API_KEYS")}
    env.update(DATA_DIR=str(tmp), RATE_LIMIT_PER_MINUTE="1000000", PYTHONUNBUFFERED="1", **(extra_env or {}))
    proc = Proc(
        gateway_cmd(port),
        log,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, what="embedded gateway")
    # warm: the first job starts torch and loads the model; the measurement starts once it is done
    job = wait_for(lambda: httpx.post(f"{url}/v1/txt2img", json=BODY).json(), 10, what="first job")
    done = httpx.get(f"{url}/v1/jobs/{job['id']}?wait=60", timeout=90).json()
    assert done["status"] == "succeeded", done
    return proc, url


@contextmanager
def distributed_stack(tmp: Path, extra_env: dict | None = None):
    """A distributed service of the benchmark's own: redis-server, moto_server as S3, the gateway and one Celery
    worker (all real processes); yields the Stack and stops everything after."""
    import boto3
    import redis

    from tests.integration.stack import Stack

    rport, sport = free_port(), free_port()
    rproc = Proc(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"], tmp / "redis.log")
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(creds)
    sproc = Proc(
        [bin_path("moto_server"), "-H", "127.0.0.1", "-p", str(sport)], tmp / "moto.log", env={**os.environ, **creds}
    )
    stack = None
    try:
        url = f"redis://127.0.0.1:{rport}/0"
        wait_for(lambda: redis.Redis.from_url(url).ping(), 20)
        endpoint = f"http://127.0.0.1:{sport}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        wait_for(lambda: s3.list_buckets() is not None, 30)
        s3.create_bucket(Bucket="bench")
        stack = Stack(
            url,
            {"bucket": "bench", "endpoint": endpoint},
            tmp,
            tmp,
            api_keys="",
            extra_env={"TORCH_THREADS": "0", **(extra_env or {})},
        )
        stack.start_worker("bench")
        yield stack
    finally:
        if stack:
            stack.stop()
        sproc.stop()
        rproc.stop()


def table(r: dict, clients: int) -> str:
    return (
        "| clients | seconds | jobs | jobs/s | p50 ms | p99 ms | errors |\n"
        "|---------|---------|------|--------|--------|--------|--------|\n"
        f"| {clients:>7} | {r['seconds']:>7.1f} | {r['jobs']:>4} | {r['jobs_per_s']:>6.2f} | {r['p50_ms']:>6.0f} "
        f"| {r['p99_ms']:>6.0f} | {len(r['errors']):>6} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--clients", type=int, default=8)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        proc, url = embedded_server(Path(d), Path(d) / "api.log")
        try:
            r = run_load(url, a.seconds, a.clients)
        finally:
            proc.stop()
    print(f"\nClosed-loop load, embedded mode, 1-image 10-step digits jobs\n{table(r, a.clients)}")
    for e in r["errors"][:5]:
        print("error:", e)
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
