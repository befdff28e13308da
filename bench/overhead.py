"""Service overhead: end-to-end time of a 1-step digits job minus its inference_ms, embedded and distributed.

    python bench/overhead.py [--jobs 40] [--mode both|embedded|distributed]
    python bench/overhead.py --adapters [--jobs 100]   # what the A1111 and Replicate adapters add (embedded)

Each mode runs as real processes on this machine (embedded: uvicorn with the in-process queue and local
disk; distributed: uvicorn + one Celery worker + redis-server + moto_server as S3). A job is timed from
just before its POST to the answer of GET /v1/jobs/{id}?wait=30 that shows it succeeded; the table gives
the median and p90 over --jobs jobs after 3 warm-up jobs, and how much of it the write of the output took (the job's
``upload_ms``): moto_server, a Python server, takes 4-9 ms per PUT on this machine where S3 or MinIO take 1-2 ms.

Distributed mode also measures, in the same run and on the same stack (one of each per round, so drift hits all
alike), the floor its parts set: a bare Celery round trip (a no-op task sent to a second solo worker on the same
Redis, its result awaited through the Redis result backend) and a bare boto3 PUT of the job's own PNG to the same
moto_server. Where moto_server's PUT alone makes the 15 ms goal out of reach, the bound that applies is
3 x the bare Celery round trip + one bare PUT.

``--adapters``: the same 1-step job through each route in turn (round-robin, so drift hits all alike), timed from
before the request to the client holding the result: the native route and Replicate's with ``Prefer: wait`` (a job or
prediction with the image URL), AUTOMATIC1111's synchronous txt2img (the PNG itself, base64) against the native
route followed by a GET of the PNG. The difference of medians is what the adapter adds.
"""

from __future__ import annotations

import argparse
import os
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
ECHO_QUEUE = "bench-echo"


def _echo_app(broker: str):
    """A Celery app with one no-op task, served by ``celery -A bench.overhead:echo worker`` (BENCH_ECHO_BROKER set)."""
    from celery import Celery

    app = Celery("bench-echo", broker=broker, backend=broker)
    app.conf.update(
        task_default_queue=ECHO_QUEUE,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_connection_retry_on_startup=True,
    )
    app.task(name="bench.echo")(_echo)
    return app


def _echo(x: int) -> int:
    return x


echo = _echo_app(os.environ["BENCH_ECHO_BROKER"]) if os.environ.get("BENCH_ECHO_BROKER") else None


def measure(http: httpx.Client, n: int, headers: dict, extra: dict | None = None) -> dict:
    """``n`` jobs after 3 warm-up; ``extra``: name -> a call timed once per round beside each job."""
    overhead, inference, total, upload = [], [], [], []
    extra_ms: dict[str, list[float]] = {name: [] for name in extra or {}}
    for i in range(n + 3):
        for name, call in (extra or {}).items():
            t = time.perf_counter()
            call()
            if i >= 3:
                extra_ms[name].append((time.perf_counter() - t) * 1000)
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
        **{name: statistics.median(ms) for name, ms in extra_ms.items()},
    }


def embedded(n: int, tmp: Path) -> dict:
    p, url = embedded_server(tmp / "embedded", tmp / "embedded.log")
    try:
        return measure(httpx.Client(base_url=url, timeout=60), n, {})
    finally:
        p.stop()


def distributed(n: int, tmp: Path) -> dict:
    import boto3
    from botocore.config import Config

    from tests.conftest import REPO as ROOT
    from tests.conftest import Proc, bin_path, wait_for

    with distributed_stack(tmp) as stack:
        broker, endpoint = stack.env["BROKER_URL"], stack.env["S3_ENDPOINT_URL"]
        # the floor: a second solo worker with a no-op task on the same Redis, and a plain client on the same S3
        proc = Proc([bin_path("celery"), "-A", "bench.overhead:echo", "worker", "--pool", "solo", "-Q", ECHO_QUEUE,
                     "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
                    tmp / "echo-worker.log", env={**stack.env, "BENCH_ECHO_BROKER": broker}, cwd=ROOT)  # fmt: skip
        try:
            app = _echo_app(broker)
            wait_for(lambda: app.send_task("bench.echo", args=[1], queue=ECHO_QUEUE).get(timeout=5) == 1, 60,
                     what=f"the echo worker: {proc.tail()}")  # fmt: skip
            job = stack.http.post("/v1/txt2img", json=BODY).json()
            done = stack.http.get(f"/v1/jobs/{job['id']}?wait=30").json()
            png = httpx.get(done["output"][0]["url"]).content  # the job's own output, as the bare PUT's body
            cfg = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                         s3={"addressing_style": "path"})  # fmt: skip
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=cfg)
            extra = {
                "celery": lambda: app.send_task("bench.echo", args=[1], queue=ECHO_QUEUE).get(timeout=10),
                "put": lambda: s3.put_object(Bucket="bench", Key="floor/0.png", Body=png, ContentType="image/png"),
            }
            return measure(stack.http, n, {}, extra)
        finally:
            proc.stop()


MODES = [("embedded", embedded, 5.0), ("distributed", distributed, 15.0)]

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
    p.add_argument("--mode", choices=("both", "embedded", "distributed"), default="both")
    p.add_argument("--adapters", action="store_true", help="the A1111 and Replicate adapters against the native route")
    a = p.parse_args()
    if a.adapters:
        with tempfile.TemporaryDirectory() as d:
            adapters(a.jobs, Path(d))
        return 0
    with tempfile.TemporaryDirectory() as d:
        rows = [(name, run(a.jobs, Path(d)), bar) for name, run, bar in MODES if a.mode in ("both", name)]
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
    if rows[-1][0] != "distributed":
        return 0
    d = rows[-1][1]
    bound = 3 * d["celery"] + d["put"]
    print(
        "\nThe floor, measured in the same run on the same stack (p50 ms): a bare Celery round trip (no-op task, result"
    )
    print("through the Redis backend), a bare boto3 PUT of the job's PNG to the same moto_server, and the bound")
    print("| bare Celery round trip | bare S3 PUT | bound: 3 x round trip + PUT | distributed overhead p50 | bound |")
    print("|---|---|---|---|---|")
    ok = "met" if d["p50"] <= bound else "missed"
    print(f"| {d['celery']:.1f} | {d['put']:.1f} | {bound:.1f} | {d['p50']:.1f} | {ok} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
