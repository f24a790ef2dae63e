"""Object stores: the ObjectStore protocol, its two backends, and ``open_store`` to pick one by URL.

Bucket URLs:
- ``file:///absolute/path`` or ``/absolute/path``: LocalStore, the embedded directory bucket;
- ``s3://NAME`` or ``s3://NAME/PREFIX``: S3Store; endpoint, region and credentials come from S3Options
  where given, else from the standard AWS chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tracemirrord.store.base import (
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoredObject,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from tracemirrord.store.local import LocalStore
from tracemirrord.store.options import S3Options

__all__ = [
    "BucketLocation",
    "LocalStore",
    "NotFound",
    "ObjectInfo",
    "ObjectStore",
    "PreconditionFailed",
    "S3Options",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "StoredObject",
    "open_store",
    "parse_bucket_url",
]

_SUPPORTED = "file:///absolute/path, an absolute path, or s3://NAME[/PREFIX]"


@dataclass(frozen=True, slots=True)
class BucketLocation:
    """A parsed bucket URL: a local directory, or an S3 bucket and key prefix."""

    scheme: str  # "file" or "s3"
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""


def parse_bucket_url(bucket_url: str) -> BucketLocation:
    """Parse a bucket URL without contacting anything (ValueError naming the accepted forms)."""
    if bucket_url.startswith("/"):
        return BucketLocation("file", path=Path(bucket_url))
    parts = urlsplit(bucket_url)
    if parts.scheme == "file":
        return BucketLocation("file", path=_file_path(_masked(bucket_url), parts.netloc, parts.path))
    if parts.scheme == "s3":
        bucket, prefix = _s3_location(_masked(bucket_url), parts.netloc, parts.path)
        return BucketLocation("s3", bucket=bucket, prefix=prefix)
    raise ValueError(f"unsupported bucket URL {_masked(bucket_url)!r}: use {_SUPPORTED}")


def _masked(url: str) -> str:
    """The URL with any user:password@ part hidden, fit for a message."""
    return re.sub(r"//[^/@\s]*@", "//***@", url)


def open_store(bucket_url: str, s3: S3Options | None = None) -> ObjectStore:
    """Return the store for ``bucket_url`` (ValueError naming the accepted forms if unsupported).

    ``s3`` only applies to ``s3://`` URLs. Nothing is contacted here; call ``check()`` for that.
    """
    location = parse_bucket_url(bucket_url)
    if location.scheme == "file":
        assert location.path is not None
        return LocalStore(location.path)
    from tracemirrord.store.s3 import S3Store  # aiobotocore costs ~30 MB: load it only for s3://

    return S3Store.from_options(location.bucket, location.prefix, s3)


def _file_path(url: str, host: str, path: str) -> Path:
    if host not in ("", "localhost"):
        raise ValueError(f"file bucket URL {url!r} names a host; use file:///absolute/path")
    local = unquote(path)
    if not local.startswith("/"):
        raise ValueError(f"file bucket URL {url!r} must hold an absolute path")
    return Path(local)


def _s3_location(url: str, netloc: str, path: str) -> tuple[str, str]:
    if "@" in netloc:
        raise ValueError("S3 bucket URL must not hold credentials; use the AWS chain or S3Options")
    if not netloc:
        raise ValueError(f"S3 bucket URL {url!r} has no bucket name; use s3://NAME[/PREFIX]")
    return netloc, path.strip("/")
