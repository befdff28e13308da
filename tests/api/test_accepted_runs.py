"""Accepted ⇒ runs, in embedded mode. For every served model (both bundled engine models and a tiny model of every
diffusers family) and every task GET /v1/models lists for it:

- the smallest request a user writes succeeds at the model's native size, and so do the smallest and the largest
  sizes its size rule advertises;
- any request drawn inside the ranges GET /v1/models and the OpenAPI spec advertise is either refused at submit
  with a 4xx naming a field of the request, or accepted and then ``succeeded`` with exactly the images asked for,
  at the size asked for (each PNG decoded, each MP4 read frame by frame); and one that keeps every rule
  /v1/models states is accepted.

Example counts: ``ACCEPTED_RUNS_EXAMPLES`` requests (default 120, spread over the 18 served (model, task) pairs,
derandomized: CI draws the same ones every run); ``ACCEPTED_RUNS_EXAMPLES=500`` is the long profile. The
distributed counterpart, ``tests/integration/test_accepted_runs_distributed.py``, reuses the helpers here.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from api.config import Settings
from core.schemas import JobType
from core.tasks import TASKS
from serve import create_app
from tests.api.helpers import data_uri, wait_job

EXAMPLES = int(os.environ.get("ACCEPTED_RUNS_EXAMPLES", "120"))
GENERATION = ("txt2img", "img2img", "inpaint", "controlnet", "video")
PATHS = {t: f"/v1{TASKS[JobType(t)].path}" for t in GENERATION}  # routes and bodies: the tasks'
BODIES = {t: TASKS[JobType(t)].request.__name__ for t in GENERATION}
IMAGE_TASKS = ("img2img", "inpaint", "controlnet")
# what one draw may cost, inside the advertised ranges: sizes up to 4x a model's native size, a few steps, images
# and frames
MAX_SCALE = 4
MAX_STEPS = 4
MAX_IMAGES = 3
MAX_FRAMES = 17
WORDS = ["a", "photo", "of", "cat", "dog", "red", "house", "tree", "sky", "monkey", "dance", "seven", "dark"]


# -- what the service advertises ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One (model, task) pair GET /v1/models lists, with what it says of the model."""

    model: dict[str, Any]
    task: str
    controlnet: str | None = None

    @property
    def id(self) -> str:
        return f"{self.model['id']}:{self.task}"

    @property
    def native(self) -> tuple[int, int]:
        return self.model["width"], self.model["height"]

    @property
    def schedulers(self) -> list[str]:
        return self.model["schedulers_by_task"].get(self.task, [])


def served_cases(client) -> list[Case]:
    """Every (model, task) pair GET /v1/models lists; a controlnet task names a ControlNet listed for the model."""
    models = client.get("/v1/models").json()
    controlnets = [m for m in models if m["kind"] == "controlnet"]
    cases = []
    for m in models:
        if m["kind"] == "controlnet":
            continue
        for task in m["tasks"]:
            if task == "controlnet":
                fits = [c["id"] for c in controlnets if m["id"] in c["base_models"]]
                assert fits, f"{m['id']} lists controlnet but no ControlNet lists it as a base model"
                cases.append(Case(m, task, fits[0]))
            else:
                cases.append(Case(m, task))
    return cases


def spec_fields(client) -> dict[str, dict[str, dict]]:
    """Each task's request body as the OpenAPI spec states it: field name -> JSON schema."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    return {task: schemas[name]["properties"] for task, name in BODIES.items()}


def spec_range(prop: dict) -> tuple[Any, Any]:
    """The (minimum, maximum) a field's schema states (through ``anyOf`` for a nullable field)."""
    for alt in [prop, *prop.get("anyOf", [])]:
        if "maximum" in alt:
            lo, hi = alt.get("minimum", alt.get("exclusiveMinimum")), alt["maximum"]
            kind = int if alt.get("type") == "integer" else float
            return kind(lo), kind(hi)
    raise AssertionError(f"no range in {prop}")


# -- images a request sends -----------------------------------------------------------------------------------------
def rgb_png(w: int, h: int, seed: int = 0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(w: int, h: int) -> bytes:
    a = np.zeros((h, w), dtype=np.uint8)
    a[h // 4 : 3 * h // 4 + 1, w // 4 : 3 * w // 4 + 1] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def with_images(case: Case, body: dict, size: tuple[int, int], seed: int = 0) -> dict:
    """The images the case's task needs, as data: URIs of ``size``."""
    w, h = size
    if case.task in ("img2img", "inpaint"):
        body["image"] = data_uri(rgb_png(w, h, seed))
    if case.task == "inpaint":
        body["mask_image"] = data_uri(mask_png(w, h))
    if case.task == "controlnet":
        body["controlnet"] = case.controlnet
        body["control_image"] = data_uri(rgb_png(w, h, seed))
    return body


def smallest_request(case: Case, size: tuple[int, int] | None = None) -> dict:
    """What a user writes first: the model and a prompt (a label for a class-conditional model), plus the task's
    images (at the model's native size, or ``size``)."""
    prompt = case.model["labels"][-1] if case.model.get("labels") else "a photo of a cat"
    return with_images(case, {"model": case.model["id"], "prompt": prompt}, size or case.native)


# -- what a request asks for, by the rules /v1/models states ---------------------------------------------------------
def expected_size(case: Case, body: dict, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """A size given is the size drawn; an image task given neither dimension answers at its input image's size,
    rounded down to the size step (at most the largest size); otherwise a missing dimension is the model's native
    one (for a square-only model: the other one given)."""
    m = case.model
    w, h = body.get("width"), body.get("height")
    if w is None and h is None and image_size is not None:
        step = m["size_multiple"]
        return (
            min(m["max_width"], max(step, image_size[0] - image_size[0] % step)),
            min(m["max_height"], max(step, image_size[1] - image_size[1] % step)),
        )
    if m["square_only"]:
        w, h = (w if w is not None else h), (h if h is not None else w)
    return (w if w is not None else case.native[0], h if h is not None else case.native[1])


def keeps_the_stated_rules(case: Case, body: dict, image_size: tuple[int, int] | None, fields: dict) -> bool:
    """The request keeps every rule GET /v1/models states for its model (sizes, schedulers, steps, counts, frames,
    labels), and the ones the spec states (a seed's last image is a seed too; strength leaves a step to run)."""
    m = case.model
    w, h = expected_size(case, body, image_size)
    steps = body.get("num_inference_steps", m["default_num_inference_steps"])
    n = body.get("num_images", 1)
    frames = body.get("num_frames", m["default_num_frames"])
    strength = body.get("strength", fields[case.task].get("strength", {}).get("default"))
    ok = [
        case.task in m["tasks"],
        w % m["size_multiple"] == 0 and h % m["size_multiple"] == 0,
        w <= m["max_width"] and h <= m["max_height"] and w * h <= m["max_pixels"],
        w == h or not m["square_only"],
        body.get("scheduler", m["default_scheduler"]) in case.schedulers,
        steps <= m["max_inference_steps"] and n <= m["max_num_images_by_task"].get(case.task, 0),
        body.get("seed", 0) + n - 1 <= 2**32 - 1,
        strength is None or int(steps * strength) >= 1,  # at least one denoising step, whatever the pipeline
        not m["labels"] or body["prompt"] in m["labels"],
        not m["kind"].startswith("engine") or not body.get("negative_prompt"),  # engine models take none
    ]
    if case.task == "video":
        ok += [(frames - 1) % m["num_frames_step"] == 0, frames <= (m["max_num_frames"] or frames)]
    return all(ok)


# -- what a finished job must hold ----------------------------------------------------------------------------------
def mp4_frames(data: bytes) -> tuple[int, tuple[int, int]]:
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.mp4"
        path.write_bytes(data)
        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        n = sum(1 for _ in gen)
    return n, tuple(meta["size"])


def check_outputs(
    job: dict, case: Case, body: dict, image_size: tuple[int, int] | None, fetch: Callable[[str], bytes]
) -> None:
    """Exactly the images asked for, each decoded at the size asked for (a video: its frames and its poster)."""
    size = expected_size(case, body, image_size)
    out = job["output"]
    if case.task == "video":
        mp4, poster = out
        assert mp4["content_type"] == "video/mp4" and poster.get("role") == "poster", out
        frames = body.get("num_frames", case.model["default_num_frames"])
        assert mp4_frames(fetch(mp4["url"])) == (frames, size), (body, out)
        assert Image.open(io.BytesIO(fetch(poster["url"]))).size == size
        assert (mp4["width"], mp4["height"], mp4["num_frames"]) == (*size, frames)
        return
    images = [o for o in out if o.get("role") is None]
    assert len(images) == body.get("num_images", 1), (body, out)
    assert [o.get("role") for o in out[len(images) :]] == (["control_image"] if case.task == "controlnet" else [])
    for o in images:
        im = Image.open(io.BytesIO(fetch(o["url"])))
        assert im.format == "PNG" and im.size == size and (o["width"], o["height"]) == size, (body, o, im.size)


def check_refusal(r, case: Case, fields: dict[str, dict[str, dict]]) -> None:
    """A refusal at submit: a 4xx naming a field of the task's request as the spec states it, in the request's
    words (never a class name of ours)."""
    assert r.status_code in (400, 413, 422), r.text
    err = r.json()["error"]
    assert err["field"] and err["field"].split(".")[0] in fields[case.task], (case.id, err)
    assert "Request" not in err["message"] and "pydantic" not in err["message"], err


def holds(client, fetch, case: Case, body: dict, image_size, fields, timeout: float = 300) -> str:
    """The property for one request: refused at submit naming a field (never when it keeps every stated rule), or
    accepted and then run as asked. Returns "refused <field>" or "ran"."""
    r = client.post(PATHS[case.task], json=body)
    if r.status_code != 202:
        check_refusal(r, case, fields)
        assert not keeps_the_stated_rules(case, body, image_size, fields), (case.id, body, r.json())
        return f"refused {r.json()['error']['field']}"
    job = wait_job(client, r.json()["id"], timeout=timeout)
    assert job["status"] == "succeeded", (case.id, body, job["error"])
    check_outputs(job, case, body, image_size, fetch)
    return "ran"


# -- drawing requests inside the advertised ranges ------------------------------------------------------------------
def optional_fields(case: Case, spec: dict[str, dict]) -> dict[str, st.SearchStrategy]:
    """What a request may add, each over its advertised range (capped for cost): steps, guidance, a scheduler (of
    the task's or any the model lists), seed, and the task's own fields."""
    optional: dict[str, st.SearchStrategy] = {
        "num_inference_steps": st.integers(spec_range(spec["num_inference_steps"])[0], MAX_STEPS),
        "guidance_scale": st.one_of(st.sampled_from([0.0, 1.0]), st.floats(*spec_range(spec["guidance_scale"]))),
        "scheduler": st.one_of(st.sampled_from(case.schedulers), st.sampled_from(case.model["schedulers"])),
        "seed": st.one_of(st.integers(*spec_range(spec["seed"])), st.just(spec_range(spec["seed"])[1])),
    }
    if "num_images" in spec:
        optional["num_images"] = st.integers(spec_range(spec["num_images"])[0], MAX_IMAGES)
    if "strength" in spec:
        lo, hi = spec_range(spec["strength"])
        optional["strength"] = st.one_of(st.sampled_from([lo, hi]), st.floats(lo, hi))
    if "num_frames" in spec:
        optional["num_frames"] = st.integers(spec_range(spec["num_frames"])[0], MAX_FRAMES)
    if "preprocess" in spec:
        optional["preprocess"] = st.sampled_from(spec["preprocess"]["enum"])
    for name in ("controlnet_conditioning_scale", "canny_low_threshold", "canny_high_threshold", "fps"):
        if name in spec:
            lo, hi = spec_range(spec[name])
            optional[name] = st.integers(lo, hi) if isinstance(lo, int) else st.floats(lo, hi)
    optional["preview_every"] = st.integers(spec_range(spec["preview_every"])[0], MAX_STEPS)
    if case.model.get("cache_methods"):
        optional["cache"] = st.sampled_from(case.model["cache_methods"]).flatmap(cache_setting)
    return optional


def cache_setting(offered: dict) -> st.SearchStrategy:
    """A step cache the model lists: its default knob, or any in the method's range."""
    from core.catalog import CACHE_METHODS

    name, method = offered["method"], CACHE_METHODS[offered["method"]]
    if method.knob == "interval":
        knob = st.integers(int(method.low), int(method.high))
    else:
        knob = st.floats(method.low, method.high)
    return st.one_of(st.just({"method": name}), knob.map(lambda v: {"method": name, method.knob: v}))


@st.composite
def drawn_requests(draw, case: Case, fields: dict[str, dict[str, dict]]):
    """A request for ``case`` inside the ranges the spec and GET /v1/models advertise (capped for cost). Returns
    the body and the size of the images it sends (None: none)."""
    spec, m = fields[case.task], case.model
    step = m["size_multiple"]
    lo_side, hi_side = spec_range(spec["width"])
    hi_side = min(hi_side, MAX_SCALE * max(case.native))
    on_step = st.integers(-(-lo_side // step), hi_side // step).map(lambda k: k * step)
    sizes = st.one_of(st.none(), on_step, on_step, on_step, st.integers(lo_side, hi_side))  # off the step too
    body: dict[str, Any] = {"model": m["id"]}
    words = st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join)
    body["prompt"] = draw(st.sampled_from(m["labels"]) if m["labels"] else st.one_of(words, st.text(max_size=30)))
    if draw(st.booleans()):
        body["negative_prompt"] = draw(st.one_of(st.just(""), words))
    for dim in ("width", "height"):
        if (v := draw(sizes)) is not None:
            body[dim] = v
    for name, values in optional_fields(case, spec).items():
        if draw(st.booleans()):
            body[name] = draw(values)
    image_size = None
    if case.task in IMAGE_TASKS:
        image_size = (draw(st.integers(8, 2 * case.native[0])), draw(st.integers(8, 2 * case.native[1])))
        with_images(case, body, image_size, seed=draw(st.integers(0, 3)))
    return body, image_size


def run_property(client, fetch, cases: list[Case], fields, total: int, timeout: float = 300) -> list[str]:
    """The property over about ``total`` drawn requests, spread evenly over the cases (each case its own
    derandomized run, so CI draws the same requests every time and every model and task is drawn)."""
    outcomes: list[str] = []

    def property_of(case: Case):
        @settings(
            max_examples=-(-total // len(cases)),
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        )
        @given(drawn_requests(case, fields))
        def prop(drawn):
            outcomes.append(holds(client, fetch, case, *drawn, fields, timeout=timeout))

        return prop

    for case in cases:
        property_of(case)()
    ran = outcomes.count("ran")
    refused = Counter(o.split()[-1] for o in outcomes if o != "ran")
    print(f"\n{len(outcomes)} requests over {len(cases)} models and tasks: {ran} ran, refused naming {dict(refused)}")
    assert ran >= len(outcomes) // 4  # the draws reach the worker, not only the refusals
    return outcomes


def edge_sizes(case: Case, lo_side: int) -> list[tuple[int, int]]:
    """The smallest and the largest sizes a model's rule advertises (the largest side by the smallest other)."""
    m = case.model
    step = m["size_multiple"]
    least = -(-lo_side // step) * step
    if m["square_only"]:
        return [(least, least), (m["max_width"], m["max_height"])]
    return [(least, least), (m["max_width"], least), (least, m["max_height"])]


def run_edges(client, fetch, case: Case, fields) -> list[tuple]:
    """The smallest request at each edge size: it runs (a failure is returned, not raised, to list them all)."""
    failures = []
    for size in edge_sizes(case, spec_range(fields[case.task]["width"])[0]):
        body = {**smallest_request(case, size), "width": size[0], "height": size[1]}
        try:
            assert keeps_the_stated_rules(case, body, size, fields), (case.id, size)
            holds(client, fetch, case, body, size, fields)
        except AssertionError as e:
            failures.append((case.id, size, str(e)[:300]))
    return failures


# -- embedded mode --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tiny_models_dir, tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("accepted"),
        models_dir=tiny_models_dir,
        warm_models="",
        torch_threads=1,
        rate_limit_per_minute=1_000_000,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def cases(client) -> list[Case]:
    return served_cases(client)


@pytest.fixture(scope="module")
def fields(client) -> dict[str, dict[str, dict]]:
    return spec_fields(client)


def fetcher(client) -> Callable[[str], bytes]:
    def fetch(url: str) -> bytes:
        r = client.get(url)
        assert r.status_code == 200, url
        return r.content

    return fetch


def test_every_bundled_model_and_every_family_is_served_with_its_tasks(cases):
    got = {(c.model["id"], c.task) for c in cases}
    families = {c.model["pipeline_class"] for c in cases}
    assert {("digits", "txt2img"), ("mnist", "txt2img")} <= got
    assert {"StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline",
            "WanPipeline", "CogVideoXPipeline", "StableDiffusionInpaintPipeline"} <= families  # fmt: skip
    assert {c.task for c in cases} == set(PATHS)


def test_the_smallest_request_runs_for_every_model_and_task(client, cases, fields):
    """``{"model", "prompt"}`` plus the task's images at the native size: it succeeds at the native size."""
    fetch, failures = fetcher(client), []
    for case in cases:
        try:
            assert holds(client, fetch, case, smallest_request(case), case.native, fields) == "ran"
        except AssertionError as e:
            failures.append((case.id, str(e)[:300]))
    assert not failures, failures


def test_the_smallest_and_largest_advertised_sizes_run(client, cases, fields):
    """At the edges of each model's size rule (the least side on its step, the largest side it states)."""
    fetch = fetcher(client)
    failures = [f for case in cases for f in run_edges(client, fetch, case, fields)]
    assert not failures, failures


# what the property found, pinned: (task, request, images' size, the field a refusal names or None: it runs)
FOUND = [
    # an SD ControlNet does not condition SDXL's U-Net (mat1 and mat2 shapes cannot be multiplied)
    ("controlnet", {"model": "tiny-sdxl", "controlnet": "tiny-controlnet"}, (64, 64), "controlnet"),
    # flow img2img and inpainting noise the input with scale_noise, which UniPC has not
    ("img2img", {"model": "tiny-flux", "scheduler": "unipc"}, (32, 32), "scheduler"),
    ("inpaint", {"model": "tiny-sd3", "scheduler": "unipc"}, (32, 32), "scheduler"),
    ("txt2img", {"model": "tiny-sd3", "scheduler": "unipc"}, None, None),
    # strength that leaves no denoising step (diffusers: "the number of pipelinesteps is 0", or empty latents)
    (
        "img2img",
        {"model": "tiny-sd", "strength": 0.3, "num_inference_steps": 2, "scheduler": "ddim"},
        (64, 64),
        "strength",
    ),
    ("img2img", {"model": "tiny-sd", "num_inference_steps": 1}, (64, 64), "strength"),
    ("img2img", {"model": "tiny-sd", "strength": 0.3, "num_inference_steps": 2}, (64, 64), None),  # PNDM: one step
    ("inpaint", {"model": "tiny-sdxl", "strength": 0.45, "num_inference_steps": 1}, (64, 64), "strength"),
    ("inpaint", {"model": "tiny-sd-inpaint", "strength": 0.0}, (64, 64), "strength"),
    ("img2img", {"model": "tiny-flux", "strength": 0.0}, (32, 32), "strength"),
    ("img2img", {"model": "tiny-flux", "strength": 0.01, "num_inference_steps": 2}, (32, 32), None),
    # SD3 image-to-image encodes image[i] per generator before repeating the input: the executor gives it per image
    ("img2img", {"model": "tiny-sd3", "num_images": 2}, (32, 32), None),
    ("inpaint", {"model": "tiny-sd3", "num_images": 2}, (32, 32), None),
    # a square-only model given one side draws that side square (was: the other side native, refused)
    ("txt2img", {"model": "mnist", "prompt": "7", "width": 56}, None, None),
    ("txt2img", {"model": "tiny-flux", "width": 30}, None, "width"),
]


@pytest.mark.parametrize("task,extra,image_size,field", FOUND)
def test_what_the_property_found(client, cases, fields, task, extra, image_size, field):
    case = Case(next(c.model for c in cases if c.model["id"] == extra["model"]), task, extra.get("controlnet"))
    body = {**smallest_request(case, image_size), **extra}
    outcome = holds(client, fetcher(client), case, body, image_size, fields)
    assert outcome == ("ran" if field is None else f"refused {field}"), outcome


def test_drawn_requests_are_refused_naming_a_field_or_run_as_asked(client, cases, fields):
    """The property over ``ACCEPTED_RUNS_EXAMPLES`` drawn requests (derandomized: the same draws every run)."""
    run_property(client, fetcher(client), cases, fields, EXAMPLES)
