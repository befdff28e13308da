"""A bounded load run (LOAD_SECONDS, default 60) against the embedded service: zero errors."""

from __future__ import annotations

import os

import pytest

from bench.load import embedded_server, run_load, table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bounded_load_run_has_no_errors(tmp_path, logs_dir):
    seconds, clients = float(os.environ.get("LOAD_SECONDS", "60")), 8
    proc, url = embedded_server(tmp_path, logs_dir / "load-api.log")
    try:
        r = run_load(url, seconds, clients)
    finally:
        proc.stop()
    print(f"\n{table(r, clients)}")
    assert not r["errors"], r["errors"][:5]
    assert r["jobs"] >= clients  # every client finished at least one job
