"""S3Options: plain settings for the S3 store, importable without loading aiobotocore."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class S3Options:
    """Explicit S3 settings; each one left as None falls back to the standard AWS chain."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    addressing_style: str | None = None  # "path", "virtual" or "auto"
    connect_timeout_s: float | None = None  # None: the S3 store's default
    read_timeout_s: float | None = None
