"""What one job costs Redis on the real system, against what one Redis serves on this machine: the fleet size at
which one Redis saturates.

    .venv/bin/python bench/redis_ops.py --jobs 50

Starts its own redis-server, a gateway and one Celery worker (distributed mode, local disk storage), runs ``--jobs``
digits jobs through the API (each long-polled once, as a client would), and reads Redis' ``INFO commandstats`` before
and after: commands per job, by command. Then ``redis-benchmark`` measures what this Redis serves (the commands the
service uses most, 50 clients, pipelining off), and the table gives the workers one Redis carries at a given job rate
per worker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise TimeoutError(what)


def commandstats(r) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--jobs-per-worker-per-s", type=float, nargs="*", default=[0.2, 1.0, 5.0])
    a = p.parse_args()
    import redis

    tmp = Path(tempfile.mkdtemp(prefix="redis-ops-"))
    port = free_port()
    procs = [subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)]  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis.from_url(url, decode_responses=True)
    until(r.ping, 20, "redis-server")
    env = {**os.environ, "BROKER_URL": url, "DATA_DIR": str(tmp / "data"), "API_KEYS": "t:key", "TORCH_THREADS": "1",
           "RATE_LIMIT_PER_MINUTE": "100000", "BATCH_WINDOW_MS": "0", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    api_port = free_port()
    log = open(tmp / "procs.log", "wb")
    procs.append(subprocess.Popen([str(BIN / "python"), "-m", "uvicorn", "--factory", "api.main:create_app",
                                   "--port", str(api_port), "--log-level", "warning"], env=env, cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
    procs.append(subprocess.Popen([str(BIN / "celery"), "-A", "worker.app", "worker", "--pool", "solo",
                                   "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", "ops@%h",
                                   "--loglevel", "WARNING"], env=env, cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT))  # fmt: skip
    headers = {"Authorization": "Bearer key"}
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=120)
        until(lambda: http.get("/readyz").status_code == 200, 60, "gateway")
        # one job first: the worker's start (warm-up, reaper) is not a job's cost
        first = http.post("/v1/txt2img", json={"prompt": "3", "num_inference_steps": 2}, headers=headers).json()
        until(lambda: http.get(f"/v1/jobs/{first['id']}", headers=headers).json()["status"] == "succeeded", 120, "1st")
        before, t0 = commandstats(r), time.monotonic()
        ids = [
            http.post("/v1/txt2img", json={"prompt": "3", "num_inference_steps": 2}, headers=headers).json()["id"]
            for _ in range(a.jobs)
        ]
        for job_id in ids:
            until(lambda job_id=job_id: http.get(f"/v1/jobs/{job_id}?wait=30", headers=headers).json()["status"]
                  == "succeeded", 120, job_id)  # fmt: skip
        elapsed = time.monotonic() - t0
        after = commandstats(r)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    per_job = {c: (after.get(c, 0) - before.get(c, 0)) / a.jobs for c in after}
    per_job = {c: n for c, n in sorted(per_job.items(), key=lambda kv: -kv[1]) if n >= 0.05}
    total = sum(per_job.values())
    print(f"\nRedis commands per job ({a.jobs} digits jobs, 2 steps, one worker, {elapsed:.1f} s; reaper, heartbeats "
          "and the idle worker's polling included)")  # fmt: skip
    print("| command | per job |\n|---|---:|")
    for c, n in per_job.items():
        print(f"| {c} | {n:.1f} |")
    print(f"| **all** | **{total:.1f}** |")
    # what one Redis serves here: the commands the service uses most, as redis-benchmark sends them
    port2 = free_port()
    server = subprocess.Popen([shutil.which("redis-server"), "--port", str(port2), "--save", ""],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        until(lambda: redis.Redis(port=port2).ping(), 20, "redis-server")
        out = subprocess.run([shutil.which("redis-benchmark"), "-p", str(port2), "-q", "-n", "100000", "-c", "50",
                              "-t", "get,set,hset,lpush,rpop,zadd,incr"], capture_output=True, text=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    rates = [float(line.split(":")[1].split()[0]) for line in out.stdout.splitlines() if "requests per second" in line]
    served = min(rates) if rates else 0.0
    print(f"\nredis-benchmark on this machine (-n 100000 -c 50, no pipelining): {served:,.0f} requests/s at the "
          "slowest of get, set, hset, lpush, rpop, zadd, incr")  # fmt: skip
    print("| jobs/s per worker | Redis commands/s per worker | workers one Redis carries (at 50 % of its rate) |")
    print("|---:|---:|---:|")
    for rate in a.jobs_per_worker_per_s:
        per_worker = rate * total
        print(f"| {rate:g} | {per_worker:,.0f} | {0.5 * served / per_worker:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
