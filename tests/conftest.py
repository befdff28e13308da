"""Shared fixtures: real redis-server and moto_server processes on free ports, deadline-based waiting."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``cond`` until it returns a truthy value or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else "")
    )


def gateway_cmd(port: int, log_level: str | None = "warning") -> list[str]:
    """The command line of a gateway process (uvicorn serving the app factory) on 127.0.0.1:``port``."""
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "serve:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return cmd + (["--log-level", log_level] if log_level else [])


def bin_path(name: str) -> str:
    p = VENV_BIN / name
    return str(p) if p.exists() else (shutil.which(name) or name)


class Proc:
    """A child process with its output in a log file, stopped at teardown."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, cwd: Path = REPO):
        self.log = log
        self.args = args
        self._fh = open(log, "wb")
        self.p = subprocess.Popen(
            args, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.p.pid, sig)
            self.p.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=15)
        self._fh.close()

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


@contextmanager
def embedded_gateway(tmp: Path, models_dir: Path | None = None, **env: str) -> Iterator[str]:
    """An embedded-mode gateway process over ``models_dir`` (DATA_DIR and its log in ``tmp``), ready: yields its URL,
    stops it after. The environment's broker, bucket and keys are dropped; ``env`` sets what the test wants (API_KEYS,
    ...) over these defaults: no warm-up, no rate limit in the way, one torch thread."""
    import httpx

    port = free_port()
    full = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET", "API_KEYS")}
    full.update(DATA_DIR=str(tmp / "data"), WARM_MODELS="", RATE_LIMIT_PER_MINUTE="100000", TORCH_THREADS="1",
                PYTHONUNBUFFERED="1", **({"MODELS_DIR": str(models_dir)} if models_dir else {}), **env)  # fmt: skip
    proc = Proc(gateway_cmd(port), tmp / "api.log", env=full)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, what=f"gateway: {proc.tail()}")
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_server(logs_dir):
    """A redis-server of the tests' own, on a free port."""
    import redis

    port = free_port()
    proc = Proc(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        logs_dir / "redis.log",
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis.Redis.from_url(url).ping(), 20, what="redis-server")
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def s3_server(logs_dir):
    """moto_server as a real S3 endpoint over HTTP, with a bucket; sets the AWS_* environment for boto3."""
    import boto3

    port = free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = Proc([bin_path("moto_server"), "-H", "127.0.0.1", "-p", str(port)], logs_dir / "moto.log", env=env)
    endpoint = f"http://127.0.0.1:{port}"
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        os.environ[k] = env[k]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    wait_for(lambda: client.list_buckets() is not None, 30, what="moto_server")
    client.create_bucket(Bucket="diffuserve-test")
    yield {"endpoint": endpoint, "bucket": "diffuserve-test", "client": client}
    proc.stop()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where a CUDA GPU is present (the same suite runs on a GPU host)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """Tiny random diffusers pipelines of every kind, built under a fixed seed and saved for from_pretrained."""
    from tests.fixtures.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("models")
    build_tiny_models(root)
    return root
