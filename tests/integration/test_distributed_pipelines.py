"""diffusers pipelines through the Celery stack: txt2img and video, loaded with from_pretrained by the worker."""

import httpx
import pytest

from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipe_stack(redis_server, s3_server, tiny_models_dir, tmp_path_factory, logs_dir, monkeypatch_module):
    monkeypatch_module.setenv("MODELS_DIR", str(tiny_models_dir))
    monkeypatch_module.setenv("WARM_MODELS", "tiny-sd")
    s = Stack(redis_server, s3_server, tmp_path_factory.mktemp("distpipe"), logs_dir, api_keys="")
    s.start_worker("pipes")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_txt2img_and_video_through_celery(pipe_stack):
    s = pipe_stack
    job = s.submit({"model": "tiny-sd", "prompt": "a cat", "seed": 3, "scheduler": "dpmpp_2m"}, headers={})
    done = s.wait(job["id"], headers={})
    assert done["status"] == "succeeded", done
    assert done["metrics"]["load_ms"] == 0  # warmed up at worker start
    assert httpx.get(done["output"][0]["url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    job = s.submit({"model": "tiny-wan", "prompt": "a monkey", "num_frames": 5, "seed": 4}, headers={}, path="/v1/video")
    done = s.wait(job["id"], headers={})
    assert done["status"] == "succeeded", done
    mp4 = httpx.get(done["output"][0]["url"])
    assert mp4.headers["content-type"] == "video/mp4" and mp4.content[4:8] == b"ftyp"
