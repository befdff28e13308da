"""Real processes for integration tests: uvicorn serving the gateway, and Celery workers, on redis-server and
moto_server."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.conftest import REPO, Proc, bin_path, free_port, gateway_cmd, wait_for

KEYS = "acme:key-acme,globex:key-globex"
A = {"Authorization": "Bearer key-acme"}
B = {"Authorization": "Bearer key-globex"}


class Stack:
    def __init__(
        self,
        redis_url: str,
        s3: dict | None,
        tmp: Path,
        logs: Path,
        api_keys: str = KEYS,
        extra_env: dict | None = None,
    ):
        self.tmp, self.logs = tmp, logs
        self.env = {
            **os.environ,
            "BROKER_URL": redis_url,
            "API_KEYS": api_keys,
            "DATA_DIR": str(tmp / "data"),
            "LEASE_TTL_S": "3",
            "HEARTBEAT_S": "0.5",
            "REAPER_INTERVAL_S": "1",
            "TORCH_THREADS": "1",
            "RATE_LIMIT_PER_MINUTE": "100000",
            "PYTHONUNBUFFERED": "1",
        }
        if s3:
            self.env.update(S3_BUCKET=s3["bucket"], S3_ENDPOINT_URL=s3["endpoint"], S3_PREFIX=tmp.name)
        self.env.update(extra_env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = Proc(
            gateway_cmd(self.port),
            logs / f"api-{self.port}.log",
            env=self.env,
        )
        self.workers: list[Proc] = []
        self.http = httpx.Client(base_url=self.url, timeout=120)
        wait_for(lambda: self.http.get("/readyz").status_code == 200, 30, what=f"gateway ready: {self.api.tail()}")

    def start_worker(self, name: str) -> Proc:
        w = Proc(
            [
                bin_path("celery"),
                "-A",
                "worker.app",
                "worker",
                "--pool",
                "solo",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"{name}@%h",
                "--loglevel",
                "INFO",
            ],
            self.logs / f"worker-{name}-{self.port}.log",
            env=self.env,
            cwd=REPO,
        )
        self.workers.append(w)
        wait_for(lambda: b"ready." in w.log.read_bytes(), 90, interval=0.2, what=f"worker {name} ready: {w.tail()}")
        return w

    def submit(self, body: dict, headers: dict = A, path: str = "/v1/txt2img") -> dict:
        r = self.http.post(path, json=body, headers=headers)
        assert r.status_code == 202, r.text
        return r.json()

    def wait(self, job_id: str, headers: dict = A, timeout: float = 120) -> dict:
        return wait_for(
            lambda: (
                (j := self.http.get(f"/v1/jobs/{job_id}?wait=10", headers=headers).json())["status"]
                in ("succeeded", "failed", "canceled")
                and j
            ),
            timeout,
            what=f"job {job_id}",
        )

    def stop(self) -> None:
        self.http.close()
        for w in self.workers:
            w.stop()
        self.api.stop()
