"""Where outputs, uploads and job records live: S3 (boto3, presigned URLs) or local disk (HMAC-signed URLs).

Keys are plain relative paths such as ``jobs/{job_id}/0.png``; a re-run of a job writes the same keys.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlencode, urlsplit

from core.errors import StorageUnavailable

T = TypeVar("T")


log = logging.getLogger("diffuserve.storage")


def with_retries(op: Callable[[], T], budget_s: float, transient: Callable[[BaseException], bool], what: str) -> T:
    """Run ``op``, retrying transient failures with exponential backoff (0.2 s doubling to 4 s) for at most
    ``budget_s`` seconds, then raise :class:`StorageUnavailable` (no endpoint or key in its message).

    Written here rather than left to boto's retry config alone: boto counts attempts, and a job needs a bound in time
    (an 8-second outage of the bucket must not fail it, a dead bucket must fail it in about ``budget_s``)."""
    deadline = time.monotonic() + budget_s
    delay = 0.2
    while True:
        try:
            return op()
        except Exception as e:
            if not transient(e):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("storage %s failed for %.0f s: %s", what, budget_s, type(e).__name__)
                raise StorageUnavailable() from e
            time.sleep(min(delay, left))
            delay = min(delay * 2, 4.0)


def upload_key(tenant: str, upload_id: str) -> str:
    """Where an upload lives; its metadata is beside it at ``upload_key(...) + ".json"``."""
    return f"uploads/{tenant}/{upload_id}"


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"key: invalid storage key {key!r}")
    return key


class Storage(ABC):
    """Transient failures are retried for a bounded time, then raise :class:`StorageUnavailable`."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Raise KeyError when the key does not exist."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; no error when it is not there."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix`` (a folder such as ``jobs/{id}/``)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def url(self, key: str, base_url: str) -> str:
        """A URL a client can GET without credentials, valid for the configured expiry."""

    @abstractmethod
    def ping(self) -> bool: ...


# the types a local file's extension names, served when a file has no ``.ct`` sidecar. Every write still leaves one
# (a gateway of an earlier version reads only the sidecar, during a rolling upgrade or after a rollback); a later
# version may stop writing it for these types: a PNG with its sidecar takes 1.38 ms to write, without 0.82 ms (p50
# of 200 writes in a fresh data folder on this project's 2-core machine)
BY_EXTENSION = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".json": "application/json",
}


class LocalStorage(Storage):
    """Files under ``root``, served by the gateway at ``/files/{key}?expires=..&sig=..`` (HMAC-SHA256)."""

    def __init__(self, root: str | Path, signing_key: str, expires_s: int = 3600, retry_budget_s: float = 30.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.signing_key = signing_key.encode()
        self.expires_s = expires_s
        self.retry_budget_s = retry_budget_s

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key, data, content_type):
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic, and a re-run overwrites the same file
            path.with_name(f".{path.name}.ct").write_text(content_type)

        with_retries(write, self.retry_budget_s, lambda e: isinstance(e, OSError), "put")

    def delete(self, key):
        path = self._path(key)
        path.unlink(missing_ok=True)
        path.with_name(f".{path.name}.ct").unlink(missing_ok=True)

    def delete_prefix(self, prefix):
        folder = self._path(prefix.rstrip("/"))
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    def get(self, key):
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        return path.read_bytes()

    def content_type(self, key: str) -> str:
        ct = self._path(key).with_name(f".{Path(key).name}.ct")
        if ct.is_file():
            return ct.read_text()
        return BY_EXTENSION.get(Path(key).suffix.lower(), "application/octet-stream")

    def exists(self, key):
        return self._path(key).is_file()

    def signature(self, key: str, expires: int) -> str:
        return hmac.new(self.signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, key, base_url):
        expires = int(time.time()) + self.expires_s
        q = urlencode({"expires": expires, "sig": self.signature(key, expires)})
        return f"{base_url.rstrip('/')}/files/{quote(key)}?{q}"

    def verify(self, key: str, expires: int, sig: str) -> bool:
        if expires < time.time():
            return False
        return hmac.compare_digest(self.signature(key, expires).encode(), sig.encode("utf-8", "replace"))

    def ping(self):
        return self.root.is_dir() and os.access(self.root, os.W_OK)


class PathStylePresigner:
    """A presigned GET of a path-style URL on an explicit endpoint (AWS Signature V4, query authentication): the URL
    botocore's ``generate_presigned_url`` gives, character for character, in some 30 µs instead of nearly a
    millisecond (botocore runs its whole request pipeline: endpoint rules, events, serializers) on every job read
    that shows an output. ``credentials``: botocore's, read afresh each time (temporary ones rotate)."""

    def __init__(self, endpoint_url: str, region: str, credentials):
        parts = urlsplit(endpoint_url)
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        self.host = parts.hostname if parts.port in (None, default_port) else f"{parts.hostname}:{parts.port}"
        self.base = f"{parts.scheme}://{parts.netloc}"  # as given; the signed host leaves a default port out
        self.region = region
        self.credentials = credentials
        self._signing_keys: dict[tuple[str, str], bytes] = {}  # (secret, day) -> the day's signing key

    def _signing_key(self, secret: str, day: str) -> bytes:
        found = self._signing_keys.get((secret, day))
        if found is None:
            k = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._signing_keys = {(secret, day): k}  # one day's key is all that is needed
            found = k
        return found

    def url(self, bucket: str, key: str, expires_s: int, now: datetime | None = None) -> str:
        c = self.credentials.get_frozen_credentials()
        amz_date = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        scope = f"{day}/{self.region}/s3/aws4_request"
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{c.access_key}/{scope}",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires_s),
            "X-Amz-SignedHeaders": "host",
        }
        if c.token:
            params["X-Amz-Security-Token"] = c.token
        encoded = {k: quote(v, safe="-_.~") for k, v in params.items()}
        signed_query = "&".join(f"{k}={encoded[k]}" for k in sorted(encoded))
        path = f"/{quote(bucket, safe='-_.~')}/{quote(key, safe='/-_.~')}"
        canonical = f"GET\n{path}\n{signed_query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(c.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        query = "&".join(f"{k}={v}" for k, v in encoded.items())  # botocore's order: the token after the rest
        return f"{self.base}{path}?{query}&X-Amz-Signature={signature}"


EXPECT_CONTINUE_MIN_BYTES = 1 << 20


def _expect_continue_for_large_bodies(request, **_: object) -> None:
    """botocore asks for ``Expect: 100-continue`` on every PutObject, waits for the server's interim answer and reads
    it one byte per system call. That extra exchange stalled about 10 ms in 2-4% of small PUTs to moto_server, and in
    up to half of a worker's output PUTs while its other threads ran (bench/README.md, "The output PUT's
    100-continue"). The header spares sending a body the server would refuse; under 1 MiB that saving is smaller than
    the exchange, so such a body goes with its headers (larger ones keep it)."""
    from botocore.utils import determine_content_length

    size = determine_content_length(request.body)
    if size is not None and size < EXPECT_CONTINUE_MIN_BYTES and "Expect" in request.headers:
        del request.headers["Expect"]


class S3Storage(Storage):
    """An S3-compatible bucket through boto3 (AWS S3, MinIO, moto_server). Credentials: the standard AWS_* chain."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        expires_s: int = 3600,
        public_endpoint_url: str | None = None,
        prefix: str = "",
        retry_budget_s: float = 30.0,
    ):
        import boto3
        from botocore.config import Config

        # boto retries each call twice within a few seconds; with_retries bounds the whole in time. Checksums only
        # where the API requires them: boto's default CRC on every PUT cost 3 ms per object against moto_server, and
        # S3-compatible stores (older MinIO, Ceph) refuse the new checksum headers; TLS already guards the bytes
        cfg = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            signature_version="s3v4",
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=15,
        )
        self.retry_budget_s = retry_budget_s
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.expires_s = expires_s
        session = boto3.session.Session()
        self.client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg)
        self.client.meta.events.register("before-sign.s3.PutObject", _expect_continue_for_large_bodies)
        # presigned URLs must name a host the client can reach (e.g. MinIO behind compose's network)
        self.signer = (
            session.client("s3", endpoint_url=public_endpoint_url, region_name=region, config=cfg)
            if public_endpoint_url
            else self.client
        )
        # an explicit endpoint (MinIO, moto_server, or S3 named by URL) and path-style keys: presigned here, the same
        # URL botocore gives (tests/core/test_storage.py holds them equal), 30 times cheaper; else botocore
        signer_endpoint = public_endpoint_url or endpoint_url
        credentials = session.get_credentials()
        self.presigner = (
            PathStylePresigner(signer_endpoint, self.signer.meta.region_name, credentials)
            if signer_endpoint and credentials is not None and self.signer.meta.region_name
            else None
        )

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    @staticmethod
    def _transient(e: BaseException) -> bool:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        if isinstance(e, (ConnectionError, HTTPClientError)):
            return True
        if isinstance(e, ClientError):
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return status >= 500 or e.response.get("Error", {}).get("Code") in (
                "SlowDown",
                "Throttling",
                "RequestTimeout",
            )
        return False

    def _call(self, what: str, op: Callable[[], T]) -> T:
        return with_retries(op, self.retry_budget_s, self._transient, what)

    def put(self, key, data, content_type):
        k = self._k(key)
        self._call(
            "put", lambda: self.client.put_object(Bucket=self.bucket, Key=k, Body=data, ContentType=content_type)
        )

    def get(self, key):
        from botocore.exceptions import ClientError

        k = self._k(key)
        try:
            return self._call("get", lambda: self.client.get_object(Bucket=self.bucket, Key=k)["Body"].read())
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key) from e
            raise

    def delete(self, key):
        k = self._k(key)
        self._call("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=k))

    def delete_prefix(self, prefix):
        keys = self._call("list", lambda: self.list(prefix))
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[i : i + 1000]]
            self._call("delete", lambda b=batch: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": b}))

    def exists(self, key):
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError:
            return False

    def list(self, prefix: str) -> list[str]:
        out, token = [], None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self.client.list_objects_v2(**kw)
            out += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def url(self, key, base_url):
        if self.presigner is not None:
            return self.presigner.url(self.bucket, self._k(key), self.expires_s)
        return self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._k(key)}, ExpiresIn=self.expires_s
        )

    def ping(self):
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
