"""Run ``tracemirrord`` as a real subprocess on a temporary HOME, and read its bucket back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracemirrord import layout
from tracemirrord.harnesses import REGISTRY
from tracemirrord.model import SessionKey
from tracemirrord.reassemble import Reassembled, reassemble
from tracemirrord.store import open_store
from tracemirrord.store.base import NotFound

# Every variable that moves an agent's root: a developer's own setting must not leak into a test.
AGENT_VARIABLES = {"CLAUDE_CONFIG_DIR", "CODEX_HOME", "PI_CODING_AGENT_DIR", "HERMES_HOME", "OPENCODE_DB"} | {
    name for cls in REGISTRY.values() for name in cls.root_env if not name.startswith("XDG_")
}


def daemon_env(tmp: Path, bucket: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment with its own HOME, XDG dirs and fast timings, and no user config leaking in."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEMIRROR_", "AWS_", "XDG_"))}
    for name in AGENT_VARIABLES:
        env.pop(name, None)
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(tmp / "data"),
        XDG_STATE_HOME=str(tmp / "state"),
        XDG_CONFIG_HOME=str(tmp / "config"),
        TRACEMIRROR_BUCKET=bucket,
        TRACEMIRROR_AGENT_ID="tester@host",
        TRACEMIRROR_FLUSH_INTERVAL="0.2",
        TRACEMIRROR_SCAN_INTERVAL="0.3",
        TRACEMIRROR_META_INTERVAL="1s",
        TRACEMIRROR_LOG_FORMAT="json",
        TRACEMIRROR_LOG_LEVEL="debug",
    )
    env.update(extra or {})
    return env


class Daemon:
    """A tracemirrord subprocess whose stderr goes to a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracemirrord", *self.args], env=self.env, stdout=log, stderr=log
        )
        log.close()
        return self

    def stop(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.kill9()


def store_for(bucket: str, s3_env: dict[str, str] | None):  # type: ignore[no-untyped-def]
    """A fresh client of the bucket (the moto server's test credentials for s3://)."""
    from tracemirrord.store import S3Options

    options = None
    if s3_env:
        options = S3Options(
            endpoint_url=s3_env["TRACEMIRROR_S3__ENDPOINT_URL"],
            region="us-east-1",
            access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
            secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        )
    return open_store(bucket, options)


def read_back(
    bucket: str, key: SessionKey, project: str = "default", s3_env: dict[str, str] | None = None
) -> Reassembled:
    """Reassemble one session from the bucket (a fresh store client each call)."""

    async def go() -> Reassembled:
        store = store_for(bucket, s3_env)
        try:
            return await reassemble(store, project, key)
        finally:
            await store.close()

    return asyncio.run(go())


def read_meta(
    bucket: str, key: SessionKey, project: str = "default", s3_env: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """A session's meta.json from the bucket, parsed (None while there is none)."""

    async def go() -> dict[str, Any] | None:
        store = store_for(bucket, s3_env)
        try:
            got = await store.get(layout.meta_key(project, key))
        except NotFound:
            return None
        finally:
            await store.close()
        return json.loads(got.body)

    return asyncio.run(go())


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def status_json(env: dict[str, str]) -> dict[str, Any]:
    """``tracemirrorctl status --json`` of the daemon ``env`` names ({} when none answers)."""
    shown = subprocess.run(
        [sys.executable, "-m", "tracemirrord.ctl", "status", "--json"],
        env=env,
        capture_output=True,
        check=False,
        timeout=30,
    )
    return json.loads(shown.stdout or b"{}")
