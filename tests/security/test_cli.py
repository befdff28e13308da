"""The ``diffuserve`` command line against a hostile server (a plain-http ``DIFFUSERVE_URL`` anyone on the path can
answer): whatever ids, seeds and content types it sends, the CLI writes inside ``--out`` or nowhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # what the files hold: only where they land matters here
GOOD_ID = "job_" + "a" * 32


class Hostile:
    """An HTTP server on 127.0.0.1 that answers every job route with ``job`` (a dict the test sets)."""

    def __init__(self):
        self.job: dict = {}
        self.status = 200  # of every JSON answer (POST: 202 when this is 200)
        self.file_body = PNG  # what /files/... answers
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith("/files/"):
                    return self._send(200, hostile.file_body, "image/png")
                return self._send(hostile.status, json.dumps(hostile.job).encode())

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return self._send(202 if hostile.status == 200 else hostile.status, json.dumps(hostile.job).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, job_id: object, outputs: list[dict]) -> None:
        self.job = {"id": job_id, "type": "txt2img", "status": "succeeded", "progress": {"step": 2, "total": 2},
                    "output": outputs, "error": None, "created_at": "2026-01-01T00:00:00Z"}  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hostile():
    server = Hostile()
    yield server
    server.close()


def cli(url: str, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    exe = [str(VENV_BIN / "diffuserve")] if (VENV_BIN / "diffuserve").exists() else [sys.executable, "-m", "cli"]
    env = {**os.environ, "DIFFUSERVE_URL": url, "DIFFUSERVE_API_KEY": "k", **env_extra}
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=60, env=env)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def image(url: str, seed: object = 40, content_type: str = "image/png") -> dict:
    return {"role": "image", "content_type": content_type, "url": f"{url}/files/x", "seed": seed}


def generate(url: str, out: Path) -> subprocess.CompletedProcess:
    return cli(url, "generate", "--model", "digits", "--prompt", "7", "--no-progress", "--out", str(out))


@pytest.mark.parametrize(
    "job_id",
    [
        "../../evil",
        "../../../.bashrc",
        "ABSOLUTE",
        "job_ok/../../x",
        "job_a\0b",
        "job_" + "a" * 5000,
        "job_.",
        "job_abc\n",  # `$` of a plain match takes a final newline
        7,
        None,
    ],
)
def test_a_job_id_that_names_a_path_writes_nothing_and_exits_1(hostile, tmp_path, job_id):
    out = tmp_path / "a" / "b" / "out"
    (tmp_path / "a" / "keep.txt").parent.mkdir(parents=True)
    (tmp_path / "a" / "keep.txt").write_text("mine")
    if job_id == "ABSOLUTE":
        job_id = str(tmp_path / "abs" / "x")
    before = files_under(tmp_path)
    hostile.answer(job_id, [image(hostile.url)])
    r = generate(hostile.url, out)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "invalid job id" in r.stderr
    assert files_under(tmp_path) == before  # nothing written anywhere, --out included
    assert (tmp_path / "a" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("seed", "content_type", "name"),
    [
        ("../../evil", "image/png", f"{GOOD_ID}_0.png"),  # not an integer: the output's index instead
        ("1/../../../y", "image/png", f"{GOOD_ID}_0.png"),
        (-1, "image/png", f"{GOOD_ID}_0.png"),
        (2**40, "image/png", f"{GOOD_ID}_0.png"),
        (True, "image/png", f"{GOOD_ID}_0.png"),
        (40, "image/png/../../../z", f"{GOOD_ID}_0.bin"),  # not on the allow-list: .bin
        (40, "../x", f"{GOOD_ID}_0.bin"),
        (40, "application/json", f"{GOOD_ID}_40.json"),
        (40, "image/png", f"{GOOD_ID}_40.png"),
    ],
)
def test_seed_and_content_type_never_shape_a_path(hostile, tmp_path, seed, content_type, name):
    out = tmp_path / "out"
    hostile.answer(GOOD_ID, [image(hostile.url, seed, content_type)])
    r = generate(hostile.url, out)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert files_under(tmp_path) == {out / name}
    assert (out / name).read_bytes() == PNG


def test_a_symlink_planted_in_out_is_not_followed(hostile, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "bashrc"
    target.write_text("mine")
    (out / f"{GOOD_ID}_40.png").symlink_to(target)
    hostile.answer(GOOD_ID, [image(hostile.url)])
    r = generate(hostile.url, out)
    assert r.returncode == 1 and ("outside" in r.stderr or "cannot write" in r.stderr), (r.stdout, r.stderr)
    assert target.read_text() == "mine"


def test_jobs_wait_out_takes_the_same_checks(hostile, tmp_path):
    out = tmp_path / "a" / "out"
    hostile.answer("../../evil", [image(hostile.url)])
    r = cli(hostile.url, "jobs", "wait", GOOD_ID, "--out", str(out))
    assert r.returncode == 1 and "invalid job id" in r.stderr, (r.stdout, r.stderr)
    assert files_under(tmp_path) == set()
    hostile.answer(GOOD_ID, [image(hostile.url, "../../../x")])
    r = cli(hostile.url, "jobs", "wait", GOOD_ID, "--out", str(out))
    assert r.returncode == 0 and files_under(tmp_path) == {out / f"{GOOD_ID}_0.png"}, (r.stdout, r.stderr)


def test_escape_sequences_from_the_server_never_reach_the_terminal(hostile, tmp_path):
    hostile.answer(GOOD_ID, [])
    hostile.job["status"] = "\x1b[2J\x1b]0;owned\x07canceled"
    r = cli(hostile.url, "jobs", "cancel", GOOD_ID)
    assert r.returncode == 0 and "canceled" in r.stdout and "\x1b" not in r.stdout + r.stderr, (r.stdout, r.stderr)
    hostile.status = 400
    hostile.job = {"error": {"code": "x\x1b]0;owned\x07", "message": "\x1b[2J\x1b[31mred", "field": "\x1b[1m"}}
    r = cli(hostile.url, "jobs", "cancel", GOOD_ID)
    assert r.returncode == 1 and "red" in r.stderr and "\x1b" not in r.stdout + r.stderr, (r.stdout, r.stderr)


def test_an_answer_of_the_wrong_shape_is_an_error_not_a_traceback(hostile, tmp_path):
    hostile.job = {"status": "succeeded"}  # no id, no output
    r = generate(hostile.url, tmp_path / "out")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "error:" in r.stderr, (r.stdout, r.stderr)
    for url in ("file:///etc/passwd", "::::", "http://[::1"):  # outputs the CLI cannot fetch
        hostile.answer(GOOD_ID, [{**image(hostile.url), "url": url}])
        r = generate(hostile.url, tmp_path / "out")
        assert r.returncode == 1 and "Traceback" not in r.stderr and "download_failed" in r.stderr, (r.stdout, r.stderr)
    assert files_under(tmp_path) == set()


def test_an_output_past_the_download_cap_is_refused_and_leaves_no_file(hostile, tmp_path):
    """A server cannot fill the user's disk: each output is streamed up to a cap (2 GiB; 1,000 bytes here)."""
    hostile.answer("job_big", [image(hostile.url)])
    hostile.file_body = b"\x89PNG" + b"x" * 100_000
    out = tmp_path / "out"
    r = cli(hostile.url, "generate", "--model", "digits", "--prompt", "7", "--no-progress", "--out", str(out),
            DIFFUSERVE_MAX_DOWNLOAD_BYTES="1000")  # fmt: skip
    assert r.returncode == 1 and "download_too_large" in r.stderr, (r.stdout, r.stderr)
    assert files_under(tmp_path) == set()  # the partial file is gone
