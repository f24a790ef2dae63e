"""The ``tracemirrord`` command line as a user runs it: a real subprocess on a temporary HOME.

Exit codes (README): 0 success, 1 runtime failure, 2 bad configuration. Buckets are read back with
the store classes directly, never through the daemon under test.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from s3server import free_port
from sessions import SessionFile, complete_lines, make_session, record

from tracemirrord import __version__, layout
from tracemirrord.model import SessionKey
from tracemirrord.redact import Redactor
from tracemirrord.store import NotFound, ObjectStore, S3Options, open_store

HARNESSES = ("claude-code", "codex", "pi")
T = TypeVar("T")

# Secrets in the shape of the real thing (the rules match them), made up for this test.
AWS_KEY_ID = "AKIAZ7Q4TRACEMIRR0R1"
GITHUB_TOKEN = "ghp_" + "tM0cK3dT0k3nF0rTh3CL1T3st5XyZaBcDeF9"
S3_SECRET = "tmS3cr3tAcc3ssK3y/ForTheCliTest+9d1f0e"


# ---------- helpers ----------


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracemirrord", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def s3_options(s3_env: dict[str, str] | None) -> S3Options | None:
    if not s3_env:
        return None
    return S3Options(
        endpoint_url=s3_env["TRACEMIRROR_S3__ENDPOINT_URL"],
        region="us-east-1",
        access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )


def with_store(bucket: str, s3_env: dict[str, str] | None, use: Callable[[ObjectStore], Awaitable[T]]) -> T:
    """Run ``use(store)`` on a fresh client for ``bucket`` and close it."""

    async def go() -> T:
        store = open_store(bucket, s3_options(s3_env))
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(go())


def part_objects(bucket: str, s3_env: dict[str, str] | None = None) -> dict[str, str]:
    """Every part object under the default project: key -> ETag."""

    async def use(store: ObjectStore) -> dict[str, str]:
        infos = await store.list("default/sessions/")
        return {i.key: i.etag for i in infos if layout.parse_part_key(i.key) is not None}

    return with_store(bucket, s3_env, use)


def meta(bucket: str, s: SessionFile, s3_env: dict[str, str] | None = None) -> dict[str, Any] | None:
    async def use(store: ObjectStore) -> dict[str, Any] | None:
        try:
            obj = await store.get(layout.meta_key("default", SessionKey(s.harness, s.session_id)))
        except NotFound:
            return None
        return json.loads(obj.body)

    return with_store(bucket, s3_env, use)


def expected(path: Path) -> bytes:
    """What the bucket must hold of a source: its complete lines, redacted."""
    return Redactor().redact(complete_lines(path)).data


def mirrored(bucket: str, s: SessionFile, s3_env: dict[str, str] | None = None) -> bytes:
    got = read_back(bucket, SessionKey(s.harness, s.session_id), s3_env=s3_env)
    return b"".join(got.generations[g] for g in sorted(got.generations))


def converged(bucket: str, files: list[SessionFile], s3_env: dict[str, str] | None = None) -> bool:
    try:
        return all(mirrored(bucket, s, s3_env) == expected(s.path) for s in files)
    except Exception:
        return False


def write_lines(s: SessionFile, first: int, count: int, *, partial_tail: bool = False) -> None:
    rng = random.Random(f"{s.session_id}-{first}")
    with s.path.open("ab") as f:
        for i in range(first, first + count):
            f.write(record(s.harness, s.session_id, i, rng))
        if partial_tail:
            f.write(record(s.harness, s.session_id, first + count, rng)[:25])


def populate(home: Path, per_harness: int = 2, lines: int = 12) -> list[SessionFile]:
    """``per_harness`` sessions of every harness, each with ``lines`` lines and some a half-written tail."""
    files = []
    for harness in HARNESSES:
        for n in range(per_harness):
            s = make_session(home, harness)
            write_lines(s, 0, lines + 5 * n, partial_tail=n % 2 == 1)
            files.append(s)
    return files


def bucket_for(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, dict[str, str] | None]:
    if backend == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/mirror", request.getfixturevalue("s3_env")
    return f"file://{tmp_path / 'bucket'}", None


def log_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


# ---------- help, version, usage ----------


def test_help(tmp_path: Path) -> None:
    """--help exits 0 and documents the modes and the bucket variable."""
    done = run_cli(daemon_env(tmp_path, f"file://{tmp_path / 'b'}"), "--help")
    assert done.returncode == 0, done.stderr
    for word in ("--once", "--check", "--config", "TRACEMIRROR_BUCKET", "s3://"):
        assert word in done.stdout


def test_version(tmp_path: Path) -> None:
    """--version prints the program name and version and exits 0."""
    done = run_cli(daemon_env(tmp_path, f"file://{tmp_path / 'b'}"), "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"tracemirrord {__version__}"


def test_conflicting_modes_exit_2(tmp_path: Path) -> None:
    """--once and --check together are a usage error: exit 2."""
    done = run_cli(daemon_env(tmp_path, f"file://{tmp_path / 'b'}"), "--once", "--check")
    assert done.returncode == 2
    assert "usage:" in done.stderr


# ---------- bad configuration: exit 2, the setting named, no traceback ----------


@pytest.mark.parametrize(
    ("name", "value", "setting", "mode"),
    [
        ("TRACEMIRROR_BUCKET", "ftp://example.com/x", "bucket", ()),
        ("TRACEMIRROR_PROJECT", "a/b", "project", ("--once",)),
        ("TRACEMIRROR_FLUSH_INTERVAL", "-1s", "flush_interval", ("--check",)),
    ],
)
def test_bad_config_value_exits_2_naming_the_setting(
    tmp_path: Path, name: str, value: str, setting: str, mode: tuple[str, ...]
) -> None:
    """A bad value stops any mode before it starts: exit 2, the setting and its variable on stderr."""
    done = run_cli(daemon_env(tmp_path, f"file://{tmp_path / 'b'}", {name: value}), *mode)
    assert done.returncode == 2, done.stderr
    assert setting in done.stderr and name in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "b").exists(), "nothing is created on a bad config"


def test_bucket_url_the_store_refuses_exits_2(tmp_path: Path) -> None:
    """A bucket URL that passes the scheme check but cannot be opened is still a config error (exit 2)."""
    done = run_cli(daemon_env(tmp_path, "s3://user:pw@bucket"), "--check")
    assert done.returncode == 2, done.stderr
    assert "TRACEMIRROR_BUCKET" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    """--config naming a missing, malformed or misspelt file is a config error naming the file."""
    env = daemon_env(tmp_path, f"file://{tmp_path / 'b'}")
    missing = tmp_path / "nowhere.toml"
    malformed = tmp_path / "malformed.toml"
    malformed.write_text("bucket = \n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('projekt = "x"\n')
    for path, word in ((missing, str(missing)), (malformed, str(malformed)), (unknown, "projekt")):
        done = run_cli(env, "--config", str(path), "--check")
        assert done.returncode == 2, done.stderr
        assert word in done.stderr
        assert "Traceback" not in done.stderr


ENDPOINT_PASSWORD = "tmCliEndpointPassw0rd-c41d"


@pytest.mark.parametrize("mode", [(), ("--once",), ("--check",)])
def test_endpoint_url_with_a_password_is_one_line_exit_2(tmp_path: Path, mode: tuple[str, ...]) -> None:
    """An endpoint URL with user:password in it: one line naming the setting, exit 2, password masked.

    (It used to end in a traceback that printed the password, exit 1.)
    """
    endpoint = f"http://minio:{ENDPOINT_PASSWORD}@127.0.0.1:99999/"
    env = daemon_env(tmp_path, "s3://traces", {"TRACEMIRROR_S3__ENDPOINT_URL": endpoint})
    done = run_cli(env, *mode, timeout=30)
    assert done.returncode == 2, done.stderr
    assert ENDPOINT_PASSWORD not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        "tracemirrord: invalid configuration: setting s3.endpoint_url (TRACEMIRROR_S3__ENDPOINT_URL, "
        "from the environment): 'http://***@127.0.0.1:99999/' holds credentials; give them as "
        "s3.access_key_id and s3.secret_access_key, AWS_* variables or a profile"
    ]


def test_reserved_project_fails_at_start_not_later(tmp_path: Path) -> None:
    """A project the bucket reserves stops the daemon before it starts (it used to run, then fail)."""
    bucket = tmp_path / "b"
    env = daemon_env(tmp_path, f"file://{bucket}", {"TRACEMIRROR_PROJECT": ".tracemirror"})
    done = run_cli(env, timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "tracemirrord: invalid configuration: setting project (TRACEMIRROR_PROJECT, from the environment): "
        "'.tracemirror' is reserved: names starting with '.tracemirror' belong to the bucket"
    ]
    assert not bucket.exists() and not (tmp_path / "state").exists(), "nothing is created"


def test_misspelled_variable_exits_2_naming_it_and_the_setting(tmp_path: Path) -> None:
    """TRACEMIRROR_BUCKT is not silently ignored (mirroring to the default bucket instead): exit 2."""
    env = daemon_env(tmp_path, f"file://{tmp_path / 'b'}", {"TRACEMIRROR_BUCKT": "s3://meant-this"})
    done = run_cli(env, "--check", timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "tracemirrord: invalid configuration: environment variable TRACEMIRROR_BUCKT is not a known "
        "setting; did you mean TRACEMIRROR_BUCKET?"
    ]


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    """Several bad settings from both sources: one line each, each naming its setting and source."""
    config = tmp_path / "tm.toml"
    config.write_text('scan_interval = "0s"\n')
    env = daemon_env(tmp_path, f"file://{tmp_path / 'b'}", {"TRACEMIRROR_AGENT_ID": "a/b"})
    env.pop("TRACEMIRROR_SCAN_INTERVAL")
    done = run_cli(env, "--config", str(config), "--once", timeout=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2, lines
    assert "setting agent_id (TRACEMIRROR_AGENT_ID, from the environment)" in lines[0]
    assert f"setting scan_interval (TRACEMIRROR_SCAN_INTERVAL, from config file {config})" in lines[1]


# ---------- --check ----------


@pytest.mark.parametrize(
    "command",
    [("tracemirrord", "--check"), ("tracemirrord.ctl", "status", "--bucket", "--json")],
    ids=["tracemirrord --check", "tracemirrorctl status --bucket"],
)
def test_output_into_a_closed_pipe_is_no_failure(tmp_path: Path, command: tuple[str, ...]) -> None:
    """`... | head -1`: a reader that closed the pipe before we wrote is not a failure, and says
    nothing on stderr (no traceback, no "Exception ignored")."""
    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}")
    write_lines(make_session(Path(env["HOME"]), "claude-code"), 0, 3)
    proc = subprocess.Popen(
        [sys.executable, "-m", *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before the interpreter is even up: every write meets EPIPE
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert err == b""


def test_check_on_the_embedded_default(tmp_path: Path) -> None:
    """--check without a bucket setting shows the embedded bucket, and each harness with root and sessions."""
    env = daemon_env(tmp_path, "unused")
    del env["TRACEMIRROR_BUCKET"]
    home = Path(env["HOME"])
    for _ in range(2):
        write_lines(make_session(home, "claude-code"), 0, 3)
    write_lines(make_session(home, "codex"), 0, 3)
    done = run_cli(env, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    default_bucket = tmp_path / "data" / "tracemirror" / "bucket"
    assert f"file://{default_bucket}" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "2 sessions" in lines["claude-code"] and str(home / ".claude" / "projects") in lines["claude-code"]
    assert "1 sessions" in lines["codex"] or "1 session" in lines["codex"]
    assert str(home / ".codex" / "sessions") in lines["codex"]
    assert "missing" in lines["pi"] and str(home / ".pi" / "agent" / "sessions") in lines["pi"]
    assert "store:" in out and "ok" in out.split("store:")[1]
    assert not list((tmp_path / "data").rglob("*.jsonl")), "--check uploads nothing"


def test_check_against_s3(tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]) -> None:
    """--check on an existing S3 bucket reaches it and exits 0."""
    done = run_cli(daemon_env(tmp_path, f"s3://{s3_bucket}/pfx", s3_env), "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"s3://{s3_bucket}/pfx" in done.stdout


def test_check_on_a_missing_s3_bucket_exits_1(tmp_path: Path, s3_env: dict[str, str]) -> None:
    """--check on a bucket the server does not have exits 1 naming the bucket and the cause."""
    name = "tm-no-such-bucket-4f2a"
    started = time.monotonic()
    done = run_cli(daemon_env(tmp_path, f"s3://{name}", s3_env), "--check")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"{name}" in output.split("store:")[-1]
    assert "does not exist" in output
    assert time.monotonic() - started < 20, "a missing bucket is an answer, not something to retry"


# ---------- --once ----------


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_once_mirrors_every_harness(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """--once mirrors every session of every harness, complete lines only, redacted, and exits 0."""
    bucket, s3_env = bucket_for(backend, tmp_path, request)
    env = daemon_env(tmp_path, bucket, s3_env)
    files = populate(Path(env["HOME"]))
    done = run_cli(env, "--once")
    assert done.returncode == 0, done.stderr
    for s in files:
        assert mirrored(bucket, s, s3_env) == expected(s.path), f"{s.harness} {s.session_id}"
        doc = meta(bucket, s, s3_env)
        assert doc is not None and doc["total_source_bytes"] == len(complete_lines(s.path))


def test_once_twice_uploads_nothing_new(tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]) -> None:
    """A second --once with nothing new writes no part; after an append, one new part per grown session."""
    bucket = f"s3://{s3_bucket}/twice"
    env = daemon_env(tmp_path, bucket, s3_env)
    files = populate(Path(env["HOME"]), per_harness=1)
    assert run_cli(env, "--once").returncode == 0
    first = part_objects(bucket, s3_env)
    assert len(first) == len(files)

    done = run_cli(env, "--once")
    assert done.returncode == 0, done.stderr
    assert part_objects(bucket, s3_env) == first, "the second run uploaded parts again"

    write_lines(files[0], 100, 3)
    assert run_cli(env, "--once").returncode == 0
    third = part_objects(bucket, s3_env)
    assert set(third) > set(first) and len(third) == len(first) + 1
    assert all(third[k] == v for k, v in first.items())
    assert converged(bucket, files, s3_env)


def test_once_against_an_unreachable_endpoint_exits_1(tmp_path: Path, s3_env: dict[str, str]) -> None:
    """--once with nothing listening at the endpoint exits 1 with a message, within bounded time."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = daemon_env(
        tmp_path,
        "s3://tm-unreachable",
        {**s3_env, "TRACEMIRROR_S3__ENDPOINT_URL": closed, "TRACEMIRROR_HARNESSES": "claude-code"},
    )
    s = make_session(Path(env["HOME"]), "claude-code")
    write_lines(s, 0, 5)
    started = time.monotonic()
    done = run_cli(env, "--once", timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert "tm-unreachable" in done.stderr
    assert any(e.get("level") == "error" for e in log_events(done.stderr))
    assert elapsed < 60, f"--once took {elapsed:.0f}s to give up on an unreachable bucket"


def test_once_against_an_unreachable_endpoint_exits_1_even_with_nothing_pending(
    tmp_path: Path, s3_env: dict[str, str]
) -> None:
    """An unreachable bucket is a failure of --once even when no session has anything to send."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = daemon_env(tmp_path, "s3://tm-unreachable", {**s3_env, "TRACEMIRROR_S3__ENDPOINT_URL": closed})
    done = run_cli(env, "--once", timeout=120)
    assert done.returncode == 1, done.stderr
    assert "tm-unreachable" in done.stderr


# ---------- the foreground daemon ----------


def test_runs_with_no_configuration_at_all(tmp_path: Path) -> None:
    """With only HOME set, the daemon creates the embedded bucket under ~/.local/share and mirrors."""
    env = daemon_env(tmp_path, "unused")
    for name in [n for n in env if n.startswith(("TRACEMIRROR_", "XDG_"))]:
        del env[name]
    home = Path(env["HOME"])
    root = home / ".local" / "share" / "tracemirror" / "bucket"
    state = home / ".local" / "state" / "tracemirror"
    bucket = f"file://{root}"
    s = make_session(home, "claude-code")
    write_lines(s, 0, 8)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: converged(bucket, [s]), 20, "the session in the embedded bucket")
        write_lines(s, 8, 4)
        wait_for(lambda: converged(bucket, [s]), 20, "the appended lines in the embedded bucket")
        assert daemon.stop() == 0, daemon.log()
    assert root.is_dir() and state.is_dir()
    assert (state.stat().st_mode & 0o777) == 0o700
    agents = list((root / "default" / "agents").glob("*.json"))
    assert len(agents) == 1, "one heartbeat, under the default agent id"
    assert json.loads(agents[0].read_text())["status"] == "stopped"


def test_second_daemon_on_the_same_state_dir_exits_1(tmp_path: Path) -> None:
    """A second daemon on a state dir in use exits 1 saying another tracemirrord runs; the first goes on."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket)
    s = make_session(Path(env["HOME"]), "pi")
    write_lines(s, 0, 4)
    with Daemon(env, tmp_path / "first.log") as first:
        wait_for(lambda: converged(bucket, [s]), 20, "the first daemon to mirror")
        assert first.proc is not None
        for args in ((), ("--once",)):
            done = run_cli(env, *args, timeout=30)
            assert done.returncode == 1, done.stderr
            assert "another tracemirrord" in done.stderr and "running" in done.stderr
            assert str(first.proc.pid) in done.stderr
            assert "Traceback" not in done.stderr
        assert first.alive()
        write_lines(s, 4, 3)
        wait_for(lambda: converged(bucket, [s]), 20, "the first daemon to keep mirroring")
        assert first.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_flushes_and_exits_0(tmp_path: Path, signum: signal.Signals) -> None:
    """SIGTERM and SIGINT exit 0 and flush what is held: with a 30 s flush interval, only the stop can."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket, {"TRACEMIRROR_FLUSH_INTERVAL": "30s"})
    s = make_session(Path(env["HOME"]), "claude-code")
    write_lines(s, 0, 5)
    started = time.monotonic()
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        # meta.json is written when the follower first reads the session (it claims the lease)
        wait_for(lambda: meta(bucket, s) is not None, 20, "the follower to start")
        assert part_objects(bucket) == {}, "nothing is flushed before the 30 s interval"
        write_lines(s, 5, 1)
        # no observable sign that the follower has read the new line: give it several 0.25 s polls
        time.sleep(1.5)
        assert daemon.proc is not None
        daemon.proc.send_signal(signum)
        assert daemon.proc.wait(15) == 0, daemon.log()
    assert time.monotonic() - started < 25, "the flush interval must not have been reached"
    assert mirrored(bucket, s) == expected(s.path)
    assert len(part_objects(bucket)) == 1, "one part, written by the shutdown flush"
    assert "stopping: flushing what is held" in daemon.log()


@pytest.mark.parametrize("mode", ["stop", "once"])
def test_a_clean_exit_releases_the_lease(tmp_path: Path, mode: str) -> None:
    """After SIGTERM or --once, meta.json names no writer, whenever meta.json was last written."""
    bucket = f"file://{tmp_path / 'bucket'}"
    # meta.json due at every flush: the last meta write with the lease always follows the last part
    env = daemon_env(tmp_path, bucket, {"TRACEMIRROR_META_INTERVAL": "1ms"})
    s = make_session(Path(env["HOME"]), "codex")
    write_lines(s, 0, 6)
    if mode == "once":
        assert run_cli(env, "--once").returncode == 0
    else:
        with Daemon(env, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: converged(bucket, [s]), 20, "the session in the bucket")
            write_lines(s, 6, 2)
            wait_for(
                lambda: (meta(bucket, s) or {}).get("total_source_bytes") == s.path.stat().st_size, 20, "meta"
            )
            assert daemon.stop() == 0
    doc = meta(bucket, s)
    assert doc is not None and doc["total_source_bytes"] == s.path.stat().st_size
    assert doc["writer"] is None, "a clean exit releases the lease"


def test_no_secret_in_logs_and_redacted_in_bucket(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    """Secrets in a session never reach the log (debug level) and land in the bucket as [REDACTED:...]."""
    bucket = f"s3://{s3_bucket}"
    creds = {"TRACEMIRROR_S3__ACCESS_KEY_ID": "tm-cli-test", "TRACEMIRROR_S3__SECRET_ACCESS_KEY": S3_SECRET}
    env = daemon_env(tmp_path, bucket, {**s3_env, **creds})
    s = make_session(Path(env["HOME"]), "claude-code")
    write_lines(s, 0, 3)
    leak = {
        "type": "user",
        "sessionId": s.session_id,
        "cwd": "/home/dev/proj",
        "message": {
            "role": "user",
            "content": f"export AWS_ACCESS_KEY_ID={AWS_KEY_ID}\ngit remote set-url origin "
            f"https://{GITHUB_TOKEN}@github.com/o/r.git and again {GITHUB_TOKEN}",
        },
    }
    with s.path.open("ab") as f:
        f.write(json.dumps(leak).encode() + b"\n")
    write_lines(s, 10, 2)
    # a file whose name cannot be a session id: the daemon refuses it and logs its path, token included
    refused = s.path.parent / f"leak..{GITHUB_TOKEN}.jsonl"
    refused.write_bytes(b"{}\n")

    check = run_cli(env, "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: converged(bucket, [s], s3_env), 20, "the session in the bucket")
        assert daemon.stop() == 0

    body = mirrored(bucket, s, s3_env)
    assert AWS_KEY_ID.encode() not in body and GITHUB_TOKEN.encode() not in body
    assert b"[REDACTED:aws-access-key-id]" in body
    assert body.count(b"[REDACTED:github-token]") == 2
    for line in body.splitlines():
        json.loads(line)  # still valid JSON
    doc = meta(bucket, s, s3_env)
    assert doc is not None
    assert doc["redaction_counts"].get("aws-access-key-id") == 1
    assert doc["redaction_counts"].get("github-token") == 2

    log = daemon.log()
    assert log_events(log), "the daemon logged (JSON lines)"
    assert any(e.get("event") == "session refused" for e in log_events(log))
    for secret in (AWS_KEY_ID, GITHUB_TOKEN, S3_SECRET):
        assert secret not in log
        assert secret not in check.stdout + check.stderr
