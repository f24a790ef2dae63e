"""Claude Code beyond its transcripts: the prompt history and the tool-results files users lose.

Unit tests run the harness's scan on a real tree and ``AttachmentMirror`` against a real
``LocalStore``; the daemon tests (end of file) run ``python -m tracemirrord`` as a subprocess.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from tracemirrord.attachments import AttachmentMirror
from tracemirrord.harnesses.base import Attachment
from tracemirrord.harnesses.claude_code import ClaudeCode, history_session_id
from tracemirrord.model import is_safe_segment
from tracemirrord.redact import Redactor
from tracemirrord.store.base import ObjectInfo, StoreError, StoreUnavailable
from tracemirrord.store.local import LocalStore

TOKEN = "ghp_" + "Ab3" * 12  # a GitHub token shape (36 characters after the prefix)
OLD = time.time() - 3600


def aged(path: Path, when: float = OLD) -> Path:
    os.utime(path, (when, when))
    return path


@dataclass
class Tree:
    """A Claude Code config dir: projects/<cwd>/<uuid>.jsonl, its tool-results, and history.jsonl."""

    config: Path
    session: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def projects(self) -> Path:
        return self.config / "projects"

    @property
    def project(self) -> Path:
        return self.projects / "-home-dev-proj"

    def transcript(self) -> Path:
        path = self.project / f"{self.session}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            f.write(b'{"type":"user","sessionId":"' + self.session.encode() + b'","cwd":"/home/dev/proj"}\n')
        return path

    def tool_result(self, name: str, body: bytes) -> Path:
        path = self.project / self.session / "tool-results" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return path


@dataclass
class Health:
    """Records what the mirror tells the store health (the daemon's StoreHealth logs the same calls)."""

    failures: list[str] = field(default_factory=list)
    oks: int = 0

    def ok(self) -> None:
        self.oks += 1

    def failed(self, exc: StoreError) -> None:
        self.failures.append(str(exc))


@dataclass
class Ctx:
    store: object
    redactor: Redactor = field(default_factory=Redactor)
    project: str = "default"
    max_line_bytes: int = 1 << 20
    health: Health = field(default_factory=Health)


class Counting:
    """A real LocalStore that counts the requests made of it and can fail the next ones."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalStore(root)
        self.calls: list[tuple[str, str]] = []
        self.fail_puts = 0

    async def list(self, prefix: str, *, start_after: str | None = None) -> list[ObjectInfo]:
        self.calls.append(("list", prefix))
        return await self.inner.list(prefix, start_after=start_after)

    async def put(self, key: str, body: bytes, **kwargs: object) -> str:
        self.calls.append(("put", key))
        if self.fail_puts:
            self.fail_puts -= 1
            raise StoreUnavailable("simulated: the bucket is down")
        return await self.inner.put(key, body, **kwargs)  # type: ignore[arg-type]

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


def bucket_object(root: Path, session: str, name: str) -> Path:
    return root / "default" / "sessions" / "claude-code" / session / name


# ---------- the scan ----------


def test_scan_lists_tool_results_as_attachments_and_history_as_a_session(tmp_path: Path) -> None:
    tree = Tree(tmp_path / ".claude")
    transcript = tree.transcript()
    sub = tree.project / tree.session / "subagents" / "agent-a1.jsonl"
    sub.parent.mkdir(parents=True)
    sub.write_bytes(b"{}\n")
    txt = aged(tree.tool_result("toolu_01A.txt", b"output\n"))
    js = aged(tree.tool_result("toolu_01B.json", b'{"a": 1}\n'))
    history = tree.config / "history.jsonl"
    history.write_bytes(b'{"display":"hi","timestamp":1700000000000,"project":"/home/dev/proj"}\n')
    harness = ClaudeCode(history_id="history__tester@host")
    found = anyio.run(harness.discover, [tree.projects])
    assert sorted((r.session_id, r.path) for r in found.sessions) == sorted(
        [
            (tree.session, transcript),
            (f"{tree.session}__agent-a1", sub),
            ("history__tester@host", history),
        ]
    )
    assert found.attachments == [
        Attachment(tree.session, "tool-results/toolu_01A.txt", txt),
        Attachment(tree.session, "tool-results/toolu_01B.json", js),
    ]
    assert harness.session_id(tree.projects, txt) is None
    assert harness.session_id(tree.projects, js) is None
    assert anyio.run(harness.discover, [tree.projects]) is found, "nothing changed: the same object"
    history.unlink()
    without = anyio.run(harness.discover, [tree.projects])
    assert "history__tester@host" not in {r.session_id for r in without.sessions}


def test_a_new_tool_result_is_a_new_discovery_and_an_unchanged_tree_the_same_one(tmp_path: Path) -> None:
    tree = Tree(tmp_path / ".claude")
    tree.transcript()
    harness = ClaudeCode(history_id="history__x")
    first = anyio.run(harness.discover, [tree.projects])
    assert first.attachments == []
    assert anyio.run(harness.discover, [tree.projects]) is first
    path = tree.tool_result("toolu_new.txt", b"new\n")
    second = anyio.run(harness.discover, [tree.projects])
    assert second.attachments == [Attachment(tree.session, "tool-results/toolu_new.txt", path)]
    assert [r.session_id for r in second.sessions] == [tree.session]
    (tree.config / "history.jsonl").write_bytes(b"{}\n")
    third = anyio.run(harness.discover, [tree.projects])
    assert third is not second and "history__x" in {r.session_id for r in third.sessions}
    assert third.attachments == second.attachments
    with (tree.config / "history.jsonl").open("ab") as f:
        f.write(b"{}\n")
    assert anyio.run(harness.discover, [tree.projects]) is third, "an append is no discovery change"


def test_history_session_id_is_key_safe_and_names_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEMIRROR_AGENT_ID", "tester@host")
    assert history_session_id() == "history__tester@host"
    assert ClaudeCode().history_id == "history__tester@host"
    monkeypatch.delenv("TRACEMIRROR_AGENT_ID")
    user, host = getpass.getuser(), socket.gethostname().split(".")[0]
    assert history_session_id() == f"history__{user}@{host}"
    for odd in ("a/b..c", "x\\y\x00z", "..", "é" * 150):
        got = history_session_id(odd)
        assert got.startswith("history__") and is_safe_segment(got), got
    assert history_session_id("alice@box1") != history_session_id("alice@box2")


# ---------- AttachmentMirror against a real LocalStore ----------


def test_attachments_are_mirrored_once_redacted_and_not_again_after_a_restart(tmp_path: Path) -> None:
    tree = Tree(tmp_path / ".claude")
    secret_text = b"$ env\nHOME=/home/dev\nGH_TOKEN=" + TOKEN.encode() + b"\nno newline at the end"
    txt = aged(tree.tool_result("toolu_01A.txt", secret_text))
    doc = b'{\n  "stdout": "ok",\n  "token": "' + TOKEN.encode() + b'"\n}\n'
    js = aged(tree.tool_result("toolu_01B.json", doc))
    plain = aged(tree.tool_result("toolu_01C.txt", b"nothing secret\n"))
    items = [Attachment(tree.session, "tool-results/" + p.name, p) for p in (txt, js, plain)]
    bucket = tmp_path / "bucket"
    store = Counting(bucket)
    mirror = AttachmentMirror(Ctx(store))
    anyio.run(mirror.mirror, "claude-code", items)
    got = bucket_object(bucket, tree.session, "tool-results/toolu_01A.txt").read_bytes()
    assert got == b"$ env\nHOME=/home/dev\nGH_TOKEN=[REDACTED:github-token]\nno newline at the end"
    got_json = bucket_object(bucket, tree.session, "tool-results/toolu_01B.json").read_bytes()
    assert got_json == b'{\n  "stdout": "ok",\n  "token": "[REDACTED:github-token]"\n}\n'
    assert json.loads(got_json) == {"stdout": "ok", "token": "[REDACTED:github-token]"}
    assert (
        bucket_object(bucket, tree.session, "tool-results/toolu_01C.txt").read_bytes() == b"nothing secret\n"
    )
    assert TOKEN.encode() not in b"".join(p.read_bytes() for p in bucket.rglob("*") if p.is_file())
    assert store.kinds() == ["list", "put", "put", "put"], "one LIST for the session's tool-results"
    assert mirror.counts == {"github-token": 2} and mirror.pending == 0

    store.calls.clear()
    anyio.run(mirror.mirror, "claude-code", items)
    anyio.run(mirror.mirror, "claude-code", list(items))  # a new scan's list, the same files
    assert store.calls == [], "known to be there: no request"

    restarted = AttachmentMirror(Ctx(store))
    anyio.run(restarted.mirror, "claude-code", items)
    assert store.kinds() == ["list"], "after a restart: one LIST, nothing uploaded again"
    assert restarted.uploaded == 0


def test_a_young_file_waits_and_an_oversize_file_is_a_counted_placeholder(tmp_path: Path) -> None:
    tree = Tree(tmp_path / ".claude")
    young = tree.tool_result("toolu_young.txt", b"half of it")
    big_body = b"x" * 5000
    big = aged(tree.tool_result("toolu_big.txt", big_body))
    bucket = tmp_path / "bucket"
    mirror = AttachmentMirror(Ctx(LocalStore(bucket), max_line_bytes=4096))
    items = [Attachment(tree.session, "tool-results/" + p.name, p) for p in (young, big)]
    anyio.run(mirror.mirror, "claude-code", items)
    assert not bucket_object(bucket, tree.session, "tool-results/toolu_young.txt").exists()
    assert mirror.pending == 1
    placeholder = json.loads(bucket_object(bucket, tree.session, "tool-results/toolu_big.txt").read_bytes())
    assert placeholder["bytes"] == 5000 and placeholder["sha256"] == hashlib.sha256(big_body).hexdigest()
    assert mirror.counts == {"oversize-line": 1}
    with young.open("ab") as f:
        f.write(b", and the rest\n")
    aged(young)
    anyio.run(mirror.mirror, "claude-code", items)
    got = bucket_object(bucket, tree.session, "tool-results/toolu_young.txt").read_bytes()
    assert got == b"half of it, and the rest\n" and mirror.pending == 0


def test_store_errors_are_retried_on_a_later_call_and_never_raise(tmp_path: Path) -> None:
    tree = Tree(tmp_path / ".claude")
    path = aged(tree.tool_result("toolu_01.txt", b"result\n"))
    gone = Attachment(tree.session, "tool-results/toolu_gone.txt", tree.project / "nope.txt")
    bad = Attachment(tree.session, "tool-results/../escape.txt", path)
    store = Counting(tmp_path / "bucket")
    store.fail_puts = 2
    ctx = Ctx(store)
    mirror = AttachmentMirror(ctx)
    items = [Attachment(tree.session, "tool-results/toolu_01.txt", path), gone, bad]
    anyio.run(mirror.mirror, "claude-code", items)
    anyio.run(mirror.mirror, "claude-code", items)
    assert mirror.pending == 1 and len(ctx.health.failures) == 2
    anyio.run(mirror.mirror, "claude-code", items)
    assert mirror.pending == 0 and mirror.uploaded == 1
    assert (
        bucket_object(tmp_path / "bucket", tree.session, "tool-results/toolu_01.txt").read_bytes()
        == b"result\n"
    )
    assert not (tmp_path / "bucket" / "default" / "sessions" / "claude-code" / "escape.txt").exists()


# ---------- end to end: the daemon as a subprocess into a file:// bucket ----------


def test_daemon_mirrors_the_prompt_history_under_the_machines_id(tmp_path: Path) -> None:
    """history.jsonl beside projects/ is mirrored, appends included, as history__<agent id>."""
    from daemon import Daemon, daemon_env, read_back, wait_for

    from tracemirrord.model import SessionKey

    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}")  # TRACEMIRROR_AGENT_ID=tester@host
    tree = Tree(Path(env["HOME"]) / ".claude")
    tree.transcript()
    history = tree.config / "history.jsonl"
    first = (
        b'{"display":"fix it","pastedContents":{},"timestamp":1764000000000,"project":"/home/dev/a"}\n'
        b'{"display":"now run it","pastedContents":{},"timestamp":1764000060000,"project":"/home/dev/a"}\n'
    )
    history.write_bytes(first)
    key = SessionKey("claude-code", "history__tester@host")

    def mirrored() -> bytes | None:
        try:
            return read_back(env["TRACEMIRROR_BUCKET"], key).generations.get(0)
        except Exception:
            return None

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored() == first, 15, "the history")
        more = b'{"display":"thanks","pastedContents":{},"timestamp":1764000120000,"project":"/home/dev/b"}\n'
        with history.open("ab") as f:
            f.write(more)
        wait_for(lambda: mirrored() == first + more, 15, "the appended prompt")
        assert daemon.stop() == 0, daemon.log()
    meta = json.loads((bucket_object(tmp_path / "bucket", key.session_id, "meta.json")).read_bytes())
    assert meta["started_at"] == "2025-11-24T16:00:00.000Z"
    assert meta["title"] == "Claude Code prompt history"


def test_daemon_mirrors_tool_results_once_redacted_and_not_again_after_a_restart(tmp_path: Path) -> None:
    """Tool results land below the session, a planted token redacted; a restart uploads none again."""
    from daemon import Daemon, daemon_env, wait_for

    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}")
    bucket = tmp_path / "bucket"
    tree = Tree(Path(env["HOME"]) / ".claude")
    tree.transcript()
    aged(
        tree.tool_result(
            "toolu_01Secret.txt", b"$ gh auth status\nGH_TOKEN=" + TOKEN.encode() + b"\nLogged in\n"
        )
    )
    aged(tree.tool_result("toolu_02Json.json", b'{"stdout": "ok", "exit": 0}'))
    young = tree.tool_result("toolu_03Young.txt", b"written just now\n")

    def got(name: str) -> bytes | None:
        path = bucket_object(bucket, tree.session, f"tool-results/{name}")
        return path.read_bytes() if path.exists() else None

    with Daemon(env, tmp_path / "first.log") as daemon:
        wait_for(lambda: got("toolu_01Secret.txt") is not None, 15, "the first tool result")
        wait_for(lambda: got("toolu_03Young.txt") is not None, 15, "the young one, once settled")
        assert daemon.stop() == 0, daemon.log()
    assert got("toolu_01Secret.txt") == b"$ gh auth status\nGH_TOKEN=[REDACTED:github-token]\nLogged in\n"
    assert got("toolu_02Json.json") == b'{"stdout": "ok", "exit": 0}'
    assert got("toolu_03Young.txt") == young.read_bytes()
    objects = sorted(p for p in bucket.rglob("toolu_*") if ".tracemirror" not in p.parts)
    assert len(objects) == 3
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in objects}

    with Daemon(env, tmp_path / "second.log") as daemon:
        aged(tree.tool_result("toolu_04After.txt", b"after the restart\n"))
        wait_for(lambda: got("toolu_04After.txt") == b"after the restart\n", 15, "a new tool result")
        assert daemon.stop() == 0, daemon.log()
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in objects} == stamps
    events = [
        json.loads(line)
        for line in (tmp_path / "second.log").read_text().splitlines()
        if line.startswith("{")
    ]
    touched = [e["key"] for e in events if e.get("event", "").startswith("attachment")]
    assert [k.rsplit("/", 1)[-1] for k in touched] == ["toolu_04After.txt"], "no PUT of what was there"
