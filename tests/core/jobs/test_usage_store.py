"""Usage counters in memory and on Redis; the report's sums; the quota's reset time; a batch's device time split."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest

from core.errors import QuotaExceeded
from core.jobs import lifecycle
from core.jobs.execute import device_shares
from core.jobs.usage import MemoryUsage, RedisUsage, check_quota, report
from core.schemas import JobType


@pytest.fixture(params=["memory", "redis"])
def usage(request):
    if request.param == "memory":
        return MemoryUsage()
    import redis

    return RedisUsage(redis.Redis.from_url(request.getfixturevalue("redis_server")), f"test:{uuid.uuid4().hex[:8]}:")


def test_report_sums_by_model_and_day(usage):
    usage.add("a", date(2026, 12, 5), "digits", 2, 1500.0)
    usage.add("a", date(2026, 12, 6), "digits", 1, 250.0)
    usage.add("a", date(2026, 12, 6), "mnist", 4, 1000.0)
    usage.add("b", date(2026, 12, 6), "mnist", 4, 9000.0)
    r = report(usage, "a", 2, datetime(2026, 12, 6, 12, tzinfo=UTC))
    assert (r["jobs"], r["images"], r["device_seconds"]) == (3, 7, 2.75)
    assert r["by_model"] == {
        "digits": {"jobs": 2, "images": 3, "device_seconds": 1.75},
        "mnist": {"jobs": 1, "images": 4, "device_seconds": 1.0},
    }
    assert [d["day"] for d in r["by_day"]] == ["2026-12-05", "2026-12-06"]
    assert report(usage, "a", 1, datetime(2026, 12, 6, 12, tzinfo=UTC))["jobs"] == 2


def test_the_quota_resets_at_midnight_utc(usage):
    usage.add("a", date(2026, 12, 6), "digits", 1, 5000.0)
    check_quota(usage, "a", 5.1, datetime(2026, 12, 6, 23, tzinfo=UTC))
    with pytest.raises(QuotaExceeded) as e:
        check_quota(usage, "a", 5.0, datetime(2026, 12, 6, 23, 0, tzinfo=UTC))
    assert e.value.code == "quota_exceeded" and e.value.retry_after == 3601
    check_quota(usage, "a", 5.0, datetime(2026, 12, 7, 0, 0, 1, tzinfo=UTC))  # a new day


def test_a_batch_splits_its_time_by_images():
    jobs = [lifecycle.new_job(JobType.txt2img, {"num_images": n}, "t") for n in (1, 3)]
    shares = device_shares(jobs, 800.0)
    assert shares == {jobs[0].id: 200.0, jobs[1].id: 600.0}
