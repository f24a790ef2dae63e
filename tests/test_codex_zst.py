"""Codex's compressed rollouts (``.jsonl.zst``): the same session, the plain file's cursors, nothing re-read.

Unit tests drive ``ZstJsonlSource`` and the Codex harness against real files compressed with zstd as
Codex does it (a temp file renamed beside the plain one, the mtime kept, then the plain file deleted).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import time
import uuid
from pathlib import Path

import anyio
import pytest
import zstandard
from sessions import record

from tracemirrord.harnesses.codex import Codex
from tracemirrord.harnesses.jsonl import JsonlSource
from tracemirrord.harnesses.zst import ZstJsonlSource
from tracemirrord.source import START, Discontinuity, Position, Records, UnknownFormat

SID = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
MAX_LINE = 1 << 20


def rollout_lines(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return b"".join(record("codex", SID, i, rng) for i in range(n))


def plain_path(root: Path) -> Path:
    path = root / "sessions" / "2026" / "11" / "23" / f"rollout-2026-11-23T10-00-00-{SID}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def compress_like_codex(plain: Path, *, keep_plain: bool = False) -> Path:
    """``<name>.jsonl.zst`` beside the plain file via a temp file and rename, mtime kept; plain deleted."""
    st = plain.stat()
    target = plain.with_name(plain.name + ".zst")
    tmp = plain.with_name("rollout-compress-abc123.tmp")
    tmp.write_bytes(zstandard.ZstdCompressor(level=3).compress(plain.read_bytes()))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, target)
    if not keep_plain:
        plain.unlink()
    return target


def read_all(source: object, after: Position, max_bytes: int) -> list[Records]:
    """Every read until an empty one (the writer's loop)."""

    async def go() -> list[Records]:
        out = []
        position = after
        while True:
            got = await source.read(position, max_bytes)  # type: ignore[attr-defined]
            assert isinstance(got, Records), got
            if got.empty:
                return out
            out.append(got)
            position = got.end

    return anyio.run(go)


def zst_source(path: Path, max_line: int = MAX_LINE) -> ZstJsonlSource:
    return ZstJsonlSource(path, max_line_bytes=max_line, describe=Codex().describe)


def plain_source(path: Path, max_line: int = MAX_LINE) -> JsonlSource:
    return JsonlSource(path, max_line_bytes=max_line, describe=Codex().describe)


def test_zst_reads_give_the_plain_files_records_cursors_and_checks(tmp_path: Path) -> None:
    """Read in small pieces, the .zst yields exactly the lines written, with the plain file's positions."""
    body = rollout_lines(60)
    plain = plain_path(tmp_path)
    plain.write_bytes(body + b'{"partial":')  # a partial last line waits in both
    from_plain = read_all(plain_source(plain), START, 4096)
    zst = compress_like_codex(plain)
    from_zst = read_all(zst_source(zst), START, 4096)
    assert b"".join(r.data for r in from_zst) == body
    assert len(from_zst) > 3, "several reads, so cursors in the middle are compared too"
    assert [(r.start, r.end, r.data, r.source_bytes) for r in from_zst] == [
        (r.start, r.end, r.data, r.source_bytes) for r in from_plain
    ]
    assert from_zst[-1].end.cursor == len(body)


def test_a_session_mirrored_from_the_plain_file_continues_from_the_zst_with_nothing_again(
    tmp_path: Path,
) -> None:
    """At the plain file's end position the .zst has nothing new; from a middle position, exactly the rest."""
    body = rollout_lines(40)
    plain = plain_path(tmp_path)
    plain.write_bytes(body)
    reads = read_all(plain_source(plain), START, 2048)
    end, middle = reads[-1].end, reads[1].end
    zst = compress_like_codex(plain)
    source = zst_source(zst)
    assert read_all(source, end, 2048) == []
    rest = read_all(source, middle, 1 << 20)
    assert b"".join(r.data for r in rest) == body[middle.cursor :]
    assert rest[-1].end == end, "the same end position (cursor and check) as the plain file gave"
    assert source.behind(end) == 0


def test_a_zst_that_does_not_continue_what_was_mirrored_is_a_discontinuity(tmp_path: Path) -> None:
    """A .zst whose content differs before the cursor is a new generation, like a rewritten plain file."""
    plain = plain_path(tmp_path)
    plain.write_bytes(rollout_lines(20, seed=1))
    end = read_all(plain_source(plain), START, 1 << 20)[-1].end
    plain.write_bytes(rollout_lines(30, seed=2))
    zst = compress_like_codex(plain)
    got = anyio.run(zst_source(zst).read, end, 1 << 20)
    assert isinstance(got, Discontinuity)


def test_an_oversize_line_becomes_the_same_placeholder(tmp_path: Path) -> None:
    """A line over max_line_bytes becomes a placeholder with its size and sha256, as from the plain file."""
    big = b'{"blob":"' + b"A" * 300_000 + b'"}\n'
    body = rollout_lines(2) + big + rollout_lines(2, seed=9)
    plain = plain_path(tmp_path)
    plain.write_bytes(body)
    zst = compress_like_codex(plain)
    reads = read_all(zst_source(zst, max_line=100_000), START, 50_000)
    lines = b"".join(r.data for r in reads).splitlines()
    placeholder = json.loads(lines[2])
    assert placeholder["bytes"] == len(big)
    assert placeholder["sha256"] == hashlib.sha256(big).hexdigest()
    assert sum(r.dropped for r in reads) == 1
    assert reads[-1].end.cursor == len(body)


def test_settled_at_and_probe(tmp_path: Path) -> None:
    """settled_at parks a .zst only at its exact decompressed end; probe is a stat of the .zst."""
    body = rollout_lines(10)
    plain = plain_path(tmp_path)
    plain.write_bytes(body)
    end = read_all(plain_source(plain), START, 1 << 20)[-1].end
    zst = compress_like_codex(plain)
    source = zst_source(zst)
    settled = source.settled_at(end)
    assert settled is not None and settled == source.probe()
    assert source.settled_at(Position(0, 5, end.check)) is None
    assert source.settled_at(Position(0, end.cursor, "1024:0000000000000000:0000000000000000")) is None
    zst.unlink()
    assert source.probe() is None and anyio.run(source.read, end, 100) is None


def test_a_file_that_is_no_zstd_is_an_unknown_format(tmp_path: Path) -> None:
    path = plain_path(tmp_path).with_suffix(".jsonl.zst")
    path.write_bytes(b"this is not zstd\n" * 10)
    with pytest.raises(UnknownFormat, match="zstd"):
        anyio.run(zst_source(path).read, START, 100)


def test_codex_scan_prefers_the_plain_file_while_both_exist(tmp_path: Path) -> None:
    """One session id for both names; the plain file while it exists, then the .zst; the right Source."""
    codex = Codex()
    roots = [tmp_path / "sessions", tmp_path / "archived_sessions"]
    plain = plain_path(tmp_path)
    noise = base64.b64encode(random.Random(3).randbytes(90))
    plain.write_bytes(b'{"r":"' + noise + b'"}\n')  # incompressible: its .zst is the larger file
    found = anyio.run(codex.discover, roots)
    assert [(r.session_id, r.path) for r in found.sessions] == [(SID, plain)]
    zst = compress_like_codex(plain, keep_plain=True)
    assert zst.stat().st_size > plain.stat().st_size
    found = anyio.run(codex.discover, roots)
    assert [(r.session_id, r.path) for r in found.sessions] == [(SID, plain)]
    assert isinstance(codex.open_source(found.sessions[0], max_line_bytes=MAX_LINE), JsonlSource)
    plain.unlink()
    time.sleep(0.01)
    found = anyio.run(codex.discover, roots)
    assert [(r.session_id, r.path) for r in found.sessions] == [(SID, zst)]
    assert isinstance(codex.open_source(found.sessions[0], max_line_bytes=MAX_LINE), ZstJsonlSource)
    again = anyio.run(codex.discover, roots)
    assert again.sessions == found.sessions
    # archived and compressed: the same id
    archived = roots[1] / zst.name
    archived.parent.mkdir(parents=True)
    os.rename(zst, archived)
    found = anyio.run(codex.discover, roots)
    assert [(r.session_id, r.path) for r in found.sessions] == [(SID, archived)]
    assert not any(r.path.name.endswith(".tmp") for r in found.sessions)


# ---------- end to end: the daemon as a subprocess into a file:// bucket ----------


def test_daemon_compression_uploads_nothing_again_and_a_zst_only_session_is_mirrored(tmp_path: Path) -> None:
    """A mirrored rollout compressed (plain deleted) gets no new part and is not ended, and continues
    when resumed (decompressed back and appended); a rollout that only exists compressed is mirrored
    byte for byte as its decompressed lines."""
    from daemon import Daemon, daemon_env, read_back, wait_for
    from sessions import make_session

    from tracemirrord.model import SessionKey

    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}")
    home = Path(env["HOME"])
    bucket = tmp_path / "bucket" / "default" / "sessions" / "codex"
    mirrored = make_session(home, "codex")
    body = b"".join(record("codex", mirrored.session_id, i, random.Random(i)) for i in range(12))
    mirrored.path.write_bytes(body)
    only_zst_id = str(uuid.UUID(int=random.Random(7).getrandbits(128), version=4))
    only_zst_body = b"".join(record("codex", only_zst_id, i, random.Random(100 + i)) for i in range(9))

    def generations(sid: str) -> dict[int, bytes]:
        try:
            return read_back(env["TRACEMIRROR_BUCKET"], SessionKey("codex", sid)).generations
        except Exception:
            return {}

    def meta(sid: str) -> dict:
        path = bucket / sid / "meta.json"
        return json.loads(path.read_bytes()) if path.exists() else {}

    def parts(sid: str) -> list[str]:
        return sorted(p.name for p in (bucket / sid).glob("part-*.jsonl"))

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: generations(mirrored.session_id).get(0) == body, 15, "the plain rollout")
        before = parts(mirrored.session_id)
        zst = compress_like_codex(mirrored.path)
        only_zst = mirrored.path.with_name(f"rollout-2026-11-23T11-00-00-{only_zst_id}.jsonl.zst")
        only_zst.write_bytes(zstandard.ZstdCompressor(level=3).compress(only_zst_body + b'{"cut'))
        wait_for(lambda: generations(only_zst_id).get(0) == only_zst_body, 15, "the .zst-only rollout")
        time.sleep(1.5)  # several scans and probes after the switch to the .zst
        assert parts(mirrored.session_id) == before, "nothing uploaded again"
        assert meta(mirrored.session_id).get("ended_at") is None
        # resumed: Codex decompresses it back to .jsonl (hard link of a temp file), drops the .zst, appends
        tmp = mirrored.path.with_name(mirrored.path.name + ".decompress.1.0.tmp")
        tmp.write_bytes(zstandard.ZstdDecompressor().decompress(zst.read_bytes()))
        os.link(tmp, mirrored.path)
        tmp.unlink()
        zst.unlink()
        more = b"".join(record("codex", mirrored.session_id, i, random.Random(i)) for i in range(12, 14))
        with mirrored.path.open("ab") as f:
            f.write(more)
        wait_for(lambda: generations(mirrored.session_id).get(0) == body + more, 15, "the resumed rollout")
        assert daemon.stop() == 0, daemon.log()
    assert len(parts(mirrored.session_id)) == len(before) + 1, "only the appended lines are new"
    assert generations(mirrored.session_id) == {0: body + more}
    assert meta(mirrored.session_id).get("ended_at") is None
    assert meta(mirrored.session_id)["generation"] == 0
    assert generations(only_zst_id) == {0: only_zst_body}
    assert meta(only_zst_id)["cwd"] == "/home/dev/proj"
