"""The ``diffuserve`` command line against a real gateway process: generate with a progress bar, files named by
job and seed, jobs and models, and the service's error messages with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import VENV_BIN, Proc, embedded_gateway, free_port, gateway_cmd, wait_for


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET")}
    env.update(DATA_DIR=str(tmp / "data"), API_KEYS="acme:key-acme", PYTHONUNBUFFERED="1", TORCH_THREADS="1")
    proc = Proc(gateway_cmd(port), tmp / "api.log", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, what="gateway")
    yield url
    proc.stop()


def cli(service, *args, key="key-acme", timeout=120):
    exe = [str(VENV_BIN / "diffuserve")] if (VENV_BIN / "diffuserve").exists() else [sys.executable, "-m", "cli"]
    env = {**os.environ, "DIFFUSERVE_URL": service, "DIFFUSERVE_API_KEY": key}
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_console_script_is_installed():
    """``make setup`` installs the project, so ``diffuserve`` is on the venv's PATH."""
    assert (VENV_BIN / "diffuserve").exists(), "run make setup: it installs the diffuserve command"


def test_generate_writes_one_file_per_image_named_by_job_and_seed(service, tmp_path):
    r = cli(service, "generate", "--model", "digits", "--prompt", "7", "--num-images", "3", "--seed", "40",
            "--steps", "8", "--out", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert [p.rsplit("_", 1)[1] for p in paths] == ["40.png", "41.png", "42.png"]
    job_id = os.path.basename(paths[0]).rsplit("_", 1)[0]
    assert job_id.startswith("job_") and "step" in r.stderr  # the progress bar (tqdm on stderr)
    images = [np.asarray(Image.open(p)).astype(float) for p in paths]
    assert images[0].shape == (16, 16) and all(im.std() > 5 for im in images)
    assert np.abs(images[0] - images[1]).mean() > 1  # seeds 40 and 41: two draws
    # jobs get / list / models
    job = json.loads(cli(service, "jobs", "get", job_id).stdout)
    assert job["status"] == "succeeded" and job["input"]["seed"] == 40
    assert job_id in cli(service, "jobs", "list").stdout
    assert "digits" in cli(service, "models").stdout
    # --url and --api-key also after the command, as a newcomer writes them (they win over the environment)
    r = cli("http://127.0.0.1:9", "jobs", "get", job_id, "--url", service, "--api-key", "key-acme")
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == job_id, r.stderr


def test_generate_with_a_step_cache(service, tmp_path):
    r = cli(service, "generate", "--model", "mnist", "--prompt", "3", "--seed", "5", "--cache", "deep:interval=2",
            "--out", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    job_id = os.path.basename(r.stdout.split()[0]).rsplit("_", 1)[0]
    job = json.loads(cli(service, "jobs", "get", job_id).stdout)
    assert job["input"]["cache"] == {"method": "deep", "threshold": None, "interval": 2}
    assert job["versions"]["step_cache"] == "deep interval=2; reused 10 of 20 denoiser calls"
    r = cli(service, "generate", "--model", "mnist", "--prompt", "3", "--cache", "first_block", "--out", str(tmp_path))
    assert r.returncode != 0 and "cache" in r.stderr and "first_block" in r.stderr


def test_img2img_from_a_file_and_wait(service, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(src)
    r = cli(service, "upload", str(src))
    assert r.returncode == 0 and r.stdout.strip().startswith("upl_"), r.stderr
    r = cli(service, "generate", "--model", "digits", "--prompt", "3", "--image", str(src), "--steps", "4",
            "--out", str(tmp_path / "out"), "--no-progress")  # fmt: skip
    # the engine model does txt2img only: the service's own refusal, printed, exit 1
    assert r.returncode == 1 and "unsupported_task" in r.stderr, (r.stdout, r.stderr)


def test_errors_print_the_service_message_and_exit_non_zero(service, tmp_path):
    r = cli(service, "generate", "--model", "nope", "--prompt", "7", "--out", str(tmp_path))
    assert r.returncode == 1 and "error:" in r.stderr and "nope" in r.stderr
    r = cli(service, "jobs", "get", "job_" + "0" * 32)
    assert r.returncode == 1 and "not_found" in r.stderr
    r = cli(service, "models", key="wrong")
    assert r.returncode == 1 and "unauthorized" in r.stderr
    r = cli(service, "generate", "--model", "digits", "--prompt", "7", "--steps", "5000", "--out", str(tmp_path))
    assert r.returncode == 1 and "num_inference_steps" in r.stderr  # the field the service names
    help_text = cli(service, "--help").stdout
    assert "generate" in help_text and "DIFFUSERVE_URL" in help_text


def test_cancel_a_running_job(service):
    job = httpx.post(
        f"{service}/v1/txt2img",
        json={"prompt": "3", "num_inference_steps": 1000, "num_images": 8, "scheduler": "ddpm"},
        headers={"Authorization": "Bearer key-acme"},
    ).json()
    r = cli(service, "jobs", "cancel", job["id"])
    assert r.returncode == 0 and job["id"] in r.stdout
    r = cli(service, "jobs", "wait", job["id"], "--timeout", "30")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "canceled"


def test_train_then_generate_with_the_new_model(service, tmp_path):
    r = cli(service, "train", "ddpm", "--name", "cli-digits", "--steps", "3", "--batch-size", "8", "--no-progress")
    assert r.returncode == 0 and "trained ddpm 'cli-digits'" in r.stdout, r.stderr
    assert "cli-digits" in cli(service, "models").stdout
    r = cli(service, "generate", "--model", "cli-digits", "--prompt", "4", "--steps", "3", "--seed", "1",
            "--no-progress", "--out", str(tmp_path))  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip().endswith("_1.png"), r.stderr
    r = cli(service, "train", "lora", "--name", "x", "--dataset", "digits")
    assert r.returncode == 2 and "--base-model" in r.stderr  # a usage error


@pytest.fixture(scope="module")
def tiny_service(tmp_path_factory, tiny_models_dir):
    with embedded_gateway(tmp_path_factory.mktemp("cli-tiny"), tiny_models_dir) as url:
        yield url


def test_a_controlnet_job_from_the_command_line(tiny_service, tmp_path):
    """--controlnet with --control-image runs a ControlNet job (its detected map saved beside the image); either
    flag alone is a usage error before anything is uploaded."""
    src = tmp_path / "edges.png"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(src)
    r = cli(tiny_service, "generate", "--model", "tiny-sd", "--prompt", "a cat", "--control-image", str(src),
            "--preprocess", "canny", "--out", str(tmp_path / "none"), "--no-progress")  # fmt: skip
    assert r.returncode == 2 and "--controlnet" in r.stderr and not (tmp_path / "none").exists(), r.stderr
    r = cli(tiny_service, "generate", "--model", "tiny-sd", "--prompt", "a cat", "--controlnet", "tiny-controlnet",
            "--control-image", str(src), "--preprocess", "canny", "--seed", "3", "--steps", "2",
            "--out", str(tmp_path / "out"), "--no-progress")  # fmt: skip
    assert r.returncode == 0, (r.stdout, r.stderr)
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 2  # the image and the canny map the preprocess detected
    job = httpx.get(f"{tiny_service}/v1/jobs").json()["data"][0]
    assert job["type"] == "controlnet" and job["input"]["controlnet"] == "tiny-controlnet"
    assert job["input"]["preprocess"] == "canny" and job["input"]["seed"] == 3
