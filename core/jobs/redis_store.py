"""The job store on Redis (distributed mode): the gateway and every worker share it.

Keys (prefix ``ds:``): ``job:{id}`` the record as JSON; ``job:{id}:events`` its event log (a list) with
``job:{id}:notify`` a pub/sub channel that wakes waiters; ``tenant:{t}:jobs`` a list, newest first;
``status:queued`` / ``status:running`` sets; ``lease:{id}`` the worker's heartbeat (expires when it dies);
``idem:{tenant}:{key}``; ``metrics:*`` hashes; ``rl:*`` rate-limit windows.
"""

from __future__ import annotations

import json
import time

import redis

from core.jobs.store import INDEXED, JobStore, MemoryJobStore, _labels_key
from core.schemas import JobRecord, JobStatus

P = "ds:"
EVENTS_TTL_S = 7 * 24 * 3600


class RedisJobStore(JobStore):
    def __init__(self, url: str):
        self.url = url
        self.r = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)

    # -- records -------------------------------------------------------------------------------------
    def create(self, job, idempotency=None):
        if idempotency:
            k = f"{P}idem:{job.tenant}:{idempotency[0]}"
            if not self.r.set(k, f"{job.id}|{idempotency[1]}", nx=True, ex=24 * 3600):
                first_id, body_hash = (self.r.get(k) or "|").split("|", 1)
                first = self.get(first_id)
                if first is not None:
                    return MemoryJobStore._check_idem(first, body_hash, idempotency[1]), False
                self.r.set(k, f"{job.id}|{idempotency[1]}", ex=24 * 3600)
        pipe = self.r.pipeline()
        pipe.set(f"{P}job:{job.id}", job.model_dump_json())
        pipe.lpush(f"{P}tenant:{job.tenant}:jobs", job.id)  # newest first
        if job.status in INDEXED:
            pipe.sadd(f"{P}status:{job.status.value}", job.id)
        pipe.execute()
        return job, True

    def get(self, job_id):
        raw = self.r.get(f"{P}job:{job_id}")
        return JobRecord.model_validate_json(raw) if raw else None

    def update(self, job_id, fn):
        key = f"{P}job:{job_id}"
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    old = JobRecord.model_validate_json(raw)
                    new = fn(old.model_copy(deep=True))
                    if new is None:
                        pipe.unwatch()
                        return old
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    if new.status != old.status:
                        for s in INDEXED:
                            pipe.srem(f"{P}status:{s.value}", job_id)
                        if new.status in INDEXED:
                            pipe.sadd(f"{P}status:{new.status.value}", job_id)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def list(self, tenant, limit, offset):
        ids = self.r.lrange(f"{P}tenant:{tenant}:jobs", offset, offset + limit - 1)
        if not ids:
            return []
        raws = self.r.mget([f"{P}job:{i}" for i in ids])
        return [JobRecord.model_validate_json(r) for r in raws if r]

    # -- events --------------------------------------------------------------------------------------
    def add_event(self, job_id, event, data):
        key = f"{P}job:{job_id}:events"
        pipe = self.r.pipeline()
        pipe.llen(key)
        pipe.rpush(key, json.dumps({"event": event, "data": data}))
        pipe.expire(key, EVENTS_TTL_S)
        pipe.publish(f"{P}job:{job_id}:notify", "1")
        _, length, *_ = pipe.execute()
        return length - 1

    def events(self, job_id, start=0):
        raws = self.r.lrange(f"{P}job:{job_id}:events", start, -1)
        return [{"seq": start + i, **json.loads(r)} for i, r in enumerate(raws)]

    def event_count(self, job_id):
        return self.r.llen(f"{P}job:{job_id}:events")

    def wait_events(self, job_id, count, timeout):
        deadline = time.monotonic() + timeout
        ps = self.r.pubsub(ignore_subscribe_messages=True)
        try:
            ps.subscribe(f"{P}job:{job_id}:notify")
            while True:
                # check after subscribing, so an event between the check and the wait is never missed
                if self.event_count(job_id) > count:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                ps.get_message(timeout=min(left, 1.0))
        finally:
            ps.close()

    # -- indexes and leases --------------------------------------------------------------------------
    def ids_with_status(self, status):
        return list(self.r.smembers(f"{P}status:{status.value}"))

    def set_lease(self, job_id, owner, ttl):
        self.r.set(f"{P}lease:{job_id}", owner, px=int(ttl * 1000))

    def lease_alive(self, job_id):
        return bool(self.r.exists(f"{P}lease:{job_id}"))

    def clear_lease(self, job_id):
        self.r.delete(f"{P}lease:{job_id}")

    # -- metrics, rate limits, locks -----------------------------------------------------------------
    @staticmethod
    def _field(name: str, labels: dict[str, str]) -> str:
        return json.dumps([name, _labels_key(labels)])

    def incr(self, name, labels, value=1.0):
        self.r.hincrbyfloat(f"{P}metrics:counters", self._field(name, labels), value)

    def observe(self, name, labels, value, buckets):
        f = self._field(name, labels)
        pipe = self.r.pipeline()
        for b in buckets:
            if value <= b:
                pipe.hincrby(f"{P}metrics:hist:{f}", f"le:{b}", 1)
            else:
                pipe.hincrby(f"{P}metrics:hist:{f}", f"le:{b}", 0)
        pipe.hincrbyfloat(f"{P}metrics:hist:{f}", "sum", value)
        pipe.hincrby(f"{P}metrics:hist:{f}", "count", 1)
        pipe.sadd(f"{P}metrics:hists", f)
        pipe.execute()

    def metrics_snapshot(self):
        counters = {}
        for f, v in self.r.hgetall(f"{P}metrics:counters").items():
            name, labels = json.loads(f)
            counters[(name, tuple(tuple(x) for x in labels))] = float(v)
        hists = {}
        for f in self.r.smembers(f"{P}metrics:hists"):
            name, labels = json.loads(f)
            raw = self.r.hgetall(f"{P}metrics:hist:{f}")
            buckets = {float(k[3:]): int(v) for k, v in raw.items() if k.startswith("le:")}
            hists[(name, tuple(tuple(x) for x in labels))] = {
                "buckets": dict(sorted(buckets.items())),
                "sum": float(raw.get("sum", 0)),
                "count": int(raw.get("count", 0)),
            }
        return counters, hists

    def rate_limit(self, key, limit, window_s):
        now = time.time()
        window = int(now // window_s)
        k = f"{P}rl:{key}:{window}"
        pipe = self.r.pipeline()
        pipe.incr(k)
        pipe.expire(k, window_s + 1)
        n, _ = pipe.execute()
        return (window + 1) * window_s - now if n > limit else None

    def try_lock(self, name, ttl):
        return bool(self.r.set(f"{P}lock:{name}", "1", nx=True, px=int(ttl * 1000)))

    def ping(self):
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    def register(self, tenant, kind, name, record):
        self.r.hset(f"{P}registry:{tenant}:{kind}", name, json.dumps(record))

    def registration(self, tenant, kind, name):
        raw = self.r.hget(f"{P}registry:{tenant}:{kind}", name)
        return json.loads(raw) if raw else None

    def registrations(self, tenant, kind):
        return [json.loads(v) for _, v in sorted(self.r.hgetall(f"{P}registry:{tenant}:{kind}").items())]

    def close(self):
        self.r.close()
