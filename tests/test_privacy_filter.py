"""The privacy filter (``TRACEMIRROR_INCLUDE`` / ``TRACEMIRROR_EXCLUDE``): an excluded session never
reaches the bucket, and status and ``--check`` say how many each pattern left out.

The glob table and the verdict order are unit tests with the expected answers written out; the
cwd lookup runs on real files; the guarantee runs end to end: a real tracemirrord process, moto's
S3 server, Claude Code and Codex sessions on a temporary HOME, some excluded by their cwd, one by
its path, one (the prompt history) because it holds many projects, and two that name no cwd until
the test appends one while the daemon runs. Every excluded session carries a marker string that
must be in no object of the bucket and not in the log.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from sessions import make_session, record
from test_redact_e2e import every_object

from tracemirrord.config import ConfigError, load_settings
from tracemirrord.ctl.status import filter_summary
from tracemirrord.harnesses import REGISTRY
from tracemirrord.harnesses.base import SessionRef
from tracemirrord.model import SessionKey
from tracemirrord.privacy import SessionFilter, Verdict, compile_pattern, find_cwd

HOME = Path("/home/me")

GLOBS = [  # (pattern, path, matches)
    ("~/clients/acme", "/home/me/clients/acme", True),
    ("~/clients/acme", "/home/me/clients/acme/app/src", True),
    ("~/clients/acme", "/home/me/clients/acme-two", False),
    ("~/clients/acme/", "/home/me/clients/acme/app", True),
    ("~", "/home/me/x", True),
    ("~", "/home/meta", False),
    ("acme", "/home/me/work/acme/app", True),
    ("acme", "/home/me/work/xacme", False),
    ("acme", "/acme", True),
    ("clients/*", "/srv/clients/x", True),
    ("clients/*", "/srv/clients", False),
    ("/srv/*/private", "/srv/a/private/b", True),
    ("/srv/*/private", "/srv/a/b/private", False),
    ("/srv/**/private", "/srv/a/b/private", True),
    ("/srv/**/private", "/srv/private", True),
    ("/srv/**", "/srv/anything/at/all", True),
    ("/srv/**", "/srvx", False),
    ("*.tmp", "/a/b.tmp", True),
    ("*.tmp", "/a/b.tmpx", False),
    ("proj?", "/w/proj1/x", True),
    ("proj?", "/w/proj/x", False),
    ("[!a]x", "/q/bx", True),
    ("[!a]x", "/q/ax", False),
    ("[ab]x", "/q/ax", True),
    ("/", "/anything", True),
    ("/work/Acme", "/work/acme", False),  # case-sensitive
    ("/work/a+b (1)", "/work/a+b (1)/c", True),  # regex characters are literal
    ("-home-dev-*", "/h/.claude/projects/-home-dev-proj/s.jsonl", True),
]


@pytest.mark.parametrize(("pattern", "path", "matches"), GLOBS)
def test_globs_match_a_path_or_anything_below_it(pattern: str, path: str, matches: bool) -> None:
    assert compile_pattern("exclude", pattern, HOME).matches(path) is matches


def test_a_pattern_naming_another_users_home_is_refused() -> None:
    with pytest.raises(ValueError, match="only ~ and ~/"):
        compile_pattern("exclude", "~bob/x", HOME)


def test_the_verdict_order() -> None:
    f = SessionFilter(include=["~/work"], exclude=["~/work/acme", "*.private"], home=HOME)
    session = "/home/me/.claude/projects/p/s.jsonl"
    assert f.decide(session, "/home/me/work/open") == Verdict(True, "include ~/work")
    assert f.decide(session, "/home/me/work/acme/app") == Verdict(False, "exclude ~/work/acme")
    assert f.decide("/x/s.private/a.jsonl", "/home/me/work/open") == Verdict(False, "exclude *.private")
    assert f.decide(session, "/home/me/play") == Verdict(False, "not included")
    assert f.decide(session, None) == Verdict(False, "not included")
    assert f.decide("/home/me/work/log.jsonl", None) == Verdict(True, "include ~/work")  # by its path
    assert f.by_path(session) is None  # the cwd is needed
    assert f.by_path("/x/a.private/s.jsonl") == Verdict(False, "exclude *.private")
    assert f.decide("/home/me/.claude/history.jsonl", None, many_projects=True) == Verdict(
        False, "many projects"
    )
    only_out = SessionFilter(exclude=["/work/acme"], home=HOME)
    assert only_out.decide(session, None) == Verdict(True, None)
    assert only_out.decide(session, "/work/acme") == Verdict(False, "exclude /work/acme")
    assert SessionFilter(home=HOME).by_path(session) == Verdict(True, None)  # no patterns: no filter
    named = SessionFilter(include=["~/.claude/history.jsonl"], home=HOME)
    assert named.decide("/home/me/.claude/history.jsonl", None, many_projects=True).mirror


def test_the_summary_names_each_pattern() -> None:
    counts = {"exclude /work/acme": 2, "not included": 1, "many projects": 0, "undecided": 3}
    assert filter_summary(counts) == (
        "3 excluded (exclude /work/acme: 2, not included: 1, many projects: 0), "
        "3 undecided (waiting for a cwd)"
    )


def test_patterns_come_from_the_environment_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    monkeypatch.setenv("TRACEMIRROR_EXCLUDE", "~/clients/acme, */private ,")
    monkeypatch.setenv("TRACEMIRROR_INCLUDE", "~/work")
    settings = load_settings(config)
    assert settings.exclude == ["~/clients/acme", "*/private"]
    assert settings.include == ["~/work"]
    monkeypatch.delenv("TRACEMIRROR_EXCLUDE")
    config.write_text('exclude = ["/srv/a,b", "/srv/c"]\n')
    assert load_settings(config).exclude == ["/srv/a,b", "/srv/c"]


def test_a_bad_pattern_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    monkeypatch.setenv("TRACEMIRROR_EXCLUDE", "~bob/x")
    with pytest.raises(ConfigError, match="TRACEMIRROR_EXCLUDE"):
        load_settings(config)


def _claude_source(path: Path, root: Path):  # type: ignore[no-untyped-def]
    return REGISTRY["claude-code"]().open_source(SessionRef("s", path, root), max_line_bytes=2**20)


def test_the_cwd_comes_from_the_first_records_and_waits_while_they_name_none(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"")
    source = _claude_source(path, tmp_path)
    assert anyio.run(find_cwd, source, time.time()) == (False, None)  # empty: wait
    path.write_bytes(b'{"type":"file-history-snapshot","messageId":"m"}\n{"type":"user"')  # no cwd yet
    assert anyio.run(find_cwd, _claude_source(path, tmp_path), time.time()) == (False, None)
    with path.open("ab") as f:
        f.write(b',"cwd":"/work/acme/app","sessionId":"s"}\n')
    assert anyio.run(find_cwd, _claude_source(path, tmp_path), time.time()) == (True, "/work/acme/app")
    left = tmp_path / "left.jsonl"
    left.write_bytes(b'{"type":"summary","summary":"x"}\n')
    old = time.time() - 600
    os.utime(left, (old, old))
    assert anyio.run(find_cwd, _claude_source(left, tmp_path), time.time()) == (True, None)  # left alone


def _ctl_status(env: dict[str, str], *args: str) -> str:
    """``tracemirrorctl status`` (as its own process) against the test's daemon: its output."""
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord.ctl", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _filtered(env: dict[str, str], harness: str) -> dict[str, int]:
    return next(h for h in json.loads(_ctl_status(env, "--json"))["harnesses"] if h["name"] == harness)[
        "filtered"
    ]


def _claude_line(session_id: str, i: int, text: str, cwd: str | None) -> bytes:
    doc: dict[str, object] = {"type": "user", "sessionId": session_id, "uuid": f"u-{i}", "message": text}
    if cwd is not None:
        doc["cwd"] = cwd
    return json.dumps(doc).encode() + b"\n"


def _project(home: Path, name: str, session_id: str) -> Path:
    path = home / ".claude" / "projects" / name / f"{session_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_excluded_sessions_never_reach_the_bucket(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    bucket = f"s3://{s3_bucket}"
    extra = {"TRACEMIRROR_EXCLUDE": "/work/acme,-work-hidden-*", "TRACEMIRROR_HARNESSES": "claude-code,codex"}
    env = daemon_env(tmp_path, bucket, {**s3_env, **extra})
    home = Path(env["HOME"])
    marks = [f"ACME-CONFIDENTIAL-{n}" for n in range(7)]

    by_cwd = _project(home, "-work-acme-app", "a0000000-0000-4000-8000-000000000001")
    by_cwd.write_bytes(b"".join(_claude_line("a1", i, f"{marks[0]} {i}", "/work/acme/app") for i in range(3)))
    results = by_cwd.parent / by_cwd.stem / "tool-results"
    results.mkdir(parents=True)
    (results / "toolu_01.txt").write_text(f"{marks[1]} tool output")
    by_path = _project(home, "-work-hidden-x", "a0000000-0000-4000-8000-000000000002")
    by_path.write_bytes(_claude_line("a2", 0, marks[2], "/work/open/x"))
    (home / ".claude" / "history.jsonl").write_text(
        json.dumps({"display": marks[3], "project": "/work/acme"}) + "\n"
    )
    late_out = _project(home, "-work-acme-late", "a0000000-0000-4000-8000-000000000003")
    late_out.write_bytes(b'{"type":"file-history-snapshot","note":"' + marks[4].encode() + b'"}\n')
    codex = make_session(home, "codex")
    codex.path.write_bytes(
        record("codex", codex.session_id, 0, random.Random(1), cwd="/work/acme/svc")
        + json.dumps({"type": "response_item", "payload": {"text": marks[5]}}).encode()
        + b"\n"
    )

    kept = _project(home, "-work-open-app", "b0000000-0000-4000-8000-000000000001")
    kept.write_bytes(b"".join(_claude_line("b1", i, f"open {i}", "/work/open/app") for i in range(3)))
    kept_results = kept.parent / kept.stem / "tool-results"
    kept_results.mkdir(parents=True)
    (kept_results / "toolu_02.txt").write_text("open tool output")
    old = time.time() - 600
    for item in (results / "toolu_01.txt", kept_results / "toolu_02.txt"):
        os.utime(item, (old, old))  # stable: attachments wait until they stop changing
    late_in = _project(home, "-work-open-late", "b0000000-0000-4000-8000-000000000002")
    late_in.write_bytes(b'{"type":"file-history-snapshot","note":"first"}\n')
    codex_kept = make_session(home, "codex")
    codex_kept.path.write_bytes(record("codex", codex_kept.session_id, 0, random.Random(2)))

    check = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "privacy filter: exclude /work/acme; exclude -work-hidden-*" in check.stdout
    assert (
        "claude-code  3 excluded (exclude /work/acme: 1, exclude -work-hidden-*: 1, many projects: 1), "
        "2 undecided (waiting for a cwd)" in check.stdout
    ), check.stdout
    assert "codex        1 excluded (exclude /work/acme: 1, exclude -work-hidden-*: 0, many projects: 0)" in (
        check.stdout
    )

    keys = {
        "open": SessionKey("claude-code", kept.stem),
        "late": SessionKey("claude-code", late_in.stem),
        "codex": SessionKey("codex", codex_kept.session_id),
    }

    def lines_in(key: SessionKey) -> int:
        got = read_back(bucket, key, s3_env=s3_env)
        return sum(body.count(b"\n") for body in got.generations.values())

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(
            lambda: lines_in(keys["open"]) == 3 and lines_in(keys["codex"]) == 1, 60, "the kept sessions"
        )
        wait_for(
            lambda: (
                _filtered(env, "claude-code")
                == {"exclude /work/acme": 1, "exclude -work-hidden-*": 1, "many projects": 1, "undecided": 2}
            ),
            30,
            "two sessions undecided",
        )
        assert lines_in(keys["late"]) == 0  # nothing of an undecided session is uploaded
        with late_out.open("ab") as f:
            f.write(_claude_line("a3", 1, marks[6], "/work/acme/late"))
        with late_in.open("ab") as f:
            f.write(_claude_line("b2", 1, "now with a cwd", "/work/open/late"))
        wait_for(lambda: lines_in(keys["late"]) == 2, 60, "the late session once its cwd is known")
        wait_for(
            lambda: (
                _filtered(env, "claude-code")
                == {"exclude /work/acme": 2, "exclude -work-hidden-*": 1, "many projects": 1}
            ),
            30,
            "the late sessions decided",
        )
        assert _filtered(env, "codex") == {
            "exclude /work/acme": 1,
            "exclude -work-hidden-*": 0,
            "many projects": 0,
        }
        shown = _ctl_status(env)
        assert (
            "privacy filter: 4 excluded (exclude /work/acme: 2, exclude -work-hidden-*: 1, many projects: 1)"
            in shown
        ), shown
        wait_for(
            lambda: any(k.endswith("/tool-results/toolu_02.txt") for k in every_object(bucket, s3_env)),
            30,
            "the kept session's attachment",
        )
        assert daemon.stop() == 0
        log = daemon.log()

    objects = every_object(bucket, s3_env)
    sessions = {k.split("/sessions/")[1].rsplit("/", 1)[0] for k in objects if "/sessions/" in k}
    sessions = {s.split("/tool-results")[0] for s in sessions}
    assert sessions == {
        f"claude-code/{kept.stem}",
        f"claude-code/{late_in.stem}",
        f"codex/{codex_kept.session_id}",
    }
    for name, body in objects.items():
        for mark in marks:
            assert mark.encode() not in body, (name, mark)
    for mark in marks:
        assert mark not in log
    assert "session excluded by the privacy filter" in log


def test_once_leaves_out_excluded_and_undecided_sessions_and_says_so(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(
        tmp_path, bucket, {"TRACEMIRROR_EXCLUDE": "~/clients", "TRACEMIRROR_HARNESSES": "claude-code"}
    )
    home = Path(env["HOME"])
    out = _project(home, "-home-clients-x", "c0000000-0000-4000-8000-000000000001")
    out.write_bytes(_claude_line("c1", 0, "CLIENT-WORK-1", str(home / "clients" / "x")))
    undecided = _project(home, "-home-y", "c0000000-0000-4000-8000-000000000002")
    undecided.write_bytes(b'{"type":"file-history-snapshot","note":"CLIENT-WORK-2"}\n')
    kept = _project(home, "-home-z", "c0000000-0000-4000-8000-000000000003")
    kept.write_bytes(_claude_line("c3", 0, "kept", str(home / "z")))
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "the privacy filter needs their cwd" in done.stderr
    objects = every_object(bucket, {})
    sessions = {k.split("/sessions/")[1].rsplit("/", 1)[0] for k in objects if "/sessions/" in k}
    assert sessions == {f"claude-code/{kept.stem}"}
    assert not any(b"CLIENT-WORK" in body for body in objects.values())
