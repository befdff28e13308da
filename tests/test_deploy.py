"""The deployment files: compose must pass `docker compose config`; the GPU image runs the worker as non-root."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_is_valid():
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (.ci/run installs docker-compose)")
    out = subprocess.run([*cmd, "-f", "docker-compose.yml", "config"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for service in ("api", "worker", "redis", "minio", "minio-init", "flower"):
        assert re.search(rf"^  {re.escape(service)}:$", out.stdout, re.M), service
    assert "appendonly" in out.stdout and "capabilities:" in out.stdout and "healthcheck:" in out.stdout


def test_gpu_dockerfile_runs_worker_as_non_root():
    text = (REPO / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM pytorch/pytorch:\S+cuda", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["celery", "-A", "worker.app", "worker"', text, re.M)
