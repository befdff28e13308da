"""Registrations (a tenant's named records: LoRAs, Replicate files) in memory and on Redis: add, read, remove, and
one tenant's never seen by another."""

from __future__ import annotations

import uuid

import pytest

from core.jobs.store import memory_store


@pytest.fixture(params=["memory", "redis"])
def registrations(request):
    if request.param == "memory":
        return memory_store().registrations
    from core.jobs.redis_store import redis_store

    return redis_store(request.getfixturevalue("redis_server")).registrations


def test_unregister_removes_one_name_of_one_tenant(registrations):
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    registrations.register(a, "file", "x", {"id": "x", "size": 1})
    registrations.register(a, "file", "y", {"id": "y", "size": 2})
    registrations.register(b, "file", "x", {"id": "x", "size": 3})
    registrations.unregister(a, "file", "x")
    registrations.unregister(a, "file", "never-there")  # no error
    assert registrations.registration(a, "file", "x") is None
    assert [r["id"] for r in registrations.registrations(a, "file")] == ["y"]
    assert registrations.registration(b, "file", "x") == {"id": "x", "size": 3}  # the other tenant's is untouched
