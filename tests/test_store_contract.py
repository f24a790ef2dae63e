"""The ObjectStore contract, run against every backend: LocalStore and S3Store (moto's server over HTTP).

Backend-specific behaviour (the local directory's on-disk format, S3 prefixes, endpoints and faults)
follows the shared suite, each group under its own heading.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from s3server import TEST_CREDENTIALS, TEST_REGION, BytesCountingProxy, MotoServer, ProxyMode, free_port
from structlog.testing import capture_logs

import tracemirrord.store.local as local_module
import tracemirrord.store.s3 as s3_module
from tracemirrord.store import (
    LocalStore,
    NotFound,
    ObjectStore,
    PreconditionFailed,
    S3Options,
    StoreRejected,
    StoreUnavailable,
    open_store,
)
from tracemirrord.store.s3 import S3Store

pytestmark = pytest.mark.anyio

META = {"Generation": "2", "cursor-start": "0", "cursor-end": "11", "sha256": "ab" * 32}
MOTO_RACE = (
    "moto checks If-None-Match / If-Match and then writes, without a lock (moto/s3/responses.py, "
    "put_object), so concurrent conditional PUTs can both win there; AWS S3, R2 and MinIO do not"
)
FAST_RETRIES: dict[str, Any] = {"max_attempts": 1, "retry_attempts": 2, "retry_base_s": 0.01}


S3_TEST_ARGS: dict[str, Any] = {
    "region": TEST_REGION,
    "access_key_id": TEST_CREDENTIALS["aws_access_key_id"],
    "secret_access_key": TEST_CREDENTIALS["aws_secret_access_key"],
}


@pytest.fixture
async def make_s3(anyio_backend: str) -> AsyncIterator[Callable[..., S3Store]]:
    """Build S3Stores (test credentials unless overridden); each is closed after the test, pass or fail."""
    made: list[S3Store] = []

    def make(endpoint_url: str, bucket: str, prefix: str = "", **kwargs: Any) -> S3Store:
        kwargs = {**S3_TEST_ARGS, **kwargs}
        made.append(S3Store(bucket, prefix, endpoint_url=endpoint_url, **kwargs))
        return made[-1]

    yield make
    for store in made:
        await store.close()


def md5_hex(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[ObjectStore]:
    """A fresh, empty store of the parametrized backend."""
    new: ObjectStore
    if backend == "local":
        new = LocalStore(tmp_path / "bucket")
    else:
        server: MotoServer = request.getfixturevalue("s3_server")
        new = S3Store(request.getfixturevalue("s3_bucket"), endpoint_url=server.endpoint_url, **S3_TEST_ARGS)
    await new.check()
    yield new
    await new.close()


def expect_one_winner(backend: str, winners: list[Any]) -> None:
    if backend == "s3" and len(winners) > 1:
        pytest.xfail(MOTO_RACE)
    assert len(winners) == 1


# --- the shared contract ---------------------------------------------------------------------------


async def test_round_trip_returns_body_etag_and_metadata(store: ObjectStore) -> None:
    """A put is read back whole by get and described by head, with lower-cased metadata and one ETag."""
    body = b'{"line": 1}\n'
    etag = await store.put("p/sessions/a/part-00000.jsonl", body, metadata=META)
    got = await store.get("p/sessions/a/part-00000.jsonl")
    head = await store.head("p/sessions/a/part-00000.jsonl")
    expected_meta = {k.lower(): v for k, v in META.items()}
    assert got.body == body
    assert etag == got.info.etag == head.etag == md5_hex(body)
    assert dict(head.metadata) == dict(got.info.metadata) == expected_meta
    assert head.size == got.info.size == len(body)
    assert head.key == got.info.key == "p/sessions/a/part-00000.jsonl"
    assert head.last_modified is not None and abs(head.last_modified - time.time()) < 300


async def test_etags_are_unquoted(store: ObjectStore) -> None:
    """ETags from put, head and list never carry the HTTP quotes."""
    etag = await store.put("k", b"x")
    listed = await store.list("")
    assert '"' not in etag + (await store.head("k")).etag + listed[0].etag


async def test_put_replaces_unconditionally(store: ObjectStore) -> None:
    """A put without conditions replaces the object and its metadata."""
    await store.put("k", b"one", metadata={"a": "1"})
    await store.put("k", b"two")
    got = await store.get("k")
    assert (got.body, dict(got.info.metadata)) == (b"two", {})


async def test_create_only_refuses_an_existing_key(store: ObjectStore) -> None:
    """if_none_match creates once; a second create raises PreconditionFailed and changes nothing."""
    await store.put("k", b"first", metadata={"n": "1"}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await store.put("k", b"second", metadata={"n": "2"}, if_none_match=True)
    got = await store.get("k")
    assert (got.body, dict(got.info.metadata)) == (b"first", {"n": "1"})


async def test_if_match_replaces_the_matching_version(store: ObjectStore) -> None:
    """if_match with the current ETag replaces the object and returns the new ETag."""
    etag = await store.put("meta.json", b"v1")
    new_etag = await store.put("meta.json", b"v2", if_match=etag)
    assert new_etag == md5_hex(b"v2") == (await store.head("meta.json")).etag
    assert (await store.get("meta.json")).body == b"v2"


async def test_if_match_accepts_a_quoted_etag(store: ObjectStore) -> None:
    """if_match takes the ETag with or without HTTP quotes."""
    etag = await store.put("meta.json", b"v1")
    await store.put("meta.json", b"v2", if_match=f'"{etag}"')
    assert (await store.get("meta.json")).body == b"v2"


async def test_if_match_refuses_a_stale_etag(store: ObjectStore) -> None:
    """if_match with an ETag that is no longer current raises PreconditionFailed and changes nothing."""
    stale = await store.put("meta.json", b"v1")
    await store.put("meta.json", b"v2", if_match=stale)
    with pytest.raises(PreconditionFailed):
        await store.put("meta.json", b"v3", if_match=stale)
    assert (await store.get("meta.json")).body == b"v2"


async def test_if_match_on_a_missing_key_is_a_failed_precondition(store: ObjectStore) -> None:
    """if_match on a key that does not exist raises PreconditionFailed (not NotFound) and creates nothing."""
    with pytest.raises(PreconditionFailed):
        await store.put("meta.json", b"v1", if_match=md5_hex(b"v0"))
    with pytest.raises(NotFound):
        await store.head("meta.json")


async def test_missing_key_is_not_found(store: ObjectStore) -> None:
    """get and head of an absent key raise NotFound."""
    await store.put("a/present", b"x")
    for key in ("absent", "a/absent", "a/present/below"):
        with pytest.raises(NotFound):
            await store.get(key)
        with pytest.raises(NotFound):
            await store.head(key)


async def test_list_is_ordered_filtered_and_starts_after(store: ObjectStore) -> None:
    """list returns keys under a prefix in byte order, after start_after, with sizes and ETags."""
    keys = ["s/b0", "s/b-c", "s/b/c", "s/ba", "s/a", "t/x", "s/b/a/deep"]
    for key in keys:
        await store.put(key, key.encode(), metadata={"m": "1"})
    listed = await store.list("s/b")
    assert [i.key for i in listed] == ["s/b-c", "s/b/a/deep", "s/b/c", "s/b0", "s/ba"]
    assert [(i.size, i.etag) for i in listed] == [(len(i.key), md5_hex(i.key.encode())) for i in listed]
    assert [i.key for i in await store.list("s/b/")] == ["s/b/a/deep", "s/b/c"]
    assert [i.key for i in await store.list("", start_after="s/b0")] == ["s/ba", "t/x"]
    assert [i.key for i in await store.list("s/", start_after="s/b/c")] == ["s/b0", "s/ba"]
    assert await store.list("nothing/") == []
    assert [i.key for i in await store.list("")] == sorted(keys)


async def test_list_reads_every_page(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing longer than one page comes back whole and in order."""
    monkeypatch.setattr(s3_module, "_LIST_PAGE_KEYS", 2)
    keys = [f"p/part-{n:05d}" for n in range(7)]
    for key in reversed(keys):
        await store.put(key, b".")
    assert [i.key for i in await store.list("p/")] == keys
    assert [i.key for i in await store.list("p/", start_after=keys[2])] == keys[3:]


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/", "a\\b", "a/\x00", "tab\there", "./a"])
async def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    """Keys that are absolute, climb with '..', have empty segments, backslashes or control characters
    raise ValueError before anything is written."""
    with pytest.raises(ValueError):
        await store.put(key, b"x")
    with pytest.raises(ValueError):
        await store.head(key)


@pytest.mark.parametrize("metadata", [{"name": "caf\u00e9"}, {"bad name": "x"}, {"n": "line\nbreak"}])
async def test_metadata_that_s3_cannot_carry_is_refused(
    store: ObjectStore, metadata: Mapping[str, str]
) -> None:
    """Metadata names outside [A-Za-z0-9_.-] and non-ASCII or control-character values raise ValueError."""
    with pytest.raises(ValueError):
        await store.put("k", b"x", metadata=metadata)


async def test_concurrent_create_only_puts_have_one_winner(store: ObjectStore, backend: str) -> None:
    """Of many concurrent create-only puts of one key exactly one wins; the rest raise PreconditionFailed."""
    results: dict[int, str | Exception] = {}

    async def attempt(n: int) -> None:
        try:
            results[n] = await store.put("race", f"writer {n}".encode(), if_none_match=True)
        except PreconditionFailed as exc:
            results[n] = exc

    async with anyio.create_task_group() as tg:
        for n in range(24):
            tg.start_soon(attempt, n)
    winners = [n for n, r in results.items() if isinstance(r, str)]
    assert len(results) == 24 and winners
    expect_one_winner(backend, winners)
    assert (await store.get("race")).body == f"writer {winners[0]}".encode()


async def test_concurrent_if_match_updates_have_one_winner(store: ObjectStore, backend: str) -> None:
    """Of many concurrent if_match updates from one read ETag exactly one wins; the rest raise
    PreconditionFailed."""
    etag = await store.put("meta.json", b"base")
    results: dict[int, str | Exception] = {}

    async def attempt(n: int) -> None:
        try:
            results[n] = await store.put("meta.json", f"update {n}".encode(), if_match=etag)
        except PreconditionFailed as exc:
            results[n] = exc

    async with anyio.create_task_group() as tg:
        for n in range(24):
            tg.start_soon(attempt, n)
    winners = [n for n, r in results.items() if isinstance(r, str)]
    assert len(results) == 24 and winners
    expect_one_winner(backend, winners)
    assert (await store.get("meta.json")).body == f"update {winners[0]}".encode()


# --- LocalStore: the directory format -------------------------------------------------------------


async def test_local_objects_are_plain_files(tmp_path: Path) -> None:
    """An object is the file at root/<key> holding exactly the bytes put, readable without tracemirror."""
    store = LocalStore(tmp_path)
    await store.put("p/sessions/codex/s1/part-00000.jsonl", b"{}\n", metadata={"a": "b"})
    assert (tmp_path / "p/sessions/codex/s1/part-00000.jsonl").read_bytes() == b"{}\n"


async def test_local_list_never_shows_sidecars_or_temp_files(tmp_path: Path) -> None:
    """Neither the hidden sidecar tree nor leftover temp files appear in a listing."""
    store = LocalStore(tmp_path)
    await store.check()
    await store.put("a/one", b"1", metadata={"x": "y"})
    (tmp_path / "a" / f"{local_module.TEMP_PREFIX}0123").write_bytes(b"half")
    (tmp_path / f"{local_module.TEMP_PREFIX}4567").write_bytes(b"half")
    assert (tmp_path / local_module.HIDDEN_DIR / "meta" / "a" / "one.json").is_file()
    assert [i.key for i in await store.list("")] == ["a/one"]
    assert await store.list(".tr") == []


async def test_local_hidden_tree_is_not_a_key(tmp_path: Path) -> None:
    """Keys that would reach the hidden tree or a temp name are refused."""
    store = LocalStore(tmp_path)
    for key in (".tracemirror/meta/a.json", f"a/{local_module.TEMP_PREFIX}x"):
        with pytest.raises(ValueError):
            await store.put(key, b"x")


async def test_local_object_copied_in_by_hand_is_readable(tmp_path: Path) -> None:
    """A file without a sidecar heads and gets with an ETag computed from its bytes and no metadata."""
    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "part.jsonl").write_bytes(b"by hand\n")
    store = LocalStore(tmp_path)
    head = await store.head("copied/part.jsonl")
    assert (head.etag, dict(head.metadata), head.size) == (md5_hex(b"by hand\n"), {}, 8)
    assert [i.key for i in await store.list("copied/")] == ["copied/part.jsonl"]
    new = await store.put("copied/part.jsonl", b"v2", if_match=head.etag)
    assert new == md5_hex(b"v2")


async def test_local_object_edited_by_hand_drops_stale_metadata(tmp_path: Path) -> None:
    """A file rewritten behind the store's back reports its real ETag, not the sidecar's old one."""
    store = LocalStore(tmp_path)
    await store.put("k", b"original", metadata={"sha256": "old"})
    (tmp_path / "k").write_bytes(b"edited by hand")
    head = await store.head("k")
    assert (head.etag, dict(head.metadata)) == (md5_hex(b"edited by hand"), {})


async def test_local_crash_before_rename_keeps_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that dies after its sidecar but before its rename leaves the old object fully described."""
    store = LocalStore(tmp_path)
    etag = await store.put("meta.json", b"v1", metadata={"gen": "1"})

    def crash(*_: object, **__: object) -> None:
        raise OSError(5, "simulated crash")

    monkeypatch.setattr(local_module, "_publish", crash)
    with pytest.raises(StoreUnavailable):
        await store.put("meta.json", b"v2", metadata={"gen": "2"}, if_match=etag)
    monkeypatch.undo()
    got = await store.get("meta.json")
    assert (got.body, got.info.etag, dict(got.info.metadata)) == (b"v1", etag, {"gen": "1"})
    assert [i.key for i in await store.list("")] == ["meta.json"]
    await store.put("meta.json", b"v3", if_match=etag)


async def test_local_check_creates_the_root(tmp_path: Path) -> None:
    """check() creates a missing root directory, private to the user."""
    store = LocalStore(tmp_path / "new" / "bucket")
    await store.check()
    assert (tmp_path / "new" / "bucket").is_dir()
    assert (tmp_path / "new" / "bucket").stat().st_mode & 0o077 == 0


async def test_local_check_rejects_an_unusable_root(tmp_path: Path) -> None:
    """check() raises StoreRejected naming the path when the root cannot be a writable directory."""
    (tmp_path / "file").write_text("not a directory")
    store = LocalStore(tmp_path / "file")
    with pytest.raises(StoreRejected, match=str(tmp_path / "file")):
        await store.check()


async def test_local_check_waits_for_a_lost_parent_and_reports_the_recreated_root(tmp_path: Path) -> None:
    """The outage watch's probe (check) on a root seen before: while its parent is gone too, it
    fails as an outage and builds nothing (an unmounted disk's mount point stays empty); with the
    parent back, it recreates the root, logs that the bucket lost its objects, and moves the epoch."""
    parent = tmp_path / "disk"
    store = LocalStore(parent / "bucket")
    await store.check()
    await store.put("p/k", b"x")
    epoch = store.epoch
    shutil.rmtree(parent)
    for _ in range(2):  # every probe while it is gone fails the same way
        with pytest.raises(StoreUnavailable, match="nor its parent directory"):
            await store.check()
        assert not parent.exists()
    parent.mkdir()
    with capture_logs() as logs:
        await store.check()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        f"local bucket {parent / 'bucket'} was deleted while running; recreated it empty, "
        "sessions are mirrored again from their start"
    ]
    assert store.epoch == epoch + 1
    with pytest.raises(NotFound):
        await store.get("p/k")
    assert store.epoch == epoch + 1  # seen once: the next call does not count it again


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import anyio
    from tracemirrord.store.local import LocalStore
    from tracemirrord.store.base import PreconditionFailed

    root, name, go, count = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])

    async def main():
        store, won = LocalStore(root), []
        async def attempt(i):
            try:
                await store.put(f"race/k{i:03d}", name.encode(), if_none_match=True)
                won.append(i)
            except PreconditionFailed:
                pass
        while not go.exists():
            time.sleep(0.002)
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(attempt, i)
        print(" ".join(map(str, won)))

    anyio.run(main)
    """
)


def test_local_create_only_is_atomic_across_processes(tmp_path: Path) -> None:
    """Processes racing create-only puts on the same keys get exactly one winner per key."""
    count, names, go = 40, ["p0", "p1", "p2"], tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path / "bucket"), name, str(go), str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    time.sleep(1.0)  # let every racer import and wait at the line
    go.touch()
    outputs = [racer.communicate(timeout=30)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0]
    winners: dict[int, list[str]] = {}
    for name, output in zip(names, outputs, strict=True):
        for i in output.split():
            winners.setdefault(int(i), []).append(name)
    assert sorted(winners) == list(range(count))
    assert all(len(w) == 1 for w in winners.values()), winners
    for i, (name,) in winners.items():
        assert (tmp_path / "bucket" / "race" / f"k{i:03d}").read_bytes() == name.encode()


# --- S3Store: prefixes, errors and faults ----------------------------------------------------------

MakeS3 = Callable[..., S3Store]


async def test_s3_prefix_is_added_and_removed_transparently(s3_server: MotoServer, s3_bucket: str) -> None:
    """With s3://bucket/some/prefix keys land under the prefix, and list returns them unprefixed."""
    raw = s3_server.client()
    raw.put_object(Bucket=s3_bucket, Key="some/prefixed/sibling", Body=b"x")
    raw.put_object(Bucket=s3_bucket, Key="other", Body=b"x")
    credentials = {
        "access_key_id": TEST_CREDENTIALS["aws_access_key_id"],
        "secret_access_key": TEST_CREDENTIALS["aws_secret_access_key"],
    }
    options = S3Options(endpoint_url=s3_server.endpoint_url, region=TEST_REGION, **credentials)
    store = open_store(f"s3://{s3_bucket}/some/prefix/", options)
    try:
        await store.put("p/a", b"1", metadata={"k": "v"}, if_none_match=True)
        await store.put("p/b", b"2")
        raw_keys = [o["Key"] for o in raw.list_objects_v2(Bucket=s3_bucket)["Contents"]]
        assert raw_keys == ["other", "some/prefix/p/a", "some/prefix/p/b", "some/prefixed/sibling"]
        assert [i.key for i in await store.list("")] == ["p/a", "p/b"]
        assert [i.key for i in await store.list("p/", start_after="p/a")] == ["p/b"]
        assert (await store.head("p/a")).key == "p/a"
        assert store.url == f"s3://{s3_bucket}/some/prefix (endpoint {s3_server.endpoint_url})"
    finally:
        await store.close()


async def test_s3_closed_port_is_unavailable_quickly(make_s3: MakeS3) -> None:
    """An endpoint nobody listens on raises StoreUnavailable within the retry budget."""
    store = make_s3(f"http://127.0.0.1:{free_port()}", "bucket", retry_budget_s=2.0, **FAST_RETRIES)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="bucket"):
        await store.put("k", b"x")
    with pytest.raises(StoreUnavailable):
        await store.check()
    assert time.monotonic() - started < 5


async def test_s3_missing_bucket_is_rejected(s3_server: MotoServer, make_s3: MakeS3) -> None:
    """A bucket that does not exist raises StoreRejected naming it, at check and at put."""
    store = make_s3(s3_server.endpoint_url, "tm-no-such-bucket", **FAST_RETRIES)
    with pytest.raises(StoreRejected, match="tm-no-such-bucket"):
        await store.check()
    with pytest.raises(StoreRejected, match="tm-no-such-bucket"):
        await store.put("k", b"x")


async def test_s3_bucket_back_after_missing_moves_the_epoch_and_fails_one_call(
    s3_server: MotoServer, make_s3: MakeS3
) -> None:
    """A bucket that went missing and came back may be empty: the first call after it is back fails
    as an outage (nothing written on stale knowledge), and the epoch moves on once."""
    name = "tm-comes-back"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    store = make_s3(s3_server.endpoint_url, name, **FAST_RETRIES)
    await store.put("p/k", b"x")
    assert store.epoch == 0
    client.delete_object(Bucket=name, Key="p/k")
    client.delete_bucket(Bucket=name)
    with pytest.raises(StoreRejected, match="does not exist"):
        await store.put("p/k2", b"y")
    with pytest.raises(StoreRejected, match="does not exist"):
        await store.get("p/k")  # still missing: asked again, still refused
    assert store.epoch == 0
    client.create_bucket(Bucket=name)
    with pytest.raises(StoreUnavailable, match="is back after it was missing"):
        await store.put("p/k2", b"y")
    assert store.epoch == 1
    assert client.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0  # that put wrote nothing
    await store.put("p/k2", b"y")
    assert store.epoch == 1
    assert (await store.get("p/k2")).body == b"y"


async def test_s3_server_errors_are_retried_then_unavailable(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: MakeS3
) -> None:
    """503 answers are retried by our own loop (one request per try here) and end as StoreUnavailable."""
    store = make_s3(s3_proxy.endpoint_url, s3_bucket, max_attempts=1, retry_attempts=3, retry_base_s=0.01)
    s3_proxy.mode = "error503"
    with pytest.raises(StoreUnavailable, match="ServiceUnavailable"):
        await store.put("k", b"x")
    assert s3_proxy.requests == 3


@pytest.mark.parametrize("mode", ["down", "reset", "slow"])
async def test_s3_faults_are_unavailable_then_heal(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: MakeS3, mode: ProxyMode
) -> None:
    """A refused, reset or too slow connection raises StoreUnavailable; the same store works once healed."""
    store = make_s3(s3_proxy.endpoint_url, s3_bucket, read_timeout_s=0.3, **FAST_RETRIES)
    await store.put("warm", b"x")  # an open keep-alive connection must not dodge the fault
    s3_proxy.slow_delay_s = 1.0
    s3_proxy.mode = mode
    with pytest.raises(StoreUnavailable):
        await store.put("k", b"x")
    s3_proxy.mode = "pass"
    assert await store.put("k", b"x") == md5_hex(b"x")


async def test_s3_put_requests_are_small(
    s3_proxy: BytesCountingProxy, s3_bucket: str, make_s3: MakeS3
) -> None:
    """A create-only PUT with ~200 bytes of metadata sends a short head: no optional checksum or SDK
    headers, our short User-Agent, and no Expect round trip."""
    store = make_s3(s3_proxy.endpoint_url, s3_bucket)
    metadata = {
        "generation": "3",
        "cursor-start": "1234567890",
        "cursor-end": "1234599999",
        "sha256": "a" * 64,
        "harness": "claude-code",
        "session": "0f5c3a1e-7b2d-4c8e-9a6f-1d2e3f4a5b6c",
        "seq": "00042",
    }
    await store.put("warm", b"x")
    s3_proxy.reset_counters()
    await store.put("p/part-00000-deadbeef.jsonl", b"y" * 3000, metadata=metadata, if_none_match=True)
    (record,) = s3_proxy.request_log
    head = record.head.decode().lower()
    assert record.body_bytes == 3000
    assert f"user-agent: {s3_module.USER_AGENT}\r\n" in head
    for absent in ("amz-sdk-", "expect:", "x-amz-checksum", "content-md5", "x-amz-sdk-checksum"):
        assert absent not in head
    assert record.head_bytes < 1100, record.head.decode()


async def test_s3_errors_never_show_credentials(make_s3: MakeS3) -> None:
    """Neither url nor an error message holds the secret key or endpoint userinfo."""
    store = make_s3(
        f"http://user:hunter2@127.0.0.1:{free_port()}",
        "tm-no-such-bucket",
        access_key_id="AKIDSECRETISH",
        secret_access_key="s3cr3t-value",
        **FAST_RETRIES,
    )
    with pytest.raises(StoreUnavailable) as caught:
        await store.check()
    for text in (store.url, str(caught.value)):
        assert "s3cr3t-value" not in text and "hunter2" not in text and "AKIDSECRETISH" not in text


# --- open_store -------------------------------------------------------------------------------------


def test_open_store_picks_the_backend_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """file:// URLs and absolute paths give a LocalStore; s3:// URLs an S3Store with bucket and prefix."""
    assert isinstance(open_store(tmp_path.as_uri()), LocalStore)
    local = open_store(str(tmp_path))
    assert isinstance(local, LocalStore) and local.root == tmp_path
    s3 = open_store("s3://my-bucket/team/a/", S3Options(endpoint_url="http://127.0.0.1:9"))
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("my-bucket", "team/a")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert open_store("s3://my-bucket").url == "s3://my-bucket"


@pytest.mark.parametrize(
    "url", ["relative/path", "http://example.com/b", "s3://", "s3:///prefix", "file://host/p", "s3://k:s@b/p"]
)
def test_open_store_refuses_other_urls(url: str) -> None:
    """Unsupported schemes, relative paths, missing bucket names and embedded credentials raise ValueError."""
    with pytest.raises(ValueError) as caught:
        open_store(url)
    assert "k:s@" not in str(caught.value)
