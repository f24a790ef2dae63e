"""gemini-cli: discovery by the full sessionId, the v0.39+ JSONL lines as they are, and the pre-v0.39
``.json`` document followed as record versions (harnesses/document.py).

Unit tests drive the Harness and its Sources directly on real files; the end-to-end tests run the
daemon on a temporary HOME and read the bucket back. Expected values are built here from what the
test wrote (the agent's documents), never by tracemirrord's code.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from tracemirrord.harnesses.base import UnknownSource
from tracemirrord.harnesses.document import DocumentSource
from tracemirrord.harnesses.gemini_cli import GeminiCli
from tracemirrord.harnesses.jsonl import JsonlSource
from tracemirrord.source import START, Discontinuity, Position, Records, UnknownFormat

MAX_LINE = 1 << 20


# ---------- writing sessions as gemini-cli does ----------


def chats_dir(home: Path, project: str = "my-proj") -> Path:
    path = home / ".gemini" / "tmp" / project / "chats"
    path.mkdir(parents=True, exist_ok=True)
    return path


def header(sid: str, **more: Any) -> dict[str, Any]:
    return {
        "sessionId": sid,
        "projectHash": "ab" * 32,
        "startTime": "2026-03-01T10:00:00.000Z",
        "lastUpdated": "2026-03-01T10:00:00.000Z",
        "kind": "main",
        **more,
    }


def message(i: int, text: str | None = None, **more: Any) -> dict[str, Any]:
    kind = "user" if i % 2 == 0 else "gemini"
    msg: dict[str, Any] = {
        "id": f"msg-{i:04d}",
        "timestamp": f"2026-03-01T10:{i // 60:02d}:{i % 60:02d}.000Z",
        "type": kind,
        "content": [{"text": text or f"message number {i}"}],
    }
    if kind == "gemini":
        msg.update(toolCalls=[], tokens=None, model="gemini-2.5-pro")
    msg.update(more)
    return msg


def write_doc(path: Path, doc: dict[str, Any]) -> None:
    """As gemini-cli before v0.39: ``writeFileSync`` of the pretty-printed document, in place."""
    with path.open("w") as f:
        f.write(json.dumps(doc, indent=2))


def jsonl(*records: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)


def read(source: Any, after: Position, max_bytes: int = 1 << 20) -> Records | Discontinuity | None:
    return anyio.run(source.read, after, max_bytes)


def values(records: Records) -> list[Any]:
    return [json.loads(line) for line in records.data.splitlines()]


def drain(source: Any, after: Position, max_bytes: int = 1 << 20) -> tuple[list[Any], Position]:
    got: list[Any] = []
    while True:
        r = read(source, after, max_bytes)
        assert isinstance(r, Records), r
        if r.empty:
            return got, after
        got += values(r)
        after = r.end


def legacy_source(path: Path) -> DocumentSource:
    harness = GeminiCli()
    (ref,) = harness.discover_blocking([path.parents[2]]).sessions
    source = harness.open_source(ref, max_line_bytes=MAX_LINE)
    assert isinstance(source, DocumentSource)
    return source


# ---------- discovery ----------


def test_discovery_uses_the_full_session_id_and_skips_what_is_not_a_session(tmp_path: Path) -> None:
    chats = chats_dir(tmp_path)
    main_id, sub_id = str(uuid.uuid4()), str(uuid.uuid4())
    main = chats / f"session-2026-03-01T10-00-{main_id[:8]}.jsonl"
    main.write_bytes(jsonl(header(main_id), message(0)))
    sub = chats / main_id / f"{sub_id}.jsonl"
    sub.parent.mkdir()
    sub.write_bytes(jsonl(header(sub_id, kind="subagent", directories=["/w"])))
    (chats.parent / "logs.json").write_text("[]")  # beside chats/: no session
    (chats / "notes.jsonl").write_bytes(jsonl(header("x")))  # not session-*: no session
    harness = GeminiCli()
    root = tmp_path / ".gemini" / "tmp"
    found = harness.discover_blocking([root])
    assert {(r.session_id, r.path) for r in found.sessions} == {(main_id, main), (sub_id, sub)}
    assert found.refused == []


def test_a_file_is_no_session_until_its_first_line_is_complete(tmp_path: Path) -> None:
    chats = chats_dir(tmp_path)
    sid = str(uuid.uuid4())
    path = chats / f"session-2026-03-01T10-00-{sid[:8]}.jsonl"
    line = jsonl(header(sid))
    path.write_bytes(line[:20])
    old = 1_700_000_000
    os.utime(chats, (old, old))  # the directory listing is trusted: only the waiting file is re-read
    harness = GeminiCli()
    root = tmp_path / ".gemini" / "tmp"
    assert anyio.run(harness.discover, [root]).sessions == []
    with path.open("ab") as f:
        f.write(line[20:])
    os.utime(chats, (old, old))
    (ref,) = anyio.run(harness.discover, [root]).sessions
    assert ref.session_id == sid
    again = anyio.run(harness.discover, [root])
    assert again is anyio.run(harness.discover, [root]), "nothing changed: the same Discovery object"


def test_unknown_first_lines_and_documents_are_refused_by_name(tmp_path: Path) -> None:
    chats = chats_dir(tmp_path)
    no_id = chats / "session-2026-03-01T10-00-aaaaaaaa.jsonl"
    no_id.write_bytes(jsonl({"projectHash": "x", "startTime": "t"}))
    no_messages = chats / "session-2026-03-01T10-00-bbbbbbbb.json"
    write_doc(no_messages, {"sessionId": "s-1", "projectHash": "x", "turns": []})
    found = GeminiCli().discover_blocking([tmp_path / ".gemini" / "tmp"])
    assert found.sessions == []
    assert {r.path for r in found.refused} == {no_id, no_messages}
    assert all(isinstance(r, UnknownSource) for r in found.refused)
    assert "sessionId" in str(next(r for r in found.refused if r.path == no_id))
    assert "messages" in str(next(r for r in found.refused if r.path == no_messages))


def test_a_resumed_json_session_is_one_session_followed_in_its_jsonl(tmp_path: Path) -> None:
    chats = chats_dir(tmp_path)
    sid = str(uuid.uuid4())
    old = chats / f"session-2026-03-01T10-00-{sid[:8]}.json"
    write_doc(old, {**header(sid), "messages": [message(0), message(1)]})
    harness = GeminiCli()
    root = tmp_path / ".gemini" / "tmp"
    (ref,) = harness.discover_blocking([root]).sessions
    assert (ref.session_id, ref.path) == (sid, old)
    assert isinstance(harness.open_source(ref, max_line_bytes=MAX_LINE), DocumentSource)
    new = old.with_suffix(".jsonl")  # v0.39+ resuming it: session-...json -> session-...jsonl
    new.write_bytes(jsonl(header(sid), message(0), message(1)))
    (ref,) = harness.discover_blocking([root]).sessions
    assert (ref.session_id, ref.path) == (sid, new)
    source = harness.open_source(ref, max_line_bytes=MAX_LINE)
    assert isinstance(source, JsonlSource)
    # The position reached in the document does not continue in the JSONL: a new generation.
    doc_end = Position(0, 3, "d1.2.x.y.z.-")
    assert isinstance(read(source, doc_end), Discontinuity)


def test_describe_reads_cwd_start_model_and_kind(tmp_path: Path) -> None:
    chats = chats_dir(tmp_path)
    (chats.parent / ".project_root").write_text("/home/dev/my-proj\n")
    sid = str(uuid.uuid4())
    path = chats / f"session-2026-03-01T10-00-{sid[:8]}.jsonl"
    path.write_bytes(jsonl(header(sid), message(0), message(1)))
    harness = GeminiCli()
    (ref,) = harness.discover_blocking([tmp_path / ".gemini" / "tmp"]).sessions
    source = harness.open_source(ref, max_line_bytes=MAX_LINE)
    info = source.describe(path.read_bytes().splitlines())
    assert (info.cwd, info.started_at, info.model) == (
        "/home/dev/my-proj",
        "2026-03-01T10:00:00.000Z",
        "gemini-2.5-pro",
    )
    assert info.extra["kind"] == "main"
    sub = [json.dumps(header(sid, kind="subagent", directories=["/w/a", "/w/b"])).encode()]
    assert source.describe(sub).cwd == "/w/a"
    assert source.describe(sub).extra["kind"] == "subagent"


def test_a_symlinked_project_root_is_not_read(tmp_path: Path) -> None:
    """``.project_root`` as a link to another file: its text must not become the session's cwd."""
    chats = chats_dir(tmp_path)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("/home/dev/NOT-THE-PROJECT\n")
    (chats.parent / ".project_root").symlink_to(elsewhere)
    sid = str(uuid.uuid4())
    path = chats / f"session-2026-03-01T10-00-{sid[:8]}.jsonl"
    path.write_bytes(jsonl(header(sid), message(0)))
    harness = GeminiCli()
    (ref,) = harness.discover_blocking([tmp_path / ".gemini" / "tmp"]).sessions
    source = harness.open_source(ref, max_line_bytes=MAX_LINE)
    assert source.describe(path.read_bytes().splitlines()).cwd is None


# ---------- the pre-v0.39 document ----------


def test_a_growing_document_gives_each_message_once_after_its_metadata(tmp_path: Path) -> None:
    path = chats_dir(tmp_path) / "session-2026-03-01T10-00-cafebabe.json"
    meta = header("cafebabe-0000-4000-8000-000000000001")
    msgs = [message(0)]
    write_doc(path, {**meta, "messages": msgs})
    source = legacy_source(path)
    assert source.unit == "records"
    got, pos = drain(source, START)
    assert got == [meta, msgs[0]]
    assert pos.cursor == 2 and pos.check and ";" not in pos.check and pos.check.isascii()
    for i in range(1, 6):
        msgs.append(message(i))
        write_doc(path, {**meta, "lastUpdated": f"2026-03-01T11:00:0{i}Z", "messages": msgs})
        more, pos = drain(source, pos)
        assert more == [msgs[i]], "only the new message; a changed lastUpdated alone is no update"
    assert pos.cursor == 7
    assert source.behind(pos) == 0


def test_a_changed_message_is_emitted_again_once_and_metadata_changes_as_set(tmp_path: Path) -> None:
    path = chats_dir(tmp_path) / "session-2026-03-01T10-00-cafebabe.json"
    meta = header("cafebabe-0000-4000-8000-000000000002")
    msgs = [message(0), message(1), message(2)]
    write_doc(path, {**meta, "messages": msgs})
    source = legacy_source(path)
    _, pos = drain(source, START)
    msgs[1] = message(1, tokens={"input": 10, "output": 5, "cached": 0, "total": 15})
    msgs[2] = message(2, text="edited")
    msgs.append(message(3))
    write_doc(path, {**meta, "summary": "Fix the bug", "messages": msgs})
    got, pos = drain(source, pos)
    assert got == [{"$set": {**meta, "summary": "Fix the bug"}}, msgs[1], msgs[2], msgs[3]]
    assert drain(source, pos)[0] == [], "nothing changed since: nothing more"


def test_a_reread_after_a_crash_adds_nothing_already_mirrored(tmp_path: Path) -> None:
    """A new source (as after a restart) given only the position from the bucket."""
    path = chats_dir(tmp_path) / "session-2026-03-01T10-00-cafebabe.json"
    meta = header("cafebabe-0000-4000-8000-000000000003")
    msgs = [message(i) for i in range(4)]
    write_doc(path, {**meta, "messages": msgs})
    _, pos = drain(legacy_source(path), START)
    assert drain(legacy_source(path), pos)[0] == []
    # the last mirrored message gets its reply tokens, and a new one arrives: both, once
    msgs[3] = message(3, tokens={"input": 1, "output": 2, "cached": 0, "total": 3})
    msgs.append(message(4))
    write_doc(path, {**meta, "messages": msgs})
    got, pos2 = drain(legacy_source(path), pos)
    assert got == [msgs[3], msgs[4]]
    assert drain(legacy_source(path), pos2)[0] == []
    # an earlier message changed while nobody watched: the check cannot tell which -> new generation
    msgs[0] = message(0, text="rewritten")
    write_doc(path, {**meta, "messages": msgs})
    assert isinstance(read(legacy_source(path), pos2), Discontinuity)


def test_small_reads_resume_from_every_intermediate_position(tmp_path: Path) -> None:
    path = chats_dir(tmp_path) / "session-2026-03-01T10-00-cafebabe.json"
    meta = header("cafebabe-0000-4000-8000-000000000004")
    msgs = [message(i) for i in range(6)]
    write_doc(path, {**meta, "messages": msgs})
    positions = [START]
    got: list[Any] = []
    source = legacy_source(path)
    while True:
        r = read(source, positions[-1], max_bytes=1)  # at least one record per read
        assert isinstance(r, Records)
        if r.empty:
            break
        assert len(r.data.splitlines()) == 1
        got += values(r)
        positions.append(r.end)
    assert got == [meta, *msgs]
    assert [p.cursor for p in positions] == list(range(8))
    for n, p in enumerate(positions):
        assert drain(legacy_source(path), p)[0] == [meta, *msgs][n:], f"resume at {p}"


def test_rewound_or_replaced_documents_are_discontinuities(tmp_path: Path) -> None:
    path = chats_dir(tmp_path) / "session-2026-03-01T10-00-cafebabe.json"
    meta = header("cafebabe-0000-4000-8000-000000000005")
    msgs = [message(i) for i in range(5)]
    write_doc(path, {**meta, "messages": msgs})
    source = legacy_source(path)
    _, pos = drain(source, START)
    write_doc(path, {**meta, "messages": [*msgs[:2], message(7)]})  # /rewind, then a new prompt
    assert isinstance(read(source, pos), Discontinuity)
    assert isinstance(read(legacy_source(path), pos), Discontinuity)
    got, _ = drain(source, Position(pos.generation + 1))
    assert got == [meta, msgs[0], msgs[1], message(7)], "the new generation holds the whole document"


def test_a_half_written_document_is_nothing_yet(tmp_path: Path) -> None:
    path = chats_dir(tmp_path) / "session-2026-03-01T10-00-cafebabe.json"
    meta = header("cafebabe-0000-4000-8000-000000000006")
    write_doc(path, {**meta, "messages": [message(0)]})
    source = legacy_source(path)
    _, pos = drain(source, START)
    full = json.dumps({**meta, "messages": [message(0), message(1)]}, indent=2)
    path.write_text(full[: len(full) // 2])  # writeFileSync caught mid-write
    r = read(source, pos)
    assert isinstance(r, Records) and r.empty
    path.write_text("")
    r = read(source, pos)
    assert isinstance(r, Records) and r.empty
    path.write_text(full)
    assert drain(source, pos)[0] == [message(1)]


def test_a_document_of_unknown_shape_raises_unknown_format(tmp_path: Path) -> None:
    path = chats_dir(tmp_path) / "session-2026-03-01T10-00-cafebabe.json"
    write_doc(path, {**header("cafebabe-0000-4000-8000-000000000007"), "messages": [message(0)]})
    source = legacy_source(path)
    write_doc(path, {**header("cafebabe-0000-4000-8000-000000000007"), "conversation": []})
    with pytest.raises(UnknownFormat, match="messages"):
        read(source, START)


def test_settled_at_parks_only_a_fully_mirrored_document(tmp_path: Path) -> None:
    path = chats_dir(tmp_path) / "session-2026-03-01T10-00-cafebabe.json"
    meta = header("cafebabe-0000-4000-8000-000000000008")
    msgs = [message(0), message(1)]
    write_doc(path, {**meta, "messages": msgs})
    source = legacy_source(path)
    _, pos = drain(source, START)
    probe = legacy_source(path).settled_at(pos)
    assert probe is not None and probe == source.probe()
    assert legacy_source(path).settled_at(START) is None
    msgs.append(message(2))
    write_doc(path, {**meta, "messages": msgs})
    assert legacy_source(path).settled_at(pos) is None
    path.unlink()
    assert source.probe() is None
    assert read(source, pos) is None


# ---------- end to end: the daemon on a temporary HOME ----------


def e2e_env(tmp_path: Path) -> dict[str, str]:
    from daemon import daemon_env

    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}", {"TRACEMIRROR_HARNESSES": "gemini-cli"})
    env.pop("GEMINI_CLI_HOME", None)
    return env


def bucket_generations(env: dict[str, str], sid: str) -> dict[int, bytes]:
    from daemon import read_back

    from tracemirrord.model import SessionKey

    try:
        return read_back(env["TRACEMIRROR_BUCKET"], SessionKey("gemini-cli", sid)).generations
    except Exception:
        return {}


def parsed(data: bytes) -> list[Any]:
    return [json.loads(line) for line in data.splitlines()]


def test_daemon_mirrors_jsonl_lines_as_written_and_a_rewrite_as_a_new_generation(tmp_path: Path) -> None:
    """Re-appended ids, $set and $rewindTo lines arrive byte for byte; a temp+rename rewrite is
    generation 1 and generation 0 keeps everything mirrored before it."""
    from daemon import Daemon, wait_for

    env = e2e_env(tmp_path)
    chats = chats_dir(Path(env["HOME"]))
    sid = str(uuid.uuid4())
    path = chats / f"session-2026-03-01T10-00-{sid[:8]}.jsonl"
    body = jsonl(header(sid), message(0), message(1))
    path.write_bytes(body)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: bucket_generations(env, sid).get(0) == body, 15, "the first lines")
        more = jsonl(
            message(1, tokens={"input": 3, "output": 4, "cached": 0, "total": 7}),  # same id again
            {"$set": {"summary": "Fix the parser"}},
            message(2),
            message(3),
            {"$rewindTo": "msg-0002"},
            message(4),
        )
        with path.open("ab") as f:
            f.write(more[:40])  # a partial line waits for its newline
        time.sleep(0.8)
        assert bucket_generations(env, sid).get(0) == body
        with path.open("ab") as f:
            f.write(more[40:])
        wait_for(lambda: bucket_generations(env, sid).get(0) == body + more, 15, "the update lines")
        rewritten = jsonl(header(sid), message(0), message(1), message(4))
        tmp = path.with_name(path.name + ".tmp-4242")  # as rewriteConversationFile does
        tmp.write_bytes(rewritten)
        os.replace(tmp, path)
        wait_for(lambda: bucket_generations(env, sid) == {0: body + more, 1: rewritten}, 15, "generation 1")
        assert daemon.stop() == 0, daemon.log()


def test_daemon_follows_a_growing_json_document_then_its_resumed_jsonl(tmp_path: Path) -> None:
    """An old-format document written message by message while the daemon runs: each message once
    (the last one again when its tokens arrive); resumed in v0.39 it continues as generation 1."""
    from daemon import Daemon, wait_for

    env = e2e_env(tmp_path)
    chats = chats_dir(Path(env["HOME"]))
    sid = str(uuid.uuid4())
    path = chats / f"session-2026-03-01T10-00-{sid[:8]}.json"
    meta = header(sid)
    msgs = [message(0)]
    write_doc(path, {**meta, "messages": msgs})
    want = [meta, msgs[0]]
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: parsed(bucket_generations(env, sid).get(0, b"")) == want, 15, "metadata + message")
        for i in range(1, 8):
            msgs.append(message(i))
            write_doc(path, {**meta, "lastUpdated": f"2026-03-01T11:00:{i:02d}.000Z", "messages": msgs})
            want.append(msgs[i])
            time.sleep(0.15)
        wait_for(lambda: parsed(bucket_generations(env, sid).get(0, b"")) == want, 15, "each message once")
        msgs[7] = message(7, tokens={"input": 9, "output": 9, "cached": 0, "total": 18})
        write_doc(path, {**meta, "messages": msgs})
        want.append(msgs[7])
        wait_for(lambda: parsed(bucket_generations(env, sid).get(0, b"")) == want, 15, "its new version")
        resumed = jsonl(header(sid), *msgs) + jsonl(message(8))
        path.with_suffix(".jsonl").write_bytes(resumed)
        wait_for(lambda: bucket_generations(env, sid).get(1) == resumed, 15, "the .jsonl as generation 1")
        assert parsed(bucket_generations(env, sid)[0]) == want, "generation 0 untouched"
        assert daemon.stop() == 0, daemon.log()
    meta_json = json.loads(
        (tmp_path / "bucket" / "default" / "sessions" / "gemini-cli" / sid / "meta.json").read_bytes()
    )
    assert meta_json["started_at"] == "2026-03-01T10:00:00.000Z"


def test_once_mirrors_documents_and_jsonl_and_a_second_run_adds_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = e2e_env(tmp_path)
    chats = chats_dir(Path(env["HOME"]))
    old_id, new_id = str(uuid.uuid4()), str(uuid.uuid4())
    meta = header(old_id)
    msgs = [message(i) for i in range(5)]
    write_doc(chats / f"session-2026-03-01T10-00-{old_id[:8]}.json", {**meta, "messages": msgs})
    body = jsonl(header(new_id), message(0), message(1), {"$rewindTo": "msg-0001"})
    (chats / f"session-2026-03-01T11-00-{new_id[:8]}.jsonl").write_bytes(body)
    once = [sys.executable, "-m", "tracemirrord", "--once"]
    for _ in range(2):
        done = subprocess.run(once, env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        assert parsed(bucket_generations(env, old_id)[0]) == [meta, *msgs]
        assert bucket_generations(env, new_id) == {0: body}
