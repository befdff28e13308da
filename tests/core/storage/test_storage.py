import time

import httpx
import pytest

from core.storage import LocalStorage, S3Storage, check_key


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a\\b"])
def test_bad_keys_refused(key):
    with pytest.raises(ValueError, match="key"):
        check_key(key)


def test_local_signed_urls(tmp_path):
    s = LocalStorage(tmp_path, "secret", expires_s=60)
    s.put("jobs/j/0.png", b"abc", "image/png")
    s.put("jobs/j/0.png", b"abcd", "image/png")  # a re-run overwrites: one file
    assert s.get("jobs/j/0.png") == b"abcd" and s.content_type("jobs/j/0.png") == "image/png"
    url = s.url("jobs/j/0.png", "http://h")
    q = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert s.verify("jobs/j/0.png", int(q["expires"]), q["sig"])
    assert not s.verify("jobs/j/1.png", int(q["expires"]), q["sig"])
    assert not s.verify("jobs/j/0.png", int(q["expires"]) + 1, q["sig"])
    past = int(time.time()) - 5
    assert not s.verify("jobs/j/0.png", past, s.signature("jobs/j/0.png", past))
    with pytest.raises(KeyError):
        s.get("jobs/none")


def test_local_content_type_without_a_sidecar_comes_from_the_extension(tmp_path):
    """Every write leaves its ``.ct`` sidecar (what a gateway of an earlier version reads); a file without one (a
    later version's, or one put there by hand) is served with the type its extension names, else octet-stream."""
    s = LocalStorage(tmp_path, "secret")
    s.put("jobs/j/0.png", b"odd", "application/octet-stream")
    assert (tmp_path / "jobs/j/.0.png.ct").read_text() == "application/octet-stream"
    assert s.content_type("jobs/j/0.png") == "application/octet-stream"  # the sidecar wins
    for name, want in (("1.png", "image/png"), ("job.json", "application/json"), ("2.WEBP", "image/webp"), ("x", None)):
        (tmp_path / "jobs/j" / name).write_bytes(b"data")
        assert s.content_type(f"jobs/j/{name}") == (want or "application/octet-stream")


def test_s3_storage_against_moto_server(s3_server):
    s = S3Storage(s3_server["bucket"], endpoint_url=s3_server["endpoint"], region="us-east-1", prefix="unit")
    assert s.ping()
    s.put("jobs/x/0.png", b"\x89PNG", "image/png")
    assert s.exists("jobs/x/0.png") and s.get("jobs/x/0.png") == b"\x89PNG"
    assert s.list("jobs/x/") == ["jobs/x/0.png"]
    r = httpx.get(s.url("jobs/x/0.png", "unused"))
    assert r.status_code == 200 and r.content == b"\x89PNG" and r.headers["content-type"] == "image/png"
    with pytest.raises(KeyError):
        s.get("jobs/x/missing.png")
    assert not S3Storage("no-such-bucket", endpoint_url=s3_server["endpoint"], region="us-east-1").ping()


def test_small_puts_go_without_expect_continue_and_large_ones_keep_it(s3_server):
    """botocore's 100-continue exchange stalled a worker's 1-step output PUT (15 ms instead of 5) in up to half of the
    jobs of a run. Bodies under 1 MiB are sent with their headers; larger ones keep the header; the bytes land."""
    s = S3Storage(s3_server["bucket"], endpoint_url=s3_server["endpoint"], region="us-east-1", prefix="expect")
    sent = []
    s.client.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(request.headers))
    small, large = b"\x89PNG" + bytes(range(256)) * 4, bytes(range(256)) * (4096 + 1)  # 1 KiB, just over 1 MiB
    s.put("jobs/e/0.png", small, "image/png")
    s.put("jobs/e/1.bin", large, "application/octet-stream")
    assert "Expect" not in sent[0] and sent[1]["Expect"] == b"100-continue"
    assert s.get("jobs/e/0.png") == small and s.get("jobs/e/1.bin") == large


@pytest.mark.parametrize(
    ("endpoint", "public", "region", "token"),
    [
        ("http://127.0.0.1:9000", None, "us-east-1", None),
        ("http://minio:9000", "https://files.example.com", "eu-west-3", "session-token/with+odd=chars"),
        ("https://s3.example.com:443", None, None, None),
    ],
)
def test_presigned_urls_equal_botocore(monkeypatch, endpoint, public, region, token):
    """The presigner of path-style URLs gives botocore's URL, character for character (same time, same key)."""
    from datetime import UTC, datetime
    from urllib.parse import parse_qs, urlsplit

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    if token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    else:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    s = S3Storage("bucket-1", endpoint_url=endpoint, region=region, public_endpoint_url=public, prefix="tenant a")
    assert s.presigner is not None
    for key in ("jobs/job_1/0.png", "uploads/acme/up_1 x+y=(1)~ü.png.json"):
        theirs = s.signer.generate_presigned_url(
            "get_object", Params={"Bucket": "bucket-1", "Key": s._k(key)}, ExpiresIn=s.expires_s
        )
        at = datetime.strptime(parse_qs(urlsplit(theirs).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert s.presigner.url("bucket-1", s._k(key), s.expires_s, now=at) == theirs
