"""``diffuserve``: the service from a terminal, over its public HTTP API only (httpx; no internal modules).

    diffuserve generate --model digits --prompt 7 --num-images 4 --out out/
    diffuserve generate --model sd15 --prompt "a cat" --image cat.png --strength 0.6 --out out/
    diffuserve jobs list | jobs get ID | jobs wait ID | jobs cancel ID
    diffuserve models · diffuserve upload FILE · diffuserve train lora|ddpm ...

``--url`` and ``--api-key`` default to ``DIFFUSERVE_URL`` (else http://127.0.0.1:8000) and ``DIFFUSERVE_API_KEY``.
An error prints the service's own message and exits 1 (2 for a usage error).

Files are written only inside ``--out``, named from parts checked here, never from the service's text as given: the
job id (``job_`` and letters or digits), the seed (an integer) or the output's index, and an extension from the
content type's allow-list; a path that would leave ``--out``, or a symlink in its place, is refused (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import httpx

TERMINAL = ("succeeded", "failed", "canceled")
JOB_ID = re.compile(r"job_[A-Za-z0-9]{1,64}")  # the service's ids: job_ and a uuid4's hex
EXTENSIONS = {"image/png": "png", "image/gif": "gif", "video/mp4": "mp4", "application/json": "json"}
MAX_SEED = 2**32 - 1


def printable(text: object, limit: int = 300) -> str:
    """What the service sent, as a terminal may show it: no control characters (escape sequences), cut short."""
    s = str(text)[:limit]
    return "".join(c if c.isprintable() else "?" for c in s)


def job_id_of(job: dict) -> str:
    """The id of a job the service answered, checked before it names a URL or a file."""
    job_id = job.get("id") if isinstance(job, dict) else None
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise ServiceError(0, "bad_answer", f"the service answered an invalid job id: {printable(repr(job_id), 80)}")
    return job_id


def output_name(job_id: str, i: int, item: dict) -> str:
    """``JOB_SEED.ext`` (``JOB_INDEX.ext`` when the output has no seed): only checked parts."""
    ext = EXTENSIONS.get(item.get("content_type"))
    seed = item.get("seed")
    if ext and type(seed) is int and 0 <= seed <= MAX_SEED:
        return f"{job_id}_{seed}.{ext}"
    return f"{job_id}_{i}.{ext or 'bin'}"


def open_inside(out: Path, name: str):
    """A new file ``name`` inside ``out``, opened for writing: refused when the path leaves ``out`` (``..``, an
    absolute name, a separator, NUL) or when a symlink stands in its place."""
    root = out.resolve()
    path = root / name
    if os.sep in name or "\0" in name or name in (".", "..") or path.parent != root or path.resolve() != path:
        raise ServiceError(0, "bad_answer", f"refusing to write {printable(repr(name), 120)} outside {root}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise ServiceError(0, "write_failed", f"cannot write {path}: {e.strerror}") from None
    return path, os.fdopen(fd, "wb")


class ServiceError(Exception):
    """An answer of the service that is not a success: its error code, message and field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def __str__(self) -> str:
        where = f" (field: {printable(self.field, 120)})" if self.field else ""
        return f"{printable(self.code, 60)}: {printable(self.message)}{where}"


class Client:
    def __init__(self, url: str, api_key: str | None, timeout: float = 90.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kw) -> dict:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ServiceError(0, "unreachable", f"cannot reach {self.http.base_url}: {type(e).__name__}") from None
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ServiceError(r.status_code, err.get("code", "error"), err.get("message", ""), err.get("field"))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ServiceError(r.status_code, "http_error", r.text[:300] or r.reason_phrase) from None
        try:
            return r.json()
        except ValueError:
            raise ServiceError(r.status_code, "bad_answer", "the service answered something that is not JSON") from None

    def upload(self, path: str) -> str:
        p = Path(path)
        if not p.is_file():
            raise ServiceError(0, "no_such_file", f"{path} is not a file")
        with p.open("rb") as f:
            return self.call("POST", "/v1/uploads", files={"file": (p.name, f)})["id"]

    def wait(self, job_id: str, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 60 if deadline is None else max(0, min(60, deadline - time.monotonic()))
            job = self.call("GET", f"/v1/jobs/{job_id}", params={"wait": int(left)})
            if job["status"] in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
                return job

    def follow(self, job: dict, show: bool) -> dict:
        """Wait for the job with a progress bar fed by its event stream (SSE); falls back to long-polling."""
        job_id = job_id_of(job)
        if not show:
            return self.wait(job_id)
        from tqdm import tqdm

        bar = tqdm(total=job["progress"].get("total") or None, unit="step", desc=job_id[:16], file=sys.stderr)
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as r:
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "progress":
                        data = json.loads(line[6:])
                        bar.total = data["total"]
                        bar.n = data["step"]
                        bar.refresh()
                    elif line.startswith("data: ") and event == "status":
                        if json.loads(line[6:])["status"] in TERMINAL:
                            break
        except httpx.HTTPError:
            pass
        finally:
            bar.close()
        return self.wait(job_id)

    def download(self, job: dict, out: Path) -> list[Path]:
        """Each output (checkpoints excepted) fetched into ``out`` under a name made of checked parts only."""
        job_id = job_id_of(job)
        items = job.get("output")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ServiceError(0, "bad_answer", "the service answered outputs that are not a list of objects")
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for i, item in enumerate(items):
            url = item.get("url")
            if item.get("content_type") == "application/octet-stream" or not isinstance(url, str):
                continue  # checkpoints stay on the service
            files.append(self._fetch(url, out, output_name(job_id, i, item), i))
        return files

    @staticmethod
    def _fetch(url: str, out: Path, name: str, i: int) -> Path:
        """One output streamed to disk, at most ``max_download_bytes()``; nothing is left behind when it fails."""
        cap, path = max_download_bytes(), None
        try:
            with httpx.stream("GET", url, timeout=120) as r:
                if r.status_code != 200:
                    raise ServiceError(r.status_code, "download_failed", f"could not fetch output {i}")
                path, f = open_inside(out, name)
                with f:
                    written = 0
                    for chunk in r.iter_bytes():  # streamed to disk, never whole in memory
                        written += len(chunk)
                        if written > cap:
                            raise ServiceError(0, "download_too_large", f"output {i} is over {cap:,} bytes")
                        f.write(chunk)
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            _remove(path)
            raise ServiceError(0, "download_failed", f"could not fetch output {i}: {type(e).__name__}") from None
        except ServiceError:
            _remove(path)
            raise
        return path


def max_download_bytes() -> int:
    """The most one output may weigh on disk (DIFFUSERVE_MAX_DOWNLOAD_BYTES, default 2 GiB): a server cannot fill it."""
    try:
        return max(1, int(os.environ.get("DIFFUSERVE_MAX_DOWNLOAD_BYTES", 2 * 2**30)))
    except ValueError:
        return 2 * 2**30


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


# -- commands ----------------------------------------------------------------------------------------------


def cmd_generate(c: Client, a) -> int:
    body: dict = {"model": a.model, "prompt": a.prompt}
    for key, value in (
        ("negative_prompt", a.negative_prompt),
        ("num_images", a.num_images),
        ("seed", a.seed),
        ("num_inference_steps", a.steps),
        ("scheduler", a.scheduler),
        ("guidance_scale", a.guidance),
        ("width", a.width),
        ("height", a.height),
        ("strength", a.strength),
        ("preprocess", a.preprocess),
        ("preview_every", a.preview_every),
    ):
        if value is not None:
            body[key] = value
    if a.lora:
        body["loras"] = [{"name": n, "scale": float(s or 1)} for n, _, s in (x.partition(":") for x in a.lora)]
    if a.cache:
        body["cache"] = step_cache(a.cache)
    route = "/v1/txt2img"
    if a.control_image or a.controlnet:
        if not (a.control_image and a.controlnet):
            raise ServiceError(0, "usage", "a ControlNet job needs both --controlnet NAME and --control-image FILE")
        body["controlnet"] = a.controlnet
        if a.control_scale is not None:
            body["controlnet_conditioning_scale"] = a.control_scale
        route, body["control_image"] = "/v1/controlnet", c.upload(a.control_image)
    elif a.mask:
        if not a.image:
            raise ServiceError(0, "usage", "--mask needs --image")
        route, body["image"], body["mask_image"] = "/v1/inpaint", c.upload(a.image), c.upload(a.mask)
    elif a.image:
        route, body["image"] = "/v1/img2img", c.upload(a.image)
    job = c.call("POST", route, json=body)
    print(f"job {job_id_of(job)} queued", file=sys.stderr)
    job = c.follow(job, show=not a.no_progress)
    return finish(c, job, Path(a.out))


def step_cache(given: str) -> dict:
    """``METHOD`` or ``METHOD:KNOB=VALUE`` (``deep``, ``deep:interval=2``, ``first_block:threshold=0.1``) as the
    request's ``cache``; the service checks it against the model (GET /v1/models lists each model's)."""
    method, _, setting = given.partition(":")
    if not setting:
        return {"method": method}
    knob, eq, value = setting.partition("=")
    if not eq:
        raise ServiceError(0, "usage", "--cache: METHOD or METHOD:KNOB=VALUE (e.g. deep:interval=2)")
    try:
        return {"method": method, knob: float(value) if "." in value else int(value)}
    except ValueError:
        raise ServiceError(0, "usage", f"--cache: {value!r} is not a number") from None


def finish(c: Client, job: dict, out: Path) -> int:
    if job["status"] != "succeeded":
        err = job.get("error") or {}
        what = f"{job_id_of(job)} {printable(job['status'], 20)}: {err.get('code', '')} {err.get('message', '')}"
        print(f"error: job {printable(what)}".rstrip())
        return 1
    for path in c.download(job, out):
        print(path)
    return 0


def cmd_jobs(c: Client, a) -> int:
    if a.action == "list":
        jobs = c.call("GET", "/v1/jobs", params={"limit": a.limit})["data"]
        for j in jobs:
            print(printable(f"{j['id']}  {j['type']:<14} {j['status']:<10} {j['created_at']}", 200))
        return 0
    if not a.id:
        raise ServiceError(0, "usage", f"jobs {a.action} needs a job id")
    if a.action == "get":
        print(json.dumps(c.call("GET", f"/v1/jobs/{a.id}"), indent=2))
        return 0
    if a.action == "cancel":
        job = c.call("POST", f"/v1/jobs/{a.id}/cancel")
        print(printable(f"{job['id']} {job['status']}", 200))
        return 0
    job = c.wait(a.id, a.timeout)  # wait
    print(json.dumps(job, indent=2))
    if a.out and job["status"] == "succeeded":
        c.download(job, Path(a.out))
    return 0 if job["status"] == "succeeded" else 1


def cmd_models(c: Client, a) -> int:
    models = c.call("GET", "/v1/models")
    for m in models["data"] if isinstance(models, dict) else models:
        size = f"{m.get('width')}x{m.get('height')}" if m.get("width") else ""
        print(printable(f"{m['id']:<24} {m['kind']:<10} {size:<10} {','.join(m['tasks'])}", 200))
    return 0


def cmd_upload(c: Client, a) -> int:
    print(printable(c.upload(a.file), 80))
    return 0


def cmd_train(c: Client, a) -> int:
    def dataset(value: str) -> str:
        return value if value == "digits" or value.startswith("upl_") else c.upload(value)

    if a.kind == "lora":
        body = {"base_model": a.base_model, "name": a.name, "dataset": dataset(a.dataset), "rank": a.rank}
        route = "/v1/trainings/lora"
    else:
        body = {"name": a.name, "dataset": dataset(a.dataset)}
        route = "/v1/trainings/ddpm"
        if a.resolution:
            body["resolution"] = a.resolution
    for key, value in (("max_train_steps", a.steps), ("train_batch_size", a.batch_size), ("learning_rate", a.lr)):
        if value is not None:
            body[key] = value
    job = c.call("POST", route, json=body)
    print(f"job {job_id_of(job)} queued", file=sys.stderr)
    job = c.follow(job, show=not a.no_progress)
    if job["status"] != "succeeded":
        return finish(c, job, Path("."))
    print(f"trained {a.kind} {a.name!r} (job {job_id_of(job)})")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffuserve",
        description="Generate images, follow jobs and train models on a diffuserve service.",
        epilog="URL and key default to DIFFUSERVE_URL and DIFFUSERVE_API_KEY.",
    )
    p.add_argument("--url", default=os.environ.get("DIFFUSERVE_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("DIFFUSERVE_API_KEY"))
    # the same two after the command too (`diffuserve generate ... --url URL`); given there, they win
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="the service (default: DIFFUSERVE_URL)")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="its API key (default: DIFFUSERVE_API_KEY)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser(
        "generate", parents=[common], help="txt2img; img2img with --image; inpaint with --image and --mask"
    )
    g.add_argument("--model", required=True)
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt")
    g.add_argument("--num-images", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--scheduler")
    g.add_argument("--guidance", type=float)
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--image", help="input image file (img2img, inpaint)")
    g.add_argument("--mask", help="mask image file (inpaint: white is repainted)")
    g.add_argument("--strength", type=float)
    g.add_argument("--controlnet", help="ControlNet name (see the model's controlnets in `models`)")
    g.add_argument("--control-image", help="ControlNet control image file")
    g.add_argument("--control-scale", type=float, help="ControlNet conditioning scale")
    g.add_argument("--preprocess", help="ControlNet preprocessing of the control image (canny, depth)")
    g.add_argument("--lora", action="append", help="NAME[:SCALE], repeatable")
    g.add_argument("--preview-every", type=int)
    g.add_argument(
        "--cache", help="step caching: METHOD or METHOD:KNOB=VALUE, e.g. deep, deep:interval=2 (see cache_methods)"
    )
    g.add_argument("--out", default=".", help="folder for the outputs, named JOB_SEED.png (default: here)")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(fn=cmd_generate)

    j = sub.add_parser("jobs", parents=[common], help="list, get, wait for or cancel jobs")
    j.add_argument("action", choices=["list", "get", "wait", "cancel"])
    j.add_argument("id", nargs="?")
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--timeout", type=float, help="wait: give up after this many seconds")
    j.add_argument("--out", help="wait: download the outputs here")
    j.set_defaults(fn=cmd_jobs)

    m = sub.add_parser("models", parents=[common], help="the models the service serves")
    m.set_defaults(fn=cmd_models)

    u = sub.add_parser("upload", parents=[common], help="upload an image or a dataset zip; prints its id")
    u.add_argument("file")
    u.set_defaults(fn=cmd_upload)

    t = sub.add_parser(
        "train", parents=[common], help="train a LoRA or the engine; the model is then served under --name"
    )
    t.add_argument("kind", choices=["lora", "ddpm"])
    t.add_argument("--name", required=True)
    t.add_argument("--dataset", default="digits", help="'digits' (ddpm), an upload id or a zip file")
    t.add_argument("--base-model", help="lora: the model to adapt")
    t.add_argument("--rank", type=int, default=4)
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--resolution", type=int)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if getattr(a, "kind", None) == "lora" and not a.base_model:
        parser().error("train lora needs --base-model")
    c = Client(a.url, a.api_key)
    try:
        return a.fn(c, a)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if e.code == "usage" else 1
    except (KeyError, TypeError, AttributeError) as e:  # an answer without the fields every answer has
        print(f"error: bad_answer: the service answered in an unexpected shape ({type(e).__name__})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
