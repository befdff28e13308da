"""The job store on Redis (distributed mode): the gateway and every worker share it.

Keys (prefix ``ds:``): ``job:{id}`` the record as JSON; ``job:{id}:events`` its event log (a list) with
``job:{id}:notify`` a pub/sub channel that wakes waiters; ``tenant:{t}:jobs`` a list, newest first;
``tenant:{t}:active`` the tenant's queued + running job ids; ``status:queued`` / ``status:running`` sets;
``lease:{id}`` the owner token of the running attempt (expires when its worker stops heart-beating);
``idem:{tenant}:{key}``; ``expiry`` a sorted set of what retention deletes when; ``metrics:*`` hashes; ``rl:*``
rate-limit windows; ``webhook:{id}`` and ``webhooks:due`` webhook deliveries.

Every multi-key change is atomic (a record update is one compare-and-set script, a creation one script, each with
the job's event when it has one), so a record and its indexes, idempotency key, lease and event log never disagree.
Connection failures surface as :class:`core.errors.Unavailable`, fast: short socket timeouts, one retry.

Round trips are what a job's service overhead is made of, so: a record update compares against the raw record this
process last read or wrote (``RedisJobs._seen``: no read first when nobody wrote in between; a stale guess costs one
failed compare, then a read) and carries the status event; ``JobStore.batch`` sends the writes whose answers nobody
reads (counters, histograms, usage, webhook deliveries, backlog takes, retention) in one pipeline at its end.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from core.errors import Unavailable
from core.jobs.backlog import ADD, TAKE, RedisBacklog
from core.jobs.store import INDEXED, JobStore, _labels_key, over_quota
from core.jobs.usage import RedisUsage
from core.schemas import JobRecord

P = "ds:"
IDEM_TTL_S = 24 * 3600
log = logging.getLogger("diffuserve.store")

# renew the lease only while the record says the job runs under this token (a frozen worker that wakes up after
# the reaper moved its job on gets 0 and stops)
RENEW = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local job = cjson.decode(raw)
if job['status'] ~= 'running' or job['lease_token'] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

# append an event to a job's log and wake its waiters (KEYS[e]: the log, KEYS[e + 1]: the notify channel;
# ARGV[a]: the event's JSON ('' for none), ARGV[a + 1]: the log's TTL, ARGV[a + 2]: the event's name)
EVENT = """
local function add_event(e, a)
  if ARGV[a] == '' then return end
  redis.call('RPUSH', KEYS[e], ARGV[a])
  redis.call('EXPIRE', KEYS[e], ARGV[a + 1])
  redis.call('PUBLISH', KEYS[e + 1], ARGV[a + 2])
end
"""

# write a record only if it is still what the caller read, moving its status indexes and lease, and appending its
# event, in the same step.
# KEYS: record, tenant's active set, expiry zset, lease, event log, notify channel, then the status sets (queued,
# running).
# ARGV: old, new, id, status changed (0/1), index of the new status set (0: terminal), expiry score,
# lease mode (keep/set/del), lease token, lease ms, event JSON, event log TTL, event name
CAS = (
    EVENT
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[4] == '1' then
  for i = 7, #KEYS do redis.call('SREM', KEYS[i], ARGV[3]) end
  local index = tonumber(ARGV[5])
  if index > 0 then
    redis.call('SADD', KEYS[6 + index], ARGV[3])
    redis.call('SADD', KEYS[2], ARGV[3])
  else
    redis.call('SREM', KEYS[2], ARGV[3])
    redis.call('ZADD', KEYS[3], ARGV[6], 'job:' .. ARGV[3])
  end
end
if ARGV[7] == 'set' then
  redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[9])
elseif ARGV[7] == 'del' then
  redis.call('DEL', KEYS[4])
end
add_event(5, 10)
return 1
"""
)

# create a job unless its Idempotency-Key names one that still exists (then return it) or its tenant is at its
# limit of active jobs; with its indexes and its first event, in one step.
# KEYS: idempotency key (or ''), tenant's active set, record, tenant's job list, the new status set (or ''), event
# log, notify channel. ARGV: id, raw record, idempotency value, its TTL, max active (-1: none), the record key prefix,
# event JSON, event log TTL, event name.
# Returns {1} created, {0, first raw record, idempotency value} a replay, {-1} over the limit.
CREATE = (
    EVENT
    + """
if KEYS[1] ~= '' then
  local v = redis.call('GET', KEYS[1])
  if v then
    local first = redis.call('GET', ARGV[6] .. string.match(v, '^[^|]*'))
    if first then return {0, first, v} end
  end
end
local limit = tonumber(ARGV[5])
if limit >= 0 and redis.call('SCARD', KEYS[2]) >= limit then return {-1} end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4]) end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('LPUSH', KEYS[4], ARGV[1])
if KEYS[5] ~= '' then
  redis.call('SADD', KEYS[5], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[1])
end
add_event(6, 7)
return {1}
"""
)

# claim up to ARGV[3] webhook deliveries due by ARGV[1]: each is made due again at ARGV[2] (its lease)
CLAIM_WEBHOOKS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""

TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


BREAKER_S = 1.0  # after a failed call, fail fast for this long instead of waiting on a dead socket again


def _unavailable(fn):
    """Turn Redis connection failures into :class:`Unavailable`, and trip a short breaker: while Redis is away
    (killed: refused at once; frozen: a socket timeout), only one call per ``BREAKER_S`` waits on it."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if time.monotonic() < self.c.down_until:
            raise Unavailable("the job store is unavailable; retry shortly", code="store_unavailable")
        try:
            return fn(self, *args, **kwargs)
        except TRANSIENT as e:
            self.c.down_until = time.monotonic() + BREAKER_S
            raise Unavailable("the job store is unavailable; retry shortly", code="store_unavailable") from e

    return wrapper


class RedisConn:
    """What the Redis adapters share: one bounded connection pool, the lease script, the breaker."""

    remote = True

    def __init__(self, url: str, job_ttl_s: float, max_connections: int):
        self.url = url
        self.job_ttl_s = job_ttl_s
        # one bounded pool: callers beyond it wait up to 2 s for a connection instead of failing at once. Redis
        # answers in microseconds, so 2 s without an answer means it is gone; a dropped connection is retried once
        # (a reconnect), a timeout is not
        pool = redis.BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            max_connections=max_connections,
            timeout=2,
            socket_connect_timeout=2,
            socket_timeout=2,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), 1, supported_errors=(redis.ConnectionError,)),
        )
        self.r = redis.Redis(connection_pool=pool)
        self.down_until = 0.0
        self.renew = self.r.register_script(RENEW)
        self.cas = self.r.register_script(CAS)
        self.create = self.r.register_script(CREATE)
        self.claim_webhooks = self.r.register_script(CLAIM_WEBHOOKS)
        self._local = threading.local()

    def deferred(self):
        """The pipeline of this thread's open ``batch`` (None outside one): where answer-less writes go."""
        return getattr(self._local, "pipe", None)

    def metrics_lane(self) -> list | None:
        """The open ``batch(metrics_after=True)``'s metric writes (``fn(pipe)`` each), made after its other writes
        went out; None when the block has none."""
        return getattr(self._local, "later", None)

    @contextmanager
    def batch(self, metrics_after: bool = False):
        """Writes whose answers nobody reads, made on this thread inside the block, go out in one pipeline at its end
        (raising :class:`Unavailable` there when Redis is away); reads and record updates still go at once. A
        nested block joins the outer one. ``metrics_after``: counters and histograms are neither built nor sent
        until that pipeline is out (a second round trip, which the events that wake clients do not wait for)."""
        if self.deferred() is not None:
            yield
            return
        pipe = self.r.pipeline(transaction=False)
        later: list | None = [] if metrics_after else None
        self._local.pipe, self._local.later = pipe, later
        try:
            yield
        except BaseException:
            self._local.pipe = self._local.later = None
            try:  # what the block asked for before it failed still goes out
                self._flush_all(pipe, later)
            except Exception:  # noqa: BLE001 - the block's own error is the one to raise
                log.warning("a batch of store writes was lost", exc_info=True)
            raise
        self._local.pipe = self._local.later = None
        self._flush_all(pipe, later)

    def _flush_all(self, pipe, later: list | None) -> None:
        if len(pipe):
            self._flush(pipe)
        if later:
            pipe = self.r.pipeline(transaction=False)
            for write in later:
                write(pipe)
            try:
                self._flush(pipe)
            except Unavailable:  # the block's other writes are in: only its counters and histograms are lost
                log.warning("a batch's counters and histograms were not written: the store was unavailable")

    @_unavailable
    def _flush(self, pipe) -> None:
        pipe.execute()

    def ping(self) -> bool:
        try:
            return bool(self._ping())
        except Unavailable:
            return False

    @_unavailable
    def _ping(self):
        return self.r.ping()

    @property
    def c(self) -> RedisConn:  # for the breaker
        return self

    def close(self) -> None:
        self.r.close()


class RedisJobs:
    """Job records (``job:{id}``), the status sets, per-tenant lists and active sets, idempotency keys."""

    SEEN = 1024  # raw records remembered, the most recent first out

    def __init__(self, conn: RedisConn):
        self.c = conn
        self._seen: OrderedDict[str, str] = OrderedDict()  # job id -> its raw record as this process last saw it
        self._seen_lock = threading.Lock()

    def _remember(self, job_id: str, raw: str) -> None:
        with self._seen_lock:
            self._seen[job_id] = raw
            self._seen.move_to_end(job_id)
            if len(self._seen) > self.SEEN:
                self._seen.popitem(last=False)

    def _recall(self, job_id: str) -> str | None:
        with self._seen_lock:
            return self._seen.pop(job_id, None)

    def _event_args(self, job_id: str, event: tuple[str, dict] | None) -> tuple[list[str], list]:
        keys = [f"{P}job:{job_id}:events", f"{P}job:{job_id}:notify"]
        if event is None:
            return keys, ["", 0, ""]
        name, data = event
        return keys, [json.dumps({"event": name, "data": data}), int(self.c.job_ttl_s) + 3600, name]

    @_unavailable
    def create(self, job, idempotency=None, max_active=None, event=None):
        idem = f"{P}idem:{job.tenant}:{idempotency[0]}" if idempotency else ""
        raw = job.model_dump_json()
        event_keys, event_args = self._event_args(job.id, event)
        found = self.c.create(
            keys=[
                idem,
                f"{P}tenant:{job.tenant}:active",
                f"{P}job:{job.id}",
                f"{P}tenant:{job.tenant}:jobs",
                f"{P}status:{job.status.value}" if job.status in INDEXED else "",
                *event_keys,
            ],
            args=[
                job.id,
                raw,
                f"{job.id}|{idempotency[1]}" if idempotency else "",
                IDEM_TTL_S,
                -1 if max_active is None else max_active,
                f"{P}job:",
                *event_args,
            ],
        )
        if found[0] == -1:
            raise over_quota(job.tenant, max_active)
        if found[0] == 0:  # a replay: the first job, and the body hash stored with it
            self._remember(job.id, found[1])
            return JobRecord.model_validate_json(found[1]), False, found[2].partition("|")[2]
        self._remember(job.id, raw)
        return job, True, None

    @_unavailable
    def release_idempotency(self, tenant, key, job_id):
        k = f"{P}idem:{tenant}:{key}"
        with self.c.r.pipeline() as pipe:
            try:
                pipe.watch(k)
                if (pipe.get(k) or "").partition("|")[0] == job_id:
                    pipe.multi()
                    pipe.delete(k)
                    pipe.execute()
            except redis.WatchError:
                pass

    @_unavailable
    def get(self, job_id):
        raw = self.c.r.get(f"{P}job:{job_id}")
        if not raw:
            return None
        self._remember(job_id, raw)
        return JobRecord.model_validate_json(raw)

    @_unavailable
    def update(self, job_id, fn, lease=None, event=None):
        """Apply ``fn`` to the record, then write it only if it is still what ``fn`` saw (``CAS``: one script that
        also moves the indexes and the lease, and appends ``event(new)`` when given); another writer in between:
        read again. The first try takes the record as this process last saw it, without reading it (one round trip
        when nobody wrote in between); a record ``fn`` leaves as it is was always read just before."""
        key = f"{P}job:{job_id}"
        # the event log and its channel, then the status sets
        other_keys = [f"{P}job:{job_id}:events", f"{P}job:{job_id}:notify", *(f"{P}status:{s.value}" for s in INDEXED)]
        raw, guessed = self._recall(job_id), True
        while True:
            if raw is None or not guessed:
                raw, guessed = self.c.r.get(key), False
                if raw is None:
                    return None
            current = JobRecord.model_validate_json(raw)
            old_status = current.status
            new = fn(current)  # a private copy for fn (cheaper than a deep copy)
            if new is None:
                if guessed:  # nothing to write, decided on a guess: decide again on the record itself
                    guessed = False
                    continue
                self._remember(job_id, raw)
                return JobRecord.model_validate_json(raw)
            changed = new.status != old_status
            index = next((i + 1 for i, s in enumerate(INDEXED) if s == new.status), 0)
            lease_mode = "keep" if lease is None else ("set" if lease[1] > 0 else "del")
            new_raw = new.model_dump_json()
            _, event_args = self._event_args(job_id, event(new) if event else None)
            done = self.c.cas(
                keys=[key, f"{P}tenant:{new.tenant}:active", f"{P}expiry", f"{P}lease:{job_id}", *other_keys],
                args=[
                    raw,
                    new_raw,
                    job_id,
                    int(changed),
                    index,
                    time.time() + self.c.job_ttl_s,
                    lease_mode,
                    lease[0] if lease else "",
                    int(lease[1] * 1000) if lease else 0,
                    *event_args,
                ],
            )
            if done:
                self._remember(job_id, new_raw)
                return new
            guessed = False

    @_unavailable
    def list(self, tenant, limit, offset):
        ids = self.c.r.lrange(f"{P}tenant:{tenant}:jobs", offset, offset + limit - 1)
        if not ids:
            return []
        raws = self.c.r.mget([f"{P}job:{i}" for i in ids])
        return [JobRecord.model_validate_json(r) for r in raws if r]

    @_unavailable
    def active_count(self, tenant):
        return self.c.r.scard(f"{P}tenant:{tenant}:active")

    @_unavailable
    def ids_with_status(self, status, limit=None):
        key = f"{P}status:{status.value}"
        return list(self.c.r.srandmember(key, limit) if limit else self.c.r.smembers(key))

    @_unavailable
    def delete_job(self, job_id):
        job = self.get(job_id)
        self._recall(job_id)
        pipe = self.c.r.pipeline()
        pipe.delete(f"{P}job:{job_id}", f"{P}job:{job_id}:events", f"{P}lease:{job_id}")
        for s in INDEXED:
            pipe.srem(f"{P}status:{s.value}", job_id)
        if job is not None:
            pipe.lrem(f"{P}tenant:{job.tenant}:jobs", 0, job_id)
            pipe.srem(f"{P}tenant:{job.tenant}:active", job_id)
        pipe.execute()


class RedisEvents:
    """Each job's event log (``job:{id}:events``) and its notify channel."""

    def __init__(self, conn: RedisConn):
        self.c = conn

    @_unavailable
    def add_event(self, job_id, event, data):
        """Returns the event's sequence number (None inside a ``batch``, where it goes out at the block's end)."""
        key = f"{P}job:{job_id}:events"
        deferred = self.c.deferred()
        pipe = deferred if deferred is not None else self.c.r.pipeline(transaction=False)
        pipe.rpush(key, json.dumps({"event": event, "data": data}))
        pipe.expire(key, int(self.c.job_ttl_s) + 3600)  # a backstop: retention deletes it with the job
        pipe.publish(f"{P}job:{job_id}:notify", event)
        if deferred is not None:
            return None
        length, *_ = pipe.execute()
        return length - 1

    @_unavailable
    def events(self, job_id, start=0):
        raws = self.c.r.lrange(f"{P}job:{job_id}:events", start, -1)
        return [{"seq": start + i, **json.loads(r)} for i, r in enumerate(raws)]

    @_unavailable
    def event_count(self, job_id):
        return self.c.r.llen(f"{P}job:{job_id}:events")

    @_unavailable
    def wait_events(self, job_id, count, timeout):
        deadline = time.monotonic() + timeout
        ps = self.c.r.pubsub(ignore_subscribe_messages=True)
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

    def listen(self, callback, stop):
        """One pattern subscription for every job; reconnects after an outage and then wakes every waiter
        (``callback(None, None)``), since events published while it was away were missed."""

        def loop() -> None:
            backoff = 0.1
            while not stop.is_set():
                ps = self.c.r.pubsub(ignore_subscribe_messages=True)
                try:
                    ps.psubscribe(f"{P}job:*:notify")
                    callback(None, None)
                    backoff = 0.1
                    while not stop.is_set():
                        msg = ps.get_message(timeout=1.0)
                        if msg and msg.get("type") == "pmessage":
                            callback(msg["channel"][len(P) + 4 : -len(":notify")], msg["data"])
                except Exception:  # noqa: BLE001 - Redis away: retry with backoff
                    log.debug("event listener lost Redis; reconnecting", exc_info=True)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                finally:
                    try:
                        ps.close()
                    except Exception:  # noqa: BLE001
                        pass

        t = threading.Thread(target=loop, name="events-listener", daemon=True)
        t.start()
        return t


class RedisLeases:
    """Running jobs' leases (``lease:{id}``; written with the record by ``Jobs.update``, renewed here)."""

    def __init__(self, conn: RedisConn):
        self.c = conn

    @_unavailable
    def renew_lease(self, job_id, token, ttl):
        return bool(self.c.renew(keys=[f"{P}job:{job_id}", f"{P}lease:{job_id}"], args=[token, int(ttl * 1000)]))

    @_unavailable
    def lease_alive(self, job_id):
        return bool(self.c.r.exists(f"{P}lease:{job_id}"))


class RedisLimits:
    """Rate-limit windows (``rl:*``), short locks (``lock:*``), counters and histograms (``metrics:*``)."""

    def __init__(self, conn: RedisConn):
        self.c = conn

    @_unavailable
    def incr(self, name, labels, value=1.0):
        lane = self.c.metrics_lane()
        if lane is not None:
            lane.append(lambda pipe: self._incr(pipe, name, labels, value))
            return
        self._incr(self.c.deferred() or self.c.r, name, labels, value)

    def _incr(self, r, name, labels, value) -> None:
        r.hincrbyfloat(f"{P}metrics:counters", self._field(name, labels), value)

    @_unavailable
    def observe(self, name, labels, value, buckets):
        lane = self.c.metrics_lane()
        if lane is not None:
            lane.append(lambda pipe: self._observe(pipe, name, labels, value, buckets))
            return
        deferred = self.c.deferred()
        pipe = deferred if deferred is not None else self.c.r.pipeline(transaction=False)
        self._observe(pipe, name, labels, value, buckets)
        if deferred is None:
            pipe.execute()

    def _observe(self, pipe, name, labels, value, buckets) -> None:
        f = self._field(name, labels)
        for b in buckets:
            pipe.hincrby(f"{P}metrics:hist:{f}", f"le:{b}", 1 if value <= b else 0)
        pipe.hincrbyfloat(f"{P}metrics:hist:{f}", "sum", value)
        pipe.hincrby(f"{P}metrics:hist:{f}", "count", 1)
        pipe.sadd(f"{P}metrics:hists", f)

    @_unavailable
    def metrics_snapshot(self):
        counters = {}
        for f, v in self.c.r.hgetall(f"{P}metrics:counters").items():
            name, labels = json.loads(f)
            counters[(name, tuple(tuple(x) for x in labels))] = float(v)
        hists = {}
        for f in self.c.r.smembers(f"{P}metrics:hists"):
            name, labels = json.loads(f)
            raw = self.c.r.hgetall(f"{P}metrics:hist:{f}")
            buckets = {float(k[3:]): int(v) for k, v in raw.items() if k.startswith("le:")}
            hists[(name, tuple(tuple(x) for x in labels))] = {
                "buckets": dict(sorted(buckets.items())),
                "sum": float(raw.get("sum", 0)),
                "count": int(raw.get("count", 0)),
            }
        return counters, hists

    @_unavailable
    def rate_limit(self, key, limit, window_s):
        now = time.time()
        window = int(now // window_s)
        k = f"{P}rl:{key}:{window}"
        pipe = self.c.r.pipeline()
        pipe.incr(k)
        pipe.expire(k, window_s + 1)
        n, _ = pipe.execute()
        return (window + 1) * window_s - now if n > limit else None

    @_unavailable
    def try_lock(self, name, ttl):
        return bool(self.c.r.set(f"{P}lock:{name}", "1", nx=True, px=int(ttl * 1000)))

    @staticmethod
    def _field(name: str, labels: dict[str, str]) -> str:
        return json.dumps([name, _labels_key(labels)])


class RedisRetention:
    """The ``expiry`` sorted set: what to delete when."""

    def __init__(self, conn: RedisConn):
        self.c = conn

    @_unavailable
    def schedule_expiry(self, member, at):
        self.c.r.zadd(f"{P}expiry", {member: at})

    @_unavailable
    def extend_expiry(self, member, at):
        (self.c.deferred() or self.c.r).zadd(f"{P}expiry", {member: at}, gt=True)

    @_unavailable
    def due_expiries(self, now, limit=100):
        return self.c.r.zrangebyscore(f"{P}expiry", "-inf", now, start=0, num=limit)

    @_unavailable
    def forget_expiry(self, member):
        self.c.r.zrem(f"{P}expiry", member)


class RedisRegistrations:
    """Models and LoRAs tenants trained (``registry:{tenant}:{kind}`` hashes)."""

    def __init__(self, conn: RedisConn):
        self.c = conn

    @_unavailable
    def register(self, tenant, kind, name, record):
        self.c.r.hset(f"{P}registry:{tenant}:{kind}", name, json.dumps(record))

    @_unavailable
    def registration(self, tenant, kind, name):
        raw = self.c.r.hget(f"{P}registry:{tenant}:{kind}", name)
        return json.loads(raw) if raw else None

    @_unavailable
    def registrations(self, tenant, kind):
        return [json.loads(v) for _, v in sorted(self.c.r.hgetall(f"{P}registry:{tenant}:{kind}").items())]

    @_unavailable
    def unregister(self, tenant, kind, name):
        self.c.r.hdel(f"{P}registry:{tenant}:{kind}", name)


class RedisWebhooks:
    """Webhook deliveries: ``webhook:{id}`` the delivery as JSON, ``webhooks:due`` a sorted set of when each is due."""

    def __init__(self, conn: RedisConn):
        self.c = conn

    @_unavailable
    def add(self, delivery, due):
        deferred = self.c.deferred()
        pipe = deferred if deferred is not None else self.c.r.pipeline()
        pipe.set(f"{P}webhook:{delivery['id']}", json.dumps(delivery))
        pipe.zadd(f"{P}webhooks:due", {delivery["id"]: due})
        if deferred is None:
            pipe.execute()

    @_unavailable
    def claim_due(self, now, lease_s, limit):
        ids = self.c.claim_webhooks(keys=[f"{P}webhooks:due"], args=[now, now + lease_s, limit])
        if not ids:
            return []
        raws = self.c.r.mget([f"{P}webhook:{i}" for i in ids])
        return [json.loads(r) for r in raws if r]

    @_unavailable
    def reschedule(self, delivery, due):
        pipe = self.c.r.pipeline()
        pipe.set(f"{P}webhook:{delivery['id']}", json.dumps(delivery))
        pipe.zadd(f"{P}webhooks:due", {delivery["id"]: due}, xx=True)
        pipe.execute()

    @_unavailable
    def done(self, delivery_id):
        pipe = self.c.r.pipeline()
        pipe.zrem(f"{P}webhooks:due", delivery_id)
        pipe.delete(f"{P}webhook:{delivery_id}")
        pipe.execute()


class RedisBacklogs(RedisBacklog):
    """The backlog on the store's Redis (``core/jobs/backlog.py``), behind the same breaker as the other adapters."""

    def __init__(self, conn: RedisConn):
        super().__init__(conn.r, f"{P}bk:")
        self.c = conn

    heads = _unavailable(RedisBacklog.heads)
    passes = _unavailable(RedisBacklog.passes)
    view = _unavailable(RedisBacklog.view)
    depth = _unavailable(RedisBacklog.depth)

    @_unavailable
    def add(self, queue, job, weight=1.0):
        """Inside a ``batch`` it goes out at the block's end (and answers True)."""
        deferred = self.c.deferred()
        if deferred is None:
            return RedisBacklog.add(self, queue, job, weight)
        deferred.eval(ADD, 0, *self._add_args(queue, job, weight))  # the script's text: no NOSCRIPT to recover from
        return True

    @_unavailable
    def take(self, queue, job_id, charge=True):
        """Inside a ``batch`` it goes out at the block's end (and answers None)."""
        deferred = self.c.deferred()
        if deferred is None:
            return RedisBacklog.take(self, queue, job_id, charge)
        deferred.eval(TAKE, 0, *self._take_args(queue, job_id, charge))
        return None


class RedisUsages(RedisUsage):
    """Device-time accounting on the store's Redis (``core/jobs/usage.py``), behind the breaker."""

    def __init__(self, conn: RedisConn):
        super().__init__(conn.r, f"{P}usage:")
        self.c = conn

    days = _unavailable(RedisUsage.days)

    @_unavailable
    def add(self, tenant, day, model, images, device_ms):
        deferred = self.c.deferred()
        if deferred is None:
            return RedisUsage.add(self, tenant, day, model, images, device_ms)
        self.add_to(deferred, tenant, day, model, images, device_ms)


def redis_store(url: str, job_ttl_s: float = 7 * 24 * 3600, max_connections: int = 64) -> JobStore:
    """The store of distributed mode: the gateway and every worker share it."""
    c = RedisConn(url, job_ttl_s, max_connections)
    return JobStore(
        RedisJobs(c),
        RedisEvents(c),
        RedisLeases(c),
        RedisLimits(c),
        RedisRetention(c),
        RedisRegistrations(c),
        RedisWebhooks(c),
        RedisBacklogs(c),
        RedisUsages(c),
        c,
    )
