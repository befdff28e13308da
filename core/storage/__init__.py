"""Where outputs, uploads and job records live: S3 (boto3, presigned URLs) or local disk (HMAC-signed URLs).

Keys are plain relative paths such as ``jobs/{job_id}/0.png``; a re-run of a job writes the same keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import quote, urlencode


class StorageError(Exception):
    pass


def upload_key(tenant: str, upload_id: str) -> str:
    """Where an upload lives; its metadata is beside it at ``upload_key(...) + ".json"``."""
    return f"uploads/{tenant}/{upload_id}"


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"key: invalid storage key {key!r}")
    return key


class Storage(ABC):
    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Raise KeyError when the key does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def url(self, key: str, base_url: str) -> str:
        """A URL a client can GET without credentials, valid for the configured expiry."""

    @abstractmethod
    def ping(self) -> bool: ...


class LocalStorage(Storage):
    """Files under ``root``, served by the gateway at ``/files/{key}?expires=..&sig=..`` (HMAC-SHA256)."""

    def __init__(self, root: str | Path, signing_key: str, expires_s: int = 3600):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.signing_key = signing_key.encode()
        self.expires_s = expires_s

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key, data, content_type):
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic, and a re-run overwrites the same file
        path.with_name(f".{path.name}.ct").write_text(content_type)

    def get(self, key):
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        return path.read_bytes()

    def content_type(self, key: str) -> str:
        ct = self._path(key).with_name(f".{Path(key).name}.ct")
        return ct.read_text() if ct.is_file() else "application/octet-stream"

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
        return hmac.compare_digest(self.signature(key, expires), sig)

    def ping(self):
        return self.root.is_dir() and os.access(self.root, os.W_OK)


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
    ):
        import boto3
        from botocore.config import Config

        cfg = Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"})
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.expires_s = expires_s
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg)
        # presigned URLs must name a host the client can reach (e.g. MinIO behind compose's network)
        self.signer = (
            boto3.client("s3", endpoint_url=public_endpoint_url, region_name=region, config=cfg)
            if public_endpoint_url
            else self.client
        )

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key, data, content_type):
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, ContentType=content_type)

    def get(self, key):
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key) from e
            raise

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
        return self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._k(key)}, ExpiresIn=self.expires_s
        )

    def ping(self):
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
