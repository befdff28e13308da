"""The backlog: every queued job as the scheduler sees it (``core/jobs/schedule.py``), per queue, and each tenant's
pass. The queue's messages only wake workers (one per job, so a queue's length is its real backlog, what KEDA
scales on); which job a woken worker runs is the scheduler's choice over the backlog (``lifecycle.next_job``).

Redis layout under ``ds:bk:{queue}:``: ``q:{tenant}\\t{level}\\t{model}`` a sorted set of job ids by the time they
joined, ``heads`` the set of non-empty (tenant, level, model) triples, ``meta`` the JSON of each waiting job,
``count`` jobs waiting per tenant, ``pass`` each tenant's pass. Adding and taking are Lua scripts, so counts, heads
and passes change together.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections import defaultdict
from dataclasses import asdict, replace
from typing import Protocol

from core.jobs.schedule import Waiting, joining_pass


class Backlog(Protocol):
    def add(self, queue: str, job: Waiting, weight: float = 1.0) -> bool:
        """``job`` joins the queue's backlog (False: it was there already); a tenant with nothing waiting joins at
        the least pass of those waiting."""

    def take(self, queue: str, job_id: str, charge: bool = True) -> Waiting | None:
        """``job_id`` leaves the backlog (it started, was canceled or is gone); ``charge``: its tenant's pass grows
        by 1 / its weight. None when it was not there."""

    def heads(self, queue: str) -> list[Waiting]:
        """The oldest waiting job of each (tenant, level, model): what the rule, warm routing included, ranks."""

    def passes(self, queue: str) -> dict[str, float]: ...

    def depth(self, queue: str) -> dict[tuple[int, str], int]:
        """Jobs waiting by (level, model)."""

    def view(self, queue: str) -> tuple[list[Waiting], dict[str, float]]:
        """``heads`` (each with its ``line``: how many jobs its (tenant, level, model) holds) and ``passes``
        together, as of one moment (what the scheduler reads for each pick)."""


class MemoryBacklog:
    """In memory: per (tenant, level, model) a list of (joined, job id) kept in order, so ``heads`` costs one look per
    triple, however long the backlog (the fleet simulator runs it with tens of thousands waiting)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, tuple[Waiting, float]]] = defaultdict(dict)  # queue -> id -> (job, weight)
        self._lines: dict[str, dict[tuple, list[tuple[float, str]]]] = defaultdict(dict)  # queue -> triple -> line
        self._count: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # queue -> tenant -> waiting
        self._passes: dict[str, dict[str, float]] = defaultdict(dict)

    def add(self, queue, job, weight=1.0):
        with self._lock:
            jobs = self._jobs[queue]
            if job.job_id in jobs:
                return False
            count, passes = self._count[queue], self._passes[queue]
            if not count.get(job.tenant):
                waiting = [passes.get(t, 0.0) for t, n in count.items() if n]
                passes[job.tenant] = joining_pass(passes.get(job.tenant), waiting, weight)
            jobs[job.job_id] = (job, weight)
            count[job.tenant] += 1
            line = self._lines[queue].setdefault((job.tenant, job.level, job.model), [])
            bisect.insort(line, (job.since, job.job_id))
            return True

    def take(self, queue, job_id, charge=True):
        with self._lock:
            found = self._jobs[queue].pop(job_id, None)
            if found is None:
                return None
            job, weight = found
            triple = (job.tenant, job.level, job.model)
            line = self._lines[queue][triple]
            line.remove((job.since, job.job_id))
            if not line:
                del self._lines[queue][triple]
            self._count[queue][job.tenant] -= 1
            if charge:
                passes = self._passes[queue]
                passes[job.tenant] = passes.get(job.tenant, 0.0) + 1.0 / weight
            return job

    def heads(self, queue):
        with self._lock:
            return self._heads(queue)

    def _heads(self, queue, lines: bool = False):
        """The heads; with ``lines``, each with its line's length (a copy only where that is not 1: the fleet
        simulator views tens of thousands of heads)."""
        jobs = self._jobs[queue]
        heads = [jobs[line[0][1]][0] for line in self._lines[queue].values()]
        if not lines:
            return heads
        return [
            head if len(line) == 1 else replace(head, line=len(line))
            for head, line in zip(heads, self._lines[queue].values(), strict=True)
        ]

    def passes(self, queue):
        with self._lock:
            return dict(self._passes[queue])

    def view(self, queue):
        with self._lock:
            return self._heads(queue, lines=True), dict(self._passes[queue])

    def depth(self, queue):
        with self._lock:
            out: dict[tuple[int, str], int] = defaultdict(int)
            for job, _ in self._jobs[queue].values():
                out[(job.level, job.model or "")] += 1
            return dict(out)


ADD = """
local p, tenant, level, id, since, meta, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local weight = tonumber(ARGV[8])
if redis.call('HEXISTS', p .. 'meta', id) == 1 then return 0 end
if tonumber(redis.call('HGET', p .. 'count', tenant) or '0') <= 0 then
  local floor = nil
  local counts = redis.call('HGETALL', p .. 'count')
  for i = 1, #counts, 2 do
    if tonumber(counts[i + 1]) > 0 then
      local v = tonumber(redis.call('HGET', p .. 'pass', counts[i]) or '0')
      if floor == nil or v < floor then floor = v end
    end
  end
  local own = tonumber(redis.call('HGET', p .. 'pass', tenant) or '0')
  if floor ~= nil then
    local joined = math.min(math.max(own, floor), floor + 1.0 / weight)
    if joined ~= own then redis.call('HSET', p .. 'pass', tenant, string.format('%.17g', joined)) end
  end
end
redis.call('HINCRBY', p .. 'count', tenant, 1)
local triple = tenant .. '\\t' .. level .. '\\t' .. model
redis.call('ZADD', p .. 'q:' .. triple, since, id)
redis.call('SADD', p .. 'heads', triple)
redis.call('HSET', p .. 'meta', id, meta)
return 1
"""

TAKE = """
local p, id, charge = ARGV[1], ARGV[2], ARGV[3]
local meta = redis.call('HGET', p .. 'meta', id)
if not meta then return false end
local w = cjson.decode(meta)
local model = w.model
if model == nil or model == cjson.null then model = '' end
local pair = w.tenant .. '\\t' .. w.level .. '\\t' .. model
redis.call('HDEL', p .. 'meta', id)
redis.call('ZREM', p .. 'q:' .. pair, id)
if redis.call('ZCARD', p .. 'q:' .. pair) == 0 then redis.call('SREM', p .. 'heads', pair) end
if redis.call('HINCRBY', p .. 'count', w.tenant, -1) <= 0 then redis.call('HDEL', p .. 'count', w.tenant) end
if charge == '1' then redis.call('HINCRBYFLOAT', p .. 'pass', w.tenant, 1.0 / w.weight) end
return meta
"""


# heads and passes in one step: the oldest job of each non-empty (tenant, level, model), the passes (flat), then
# the length of each head's line
VIEW = """
local p = ARGV[1]
local heads, lines = {}, {}
for _, triple in ipairs(redis.call('SMEMBERS', p .. 'heads')) do
  local first = redis.call('ZRANGE', p .. 'q:' .. triple, 0, 0)
  if first[1] then
    local meta = redis.call('HGET', p .. 'meta', first[1])
    if meta then
      heads[#heads + 1] = meta
      lines[#lines + 1] = redis.call('ZCARD', p .. 'q:' .. triple)
    end
  end
end
return {heads, redis.call('HGETALL', p .. 'pass'), lines}
"""


def _str(x: str | bytes) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _waiting(meta: str | bytes) -> Waiting:
    d = json.loads(meta)
    d.pop("weight", None)
    d.pop("line", None)
    return Waiting(**d)


class RedisBacklog:
    def __init__(self, r, prefix: str = "ds:bk:"):
        self.r = r
        self.prefix = prefix
        self._add = r.register_script(ADD)
        self._take = r.register_script(TAKE)
        self._view = r.register_script(VIEW)

    def _p(self, queue: str) -> str:
        return f"{self.prefix}{queue}:"

    def _add_args(self, queue, job, weight) -> list:
        meta = {**asdict(job), "weight": weight}
        del meta["line"]  # a line's length is read (view), never stored
        meta = json.dumps(meta)
        return [self._p(queue), job.tenant, job.level, job.job_id, job.since, meta, job.model or "", weight]

    def _take_args(self, queue, job_id, charge) -> list:
        return [self._p(queue), job_id, "1" if charge else "0"]

    def add(self, queue, job, weight=1.0):
        return bool(self._add(args=self._add_args(queue, job, weight)))

    def take(self, queue, job_id, charge=True):
        meta = self._take(args=self._take_args(queue, job_id, charge))
        return _waiting(meta) if meta else None

    def view(self, queue):
        metas, flat, lines = self._view(args=[self._p(queue)])
        heads = [replace(_waiting(m), line=int(n)) for m, n in zip(metas, lines, strict=True)]
        return heads, {_str(flat[i]): float(flat[i + 1]) for i in range(0, len(flat), 2)}

    def heads(self, queue):
        p = self._p(queue)
        pairs = [x.decode() if isinstance(x, bytes) else x for x in self.r.smembers(p + "heads")]
        if not pairs:
            return []
        pipe = self.r.pipeline(transaction=False)
        for pair in pairs:
            pipe.zrange(p + "q:" + pair, 0, 0)
        ids = [found[0] for found in pipe.execute() if found]
        metas = self.r.hmget(p + "meta", ids) if ids else []
        return [_waiting(m) for m in metas if m]

    def passes(self, queue):
        return {
            (k.decode() if isinstance(k, bytes) else k): float(v)
            for k, v in self.r.hgetall(self._p(queue) + "pass").items()
        }

    def depth(self, queue):
        out: dict[tuple[int, str], int] = defaultdict(int)
        for meta in self.r.hvals(self._p(queue) + "meta"):
            w = _waiting(meta)
            out[(w.level, w.model or "")] += 1
        return dict(out)
