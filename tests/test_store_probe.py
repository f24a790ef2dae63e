"""Know the store before trusting it: the conditional-write probe, the refusal gate, and S3 fault answers.

In-process, against real stores: the embedded directory bucket, moto's server, and moto behind the
fault proxy (tests/s3server.BytesCountingProxy). The daemon-level behaviour (refusing to start, single-
writer mode, outages) is in test_store_faults.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from s3server import TEST_CREDENTIALS, TEST_REGION, BytesCountingProxy, MotoServer

from tracemirrord import layout
from tracemirrord.store import LocalStore, NotFound, StoreRejected, StoreUnavailable
from tracemirrord.store.guard import GuardedStore
from tracemirrord.store.probe import ConditionalWritesIgnored, ProbeReport, probe_conditional_writes
from tracemirrord.store.s3 import S3Store

pytestmark = pytest.mark.anyio

PROBE_KEY = "proj/.probe/tester@host.json"
NO_RETRIES: dict[str, Any] = {"retry_attempts": 1}


@pytest.fixture
async def make_s3(anyio_backend: str) -> AsyncIterator[Callable[..., S3Store]]:
    """S3Stores on a test endpoint with the moto test credentials; closed after the test."""
    made: list[S3Store] = []

    def make(endpoint_url: str, bucket: str, **kwargs: Any) -> S3Store:
        store = S3Store(
            bucket,
            endpoint_url=endpoint_url,
            region=TEST_REGION,
            access_key_id=TEST_CREDENTIALS["aws_access_key_id"],
            secret_access_key=TEST_CREDENTIALS["aws_secret_access_key"],
            **kwargs,
        )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


# --- the probe ---------------------------------------------------------------------------------------


async def test_probe_passes_on_the_embedded_bucket(tmp_path: Path) -> None:
    """The directory bucket enforces both preconditions itself; the probe leaves one object, its body."""
    store = LocalStore(tmp_path / "bucket")
    report = await probe_conditional_writes(store, PROBE_KEY, b'{"probe":1}')
    assert report == ProbeReport(create_only=True, compare_and_swap=True, swap_accepted=True)
    assert report.enforced
    assert [info.key for info in await store.list("proj/")] == [PROBE_KEY]
    assert (await store.get(PROBE_KEY)).body == b'{"probe":1}'
    # a second probe (the next start) replaces the same key: probes do not accumulate
    assert (await probe_conditional_writes(store, PROBE_KEY, b'{"probe":2}')).enforced
    assert [info.key for info in await store.list("proj/")] == [PROBE_KEY]
    assert (await store.get(PROBE_KEY)).body == b'{"probe":2}'


async def test_probe_passes_on_s3(s3_server: MotoServer, s3_bucket: str, make_s3: Any) -> None:
    """moto enforces If-None-Match: * and If-Match, as AWS, R2 and MinIO do."""
    store = make_s3(s3_server.endpoint_url, s3_bucket)
    assert (await probe_conditional_writes(store, PROBE_KEY, b"first")).enforced
    assert (await probe_conditional_writes(store, PROBE_KEY, b"again")).enforced
    assert (await store.get(PROBE_KEY)).body == b"again"


async def test_probe_finds_a_store_that_ignores_preconditions(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """Through a proxy that strips If-None-Match and If-Match, both are reported as not enforced."""
    s3_proxy.mode = "strip_preconditions"
    store = make_s3(s3_proxy.endpoint_url, s3_bucket)
    report = await probe_conditional_writes(store, PROBE_KEY, b"x")
    assert report == ProbeReport(create_only=False, compare_and_swap=False, swap_accepted=True)
    assert report.describe() == (
        "NOT ENFORCED: create-only writes (If-None-Match: *) and compare-and-swap writes (If-Match) "
        "accepted where they must be refused"
    )
    heads = [r.head.lower() for r in s3_proxy.request_log if r.method == "PUT"]
    assert any(b"if-none-match: *" in h for h in heads), "the client did send the header"


def test_the_probe_key_is_outside_sessions_and_agents() -> None:
    """Readers list <project>/sessions/ and <project>/agents/: the probe key is in neither."""
    key = layout.probe_key("default", "alice@laptop")
    assert key == "default/.probe/alice@laptop.json"
    assert not key.startswith(("default/sessions/", "default/agents/"))


# --- the guard: proof before the first write ---------------------------------------------------------


def guarded(store: Any, *, single_writer: bool = False, **kwargs: Any) -> GuardedStore:
    return GuardedStore(
        store, probe_key=PROBE_KEY, probe_body=lambda: b"probe", single_writer=single_writer, **kwargs
    )


async def test_guard_refuses_every_write_to_a_store_that_ignores_preconditions(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """No part is written: the first write probes, and it and every later one raise the same refusal."""
    s3_proxy.mode = "strip_preconditions"
    guard = guarded(make_s3(s3_proxy.endpoint_url, s3_bucket))
    for _ in range(2):
        with pytest.raises(ConditionalWritesIgnored, match="TRACEMIRROR_SINGLE_WRITER=true"):
            await guard.put("proj/sessions/h/s/part-00000-00000000.jsonl", b"line\n", if_none_match=True)
    assert guard.conditional_writes == "not enforced"
    with pytest.raises(NotFound):
        await guard.head("proj/sessions/h/s/part-00000-00000000.jsonl")


async def test_guard_in_single_writer_mode_writes_to_such_a_store(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """Single-writer mode accepts the store (and says what it found)."""
    s3_proxy.mode = "strip_preconditions"
    guard = guarded(make_s3(s3_proxy.endpoint_url, s3_bucket), single_writer=True)
    await guard.put("proj/sessions/h/s/part-00000-00000000.jsonl", b"line\n", if_none_match=True)
    assert guard.conditional_writes == "not enforced"
    assert (await guard.get("proj/sessions/h/s/part-00000-00000000.jsonl")).body == b"line\n"


async def test_guard_probes_an_enforcing_store_once(tmp_path: Path) -> None:
    """On a store that enforces both, writes go through after one probe."""
    guard = guarded(LocalStore(tmp_path / "bucket"))
    await guard.put("proj/sessions/h/s/a", b"1")
    await guard.put("proj/sessions/h/s/b", b"2")
    assert guard.conditional_writes == "enforced"
    assert sorted(i.key for i in await guard.list("proj/")) == [
        PROBE_KEY,
        "proj/sessions/h/s/a",
        "proj/sessions/h/s/b",
    ]


# --- the guard: a refusing store is not hammered ------------------------------------------------------


async def test_guard_gates_a_refusing_store_and_reopens(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """403s: the first call asks and is refused; the next ones fail at once without a request; after
    the backoff one call asks again; once the store answers, calls go through and recovery is told."""
    recovered: list[float] = []
    guard = guarded(make_s3(s3_proxy.endpoint_url, s3_bucket), on_recovered=lambda: recovered.append(1))
    await guard.put("proj/sessions/h/s/a", b"1")  # probed and written
    s3_proxy.mode = "error403"
    s3_proxy.reset_counters()
    for _ in range(50):
        with pytest.raises(StoreRejected, match="InvalidAccessKeyId"):
            await guard.put("proj/sessions/h/s/b", b"2")
    assert s3_proxy.requests == 1, "50 calls in a row cost one request"
    s3_proxy.mode = "pass"
    await anyio.sleep(1.05)  # the first wait after a refusal is at most REFUSED_BASE_S
    await guard.put("proj/sessions/h/s/b", b"2")
    assert recovered == [1]
    assert guard.trouble is None


async def test_watch_finds_the_store_back_and_tells_once(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """While the store is down, ``watch`` asks it on a backoff and reports its return once."""
    recoveries: list[float] = []
    recovered = anyio.Event()

    def tell() -> None:
        recoveries.append(time.monotonic())
        recovered.set()

    store = make_s3(s3_proxy.endpoint_url, s3_bucket, **NO_RETRIES)
    guard = guarded(store, on_recovered=tell)
    s3_proxy.mode = "down"
    with pytest.raises(StoreUnavailable):
        await guard.list("proj/")
    async with anyio.create_task_group() as tg:
        tg.start_soon(guard.watch)
        await anyio.sleep(1.5)
        assert recoveries == []
        s3_proxy.mode = "pass"
        back = time.monotonic()
        with anyio.fail_after(10):
            await recovered.wait()
        await anyio.sleep(2.5)  # long enough for more asks, were the watch still asking
        tg.cancel_scope.cancel()
    assert len(recoveries) == 1
    assert recoveries[0] - back < 5.5  # its waits: at most 1 s, then 2 s, then 4 s


# --- S3 answers: timeouts, refusals, server errors ---------------------------------------------------


async def test_a_silent_server_ends_each_call_in_bounded_time(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """A server that accepts and never answers: the call ends in StoreUnavailable after the read
    timeout of each try (two tries here), not never; the store works again once the server answers."""
    store = make_s3(s3_proxy.endpoint_url, s3_bucket, read_timeout_s=0.5, retry_attempts=2, retry_base_s=0.01)
    await store.put("warm", b"x")
    s3_proxy.mode = "blackhole"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"timeout|no answer"):
        await store.put("k", b"x" * 1000, if_none_match=True)
    assert 0.9 < time.monotonic() - started < 4
    s3_proxy.mode = "pass"
    await store.put("k2", b"y", if_none_match=True)


async def test_a_body_the_server_never_reads_is_abandoned(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """A try whose body the server never reads is abandoned at its deadline (connect + read timeouts +
    the body at the minimum rate): a socket write has no timeout of its own."""
    store = make_s3(
        s3_proxy.endpoint_url,
        s3_bucket,
        connect_timeout_s=0.2,
        read_timeout_s=0.3,
        min_upload_bytes_per_s=64 * 2**20,  # the 32 MiB below may take 0.5 s more: 1 s in all
        retry_attempts=1,
    )
    s3_proxy.mode = "blackhole"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="no answer within 1 s"):
        await store.put("big", b"z" * 32 * 2**20)  # more than loopback socket buffers hold
    assert 0.9 < time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        ("InvalidAccessKeyId", "access key id is not known"),
        ("SignatureDoesNotMatch", "secret access key does not match"),
        ("ExpiredToken", "session token has expired"),
        ("AccessDenied", "access denied"),
    ],
)
async def test_credential_refusals_name_the_bucket_and_cause_and_are_not_retried(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any, code: str, cause: str
) -> None:
    """A 403 is an answer: one request, StoreRejected naming the bucket and what to check."""
    store = make_s3(s3_proxy.endpoint_url, s3_bucket)
    s3_proxy.error403_code = code
    s3_proxy.mode = "error403"
    with pytest.raises(StoreRejected) as caught:
        await store.put("k", b"x")
    assert s3_proxy.requests == 1
    message = str(caught.value)
    assert f"bucket '{s3_bucket}'" in message and cause in message and code in message
    assert TEST_CREDENTIALS["aws_secret_access_key"] not in message.replace(f"s3://{s3_bucket}", "")


async def test_server_errors_are_retried_with_backoff_then_unavailable(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """500 InternalError: our retry loop alone retries (botocore's is off), 4 tries by default, spaced
    by a growing, jittered wait; the call ends as StoreUnavailable."""
    store = make_s3(s3_proxy.endpoint_url, s3_bucket, retry_base_s=0.1)
    await store.put("warm", b"x")
    s3_proxy.mode = "error500"
    s3_proxy.reset_counters()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="InternalError"):
        await store.put("k", b"x")
    assert s3_proxy.requests == 4
    assert time.monotonic() - started < 0.1 + 0.2 + 0.4 + 1.0  # the three waits at most, plus requests


async def test_a_lost_answer_to_a_create_only_put_is_a_412_not_a_second_copy(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """A 412 is never retried: the caller is told, heads the key, and finds its own bytes there."""
    store = make_s3(s3_proxy.endpoint_url, s3_bucket)
    await store.put("p", b"mine", if_none_match=True)
    s3_proxy.reset_counters()
    with pytest.raises(Exception) as caught:
        await store.put("p", b"mine", if_none_match=True)
    assert type(caught.value).__name__ == "PreconditionFailed"
    assert s3_proxy.requests == 1
    assert (await store.get("p")).body == b"mine"


# --- the settings -------------------------------------------------------------------------------------


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No TRACEMIRROR_* variable or config file of the developer's leaks into load_settings()."""
    import os

    for name in list(os.environ):
        if name.startswith("TRACEMIRROR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return monkeypatch


def test_timeouts_and_single_writer_are_settings(clean_environ: pytest.MonkeyPatch) -> None:
    """s3.connect_timeout / s3.read_timeout take durations and reach the store; single_writer is a bool
    that defaults to off and needs a restart to change."""
    from tracemirrord.config import build_store, load_settings
    from tracemirrord.reload import restart_only_changes

    monkeypatch = clean_environ
    monkeypatch.setenv("TRACEMIRROR_BUCKET", "s3://b")
    monkeypatch.setenv("TRACEMIRROR_S3__CONNECT_TIMEOUT", "1500ms")
    monkeypatch.setenv("TRACEMIRROR_S3__READ_TIMEOUT", "7s")
    settings = load_settings()
    assert (settings.s3.connect_timeout, settings.s3.read_timeout) == (1.5, 7.0)
    assert settings.single_writer is False
    store = build_store(settings)
    assert isinstance(store, S3Store)
    assert store._attempt_limit_s(0) == 8.5  # connect + read: the deadline of a try without a body
    monkeypatch.setenv("TRACEMIRROR_SINGLE_WRITER", "true")
    assert restart_only_changes(settings, load_settings()) == ["single_writer"]


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        (
            "TRACEMIRROR_S3__READ_TIMEOUT",
            "0",
            "setting s3.read_timeout (TRACEMIRROR_S3__READ_TIMEOUT, from the environment)",
        ),
        ("TRACEMIRROR_S3__CONNECT_TIMEOUT", "soon", "setting s3.connect_timeout"),
        (
            "TRACEMIRROR_SINGLE_WRITER",
            "perhaps",
            "setting single_writer (TRACEMIRROR_SINGLE_WRITER, from the environment)",
        ),
    ],
)
def test_bad_values_name_the_setting(
    clean_environ: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    from tracemirrord.config import ConfigError, load_settings

    clean_environ.setenv(variable, value)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings()


async def test_writes_queued_behind_a_failed_probe_do_not_each_probe_again(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: Any
) -> None:
    """Store down at the first writes: ten concurrent puts wait for one probe, which fails; they all
    fail with its error without asking again; once the store is back the next put probes and writes."""
    store = make_s3(s3_proxy.endpoint_url, s3_bucket, **NO_RETRIES)
    guard = guarded(store)
    s3_proxy.mode = "error503"
    failures: list[str] = []

    async def put(n: int) -> None:
        try:
            await guard.put(f"proj/sessions/h/s/{n}", b"x")
        except StoreUnavailable as exc:
            failures.append(str(exc))

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(put, n)
    assert len(failures) == 10 and s3_proxy.requests == 1, "one probe request for ten writes"
    assert guard.conditional_writes is None
    s3_proxy.mode = "pass"
    await guard.put("proj/sessions/h/s/0", b"x")
    assert guard.conditional_writes == "enforced"
