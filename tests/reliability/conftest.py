"""Processes the reliability suite breaks on purpose: a redis-server with AOF that is killed and restarted, and a
moto_server (S3) that is paused or killed. Each test gets its own, on free ports."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import Proc, bin_path, free_port, wait_for


class RedisAOF:
    """redis-server persisting every write (appendfsync always), so a SIGKILL loses nothing it acknowledged."""

    def __init__(self, folder: Path, logs: Path):
        self.folder, self.logs, self.port = folder, logs, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        import redis

        self.proc = Proc(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            self.logs / f"redis-aof-{self.port}.log",
        )
        wait_for(lambda: redis.Redis.from_url(self.url).ping(), 20, what="redis-server")

    def kill(self) -> None:
        self.proc.kill(signal.SIGKILL)

    def stop(self) -> None:
        self.proc.stop()


class MotoS3:
    def __init__(self, logs: Path):
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            os.environ[k] = env[k]
        self.proc = Proc(
            [bin_path("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)], logs / f"moto-{self.port}.log", env=env
        )
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        wait_for(lambda: self.client.list_buckets() is not None, 30, what="moto_server")
        self.client.create_bucket(Bucket="rel")

    @property
    def info(self) -> dict:
        return {"endpoint": self.endpoint, "bucket": "rel", "client": self.client}

    def keys(self, prefix: str = "") -> list[str]:
        return [o["Key"] for o in self.client.list_objects_v2(Bucket="rel", Prefix=prefix).get("Contents", [])]

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        self.proc.kill(signal.SIGKILL)

    def stop(self) -> None:
        if self.proc.alive():
            self.resume()
        self.proc.stop()


@pytest.fixture
def aof_redis(tmp_path, logs_dir):
    r = RedisAOF(tmp_path, logs_dir)
    yield r
    r.stop()


@pytest.fixture
def moto(logs_dir):
    m = MotoS3(logs_dir)
    yield m
    m.stop()
