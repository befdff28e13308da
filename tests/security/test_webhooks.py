"""Attacks through webhooks: a receiver that floods its answer or drips it (findings 2 and 3), and targets written in
IPv6 forms that carry an IPv4 address (finding 6). Every outbound attempt is bounded: a wall-clock deadline, the body
never read, a per-tenant and per-host share of a small pool, and the lease renewed while an attempt runs."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import httpx
import psutil
import pytest

from core import webhooks
from core.errors import InputError
from core.jobs.store import memory_store
from tests.api.test_webhooks import Receiver
from tests.conftest import Proc, free_port, gateway_cmd, wait_for

FLOOD_BYTES = 200 * 2**20


class Hostile:
    """A receiver on loopback that reads each request, then answers 200 with a 200 MB body (``flood``) or sends its
    answer one byte every ``drip_s`` seconds (``drip``). Counts connections and bytes it got out."""

    def __init__(self, mode: str, drip_s: float = 5.0):
        self.mode, self.drip_s = mode, drip_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.stop = threading.Event()
        self.connections = 0
        self.fast = 0
        self.sent = 0
        self.ids: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"webhook-id:"):
                    self.ids.append(line.split(b":", 1)[1].strip().decode())
            if b" /fast" in head.split(b"\r\n", 1)[0]:  # a path of another tenant's on this same receiver
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                self.fast += 1
            elif self.mode == "flood":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % FLOOD_BYTES)
                chunk = b"x" * 2**20
                while self.sent < FLOOD_BYTES and not self.stop.is_set():
                    conn.sendall(chunk)
                    self.sent += len(chunk)
            else:
                for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n":
                    conn.sendall(bytes([byte]))
                    self.sent += 1
                    if self.stop.wait(self.drip_s):
                        break
        except OSError:
            pass  # the deliverer hung up: what the attack meets
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, logs_dir):
    """The embedded gateway as `make run` starts it, with two tenants and loopback receivers allowed."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET", "API_KEYS")}
    env.update(
        DATA_DIR=str(tmp_path_factory.mktemp("hostile-webhooks")),
        TORCH_THREADS="1",
        API_KEYS="mallory:key-m,alice:key-a",
        WEBHOOK_ALLOW_PRIVATE="1",
        WEBHOOK_BACKOFF_S="0.5",
    )
    proc = Proc(gateway_cmd(port), logs_dir / "hostile-webhooks.log", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, 30, what="gateway")
    yield url, psutil.Process(proc.pid)
    proc.stop()


def job(url: str, key: str, webhook: str | None, seed: int) -> dict:
    body = {"prompt": "4", "num_inference_steps": 2, "seed": seed, **({"webhook": webhook} if webhook else {})}
    headers = {"Authorization": f"Bearer {key}", "Prefer": "wait=60"}
    r = httpx.post(url + "/v1/txt2img", json=body, headers=headers, timeout=90)  # the wait, and a cold start (torch)
    assert r.status_code in (200, 201), r.text
    assert r.json()["status"] == "succeeded", r.json()
    return r.json()


def test_a_flooding_and_a_dripping_receiver_cost_no_memory_and_do_not_delay_another_tenant(gateway):
    url, proc = gateway
    job(url, "key-a", None, 0)  # torch and digits loaded: what follows is the webhooks' cost alone
    job(url, "key-m", None, 0)
    baseline = proc.memory_info().rss
    peak = [baseline]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            sampling.wait(0.05)

    threading.Thread(target=sample, daemon=True).start()
    flood, drip, honest = Hostile("flood"), Hostile("drip", drip_s=5.0), Receiver()
    try:
        # mallory: two receivers, three jobs each, every attempt slow or huge
        for seed in range(3):
            job(url, "key-m", flood.url, seed)
            job(url, "key-m", drip.url, seed)
        wait_for(lambda: flood.connections >= 1 and drip.connections >= 1, 15, what="both hostile receivers called")
        # alice, meanwhile: her webhook arrives within 5 s of her job's event
        mine = job(url, "key-a", honest.url, 9)
        got = wait_for(lambda: honest.got, 15, what="alice's webhook")
        finished = time.time() if not mine["finished_at"] else _epoch(mine["finished_at"])
        delay = got[0]["at"] - finished
        print(f"\nalice's webhook arrived {delay:.2f} s after her job finished")
        assert delay < 5.0
        # the flood: its body was never read (what got out is what the sockets buffer, not 200 MB)
        wait_for(lambda: flood.connections >= 2, 20, what="the flood retried")
        assert flood.sent < 32 * 2**20, flood.sent
        # the drip: each attempt cut at its wall-clock deadline (10 s), not after the whole answer
        wait_for(lambda: drip.connections >= 3, 40, what="drip attempts cut off and retried")
        assert drip.sent < 10  # a handful of bytes per attempt: never the whole status line
        growth = (peak[0] - baseline) / 2**20
        print(f"gateway RSS: baseline {baseline / 2**20:.1f} MB, peak {peak[0] / 2**20:.1f} MB (+{growth:.1f} MB)")
        assert growth < 20.0
        # mallory's attempts are on her jobs, each with its error
        jobs = httpx.get(url + "/v1/jobs?limit=10", headers={"Authorization": "Bearer key-m"}).json()["data"]
        errors = [a["error"] for j in jobs for a in j["webhooks"] if a["error"]]
        assert any("no answer within" in e for e in errors), errors
    finally:
        sampling.set()
        flood.close()
        drip.close()
        honest.close()


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_an_attempt_in_flight_keeps_its_lease_so_a_second_gateway_does_not_send_it_again(monkeypatch):
    """Two gateways (two deliverers on one store); an attempt outlasts the lease: renewed, so it is sent once."""
    monkeypatch.setattr(webhooks, "LEASE_S", 0.6)
    store = memory_store()
    drip = Hostile("drip", drip_s=0.5)
    stop = threading.Event()
    try:
        store.webhooks.add(_delivery("msg_slow", "mallory", drip.url), time.time())
        for _ in range(2):
            webhooks.Deliverer(store, webhooks.new_secret(), lambda k, b: k, allow_private=True, timeout_s=3.0).start(
                stop
            )
        wait_for(lambda: drip.connections >= 1, 10, what="the first attempt")
        t0 = time.monotonic()
        wait_for(lambda: time.monotonic() - t0 > 2.5, 5, interval=0.1, what="five leases' time")
        assert drip.connections == 1 and drip.ids == ["msg_slow"]  # nobody claimed it meanwhile
    finally:
        stop.set()
        drip.close()


def test_a_tenant_at_its_share_waits_while_another_tenant_is_delivered_at_once():
    """The pool's share: mallory's four slow deliveries hold two slots; alice's is sent in the same instant."""
    store = memory_store()
    drip = Hostile("drip", drip_s=1.0)
    honest = Receiver()
    stop = threading.Event()
    try:
        now = time.time()
        for i in range(4):
            store.webhooks.add(_delivery(f"msg_m{i}", "mallory", drip.url), now)
        store.webhooks.add(_delivery("msg_a", "alice", honest.url), now + 0.001)
        webhooks.Deliverer(
            store, webhooks.new_secret(), lambda k, b: k, allow_private=True, timeout_s=5.0, per_tenant=2
        ).start(stop)
        got = wait_for(lambda: honest.got, 3, what="alice's delivery")
        assert got[0]["headers"]["webhook-id"] == "msg_a"
        assert drip.connections == 2  # mallory's share, the other two wait for a free slot
    finally:
        stop.set()
        drip.close()
        honest.close()


def test_a_tenant_filling_a_shared_receiver_with_slow_paths_does_not_hold_another_tenants_path_there():
    """One receiver host for both (a public request-bin, say): mallory's paths there drip, alice's answers at once.
    Mallory holds her two slots; the receiver's others are still free for alice."""
    store = memory_store()
    shared = Hostile("drip", drip_s=1.0)
    stop = threading.Event()
    try:
        now = time.time()
        for i in range(6):
            store.webhooks.add(_delivery(f"msg_m{i}", "mallory", f"{shared.url}/slow{i}"), now)
        store.webhooks.add(_delivery("msg_a", "alice", shared.url.replace("/hook", "/fast")), now + 0.001)
        webhooks.Deliverer(store, webhooks.new_secret(), lambda k, b: k, allow_private=True, timeout_s=5.0).start(stop)
        wait_for(lambda: shared.fast == 1, 3, what="alice's delivery to the shared receiver")
        assert shared.ids.count("msg_a") == 1 and len([i for i in shared.ids if i.startswith("msg_m")]) == 2
    finally:
        stop.set()
        shared.close()


@pytest.mark.parametrize("url", ["http://example.com:99999/", "http://example.com:-1/", "http://[::1:99999/"])
def test_a_webhook_url_with_an_unreadable_port_is_a_422_not_a_500(url):
    with pytest.raises(InputError) as e:
        webhooks.check_target(url, allow_private=True)
    assert e.value.field == "webhook"


def _delivery(delivery_id: str, tenant: str, url: str) -> dict:
    return {
        "id": delivery_id,
        "job_id": f"job_{delivery_id}",
        "tenant": tenant,
        "url": url,
        "type": "job.completed",
        "data": {"id": f"job_{delivery_id}", "output": []},
        "created": time.time(),
        "attempts": 0,
    }


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address 169.254.169.254
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/",  # 6to4 of 169.254.169.254
        "http://[2002:808:808::1]/",  # 6to4, even of a public address: relayed, never a receiver
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
        "http://[::169.254.169.254]/",  # IPv4-compatible
        "http://[::a00:1]/",
        "http://[::ffff:0:a9fe:a9fe]/",  # IPv4-translated
        "http://[64:ff9b:1::a9fe:a9fe]/",  # NAT64 local-use prefix
        "http://[::ffff:10.0.0.1]/",  # IPv4-mapped private
    ],
)
def test_ipv6_forms_that_carry_an_ipv4_address_are_refused(url):
    with pytest.raises(InputError) as e:
        webhooks.check_target(url, allow_private=False)
    assert e.value.field == "webhook"


@pytest.mark.parametrize(
    "url", ["http://[64:ff9b::a9fe:a9fe]/", "http://[2002:a9fe:a9fe::1]/", "http://[::a9fe:a9fe]/"]
)
def test_metadata_through_ipv6_forms_is_refused_even_where_private_addresses_are_allowed(url):
    with pytest.raises(InputError):
        webhooks.check_target(url, allow_private=True)


def test_nat64_of_a_public_address_is_judged_as_that_address():
    webhooks.check_target("http://[64:ff9b::808:808]/", allow_private=False)  # 8.8.8.8 behind DNS64/NAT64


def test_a_burst_to_a_fast_receiver_is_not_held_back_by_the_tenants_share():
    """Eight jobs of one tenant end together: two at a time, but each next one starts as a slot frees, not later."""
    store, honest, stop = memory_store(), Receiver(), threading.Event()
    try:
        now = time.time()
        for _ in range(8):
            store.webhooks.add(_delivery(f"msg_{uuid.uuid4().hex}", "alice", honest.url), now)
        t0 = time.monotonic()
        webhooks.Deliverer(store, webhooks.new_secret(), lambda k, b: k, allow_private=True).start(stop)
        wait_for(lambda: len(honest.got) == 8, 5, what="the whole burst")
        print(f"\neight webhooks of one tenant to a fast receiver: {time.monotonic() - t0:.2f} s")
        assert time.monotonic() - t0 < 3.0
    finally:
        stop.set()
        honest.close()


def test_a_jobs_events_arrive_in_the_order_they_happened():
    """Ids are random (msg_<uuid>): the line is ordered by when each event was made."""
    store, honest, stop = memory_store(), Receiver(), threading.Event()
    try:
        now = time.time()
        kinds = ["job.start", *["job.progress"] * 5, "job.output", "job.completed"]
        for i, kind in enumerate(kinds):
            delivery = _delivery(f"msg_{uuid.uuid4().hex}", "alice", honest.url)
            delivery.update(job_id="job_one", type=kind, created=now + i * 0.001)
            store.webhooks.add(delivery, now)
        webhooks.Deliverer(store, webhooks.new_secret(), lambda k, b: k, allow_private=True).start(stop)
        wait_for(lambda: len(honest.got) == len(kinds), 10, what="every event")
        assert [json.loads(g["body"])["type"] for g in honest.got] == kinds
    finally:
        stop.set()
        honest.close()


def test_lookups_that_hang_hold_only_their_tenants_dns_share_and_are_retried_once_the_name_resolves(
    monkeypatch, caplog
):
    """Mallory's receiver is named through a DNS server that never answers: each attempt gives up at its deadline, but
    its lookup stays blocked in getaddrinfo, holding a DNS thread. Her hung lookups hold at most her share of the DNS
    pool (her later attempts fail ``dns_busy`` and are retried), so alice's lookup still finds a thread and her
    delivery goes out at once; once the name resolves, mallory's deliveries go out too."""
    real = socket.getaddrinfo
    answer, lock = threading.Event(), threading.Lock()
    hanging = {"now": 0, "most": 0}  # lookups of the hung name blocked in getaddrinfo: now, and the most at once

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "hung.example":
            with lock:
                hanging["now"] += 1
                hanging["most"] = max(hanging["most"], hanging["now"])
            try:
                answer.wait(60)  # set by the test, at the latest when it ends
            finally:
                with lock:
                    hanging["now"] -= 1
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    def attempts() -> list[logging.LogRecord]:  # mallory's attempts, as the deliverer logs them
        return [r for r in caplog.records if r.getMessage().startswith("webhook msg_m")]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    caplog.set_level(logging.INFO, logger="diffuserve.webhooks")
    store, mallorys, honest, stop = memory_store(), Receiver(), Receiver(), threading.Event()
    try:
        now, hung_url = time.time(), mallorys.url.replace("127.0.0.1", "hung.example")
        for i in range(6):
            store.webhooks.add(_delivery(f"msg_m{i}", "mallory", hung_url), now)
        deliverer = webhooks.Deliverer(
            store, webhooks.new_secret(), lambda k, b: k, allow_private=True, timeout_s=0.5, backoff_s=0.05,
            concurrency=4, per_tenant=2,
        )  # fmt: skip
        deliverer.start(stop)
        # mallory's attempts: each abandoned at its deadline, its lookup left hanging, and retried; eight of them
        # would leave every DNS thread blocked if each retry took another one
        wait_for(lambda: len(attempts()) >= 8, 15, what="mallory's attempts retried")
        store.webhooks.add(_delivery("msg_a", "alice", honest.url), time.time())
        got = wait_for(lambda: honest.got, 3, what="alice's delivery while mallory's lookups hang")
        assert got[0]["headers"]["webhook-id"] == "msg_a"
        assert hanging["most"] <= 2 and hanging["now"] == 2  # mallory's share of the DNS pool, never more
        assert any("dns_busy" in r.getMessage() for r in attempts())  # her later attempts: refused, not queued
        assert mallorys.got == []
        answer.set()  # the DNS answers: the next attempts resolve, and every one of mallory's events goes out
        wait_for(lambda: len(mallorys.got) == 6, 20, what="mallory's deliveries once her name resolves")
        assert sorted(g["headers"]["webhook-id"] for g in mallorys.got) == [f"msg_m{i}" for i in range(6)]
        wait_for(lambda: not deliverer._resolving, 5, what="every lookup's count released")
    finally:
        answer.set()
        stop.set()
        mallorys.close()
        honest.close()
