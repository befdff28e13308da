"""Which queued job a worker takes next: fair share between tenants within a priority level, priorities with aging.
Pure policy (no store, no clock of its own): the workers call it through ``lifecycle.next_job`` and the fleet
simulator (``bench/fleet_sim.py``) drives the same function on a simulated clock.

The rule, in order:

1. **Priority, aged.** A job's level is ``high`` (0), ``normal`` (1) or ``low`` (2); every ``age_s`` it waits lifts it
   one level, so low work is never starved for ever. The lowest effective level present goes first.
2. **Fair share (stride scheduling).** Among the tenants with a job at that level, the one with the least *pass*
   goes; each job a tenant starts adds ``1 / weight`` to its pass. A tenant that had nothing queued joins at the
   least pass of those waiting (no credit banked while idle), so a flood of one tenant delays another tenant's next job
   by at most about one job per worker, and tenants share the workers in proportion to their weights.
3. **Oldest first** within the tenant and level.
4. **Warm models.** A worker that holds models warm takes, in place of the job the rule picks, the best job at the
   same effective level for a model it holds that joined less than ``affinity_s`` after the rule's pick: a model is
   loaded where the demand meets no warm worker (the first worker free loads it), and a job is passed over only by
   the warm jobs that arrived within ``affinity_s`` after it, so no job waits past that bound because of affinity
   (an absolute bound on its wait would give affinity up exactly when a busy fleet needs it most).

No tenant can starve others by raising its priority: the level a tenant may ask for is capped by its
``max_priority`` (``TENANTS_CONFIG``; the default ceiling is ``normal``), checked at submit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

PRIORITIES = ("high", "normal", "low")
LEVEL = {name: i for i, name in enumerate(PRIORITIES)}


@dataclass(frozen=True)
class Waiting:
    """A queued job as the scheduler sees it: whose, at which level, for which model, since when (epoch seconds)."""

    job_id: str
    tenant: str
    level: int
    model: str | None
    since: float
    line: int = field(default=1, compare=False)  # a head's: the jobs of its (tenant, level, model), itself included

    def effective_level(self, now: float, age_s: float) -> int:
        return max(0, self.level - int(max(0.0, now - self.since) // age_s)) if age_s > 0 else self.level


def pick(
    heads: Iterable[Waiting],
    passes: dict[str, float],
    now: float,
    age_s: float,
    exclude: Callable[[Waiting], bool] = lambda w: False,
    warm: frozenset[str] | set[str] = frozenset(),
    affinity_s: float = 0.0,
) -> Waiting | None:
    """The next job among ``heads`` (the oldest waiting job of each (tenant, level, model)), by the rule above; None
    when there is none (``exclude``: jobs to pass over, e.g. already taken into this batch)."""
    ranked = sorted(
        ((w.effective_level(now, age_s), passes.get(w.tenant, 0.0), w.since, w.level, w.job_id), w)
        for w in heads
        if not exclude(w)
    )
    if not ranked:
        return None
    (level, *_), chosen = ranked[0]
    if warm and chosen.model not in warm and affinity_s > 0:
        for (other_level, *_), w in ranked[1:]:
            if other_level != level:
                break
            if w.model in warm and w.since - chosen.since < affinity_s:
                return w
    return chosen


def joining_pass(own: float | None, waiting_passes: Iterable[float], weight: float = 1.0) -> float:
    """The pass of a tenant whose first job joins the waiting: its own, kept within one job of the least pass of the
    tenants already waiting: raised to it (an idle tenant banks no credit) and lowered to it plus ``1 / weight`` (a
    tenant that ran alone for a long while carries no debt into a busy hour)."""
    floor = min(waiting_passes, default=None)
    if floor is None:
        return own or 0.0
    return min(max(own or 0.0, floor), floor + 1.0 / weight)
