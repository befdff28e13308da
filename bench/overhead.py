"""Service overhead: end-to-end time of a 1-step digits job minus its inference_ms, embedded and distributed.

    python bench/overhead.py [--jobs 40]
    python bench/overhead.py --adapters [--jobs 100]   # what the A1111 and Replicate adapters add (embedded)

Each mode runs as real processes on this machine (embedded: uvicorn with the in-process queue and local
disk; distributed: uvicorn + one Celery worker + redis-server + moto_server as S3). A job is timed from
just before its POST to the answer of GET /v1/jobs/{id}?wait=30 that shows it succeeded; the table gives
the median and p90 over --jobs jobs after 3 warm-up jobs, and how much of it the write of the output took (the job's
``upload_ms``): moto_server, a Python server, takes 4-9 ms per PUT on this machine where S3 or MinIO take 1-2 ms.

``--adapters``: the same 1-step job through each route in turn (round-robin, so drift hits all alike), timed from
before the request to the client holding the result: the native route and Replicate's with ``Prefer: wait`` (a job or
prediction with the image URL), AUTOMATIC1111's synchronous txt2img (the PNG itself, base64) against the native
route followed by a GET of the PNG. The difference of medians is what the adapter adds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.load import distributed_stack, embedded_server  # noqa: E402

BODY = {"prompt": "7", "num_inference_steps": 1, "seed": 1}


def measure(http: httpx.Client, n: int, headers: dict) -> dict:
    overhead, inference, total, upload = [], [], [], []
    for i in range(n + 3):
        t0 = time.perf_counter()
        job = http.post("/v1/txt2img", json=BODY, headers=headers).json()
        done = http.get(f"/v1/jobs/{job['id']}?wait=30", headers=headers).json()
        t1 = time.perf_counter()
        assert done["status"] == "succeeded", done
        if i < 3:
            continue
        e2e = (t1 - t0) * 1000
        total.append(e2e)
        inference.append(done["metrics"]["inference_ms"])
        overhead.append(e2e - done["metrics"]["inference_ms"])
        upload.append(done["metrics"]["upload_ms"])
    q = statistics.quantiles(overhead, n=10)
    return {
        "p50": statistics.median(overhead),
        "p90": q[8],
        "e2e": statistics.median(total),
        "inf": statistics.median(inference),
        "upload": statistics.median(upload),
    }


def embedded(n: int, tmp: Path) -> dict:
    p, url = embedded_server(tmp / "embedded", tmp / "embedded.log")
    try:
        return measure(httpx.Client(base_url=url, timeout=60), n, {})
    finally:
        p.stop()


def distributed(n: int, tmp: Path) -> dict:
    with distributed_stack(tmp) as stack:
        return measure(stack.http, n, {})


ROUTES = {
    "native /v1/txt2img, Prefer: wait": lambda h: h.post("/v1/txt2img", json=BODY, headers={"Prefer": "wait"}),
    "native + GET of the PNG": lambda h: h.get(
        h.post("/v1/txt2img", json=BODY, headers={"Prefer": "wait"}).json()["output"][0]["url"]
    ),
    "Replicate POST /v1/models/acme/digits/predictions, Prefer: wait": lambda h: h.post(
        "/v1/models/acme/digits/predictions",
        json={"input": {"prompt": "7", "num_inference_steps": 1, "seed": 1}},
        headers={"Prefer": "wait"},
    ),
    "A1111 POST /sdapi/v1/txt2img": lambda h: h.post(
        "/sdapi/v1/txt2img", json={"prompt": "7", "steps": 1, "seed": 1, "width": 16, "height": 16, "cfg_scale": 2}
    ),
}
BASELINE = {
    "Replicate POST /v1/models/acme/digits/predictions, Prefer: wait": "native /v1/txt2img, Prefer: wait",
    "A1111 POST /sdapi/v1/txt2img": "native + GET of the PNG",
}


def adapters(n: int, tmp: Path) -> None:
    p, url = embedded_server(tmp / "embedded", tmp / "embedded.log")
    times: dict[str, list[float]] = {name: [] for name in ROUTES}
    try:
        with httpx.Client(base_url=url, timeout=60) as h:
            for i in range(n + 3):
                for name, call in ROUTES.items():
                    t0 = time.perf_counter()
                    r = call(h)
                    dt = (time.perf_counter() - t0) * 1000
                    assert r.status_code in (200, 201), r.text
                    if i >= 3:
                        times[name].append(dt)
    finally:
        p.stop()
    print(f"\nAdded latency of the compatibility adapters, embedded, a 1-step digits job, {n} rounds after 3 warm-up")
    print("| route | end-to-end p50 ms | p90 ms | added over | added p50 ms |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        p50, p90 = statistics.median(ts), statistics.quantiles(ts, n=10)[8]
        base = BASELINE.get(name)
        added = f"{base} | {p50 - statistics.median(times[base]):+.1f}" if base else "— | —"
        print(f"| {name} | {p50:.1f} | {p90:.1f} | {added} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=40)
    p.add_argument("--adapters", action="store_true", help="the A1111 and Replicate adapters against the native route")
    a = p.parse_args()
    if a.adapters:
        with tempfile.TemporaryDirectory() as d:
            adapters(a.jobs, Path(d))
        return 0
    with tempfile.TemporaryDirectory() as d:
        rows = [("embedded", embedded(a.jobs, Path(d)), 5.0), ("distributed", distributed(a.jobs, Path(d)), 15.0)]
    print(f"\nService overhead of a 1-step digits job (end-to-end minus inference_ms), {a.jobs} jobs after 3 warm-up")
    print("| mode | overhead p50 ms | overhead p90 ms | of which the output write p50 ms | end-to-end p50 ms |", end="")
    print(" inference p50 ms | goal p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r, bar in rows:
        ok = "met" if r["p50"] <= bar else "missed"
        print(
            f"| {name} | {r['p50']:.1f} | {r['p90']:.1f} | {r['upload']:.1f} | {r['e2e']:.1f} | {r['inf']:.1f} "
            f"| {bar:.0f} ({ok}) |"
        )
    print("the output write: the PNG to local disk (embedded) or one S3 PUT to moto_server (distributed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
