"""Object stores: the ObjectStore protocol, its two backends, and ``open_store`` to pick one by URL.

Bucket URLs:
- ``file:///absolute/path`` or ``/absolute/path``: LocalStore, the embedded directory bucket;
- ``s3://NAME`` or ``s3://NAME/PREFIX``: S3Store; endpoint, region and credentials come from S3Options
  where given, else from the standard AWS chain.
"""

from __future__ import annotations

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
from tracemirrord.store.s3 import S3Options, S3Store

__all__ = [
    "LocalStore",
    "NotFound",
    "ObjectInfo",
    "ObjectStore",
    "PreconditionFailed",
    "S3Options",
    "S3Store",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "StoredObject",
    "open_store",
]

_SUPPORTED = "file:///absolute/path, an absolute path, or s3://NAME[/PREFIX]"


def open_store(bucket_url: str, s3: S3Options | None = None) -> ObjectStore:
    """Return the store for ``bucket_url`` (ValueError naming the accepted forms if unsupported).

    ``s3`` only applies to ``s3://`` URLs. Nothing is contacted here; call ``check()`` for that.
    """
    if bucket_url.startswith("/"):
        return LocalStore(Path(bucket_url))
    parts = urlsplit(bucket_url)
    if parts.scheme == "file":
        return LocalStore(_file_path(bucket_url, parts.netloc, parts.path))
    if parts.scheme == "s3":
        bucket, prefix = _s3_location(bucket_url, parts.netloc, parts.path)
        return S3Store.from_options(bucket, prefix, s3)
    shown = bucket_url if "@" not in bucket_url else f"{parts.scheme}://..."
    raise ValueError(f"unsupported bucket URL {shown!r}: use {_SUPPORTED}")


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
