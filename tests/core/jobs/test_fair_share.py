"""Fair share and priorities through the real lifecycle (memory store): a worker's turns pick jobs by the rule, not by
the order of the messages."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.contract import Artifact, RunResult
from core.jobs import lifecycle
from core.jobs.execute import execute_job, take_turn
from core.jobs.store import memory_store
from core.schemas import JobType
from core.storage import LocalStorage


class Recorder:
    def __init__(self):
        self.order: list[str] = []
        self.levels: list[str] = []

    def run(self, job, ctx):
        self.order.append(job.tenant)
        self.levels.append(job.options.priority)
        return RunResult([Artifact(b"png", "image/png", "png", {"width": 1, "height": 1, "seed": 1})], 1.0, 1.0)


class ListQueue:
    def __init__(self):
        self.messages: list[str] = []

    def enqueue(self, job_id, queue):
        self.messages.append(job_id)


@pytest.fixture
def world(tmp_path):
    store, q, runner = memory_store(), ListQueue(), Recorder()
    storage = LocalStorage(tmp_path / "data", "k" * 32)

    def submit(tenant, priority="normal", weight=1.0):
        job = lifecycle.new_job(JobType.txt2img, {"priority": priority}, tenant, weight=weight)
        return lifecycle.submit(store, q, job)[0]

    def turn(message=None, drain=1):
        message = message or q.messages.pop(0)
        attempt = lambda job_id, alone: execute_job(job_id, store, storage, lambda: runner, "w")  # noqa: E731
        return take_turn(message, store, attempt, drain=drain)

    return store, q, runner, submit, turn


def test_a_newcomer_waits_at_most_one_job_behind_a_flood(world):
    store, q, runner, submit, turn = world
    for _ in range(30):
        submit("a")
    turn()  # the worker was busy with one of a's
    submit("b")
    for _ in range(3):
        turn()
    assert runner.order[:4].index("b") <= 2, runner.order  # today (FIFO): after all 30
    while q.messages:
        turn()
    assert runner.order.count("a") == 30 and runner.order.count("b") == 1  # every job ran, each once


def test_a_high_job_starts_next_and_low_work_waits_for_normal(world):
    store, q, runner, submit, turn = world
    for _ in range(5):
        submit("a")
    submit("b", "low")
    submit("a", "high")  # queued last, of a tenant that already had five waiting
    turn()
    assert runner.levels == ["high"]
    while q.messages:
        turn()
    assert runner.levels == ["high"] + ["normal"] * 5 + ["low"] and runner.order[-1] == "b"


def test_low_work_ages_upward(world):
    store, q, runner, submit, turn = world
    old = lifecycle.new_job(JobType.txt2img, {"priority": "low"}, "b")
    old.created_at -= timedelta(seconds=301)  # queued past PRIORITY_AGE_S ago: it counts as normal now, and is older
    lifecycle.submit(store, q, old)
    for _ in range(3):
        submit("a")
    turn()
    assert runner.levels == ["low"]
    young = lifecycle.new_job(JobType.txt2img, {"priority": "low"}, "b")
    lifecycle.submit(store, q, young)
    turn()
    assert runner.levels == ["low", "normal"]  # a fresh low job waits for normal work


def test_weights_share_turns(world):
    store, q, runner, submit, turn = world
    for _ in range(40):
        submit("big", weight=3.0)
        submit("small", weight=1.0)
    for _ in range(40):
        turn()
    assert 28 <= runner.order.count("big") <= 32, runner.order.count("big")


def test_canceled_and_taken_jobs_leave_the_backlog(world):
    store, q, runner, submit, turn = world
    first, second = submit("a"), submit("a")
    lifecycle.cancel(store, first.id)
    assert [w.job_id for w in store.backlog.heads("inference")] == [second.id]
    turn()
    assert store.backlog.heads("inference") == [] and runner.order == ["a"]
    assert turn() is None  # the canceled job's message finds nothing to run


def test_a_job_missing_from_the_backlog_still_runs_on_its_own_message(world):
    """A job queued before the backlog existed (or whose entry a failed call lost) has a message but no entry: the
    turn its message starts runs it once the scheduler's picks run out, even after running another job."""
    store, q, runner, submit, turn = world
    old = submit("a")
    store.backlog.take("inference", old.id, charge=False)  # no entry any more; its message is still queued
    submit("b")
    turn(q.messages.pop(0), drain=64)  # old's message
    assert sorted(runner.order) == ["a", "b"]
