"""The JSONL tail: complete lines only, bounded reads, rewrite detection by fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tracemirrord.harnesses.jsonl import Mismatch, read_chunk, stat_file
from tracemirrord.model import Chunk, Fingerprint

MiB = 1 << 20


def read(
    path: Path, start: int = 0, fp: Fingerprint | None = None, max_bytes: int = MiB, max_line: int = 4 * MiB
):
    return read_chunk(
        path, generation=0, start=start, expected=fp, max_bytes=max_bytes, max_line_bytes=max_line
    )


def test_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    """Only complete lines are read; the partial tail is left for the next read."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":')
    chunk = read(path)
    assert isinstance(chunk, Chunk)
    assert chunk.data == b'{"a":1}\n' and chunk.end == 8
    with path.open("ab") as f:
        f.write(b"2}\n")
    nxt = read(path, chunk.end, chunk.fingerprint)
    assert isinstance(nxt, Chunk) and nxt.data == b'{"b":2}\n' and nxt.start == 8


def test_only_partial_line_gives_empty_chunk(tmp_path: Path) -> None:
    """A file holding only a partial line yields nothing yet."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"half": ')
    chunk = read(path)
    assert isinstance(chunk, Chunk) and chunk.data == b"" and chunk.end == 0


def test_reads_are_bounded(tmp_path: Path) -> None:
    """A read never returns more than max_bytes when lines fit; the rest comes in later reads."""
    path = tmp_path / "s.jsonl"
    lines = [json.dumps({"i": i, "pad": "x" * 100}).encode() + b"\n" for i in range(2000)]
    path.write_bytes(b"".join(lines))
    got, start, fp = [], 0, None
    while True:
        chunk = read(path, start, fp, max_bytes=10_000)
        assert isinstance(chunk, Chunk)
        if chunk.end == start:
            break
        assert len(chunk.data) <= 10_000
        got.append(chunk.data)
        start, fp = chunk.end, chunk.fingerprint
    assert b"".join(got) == b"".join(lines)


def test_long_line_is_read_whole(tmp_path: Path) -> None:
    """A line longer than one read but under the line limit comes back whole."""
    path = tmp_path / "s.jsonl"
    line = b'{"big":"' + b"y" * (3 * MiB) + b'"}\n'
    path.write_bytes(line + b'{"next":1}\n')
    chunk = read(path, max_bytes=MiB, max_line=8 * MiB)
    assert isinstance(chunk, Chunk) and chunk.data == line and chunk.dropped == 0


def test_oversize_line_becomes_a_placeholder(tmp_path: Path) -> None:
    """A line over the limit is streamed past and replaced by a counted placeholder with its hash."""
    path = tmp_path / "s.jsonl"
    line = b'{"huge":"' + b"z" * (3 * MiB) + b'"}\n'
    path.write_bytes(line)
    chunk = read(path, max_bytes=MiB, max_line=2 * MiB)
    assert isinstance(chunk, Chunk) and chunk.dropped == 1 and chunk.end == len(line)
    doc = json.loads(chunk.data)
    assert doc["bytes"] == len(line) and doc["sha256"] == hashlib.sha256(line).hexdigest()


def test_oversize_line_without_newline_waits(tmp_path: Path) -> None:
    """An unfinished long line is not framed until its newline arrives."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"q" * (3 * MiB))
    chunk = read(path, max_bytes=MiB, max_line=2 * MiB)
    assert isinstance(chunk, Chunk) and chunk.end == 0


def test_truncation_is_a_mismatch(tmp_path: Path) -> None:
    """A file shorter than the cursor is reported, not read."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":2}\n')
    chunk = read(path)
    assert isinstance(chunk, Chunk)
    path.write_bytes(b'{"a":1}\n')
    assert isinstance(read(path, chunk.end, chunk.fingerprint), Mismatch)


def test_rewrite_in_place_is_a_mismatch(tmp_path: Path) -> None:
    """A file rewritten with other content before the cursor is caught even when it grew."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":2}\n')
    chunk = read(path)
    assert isinstance(chunk, Chunk)
    path.write_bytes(b'{"a":1}\n{"c":3}\n{"d":4}\n{"e":5}\n')
    assert isinstance(read(path, chunk.end, chunk.fingerprint), Mismatch)


def test_replaced_with_new_head_is_a_mismatch(tmp_path: Path) -> None:
    """A long file replaced by another whose start differs is caught by the head hash."""
    path = tmp_path / "s.jsonl"
    body = b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(500))
    path.write_bytes(body)
    chunk = read(path)
    assert isinstance(chunk, Chunk)
    tmp = tmp_path / "new.jsonl"
    tmp.write_bytes(b'{"other":true}\n' + body[15:] + b'{"more":1}\n')
    os.replace(tmp, path)
    assert isinstance(read(path, chunk.end, chunk.fingerprint), Mismatch)


def test_append_keeps_fingerprint_valid(tmp_path: Path) -> None:
    """Plain appends across the fingerprint window never look like a rewrite."""
    path = tmp_path / "s.jsonl"
    start, fp = 0, None
    for i in range(300):
        with path.open("ab") as f:
            f.write(json.dumps({"i": i}).encode() + b"\n")
        chunk = read(path, start, fp)
        assert isinstance(chunk, Chunk), chunk
        start, fp = chunk.end, chunk.fingerprint
    assert start == path.stat().st_size


def test_gone_file(tmp_path: Path) -> None:
    """A missing file reads as None and stats as None."""
    assert read(tmp_path / "nope.jsonl") is None
    assert stat_file(tmp_path / "nope.jsonl") is None


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    """A session path that is a symlink is neither read nor stat-ed as a file."""
    target = tmp_path / "outside.jsonl"
    target.write_bytes(b'{"secret":1}\n')
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert stat_file(link) is None
    assert read(link) is None
