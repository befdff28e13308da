"""What ComfyUI cannot do (its queue lives in memory: issue #2844): prompts survive a gateway restart. In distributed
mode (redis-server, moto_server as S3, a Celery worker) a ComfyUI client queues prompts, the gateway is SIGKILLed
while one runs, and another gateway on the same Redis answers the same client: the websocket carries the prompt's
progress and end (read from the jobs' durable event logs), ``/history`` and ``/view`` serve its images, and the
prompt queued behind it runs too."""

from __future__ import annotations

import json
from contextlib import closing

import httpx
import numpy as np
import pytest

from tests.compat.test_comfyui import ComfyClient, arr, digits, read_until_done, workflow
from tests.conftest import Proc, free_port, gateway_cmd, wait_for
from tests.integration.stack import A, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_prompts_survive_a_gateway_killed_while_one_runs(redis_server, s3_server, tmp_path, logs_dir):
    stack = Stack(redis_server, s3_server, tmp_path, logs_dir)
    other = None
    try:
        stack.start_worker("comfy")
        client = ComfyClient(stack.url, key="key-acme")
        long = digits(workflow("txt2img_default"), steps=600, sampler="ddpm")
        long["5"]["inputs"]["batch_size"] = 4
        long["3"]["inputs"]["seed"] = 11
        short = digits(workflow("txt2img_default"), steps=8)
        short["3"]["inputs"]["seed"] = 12
        ws = client.connect()
        first = client.queue_prompt(long)["prompt_id"]
        second = client.queue_prompt(short, prompt_id="my-own-prompt-id")["prompt_id"]
        assert second == "my-own-prompt-id"
        # the first prompt runs: its progress reaches the socket
        while True:
            out = ws.recv()
            if isinstance(out, str) and json.loads(out)["type"] == "progress":
                break
        stack.api.p.kill()  # the gateway dies mid-prompt; Redis, S3 and the worker go on
        stack.api.p.wait(10)
        ws.close()

        port = free_port()
        other = Proc(gateway_cmd(port), logs_dir / f"api-{port}.log", env=stack.env)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, what="the second gateway")
        again = ComfyClient(url, key="key-acme", client_id=client.client_id)  # the client reconnects, same id
        with closing(again.connect()) as ws2:
            messages = read_until_done(ws2, first)
            messages += read_until_done(ws2, second)
        texts = [m for m in messages if isinstance(m, dict)]
        ends = [m["data"]["prompt_id"] for m in texts if m["type"] == "execution_success"]
        assert ends == [first, second]
        steps = [m["data"] for m in texts if m["type"] == "progress" and m["data"]["prompt_id"] == first]
        assert steps and steps[-1]["max"] == 600 and steps[-1]["node"] == "3"  # read back from the event log
        for pid in (first, second):
            item = again.get_history(pid)[pid]
            assert item["status"]["status_str"] == "success"
            images = item["outputs"]["9"]["images"]
            assert len(images) == (4 if pid == first else 1)
            png = again.get_image(images[0]["filename"], images[0]["subfolder"], images[0]["type"])
            assert arr(png).shape == (16, 16) and arr(png).std() > 10
        # the same pixels as the /v1 request the second prompt means, drawn by the new gateway's stack
        body = {"model": "digits", "prompt": "7", "seed": 12, "num_inference_steps": 8, "guidance_scale": 8.0,
                "scheduler": "ddim", "width": 16, "height": 16}  # fmt: skip
        r = httpx.post(f"{url}/v1/txt2img", json=body, headers={**A, "Prefer": "wait=60"}, timeout=90)
        assert r.status_code == 201, r.text
        mine = again.get_history(second)[second]["outputs"]["9"]["images"][0]
        png = again.get_image(mine["filename"], "", "output")
        assert np.array_equal(arr(png), arr(httpx.get(r.json()["output"][0]["url"]).content))
        assert again.get("/queue") == {"queue_running": [], "queue_pending": []}
    finally:
        if other:
            other.stop()
        stack.stop()
