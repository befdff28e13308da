"""diffusers pipelines through the Celery stack: txt2img and video, loaded with from_pretrained by the worker."""

from itertools import pairwise

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
    job = s.submit(
        {"model": "tiny-wan", "prompt": "a monkey", "num_frames": 5, "seed": 4}, headers={}, path="/v1/video"
    )
    done = s.wait(job["id"], headers={})
    assert done["status"] == "succeeded", done
    mp4 = httpx.get(done["output"][0]["url"])
    assert mp4.headers["content-type"] == "video/mp4" and mp4.content[4:8] == b"ftyp"


def _steps(s, job_id):
    import json

    text = httpx.get(f"{s.url}/v1/jobs/{job_id}/events", timeout=30).text
    return [json.loads(ln[6:])["step"] for ln in text.splitlines() if ln.startswith("data: ") and '"loss"' in ln]


def _kill_and_resume(s, job_id, after_step, name):
    import signal

    from tests.conftest import wait_for

    wait_for(
        lambda: s.http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] > after_step,
        180,
        what="training past its first checkpoint",
    )
    s.workers[-1].kill(signal.SIGKILL)
    s.start_worker(name)
    done = s.wait(job_id, headers={}, timeout=300)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    steps = _steps(s, job_id)
    # the second attempt's first step follows a drop in the step count; resuming means it is not step 1
    resumed_at = next(b for a, b in pairwise(steps) if b <= a)
    assert resumed_at > 1, "the second attempt started over instead of resuming from its checkpoint"
    return done


def test_worker_killed_mid_ddpm_training_resumes_and_succeeds(pipe_stack):
    s = pipe_stack
    job = s.submit(
        {
            "name": "killed-digits",
            "dataset": "digits",
            "resolution": 8,
            "max_train_steps": 150,
            "train_batch_size": 32,
            "seed": 0,
        },
        headers={},
        path="/v1/trainings/ddpm",
    )
    _kill_and_resume(s, job["id"], 20, "resume-ddpm")  # checkpoints every 15 steps
    r = s.submit({"model": "killed-digits", "prompt": "4", "num_inference_steps": 3}, headers={})
    assert s.wait(r["id"], headers={})["status"] == "succeeded"


def test_worker_killed_mid_lora_training_resumes_and_succeeds(pipe_stack):
    from tests.api.test_lora import dataset_zip

    s = pipe_stack
    up = s.http.post("/v1/uploads", files={"file": ("d.zip", dataset_zip(), "application/zip")}).json()["id"]
    job = s.submit(
        {
            "base_model": "tiny-sd",
            "name": "killed-lora",
            "dataset": up,
            "max_train_steps": 100,
            "train_batch_size": 2,
            "resolution": 64,
            "seed": 0,
        },
        headers={},
        path="/v1/trainings/lora",
    )
    _kill_and_resume(s, job["id"], 25, "resume-lora")  # checkpoints every 20 steps
    r = s.submit({"model": "tiny-sd", "prompt": "x", "loras": [{"name": "killed-lora", "scale": 1.0}]}, headers={})
    assert s.wait(r["id"], headers={})["status"] == "succeeded"
