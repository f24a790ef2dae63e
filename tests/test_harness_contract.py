"""The contract every harness keeps, whatever its source kind (files, rows, documents).

Parametrised over every harness fixture (tests/fixture_<name>.py, sessions in the agent's real
format) and over the embedded bucket and the S3 server. One life of a mirror per case, in order:

1. continuous following: the daemon runs while sessions are written; the copy catches up;
2. kill -9 while writing: a writer thread appends while the daemon is killed and restarted;
3. lost state dir: deleted, more appended, ``--once``: nothing twice, nothing missing;
4. source gone: a removed session is marked ended in meta.json and its copy stays.

After each step every session's copy, parsed line by line, equals what the fixture wrote (its
own record of it), in order: no record missing, none twice.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, daemon_env, read_back, read_meta, wait_for
from harness_fixtures import FixtureSession, HarnessFixture, load_fixtures

from tracemirrord.model import SessionKey

FIXTURES = load_fixtures()
STARTED = '"tracemirrord started"'


def copy_of(bucket: str, s: FixtureSession, s3_env: dict[str, str] | None) -> list[Any] | None:
    """The session's bucket copy as JSON values (None while it cannot be read back)."""
    try:
        got = read_back(bucket, SessionKey(s.harness, s.session_id), s3_env=s3_env)
    except Exception:
        return None
    body = b"".join(got.generations[g] for g in sorted(got.generations))
    return [json.loads(line) for line in body.splitlines()]


def current(bucket: str, sessions: list[FixtureSession], s3_env: dict[str, str] | None) -> bool:
    return all(copy_of(bucket, s, s3_env) == s.expected() for s in sessions)


def assert_exact(bucket: str, sessions: list[FixtureSession], s3_env: dict[str, str] | None) -> None:
    for s in sessions:
        got = copy_of(bucket, s, s3_env)
        want = s.expected()
        assert got is not None, f"{s.harness}/{s.session_id}: no readable copy"
        assert len(got) == len(want), f"{s.harness}/{s.session_id}: {len(got)} records, wrote {len(want)}"
        assert got == want, f"{s.harness}/{s.session_id}: the copy differs from what was written"


def run_once(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--once"], env=env, capture_output=True, timeout=90
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]


def start(env: dict[str, str], log: Path) -> Daemon:
    """A daemon that is up (its signal handlers in place, so a SIGTERM means a clean stop)."""
    before = log.read_text().count(STARTED) if log.exists() else 0
    daemon = Daemon(env, log).start()
    wait_for(lambda: log.read_text().count(STARTED) > before, 30, "the daemon to start")
    return daemon


@contextlib.contextmanager
def started(env: dict[str, str], log: Path) -> Iterator[Daemon]:
    daemon = start(env, log)
    try:
        yield daemon
    finally:
        if daemon.alive():
            daemon.kill9()


class Writer(threading.Thread):
    """Appends a few records at a time to every session until stopped (the agent at work)."""

    def __init__(self, sessions: list[FixtureSession], rounds: int) -> None:
        super().__init__(daemon=True)
        self.sessions = sessions
        self.rounds = rounds
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(self.rounds):
                for s in self.sessions:
                    s.append(2)
                time.sleep(0.1)
        except BaseException as exc:
            self.error = exc


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize("harness", sorted(FIXTURES))
def test_harness_contract(harness: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    fixture: HarnessFixture = FIXTURES[harness]
    s3_env: dict[str, str] | None = None
    if backend == "s3":
        s3_env = request.getfixturevalue("s3_env")
        bucket = f"s3://{request.getfixturevalue('s3_bucket')}"
    else:
        bucket = f"file://{tmp_path / 'bucket'}"
    home = tmp_path / "home"
    home.mkdir()
    env = daemon_env(tmp_path, bucket, {**(s3_env or {}), **fixture.env(home)})
    rng = random.Random(f"{harness}-{backend}")
    log = tmp_path / "daemon.log"

    # 1. continuous following
    sessions = [fixture.create(home, rng), fixture.create(home, rng)]
    with started(env, log) as daemon:
        wait_for(lambda: current(bucket, sessions, s3_env), 30, "the first records")
        for _ in range(3):
            for s in sessions:
                s.append(3)
            time.sleep(0.3)
        sessions.append(fixture.create(home, rng))  # a session that appears while running
        sessions[-1].append(2)
        wait_for(lambda: current(bucket, sessions, s3_env), 30, "the copy to follow the writes")
        assert daemon.stop() == 0, daemon.log()[-3000:]
    assert_exact(bucket, sessions, s3_env)

    # 2. kill -9 while writing
    writer = Writer(sessions, rounds=40)
    writer.start()
    kills = 0
    while writer.is_alive() and kills < 3:
        daemon = start(env, log)
        time.sleep(rng.uniform(0.3, 1.0))
        daemon.kill9()
        kills += 1
    writer.join(60)
    assert writer.error is None, writer.error
    with started(env, log) as daemon:
        wait_for(lambda: current(bucket, sessions, s3_env), 40, "the copy after kill -9")
        assert daemon.stop() == 0, daemon.log()[-3000:]
    assert_exact(bucket, sessions, s3_env)

    # 3. lost state dir
    shutil.rmtree(Path(env["XDG_STATE_HOME"]) / "tracemirror")
    for s in sessions:
        s.append(4)
    run_once(env)
    assert_exact(bucket, sessions, s3_env)

    # 4. source gone: marked ended in meta.json, the copy stays as it was
    gone = sessions[0]
    before = copy_of(bucket, gone, s3_env)
    key = SessionKey(gone.harness, gone.session_id)
    with started(env, log) as daemon:
        time.sleep(1.0)  # the running daemon follows the session when it goes
        gone.remove()
        wait_for(
            lambda: (read_meta(bucket, key, s3_env=s3_env) or {}).get("ended_at") is not None,
            30,
            "the removed session to be marked ended",
        )
        assert daemon.stop() == 0, daemon.log()[-3000:]
    assert copy_of(bucket, gone, s3_env) == before, "the copy of a removed session stays as it was"
    assert_exact(bucket, sessions[1:], s3_env)
