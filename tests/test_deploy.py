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


SECRETS = {
    "MINIO_ROOT_USER": "u-test",
    "MINIO_ROOT_PASSWORD": "p-" + "x" * 30,
    "API_KEYS": "t:k-" + "y" * 30,
    "FLOWER_BASIC_AUTH": "admin:z-secret",
}


def _config(cmd, env):
    import os

    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [*cmd, "-f", "docker-compose.yml", "config"], cwd=REPO, capture_output=True, text=True, env={**clean, **env}
    )


def test_compose_config_is_valid():
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (.ci/run installs docker-compose)")
    out = _config(cmd, SECRETS)
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


def test_compose_has_safe_defaults():
    """No literal secrets (nothing starts without them), private ports on 127.0.0.1, restart policies."""
    text = (REPO / "docker-compose.yml").read_text()
    assert "diffuserve-secret" not in text and "dev-key" not in text
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (.ci/run installs docker-compose)")
    for missing in SECRETS:
        out = _config(cmd, {k: v for k, v in SECRETS.items() if k != missing})
        assert out.returncode != 0 and missing in out.stderr, missing
    text_ports = re.findall(r'- "([^"]+)"', text)
    assert "127.0.0.1:9001:9001" in text_ports and "127.0.0.1:5555:5555" in text_ports  # console, Flower
    assert "9000:9000" in text_ports and "8000:8000" in text_ports  # S3 (presigned URLs) and the gateway
    assert not [p for p in text_ports if p.endswith(":6379")]  # Redis is never published
    out = _config(cmd, SECRETS).stdout
    for service in ("api", "worker"):
        block = re.split(r"\n  \S", out.split(f"\n  {service}:\n", 1)[1], maxsplit=1)[0]
        assert "restart: unless-stopped" in block, service


def test_gateway_image_is_slim():
    text = (REPO / "Dockerfile.api").read_text()
    reqs = (REPO / "requirements-api.txt").read_text().lower()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M) and "uvicorn" in text
    for heavy in ("torch", "diffusers", "transformers", "numpy"):
        assert not re.search(rf"^{heavy}\b", reqs, re.M), heavy
    pinned = dict(re.findall(r"^([\w\[\]-]+)==(\S+)", (REPO / "requirements.txt").read_text(), re.M))
    for name, version in re.findall(r"^([\w\[\]-]+)==(\S+)", reqs, re.M):
        assert pinned.get(name) == version, name  # the same pins as the worker


KUSTOMIZE = shutil.which("kubectl")


@pytest.mark.skipif(KUSTOMIZE is None, reason="kubectl (for `kubectl kustomize`) is not installed")
@pytest.mark.parametrize("target", ["base", "overlays/cpu"])
def test_kubernetes_manifests_render_and_validate(target):
    """Both kustomizations render; every built-in object validates against Kubernetes 1.32's schemas (strict: an
    unknown field fails); the KEDA ScaledObject (a CRD, not in those schemas) scales the worker on the inference list;
    the worker's probes and grace period are the ones the README explains."""
    import kubernetes_validate
    import yaml

    out = subprocess.run(
        [KUSTOMIZE, "kustomize", str(REPO / "deploy" / "k8s" / target)], capture_output=True, text=True, check=True
    )
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {}
    for doc in docs:
        kinds[(doc["kind"], doc["metadata"]["name"])] = doc
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, "1.32.0", strict=True)
    scaled = kinds[("ScaledObject", "worker")]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "worker"
    (trigger,) = scaled["spec"]["triggers"]  # noqa: RUF100
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "inference"
    worker = kinds[("Deployment", "worker")]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > 3600  # longer than an image job's longest timeout
    container = worker["containers"][0]
    assert "ping" not in str(container["livenessProbe"]) and "diffuserve-alive" in str(container["livenessProbe"])
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
    for name in ("worker", "trainer"):
        resources = kinds[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources.get("limits", {}).get("nvidia.com/gpu") == (1 if target == "base" else None)
    trainer = kinds[("Deployment", "trainer")]["spec"]["template"]["spec"]
    assert "training" in trainer["containers"][0]["args"] and trainer["terminationGracePeriodSeconds"] > 24 * 3600
    assert kinds[("ScaledObject", "trainer")]["spec"]["triggers"][0]["metadata"]["listName"] == "training"
    assert all(d["metadata"].get("namespace") in (None, "diffuserve") for d in docs)  # KEDA reaches redis by FQDN
    assert "redis.diffuserve.svc.cluster.local" in trigger["metadata"]["address"]
    gateway = kinds[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
