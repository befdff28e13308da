"""AUTOMATIC1111's and Replicate's own clients against the distributed stack (gateway, Celery worker, redis-server,
moto_server as S3): the adapters work the same whatever runs the jobs."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import replicate
import webuiapi
from PIL import Image

from tests.conftest import wait_for
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(redis_server, s3_server, tmp_path_factory, logs_dir):
    s = Stack(redis_server, s3_server, tmp_path_factory.mktemp("compat"), logs_dir,
              extra_env={"WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_BACKOFF_S": "0.5"})  # fmt: skip
    s.start_worker("w1")
    yield s
    s.stop()


def test_webuiapi_txt2img_reproduces_and_options_persist_in_redis(stack):
    api = webuiapi.WebUIApi(baseurl=f"{stack.url}/sdapi/v1", username="u", password="key-acme")
    kw = dict(prompt="5", seed=7, width=16, height=16, steps=8, cfg_scale=2.0, sampler_name="Euler", batch_size=2)
    a, b = api.txt2img(**kw), api.txt2img(**kw)
    assert len(a.images) == 2 and a.info["all_seeds"] == [7, 8]
    assert np.array_equal(np.asarray(a.images[1]), np.asarray(b.images[1]))  # through Celery and S3, reproducible
    assert np.abs(np.asarray(a.images[0], dtype=int) - np.asarray(a.images[1], dtype=int)).mean() > 2
    api.set_options({"sd_model_checkpoint": "digits"})
    assert stack.http.get("/sdapi/v1/options", auth=("u", "key-acme")).json()["sd_model_checkpoint"] == "digits"


def test_replicate_run_create_cancel_and_webhook(stack, s3_server):
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    c = replicate.Client(api_token="key-acme", base_url=stack.url)
    out = c.run("acme/digits", input={"prompt": "6", "num_inference_steps": 8, "seed": 4})
    assert len(out) == 1 and out[0].startswith(s3_server["endpoint"])  # a presigned S3 URL
    assert Image.open(io.BytesIO(httpx.get(out[0]).content)).size == (16, 16)
    p = c.predictions.create(model="acme/digits", input={"prompt": "1", "num_inference_steps": 6},
                             webhook=f"http://127.0.0.1:{server.server_port}/h")  # fmt: skip
    p.wait()
    assert p.status == "succeeded"
    wait_for(lambda: any(g.get("status") == "succeeded" for g in got), 60, what="the completed webhook")
    server.shutdown()
    assert next(g for g in got if g["status"] == "succeeded")["id"] == p.id
    long = c.predictions.create(model="acme/digits", input={"prompt": "3", "scheduler": "ddpm",
                                "num_inference_steps": 1000, "num_outputs": 8})  # fmt: skip
    long.cancel()
    wait_for(lambda: (long.reload(), long.status == "canceled")[1], 60, what="canceled")
