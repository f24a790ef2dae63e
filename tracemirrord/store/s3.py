"""The S3 backend of the ObjectStore protocol, on aiobotocore (for AWS, MinIO, R2; tested on moto).

Owns: how a bucket URL's parts (bucket, key prefix, endpoint, credentials) become one lazily created
client; how S3 answers map onto the store errors of ``base.py``; timeouts; and the retry policy.

Retries happen in one place, here: botocore's own retry loop is off (one try per botocore call), and
``_call`` makes up to ``retry_attempts`` tries with capped exponential backoff and full jitter, never
starting a new try after ``retry_budget_s``. So the requests one call can send are bounded and counted
in one place. Only StoreUnavailable causes (5xx, 429, throttling, refused or reset connections,
timeouts) are retried; an answer (412, 404, 403, a missing bucket) never is.

Every try is bounded in time: botocore's connect and read timeouts, and around the whole try a
deadline (connect + read + the body at ``min_upload_bytes_per_s``), which also ends a request whose
body a server stopped reading (a socket write has no timeout of its own).

Requests are kept small, since per-request overhead is part of the cost goal: no optional checksums, a
short User-Agent, and the unsigned informational headers (``amz-sdk-invocation-id``, ``amz-sdk-request``,
``Expect: 100-continue``) are dropped before sending.

ETags are returned without quotes everywhere; ``if_match`` accepts either form.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import anyio
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from tracemirrord import __version__
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
from tracemirrord.store.local import normalize_metadata, validate_key, validate_prefix
from tracemirrord.store.options import S3Options
from tracemirrord.timers import timeout_s

T = TypeVar("T")

USER_AGENT = f"tracemirror/{__version__}"
_DROPPED_HEADERS = ("amz-sdk-invocation-id", "amz-sdk-request", "Expect")
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
    }
)
# What a refusal means, for the codes a person can act on (the server's own message may quote a key
# or a signature's inputs, so for these it is not repeated).
_REFUSAL_CAUSES = {
    "InvalidAccessKeyId": (
        "the access key id is not known to the store (InvalidAccessKeyId): check AWS_ACCESS_KEY_ID, "
        "AWS_PROFILE or TRACEMIRROR_S3__ACCESS_KEY_ID"
    ),
    "SignatureDoesNotMatch": (
        "the secret access key does not match the access key id (SignatureDoesNotMatch): check "
        "AWS_SECRET_ACCESS_KEY or TRACEMIRROR_S3__SECRET_ACCESS_KEY"
    ),
    "ExpiredToken": "the session token has expired (ExpiredToken): renew the credentials",
    "ExpiredTokenException": "the session token has expired (ExpiredTokenException): renew the credentials",
    "TokenRefreshRequired": "the session token has expired (TokenRefreshRequired): renew the credentials",
    "InvalidToken": "the session token is not valid (InvalidToken): check AWS_SESSION_TOKEN",
    "AccessDenied": (
        "access denied (AccessDenied): the credentials may not read, write or list this prefix "
        "(see docs/s3.md, Least privilege)"
    ),
    "AllAccessDisabled": "all access to the bucket is disabled (AllAccessDisabled)",
    "AccountProblem": "the account has a problem that stops this request (AccountProblem)",
    "RequestTimeTooSkewed": (
        "this machine's clock is too far from the store's (RequestTimeTooSkewed): set the system clock"
    ),
    "NotImplemented": "the store does not implement this request (NotImplemented)",
}
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, ProfileNotFound, NoRegionError)
_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError)
_LIST_PAGE_KEYS = 1000
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 20.0
# A try may take connect + read timeouts plus its body at this rate (1 Mbit/s) before it is abandoned.
MIN_UPLOAD_BYTES_PER_S = 128 * 1024
_URL_USERINFO = re.compile(r"//[^/@\s]*@")

log = structlog.get_logger("tracemirrord.store.s3")


# Connections kept to the endpoint. botocore's default of 10 silently capped a backfill at ten
# requests in flight whatever upload_concurrency said (measured: c=8 and c=16 both peaked at 10).
MAX_POOL_CONNECTIONS = 32


class S3Store:
    """An ObjectStore over one S3 bucket, optionally under a key prefix (``s3://NAME/PREFIX``).

    A note on retried create-only writes: if a ``put(..., if_none_match=True)`` attempt lands but its
    answer is lost (connection reset, timeout), the retry finds the key present and S3 answers 412. This
    store does not hide that: it raises PreconditionFailed, exactly as for a genuine conflict. The caller
    tells the two apart by heading the key and comparing the sha256 it put in the metadata. The same holds
    for ``if_match``: a landed first attempt changes the ETag, so the retry fails its precondition.

    HEAD answers carry no error code, so ``head`` in a missing bucket raises NotFound; ``check`` (and
    every other call) reports a missing bucket as StoreRejected.

    A bucket found missing may come back empty (deleted and created again): what was read of it is
    stale. So once a call met NoSuchBucket, the next one first asks whether the bucket is back; if it
    is, ``epoch`` moves on (the daemon reads every session again from what the bucket holds) and that
    call fails once as an outage, so nothing is written on what was known of the old bucket.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        addressing_style: str | None = None,
        max_attempts: int = 1,  # botocore's own tries per call: 1, since _call does the retrying
        retry_attempts: int = 4,
        retry_budget_s: float = 10.0,
        retry_base_s: float = 0.25,
        retry_cap_s: float = 4.0,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        min_upload_bytes_per_s: float = MIN_UPLOAD_BYTES_PER_S,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        if self._prefix:
            validate_key(self._prefix)
        self._endpoint_url = endpoint_url or _endpoint_from_env()
        self._region = region
        self._credentials = (access_key_id, secret_access_key, session_token)
        self._profile = profile
        self._addressing_style = addressing_style or ("path" if self._endpoint_url else None)
        self._max_attempts = max_attempts
        self._retry_attempts = max(1, retry_attempts)
        self._retry_budget_s = retry_budget_s
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._min_upload_bytes_per_s = min_upload_bytes_per_s
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._client_lock = anyio.Lock()
        self._epoch = 0
        self._bucket_lost = False  # a call met NoSuchBucket: the next asks whether it is back
        self._back_lock = anyio.Lock()

    @classmethod
    def from_options(cls, bucket: str, prefix: str = "", options: S3Options | None = None) -> S3Store:
        """Build a store from S3Options (None: everything from the standard AWS chain)."""
        o = options or S3Options()
        return cls(
            bucket,
            prefix,
            endpoint_url=o.endpoint_url,
            region=o.region,
            access_key_id=o.access_key_id,
            secret_access_key=o.secret_access_key,
            session_token=o.session_token,
            profile=o.profile,
            addressing_style=o.addressing_style,
            connect_timeout_s=o.connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S,
            read_timeout_s=o.read_timeout_s or DEFAULT_READ_TIMEOUT_S,
        )

    @property
    def epoch(self) -> int:
        """Changes when the bucket was found missing and then back: what was read before is stale."""
        return self._epoch

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._bucket

    @property
    def prefix(self) -> str:
        """The key prefix every key is stored under ("" for none), without slashes at either end."""
        return self._prefix

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``, followed by the endpoint (without any userinfo) when custom."""
        base = f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"
        if not self._endpoint_url:
            return base
        parts = urlsplit(self._endpoint_url)
        return f"{base} (endpoint {parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''})"

    # -- the protocol --------------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        """PutObject, conditional on If-None-Match: * or If-Match; returns the new ETag unquoted."""
        params: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": self._full_key(validate_key(key)),
            "Body": bytes(body),
            "ContentType": content_type,
        }
        meta = normalize_metadata(metadata)
        if meta:
            params["Metadata"] = meta
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = f'"{_unquote(if_match)}"'

        async def attempt() -> str:
            client = await self._get_client()
            response = await client.put_object(**params)
            return _unquote(response["ETag"])

        try:
            return await self._call("put", key, attempt, len(params["Body"]))
        except NotFound as exc:  # If-Match on a missing key: S3 answers 404; the contract says 412
            raise PreconditionFailed(f"{self.url}: put {key}: no object to match {if_match!r}") from exc

    async def get(self, key: str) -> StoredObject:
        """GetObject: the whole body and what HEAD would say (NotFound if absent)."""
        full = self._full_key(validate_key(key))

        async def attempt() -> StoredObject:
            client = await self._get_client()
            response = await client.get_object(Bucket=self._bucket, Key=full)
            async with response["Body"] as stream:
                body = await stream.read()
            return StoredObject(body=body, info=_info(key, response, size=len(body)))

        return await self._call("get", key, attempt)

    async def head(self, key: str) -> ObjectInfo:
        """HeadObject, user metadata included (NotFound if absent)."""
        full = self._full_key(validate_key(key))

        async def attempt() -> ObjectInfo:
            client = await self._get_client()
            response = await client.head_object(Bucket=self._bucket, Key=full)
            return _info(key, response, size=int(response["ContentLength"]))

        return await self._call("head", key, attempt)

    async def list(self, prefix: str, *, start_after: str | None = None) -> list[ObjectInfo]:
        """ListObjectsV2 over every page, keys returned without the store prefix."""
        params: dict[str, Any] = {
            "Bucket": self._bucket,
            "Prefix": self._full_prefix(validate_prefix(prefix)),
        }
        if start_after is not None:
            params["StartAfter"] = self._full_key(start_after)
        infos: list[ObjectInfo] = []
        token: str | None = None
        while True:
            page = await self._list_page(prefix, params, token)
            infos.extend(self._listed(item) for item in page.get("Contents", ()))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if token is None:
                return infos

    async def check(self) -> None:
        """List at most one key under the prefix: proves the bucket exists and may be read."""
        params = {"Bucket": self._bucket, "Prefix": self._full_prefix(""), "MaxKeys": 1}

        async def attempt() -> None:
            client = await self._get_client()
            await client.list_objects_v2(**params)

        lost = self._bucket_lost
        try:
            await self._call("check", "", attempt, watching=True)
        except NotFound as exc:
            raise StoreRejected(f"{self.url}: bucket {self._bucket!r} does not exist") from exc
        if lost:
            self._found_back()

    async def close(self) -> None:
        """Close the client and its connections; a later call opens a new one."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # -- keys ----------------------------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _full_prefix(self, prefix: str) -> str:
        return f"{self._prefix}/{prefix}" if self._prefix else prefix

    def _listed(self, item: Mapping[str, Any]) -> ObjectInfo:
        key = item["Key"]
        if self._prefix:
            key = key.removeprefix(f"{self._prefix}/")
        return ObjectInfo(
            key=key,
            size=int(item["Size"]),
            etag=_unquote(item.get("ETag", "")),
            last_modified=_timestamp(item.get("LastModified")),
        )

    async def _list_page(self, prefix: str, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        page_params = {**params, "MaxKeys": _LIST_PAGE_KEYS}
        if token is not None:
            page_params["ContinuationToken"] = token

        async def attempt() -> dict[str, Any]:
            client = await self._get_client()
            return await client.list_objects_v2(**page_params)

        return await self._call("list", prefix, attempt)

    # -- client --------------------------------------------------------------------------------------

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(self._create_client())
                self._client.meta.events.register("before-send.s3", _drop_optional_headers)
                self._stack = stack
        return self._client

    def _create_client(self) -> Any:
        session = AioSession(profile=self._profile) if self._profile else AioSession()
        session.user_agent_extra = ""  # else "botocore/<version>" is appended to our User-Agent
        access_key_id, secret_access_key, session_token = self._credentials
        return session.create_client(
            "s3",
            region_name=self._region,
            endpoint_url=self._endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            config=self._config(),
        )

    def _config(self) -> AioConfig:
        s3_config = {"addressing_style": self._addressing_style} if self._addressing_style else None
        return AioConfig(
            retries={"mode": "standard", "total_max_attempts": self._max_attempts},
            connect_timeout=self._connect_timeout_s,
            read_timeout=self._read_timeout_s,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent=USER_AGENT,
            s3=s3_config,
            max_pool_connections=MAX_POOL_CONNECTIONS,
        )

    # -- retries and errors --------------------------------------------------------------------------

    async def _call(
        self,
        op: str,
        key: str,
        attempt: Callable[[], Awaitable[T]],
        body_bytes: int = 0,
        *,
        watching: bool = False,
    ) -> T:
        """Run ``attempt``, translating errors and retrying StoreUnavailable within the budget.

        After a NoSuchBucket, a call first asks whether the bucket is back (``watching``: the probe
        itself, which only asks)."""
        if self._bucket_lost and not watching:
            await self._ask_if_back()
        deadline = time.monotonic() + self._retry_budget_s
        limit_s = self._attempt_limit_s(body_bytes)
        for n in range(self._retry_attempts):
            try:
                return await _within(limit_s, attempt)
            except (ClientError, _TryTimedOut, *_TRANSPORT_ERRORS) as exc:
                error = self._translate(op, key, exc)
                if not isinstance(error, StoreUnavailable) or n + 1 >= self._retry_attempts:
                    raise error from exc
                delay = random.uniform(0.0, min(self._retry_cap_s, self._retry_base_s * 2**n))
                if time.monotonic() + delay >= deadline:
                    raise error from exc
                await anyio.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")

    async def _ask_if_back(self) -> None:
        """The bucket was missing: if it is back, fail this call once (StoreUnavailable) after moving
        the epoch on; calls that waited on the one asking fail the same way."""
        epoch = self._epoch
        async with self._back_lock:
            if self._bucket_lost:
                await self.check()  # StoreRejected while it is still missing
            if self._epoch != epoch:
                raise StoreUnavailable(
                    f"{self.url}: bucket {self._bucket!r} is back after it was missing; "
                    "what it holds is read again before anything is written"
                )

    def _found_back(self) -> None:
        self._bucket_lost = False
        self._epoch += 1
        log.warning(
            "bucket was missing and is back; sessions are read again from what it holds, "
            "and mirrored again where it lost them",
            bucket=self.url,
        )

    def _attempt_limit_s(self, body_bytes: int) -> float:
        """How long one try may take in all: enough for a slow link, finite for a silent server."""
        return self._connect_timeout_s + self._read_timeout_s + body_bytes / self._min_upload_bytes_per_s

    def _translate(self, op: str, key: str, exc: Exception) -> StoreError:
        what = f"{self.url}: {op} {key}".rstrip()
        if isinstance(exc, _TryTimedOut):
            return StoreUnavailable(f"{what}: no answer within {exc.limit_s:.3g} s")
        if isinstance(exc, ClientError):
            return self._translate_client_error(what, exc)
        if isinstance(exc, _CREDENTIAL_ERRORS):
            return StoreRejected(f"{what}: AWS credentials or configuration unusable: {exc}")
        return StoreUnavailable(f"{what}: {type(exc).__name__}: {_safe_text(exc)}")

    def _translate_client_error(self, what: str, exc: ClientError) -> StoreError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or code
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = f"{code} ({message})" if code and message != code else code or f"HTTP {status}"
        if code in _MISSING_BUCKET_CODES:
            self._bucket_lost = True
            return StoreRejected(f"{what}: bucket {self._bucket!r} does not exist: {detail}")
        if status == 412 or code in _PRECONDITION_CODES:
            return PreconditionFailed(f"{what}: precondition failed: {detail}")
        if status == 404 or code in _NOT_FOUND_CODES:
            return NotFound(f"{what}: not found")
        if code in _REFUSAL_CAUSES:
            return StoreRejected(f"{what}: refused by bucket {self._bucket!r}: {_REFUSAL_CAUSES[code]}")
        if status >= 500 or status == 429 or code in _UNAVAILABLE_CODES:
            return StoreUnavailable(f"{what}: S3 error {detail}")
        if status == 403 and code in ("", "403"):  # a HEAD's refusal carries no body, so no code
            detail = "access denied (HTTP 403): the credentials are wrong, expired or may not use this prefix"
        return StoreRejected(f"{what}: refused by bucket {self._bucket!r}: {detail}")


class _TryTimedOut(Exception):
    """One try took longer than its limit (raised by ``_within``, translated by ``_translate``)."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"no answer within {limit_s:.3g} s")
        self.limit_s = limit_s


async def _within(limit_s: float, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run one try, abandoning it (connection closed) after ``limit_s``."""
    with anyio.move_on_after(timeout_s(limit_s)):
        return await attempt()
    raise _TryTimedOut(limit_s)


def _drop_optional_headers(request: Any, **_: Any) -> None:
    """Remove unsigned headers S3 does not need; they are a sizeable share of a small PUT."""
    for name in _DROPPED_HEADERS:
        if name in request.headers:
            del request.headers[name]


def _endpoint_from_env() -> str | None:
    """The endpoint botocore would take from the environment, so addressing and ``url`` can use it."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _unquote(etag: str) -> str:
    return etag.strip().strip('"')


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _info(key: str, response: Mapping[str, Any], *, size: int) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=size,
        etag=_unquote(response.get("ETag", "")),
        metadata={k.lower(): v for k, v in response.get("Metadata", {}).items()},
        last_modified=_timestamp(response.get("LastModified")),
    )


def _safe_text(exc: Exception) -> str:
    """The exception's text with any ``user:password@`` of a URL removed."""
    return _URL_USERINFO.sub("//", str(exc))


if TYPE_CHECKING:
    _PROOF: ObjectStore = S3Store("bucket")
