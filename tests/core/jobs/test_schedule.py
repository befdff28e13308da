"""The scheduling rule on its own: fair share between tenants (weighted), priorities, aging."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from core.jobs.schedule import LEVEL, Waiting, joining_pass, pick


class Sim:
    """A backlog and the passes, as the stores keep them, driven by ``pick`` alone."""

    def __init__(self, weights=None, age_s=300.0):
        self.jobs: list[Waiting] = []
        self.passes: dict[str, float] = {}
        self.weights = weights or {}
        self.age_s = age_s
        self.n = 0

    def add(self, tenant, level="normal", since=0.0, model=None):
        if not any(j.tenant == tenant for j in self.jobs):
            waiting = {self.passes.get(j.tenant, 0.0) for j in self.jobs}
            self.passes[tenant] = joining_pass(self.passes.get(tenant), waiting)
        self.n += 1
        self.jobs.append(Waiting(f"{tenant}-{self.n}", tenant, LEVEL[level], model, since))

    def heads(self):
        out = {}
        for j in sorted(self.jobs, key=lambda j: j.since):
            out.setdefault((j.tenant, j.level), j)
        return list(out.values())

    def take(self, now=0.0) -> Waiting:
        w = pick(self.heads(), self.passes, now, self.age_s)
        self.jobs.remove(w)
        self.passes[w.tenant] = self.passes.get(w.tenant, 0.0) + 1 / self.weights.get(w.tenant, 1.0)
        return w


def test_a_flood_delays_another_tenants_job_by_at_most_one():
    s = Sim()
    for i in range(30):
        s.add("a", since=i)
    assert s.take(100).tenant == "a"  # one of a's is taken (the worker was busy with it)
    s.add("b", since=100)
    order = [s.take(101).tenant for _ in range(4)]
    assert order.index("b") <= 1, order


def test_weights_share_the_workers_in_proportion():
    s = Sim(weights={"a": 3.0, "b": 1.0})
    for i in range(200):
        s.add("a", since=i)
        s.add("b", since=i)
    taken = [s.take(1000).tenant for _ in range(100)]
    assert 70 <= taken.count("a") <= 80, taken.count("a")


def test_higher_levels_start_first_and_low_work_ages_upward():
    s = Sim(age_s=60)
    s.add("a", "low", since=0)
    s.add("b", "normal", since=10)
    s.add("c", "high", since=20)
    assert [s.take(21).tenant for _ in range(2)] == ["c", "b"]
    s.add("b", "normal", since=30)
    assert s.take(61).tenant == "a"  # low since 0, at 61 s: aged to normal and older than b's


def test_an_idle_tenant_banks_no_credit():
    s = Sim()
    for i in range(10):
        s.add("a", since=i)
    for _ in range(8):
        s.take(20)
    s.add("b", since=21)  # b was idle while a ran 8: it joins at a's pass, it does not get 8 in a row
    for i in range(10):
        s.add("b", since=22 + i)
    s.add("a", since=40)
    order = [s.take(50).tenant for _ in range(6)]
    assert order.count("a") >= 2, order


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    floods=st.lists(st.integers(1, 40), min_size=2, max_size=5),
    taken_first=st.integers(0, 10),
)
def test_property_every_waiting_tenant_starts_within_one_round(floods, taken_first):
    """However the others flood, a tenant that joins starts within (number of tenants waiting) picks."""
    s = Sim()
    t = 0.0
    for k, n in enumerate(floods):
        for _ in range(n):
            t += 1
            s.add(f"t{k}", since=t)
    for _ in range(min(taken_first, len(s.jobs))):
        s.take(t)
    s.add("late", since=t + 1)
    tenants = {j.tenant for j in s.jobs}
    order = [s.take(t + 2).tenant for _ in range(len(tenants))]
    assert "late" in order, (order, tenants)


def test_a_worker_takes_a_job_for_its_warm_model_at_the_same_level():
    heads = [
        Waiting("cold", "a", 1, "mnist", since=0.0),  # the rule's pick: the oldest
        Waiting("hot", "b", 1, "digits", since=5.0),
        Waiting("urgent", "c", 0, "mnist", since=9.0),
    ]
    assert pick(heads, {}, 10, 300).job_id == "urgent"  # a higher level goes first, warm or not
    normal = heads[:2]
    assert pick(normal, {}, 10, 300, warm={"digits"}, affinity_s=30).job_id == "hot"
    assert pick(normal, {}, 10, 300, warm={"mnist"}, affinity_s=30).job_id == "cold"
    assert pick(normal, {}, 10, 300, warm=set(), affinity_s=30).job_id == "cold"  # nothing warm: the rule's pick
    later = [heads[0], Waiting("hot", "b", 1, "digits", since=35.0)]  # came 35 s after the cold one
    assert pick(later, {}, 40, 300, warm={"digits"}, affinity_s=30).job_id == "cold"  # the bound: 30 s


def test_affinity_never_holds_a_job_past_the_bound():
    """Two workers, each warm on one model, one model's jobs only: the other worker takes them once they waited."""
    s = Sim()
    for i in range(5):
        s.add("a", since=i, model="mnist")
    heads = s.heads()
    assert pick(heads, s.passes, 10, 300, warm={"digits"}, affinity_s=30).model == "mnist"  # no digits job: take it


def test_a_tenant_back_from_running_alone_carries_at_most_one_job_of_debt():
    assert joining_pass(100_000.0, [0.0, 0.5]) == 1.0  # floor 0 + 1 / weight
    assert joining_pass(100_000.0, [0.0], weight=4.0) == 0.25
    assert joining_pass(0.2, [3.0]) == 3.0  # no credit banked either
    assert joining_pass(7.0, []) == 7.0  # nobody waiting: its own
