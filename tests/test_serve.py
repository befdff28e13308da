"""The entry point composes embedded mode: the gateway is handed its in-process worker and builds none itself."""

import subprocess
import sys
import textwrap

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app as create_gateway
from serve import create_app
from tests.conftest import REPO


def test_the_gateway_alone_refuses_embedded_mode_and_names_the_entry_point(tmp_path):
    with (
        pytest.raises(RuntimeError, match="serve:create_app"),
        TestClient(create_gateway(Settings(data_dir=tmp_path, warm_models=""))),
    ):
        pass


def test_the_entry_point_serves_embedded_mode_without_loading_torch_before_a_job(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        from api.config import Settings
        from serve import create_app

        with TestClient(create_app(Settings(data_dir={str(tmp_path)!r}, warm_models=""))) as c:
            r = c.get("/healthz")
            assert r.status_code == 200, r.text
            assert c.get("/readyz").json()["mode"] == "embedded"
        loaded = [m for m in ("torch", "diffusers", "transformers", "core.runner") if m in sys.modules]
        assert not loaded, loaded
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_entry_point_serves_a_job_in_embedded_mode(tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path, warm_models=""))) as c:
        r = c.post("/v1/txt2img", json={"model": "digits", "prompt": "7", "seed": 1}, headers={"Prefer": "wait=60"})
        assert r.status_code in (200, 201), r.text
        assert r.json()["status"] == "succeeded", r.text
