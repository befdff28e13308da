"""The embedded service as `make run` starts it (uvicorn, in-process queue, local disk), driven from outside:
the curl smoke script and a Python client generated from openapi/openapi.json."""

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO, Proc, bin_path, free_port, gateway_cmd, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, logs_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET", "API_KEYS")}
    env.update(DATA_DIR=str(tmp_path_factory.mktemp("embedded")), TORCH_THREADS="1")
    p = Proc(
        gateway_cmd(port, log_level=None),
        logs_dir / "embedded.log",
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, 30, what="embedded service")
    yield url
    p.stop()


def test_smoke_script(embedded):
    out = subprocess.run(["bash", "scripts/smoke.sh", embedded], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "smoke: ok" in out.stdout


def test_generated_python_client_runs_a_job(embedded, tmp_path):
    pkg = tmp_path / "diffuserve_client"
    gen = subprocess.run(
        [
            bin_path("openapi-python-client"),
            "generate",
            "--path",
            str(REPO / "openapi" / "openapi.json"),
            "--output-path",
            str(pkg),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0 and (pkg / "client.py").is_file(), gen.stdout + gen.stderr
    code = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
from diffuserve_client import Client
from diffuserve_client.api.generate import txt2img
from diffuserve_client.api.jobs import get_job
from diffuserve_client.models import Txt2ImgRequest
client = Client(base_url={embedded!r}, timeout=60)
job = txt2img.sync(client=client, body=Txt2ImgRequest(prompt="three", num_inference_steps=5, seed=3))
done = get_job.sync(client=client, job_id=job.id, wait=30)
print(done.status, done.output[0].url)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    status, url = out.stdout.split()
    assert status.endswith("succeeded")
    r = httpx.get(url)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
