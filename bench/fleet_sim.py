"""The fleet at scale, by simulation: the workers' own scheduling code (``core.jobs.schedule.pick`` over
``core.jobs.backlog.MemoryBacklog``, as ``lifecycle.next_job`` calls it) driven on a simulated clock.

    .venv/bin/python bench/fleet_sim.py                   # 8, 64 and 512 workers, three policies each
    .venv/bin/python bench/fleet_sim.py --workers 8 --minutes 20

The world: ``--models`` models with load times from 2 s to 60 s and 2-8 s of inference per job; 20 steady tenants
arriving as Poisson processes at ``--load`` of the fleet's capacity in all, and one tenant that floods (``--flood``
jobs per worker at once, a fifth of the way in). Each worker holds ``--warm`` models (least recently used out).
Policies: ``fifo`` (oldest first, any worker takes any job: the service before fair share), ``fair`` (priorities and
fair share, no warm routing), ``fair+warm`` (with warm routing, ``AFFINITY_WAIT_S`` = 60 s).

Tables: queue wait p50/p99 per tenant class (steady, flood), model loads per hour per worker, device utilisation
(busy: loading or running; useful: running).
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.jobs.backlog import MemoryBacklog  # noqa: E402
from core.jobs.schedule import Waiting, pick  # noqa: E402

Q = "inference"
HEADER = "\n".join(
    [
        "| workers | policy    | jobs   | steady wait p50 / p99 s | flood wait p50 / p99 s | loads/h/worker | busy |"
        " useful |",
        "|--------:|-----------|-------:|-------------------------|------------------------|---------------:|-----:|"
        "-------:|",
    ]
)


@dataclass
class Worker:
    warm: OrderedDict = field(default_factory=OrderedDict)
    busy_s: float = 0.0
    useful_s: float = 0.0
    loads: int = 0


@dataclass
class World:
    models: dict[str, tuple[float, float]]  # model -> (load s, inference s)
    arrivals: list[tuple[float, str, str]]  # (time, tenant, model), in order


def make_world(workers: int, minutes: float, n_models: int, load: float, flood: int, seed: int) -> World:
    rng = random.Random(seed)
    models = {f"m{i}": (rng.uniform(2, 60), rng.uniform(2, 8)) for i in range(n_models)}
    popularity = [1 / (i + 1) for i in range(n_models)]  # a few popular models, a long tail
    mean_s = sum(p * models[f"m{i}"][1] for i, p in enumerate(popularity)) / sum(popularity)
    horizon = minutes * 60
    rate = load * workers / mean_s  # jobs per second over all steady tenants
    arrivals = []
    for k in range(20):
        t = 0.0
        while True:
            t += rng.expovariate(rate / 20)
            if t > horizon:
                break
            arrivals.append((t, f"steady{k}", rng.choices(list(models), popularity)[0]))
    burst = horizon / 5
    arrivals += [(burst + i * 1e-6, "flood", rng.choices(list(models), popularity)[0]) for i in range(flood * workers)]
    arrivals.sort()
    return World(models, arrivals)


def simulate(world: World, n_workers: int, policy: str, warm_cap: int, affinity_s: float = 60.0) -> dict:
    backlog, waits = MemoryBacklog(), {"steady": [], "flood": []}
    workers = [Worker() for _ in range(n_workers)]
    free = list(range(n_workers))  # idle workers
    events: list[tuple[float, int, int]] = []  # (time, kind 0=free, worker)
    queued: dict[str, Waiting] = {}
    i, now, seq = 0, 0.0, 0
    horizon = world.arrivals[-1][0] if world.arrivals else 0.0

    def start(w: int, now: float) -> bool:
        heads = backlog.heads(Q)
        if not heads:
            return False
        if policy == "fifo":
            chosen = min(heads, key=lambda h: (h.since, h.job_id))
        else:
            warm = set(workers[w].warm) if policy == "fair+warm" else set()
            chosen = pick(heads, backlog.passes(Q), now, 300.0, warm=warm, affinity_s=affinity_s)
        backlog.take(Q, chosen.job_id)
        del queued[chosen.job_id]
        waits["flood" if chosen.tenant == "flood" else "steady"].append(now - chosen.since)
        worker = workers[w]
        load_s, run_s = world.models[chosen.model]
        if chosen.model in worker.warm:
            worker.warm.move_to_end(chosen.model)
            load_s = 0.0
        else:
            worker.loads += 1
            worker.warm[chosen.model] = True
            while len(worker.warm) > warm_cap:
                worker.warm.popitem(last=False)
        worker.busy_s += load_s + run_s
        worker.useful_s += run_s
        heapq.heappush(events, (now + load_s + run_s, 0, w))
        return True

    while i < len(world.arrivals) or events:
        next_arrival = world.arrivals[i][0] if i < len(world.arrivals) else float("inf")
        if events and events[0][0] <= next_arrival:
            now, _, w = heapq.heappop(events)
            if not start(w, now):
                free.append(w)
            continue
        now, tenant, model = world.arrivals[i]
        i += 1
        seq += 1
        job = Waiting(f"j{seq}", tenant, 1, model, now)
        queued[job.job_id] = job
        backlog.add(Q, job)
        while free and backlog.heads(Q):
            start(free.pop(), now)
    span = max(now, horizon) or 1.0
    return {
        "steady_p50": statistics.median(waits["steady"]) if waits["steady"] else 0.0,
        "steady_p99": _p99(waits["steady"]),
        "flood_p50": statistics.median(waits["flood"]) if waits["flood"] else 0.0,
        "flood_p99": _p99(waits["flood"]),
        "loads_per_hour": sum(w.loads for w in workers) / n_workers / (span / 3600),
        "busy": sum(w.busy_s for w in workers) / (n_workers * span),
        "useful": sum(w.useful_s for w in workers) / (n_workers * span),
        "jobs": len(waits["steady"]) + len(waits["flood"]),
        "span_min": span / 60,
    }


def _p99(xs: list[float]) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="*", default=[8, 64, 512])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--models", type=int, default=12)
    p.add_argument("--warm", type=int, default=2, help="models a worker holds (MAX_WARM_MODELS)")
    p.add_argument("--load", type=float, default=0.7, help="steady arrivals as a share of the fleet's capacity")
    p.add_argument("--flood", type=int, default=10, help="jobs per worker the flooding tenant queues at once")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(
        f"\nFleet simulation: {a.models} models (load 2-60 s, inference 2-8 s), 20 steady tenants at {a.load:.0%} "
        f"of capacity, one flooding {a.flood} jobs/worker at {a.minutes / 5:g} min, {a.warm} warm models per worker"
    )
    print(HEADER)
    for n in a.workers:
        world = make_world(n, a.minutes, a.models, a.load, a.flood, a.seed)
        for policy in ("fifo", "fair", "fair+warm"):
            r = simulate(world, n, policy, a.warm)
            print(
                f"| {n:7d} | {policy:9s} | {r['jobs']:6d} | {r['steady_p50']:9.1f} / {r['steady_p99']:9.1f} | "
                f"{r['flood_p50']:8.1f} / {r['flood_p99']:9.1f} | {r['loads_per_hour']:14.1f} | {r['busy']:.2f} | "
                f"{r['useful']:6.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
