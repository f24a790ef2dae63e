"""``tracemirrorctl`` verbs that read the bucket: cat, verify, restore, status --bucket.

Sessions are written by the test in Claude Code's format (and hermes rows, and a Codex rollout),
mirrored by a real ``tracemirrord --once`` subprocess, then read back by ``tracemirrorctl`` as a
subprocess. Every expected copy is written out here: the secret line's redacted form is spelled
literally. Faults are made in the bucket itself (a part file deleted, a part body replaced through
the store API with its old metadata) or in the source (bytes changed in place). The team view is
tested on heartbeats written straight into the bucket, then end to end with two daemons on moto.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zstandard
from daemon import Daemon, daemon_env, store_for, wait_for
from s3server import free_port

from tracemirrord.store import ObjectStore

T = TypeVar("T")

SID = "0b7f3c1e-5d2a-4f6b-9c8d-1a2b3c4d6666"
AWS_KEY_ID = "AKIAZ7Q4TRACEMIRR0R1"
# A secret access key no test output may ever contain (moto accepts any credentials).
S3_SECRET = "tmCtlS3cr3t/ForBucketVerbs+7e2c91"
CLAUDE_DIR = Path(".claude") / "projects" / "-home-dev-proj"
N_LINES = 20
SECRET_AT = 3
# The status verb of tracemirrorctl, asked for the team view.
STATUS_BUCKET = ("status", "--bucket")


# ---------- helpers ----------


def claude_line(i: int, text: str) -> bytes:
    """One Claude Code record (about 230 bytes), as the agent writes it."""
    return (
        f'{{"type":"user","sessionId":"{SID}","cwd":"/home/dev/proj","uuid":"u-{i}",'
        f'"timestamp":"2026-11-23T10:00:{i % 60:02d}.000Z",'
        f'"message":{{"role":"user","content":"{text}"}}}}\n'
    ).encode()


def plain_text(i: int) -> str:
    return f"step {i}: read the file, fix the bug, run the tests, then read the output once more"


def source_lines() -> list[bytes]:
    """What the agent wrote: line 3 holds an AWS access key id."""
    lines = [claude_line(i, plain_text(i)) for i in range(N_LINES)]
    lines[SECRET_AT] = claude_line(SECRET_AT, f"deploy with {AWS_KEY_ID} now")
    return lines


def copy_lines() -> list[bytes]:
    """What the bucket must hold: the same lines, the key replaced by the rule's placeholder."""
    lines = [claude_line(i, plain_text(i)) for i in range(N_LINES)]
    lines[SECRET_AT] = claude_line(SECRET_AT, "deploy with [REDACTED:aws-access-key-id] now")
    return lines


def ctl(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """``tracemirrorctl ARGS`` as a subprocess; never a traceback, whatever the outcome."""
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord.ctl", *args], env=env, capture_output=True, timeout=timeout
    )
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    return done


def out(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.decode()


def err(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stderr.decode()


def mirror_once(env: dict[str, str], log: Path) -> None:
    daemon = Daemon(env, log, args=("--once",)).start()
    assert daemon.proc is not None
    assert daemon.proc.wait(60) == 0, daemon.log()


def s3_env_with_secret(s3_env: dict[str, str]) -> dict[str, str]:
    return {**s3_env, "AWS_SECRET_ACCESS_KEY": S3_SECRET}


def bucket_and_env(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, dict[str, str]]:
    extra = {"TRACEMIRROR_PART_MAX_BYTES": "1KiB", "TRACEMIRROR_HARNESSES": "claude-code,codex,pi,hermes"}
    if backend == "s3":
        bucket = f"s3://{request.getfixturevalue('s3_bucket')}/team"
        extra.update(s3_env_with_secret(request.getfixturevalue("s3_env")))
    else:
        bucket = f"file://{tmp_path / 'bucket'}"
    return bucket, daemon_env(tmp_path, bucket, extra)


def write_claude_session(env: dict[str, str], sid: str = SID) -> Path:
    path = Path(env["HOME"]) / CLAUDE_DIR / f"{sid}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(source_lines()))
    return path


def mirrored_session(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[dict[str, str], Path]:
    """A Claude Code session of N_LINES lines mirrored (in several parts) by ``tracemirrord --once``."""
    _, env = bucket_and_env(backend, tmp_path, request)
    path = write_claude_session(env)
    mirror_once(env, tmp_path / "once.log")
    return env, path


def session_dir(tmp_path: Path, harness: str = "claude-code", sid: str = SID) -> Path:
    """The session's directory in the local bucket (key ``default/sessions/<harness>/<sid>/``)."""
    return tmp_path / "bucket" / "default" / "sessions" / harness / sid


def part_files(tmp_path: Path) -> list[Path]:
    return sorted(session_dir(tmp_path).glob("part-*.jsonl"))


def with_store(
    bucket: str, use: Callable[[ObjectStore], Awaitable[T]], s3: dict[str, str] | None = None
) -> T:
    async def go() -> T:
        store = store_for(bucket, s3)
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(go())


def replace_body(bucket: str, key: str, body: bytes) -> None:
    """Put another body at a part's key, keeping its metadata (and so its recorded sha256)."""

    async def use(store: ObjectStore) -> None:
        old = await store.get(key)
        await store.put(key, body, metadata=dict(old.info.metadata))

    with_store(bucket, use)


def local_key(tmp_path: Path, path: Path) -> str:
    return str(path.relative_to(tmp_path / "bucket"))


# ---------- cat ----------


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_cat_prints_the_redacted_copy(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """cat of a mirrored session is exactly the lines written, the key replaced by its placeholder;
    the bare session id works when one harness holds it."""
    env, _ = mirrored_session(backend, tmp_path, request)
    expected = b"".join(copy_lines())
    for name in (f"claude-code/{SID}", SID):
        done = ctl(env, "cat", name)
        assert done.returncode == 0, err(done)
        assert done.stdout == expected
        assert done.stderr == b""


def test_cat_is_byte_exact(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Invalid UTF-8, a NUL, a line that is no JSON: cat gives the bytes the agent wrote."""
    _, env = bucket_and_env("local", tmp_path, request)
    path = Path(env["HOME"]) / CLAUDE_DIR / f"{SID}.jsonl"
    path.parent.mkdir(parents=True)
    data = claude_line(0, "café") + b'{"raw":"\xff\xfe\x00 bytes"}\n' + b"not json at all\r\n"
    path.write_bytes(data + b'{"half":')
    mirror_once(env, tmp_path / "once.log")
    done = ctl(env, "cat", SID)
    assert done.returncode == 0, err(done)
    assert done.stdout == data


def test_the_session_is_in_several_parts(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The fault tests below need a chain: 1 KiB parts split the 20 lines into several."""
    mirrored_session("local", tmp_path, request)
    assert len(part_files(tmp_path)) >= 4


def test_cat_with_a_deleted_part_writes_nothing_and_names_it(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env, _ = mirrored_session("local", tmp_path, request)
    parts = part_files(tmp_path)
    parts[2].unlink()
    done = ctl(env, "cat", f"claude-code/{SID}")
    assert done.returncode == 1
    assert done.stdout == b""
    assert "part 2 is missing" in err(done)
    assert len(err(done).splitlines()) == 1


def test_cat_with_the_last_part_deleted_fails_by_meta_json_count(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A missing last part leaves no hole in the listing; meta.json's part count still shows it."""
    env, _ = mirrored_session("local", tmp_path, request)
    parts = part_files(tmp_path)
    parts[-1].unlink()
    done = ctl(env, "cat", f"claude-code/{SID}")
    assert done.returncode == 1
    assert done.stdout == b""
    assert f"part {len(parts) - 1} is missing" in err(done)


def test_cat_with_a_changed_part_body_fails_its_checksum(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env, _ = mirrored_session("local", tmp_path, request)
    part = part_files(tmp_path)[1]
    replace_body(env["TRACEMIRROR_BUCKET"], local_key(tmp_path, part), b'{"forged":true}\n')
    done = ctl(env, "cat", SID)
    assert done.returncode == 1
    assert done.stdout == b""
    assert "part 1 does not match its sha256" in err(done)


def test_cat_generations(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A rewritten source is a new generation: cat shows the latest, --generation N and
    --all-generations the others; an unknown generation is one line, exit 1."""
    _, env = bucket_and_env("local", tmp_path, request)
    path = Path(env["HOME"]) / CLAUDE_DIR / f"{SID}.jsonl"
    path.parent.mkdir(parents=True)
    first = claude_line(0, "the first version") + claude_line(1, "of this session")
    path.write_bytes(first)
    mirror_once(env, tmp_path / "once.log")
    second = claude_line(0, "rewritten from the start") + claude_line(1, f"with {AWS_KEY_ID}")
    path.write_bytes(second)
    mirror_once(env, tmp_path / "once.log")
    second_copy = claude_line(0, "rewritten from the start") + claude_line(
        1, "with [REDACTED:aws-access-key-id]"
    )

    assert ctl(env, "cat", SID).stdout == second_copy
    assert ctl(env, "cat", SID, "--generation", "0").stdout == first
    assert ctl(env, "cat", SID, "--generation", "1").stdout == second_copy
    assert ctl(env, "cat", SID, "--all-generations").stdout == first + second_copy
    done = ctl(env, "cat", SID, "--generation", "7")
    assert done.returncode == 1 and done.stdout == b""
    assert "no generation 7 (generations: 0, 1)" in err(done)

    done = ctl(env, "verify")
    assert done.returncode == 0, out(done)
    assert "older generation 0: not comparable" in out(done)


# ---------- naming a session ----------


def test_unknown_and_ambiguous_sessions(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """An unknown id is exit 1, an id two harnesses hold is exit 2 naming both, a malformed name exit 2."""
    _, env = bucket_and_env("local", tmp_path, request)
    write_claude_session(env)
    pi = (
        Path(env["HOME"])
        / ".pi"
        / "agent"
        / "sessions"
        / "--home-dev-proj--"
        / f"2026-11-23T10-00-00-000Z_{SID}.jsonl"
    )
    pi.parent.mkdir(parents=True)
    pi.write_bytes(
        f'{{"type":"session","version":3,"id":"{SID}","timestamp":"2026-11-23T10:00:00.000Z","cwd":"/p"}}\n'.encode()
    )
    mirror_once(env, tmp_path / "once.log")

    done = ctl(env, "cat", SID)
    assert done.returncode == 2
    assert f"claude-code/{SID}" in err(done) and f"pi/{SID}" in err(done)
    assert "HARNESS/SESSION_ID" in err(done)

    done = ctl(env, "cat", "no-such-session")
    assert done.returncode == 1
    assert err(done).startswith("tracemirrorctl: no session no-such-session")
    for verb in ("verify", "restore"):
        assert ctl(env, verb, f"codex/{SID}").returncode == 1
    assert ctl(env, "cat", "a/b/c").returncode == 2
    assert ctl(env, "cat", "claude-code/..").returncode == 2
    assert ctl(env, "cat", f"pi/{SID}").stdout.startswith(b'{"type":"session"')


# ---------- verify ----------


def test_verify_ok(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env, _ = mirrored_session("local", tmp_path, request)
    total = len(b"".join(copy_lines()))
    n_parts = len(part_files(tmp_path))
    for args in ((), (f"claude-code/{SID}",), ("--harness", "claude-code")):
        done = ctl(env, "verify", *args)
        assert done.returncode == 0, out(done) + err(done)
        assert out(done).splitlines() == [
            f"ok        claude-code/{SID}  {n_parts} parts, {total} bytes",
            "1 session: 1 ok, 0 with problems",
        ]
    done = ctl(env, "verify", "--harness", "codex")
    assert done.returncode == 0
    assert "nothing to verify" in out(done)


def test_verify_names_a_missing_part(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env, _ = mirrored_session("local", tmp_path, request)
    part_files(tmp_path)[2].unlink()
    done = ctl(env, "verify")
    assert done.returncode == 1
    lines = out(done).splitlines()
    assert lines[0] == f"GAP       claude-code/{SID}  part 2 is missing (found 3)"
    assert lines[-1] == "1 session: 0 ok, 1 with problems"


def test_verify_finds_a_changed_part(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env, _ = mirrored_session("local", tmp_path, request)
    part = part_files(tmp_path)[1]
    replace_body(env["TRACEMIRROR_BUCKET"], local_key(tmp_path, part), b'{"forged":true}\n')
    done = ctl(env, "verify", SID)
    assert done.returncode == 1
    assert (
        out(done).splitlines()[0].startswith(f"CORRUPT   claude-code/{SID}  part 1 does not match its sha256")
    )


def test_verify_finds_a_source_changed_in_place(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Bytes of the first line changed, the length kept: the part holding them is a MISMATCH."""
    env, path = mirrored_session("local", tmp_path, request)
    data = path.read_bytes()
    assert data.count(b"step 0: read") == 1
    path.write_bytes(data.replace(b"step 0: read", b"step 0: READ"))
    done = ctl(env, "verify")
    assert done.returncode == 1
    first = out(done).splitlines()[0]
    assert first.startswith(f"MISMATCH  claude-code/{SID}  part 0 (cursor 0-")
    assert first.endswith("bucket copy differs from the redacted source")


def test_verify_finds_a_shorter_source(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env, path = mirrored_session("local", tmp_path, request)
    path.write_bytes(b"".join(source_lines()[:2]))
    done = ctl(env, "verify")
    assert done.returncode == 1
    assert "the source is shorter (" in out(done)


def test_verify_a_deleted_source_is_not_a_failure(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env, path = mirrored_session("local", tmp_path, request)
    path.unlink()
    done = ctl(env, "verify")
    assert done.returncode == 0, out(done)
    assert out(done).splitlines()[0].startswith(f"gone      claude-code/{SID}  ")
    assert out(done).splitlines()[0].endswith("source gone (copy kept)")


def test_verify_skips_sessions_another_agent_wrote(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Another machine's sessions cannot be compared with local files: skipped, or only chain-checked
    when named."""
    env, _ = mirrored_session("local", tmp_path, request)
    other = {**env, "TRACEMIRROR_AGENT_ID": "someone@else"}
    done = ctl(other, "verify")
    assert done.returncode == 0
    assert out(done).splitlines() == [
        "0 sessions: 0 ok, 0 with problems; 1 skipped (written by other agents)"
    ]
    done = ctl(other, "verify", SID)
    assert done.returncode == 0
    assert out(done).splitlines()[0].startswith(f"unchecked claude-code/{SID}  ")
    assert "written by agent tester@host" in out(done)


def test_verify_follows_a_rollout_compressed_to_zst(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A Codex rollout mirrored as .jsonl and then compressed (the plain file deleted) verifies
    against its decompressed bytes; restore puts back the plain .jsonl name."""
    _, env = bucket_and_env("local", tmp_path, request)
    sid = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    plain = (
        Path(env["HOME"])
        / ".codex"
        / "sessions"
        / "2026"
        / "11"
        / "23"
        / f"rollout-2026-11-23T10-00-00-{sid}.jsonl"
    )
    plain.parent.mkdir(parents=True)
    lines = [
        f'{{"timestamp":"2026-11-23T10:00:00.000Z","type":"session_meta","payload":{{"id":"{sid}","cwd":"/p"}}}}\n',
        '{"timestamp":"2026-11-23T10:00:01.000Z","type":"response_item","payload":{"type":"message"}}\n',
    ]
    plain.write_text("".join(lines))
    mirror_once(env, tmp_path / "once.log")
    zst = plain.with_name(plain.name + ".zst")
    zst.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    plain.unlink()
    done = ctl(env, "verify", f"codex/{sid}")
    assert done.returncode == 0, out(done)
    assert out(done).startswith(f"ok        codex/{sid}  1 part, ")

    zst.write_bytes(
        zstandard.ZstdCompressor().compress("".join(lines).replace("10:00:01", "10:00:02").encode())
    )
    done = ctl(env, "verify", f"codex/{sid}")
    assert done.returncode == 1
    assert out(done).startswith(f"MISMATCH  codex/{sid}  part 0 (cursor 0-")

    zst.write_bytes(b"this is no zstd stream")
    done = ctl(env, "verify", f"codex/{sid}")
    assert done.returncode == 1
    assert out(done).startswith(f"ERROR     codex/{sid}  cannot read the source: ")

    zst.unlink()
    done = ctl(env, "restore", f"codex/{sid}")
    assert done.returncode == 0, err(done)
    assert plain.read_text() == "".join(lines)


def test_verify_hermes_rows(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """hermes rows are read again through its Source and compared; a row changed in place is a MISMATCH.
    restore refuses a database session."""
    from fixture_hermes import FIXTURE

    _, env = bucket_and_env("local", tmp_path, request)
    env.update(FIXTURE.env(Path(env["HOME"])))
    session = FIXTURE.create(Path(env["HOME"]), random.Random(7))
    session.append(30)
    mirror_once(env, tmp_path / "once.log")
    name = f"hermes/{session.session_id}"
    assert len(list(session_dir(tmp_path, "hermes", session.session_id).glob("part-*"))) >= 2

    done = ctl(env, "verify", name)
    assert done.returncode == 0, out(done) + err(done)
    assert out(done).startswith(f"ok        {name}  ")

    done = ctl(env, "restore", name)
    assert done.returncode == 2
    assert (
        err(done).strip()
        == "tracemirrorctl: restore supports JSONL agents; hermes keeps sessions in a database"
    )

    conn = sqlite3.connect(session.db)
    with conn:
        last = conn.execute("SELECT max(id) FROM messages").fetchone()[0]
        conn.execute("UPDATE messages SET content = 'changed in place' WHERE id = ?", (last,))
    conn.close()
    done = ctl(env, "verify", name)
    assert done.returncode == 1
    assert out(done).startswith(f"MISMATCH  {name}  part ")


# ---------- restore ----------


def test_restore_after_the_agent_deleted_the_session(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The copy goes back under the agent's own name, 0600; a second restore refuses to overwrite."""
    env, path = mirrored_session("local", tmp_path, request)
    path.unlink()
    path.parent.rmdir()
    expected = b"".join(copy_lines())
    done = ctl(env, "restore", f"claude-code/{SID}")
    assert done.returncode == 0, err(done)
    assert out(done) == f"restored claude-code/{SID} to {path} ({N_LINES} lines, {len(expected)} bytes)\n"
    assert path.read_bytes() == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left behind"

    path.write_bytes(b"the agent wrote on\n")
    before = path.stat()
    done = ctl(env, "restore", SID)
    assert done.returncode == 1
    assert (
        err(done)
        == f"tracemirrorctl: {path} exists; restore never overwrites a file (move it away, or use --to)\n"
    )
    assert path.read_bytes() == b"the agent wrote on\n"
    assert path.stat().st_ino == before.st_ino


def test_restore_to_a_directory_or_a_new_path(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env, _ = mirrored_session("local", tmp_path, request)
    expected = b"".join(copy_lines())
    target_dir = tmp_path / "restored"
    target_dir.mkdir()
    done = ctl(env, "restore", SID, "--to", str(target_dir))
    assert done.returncode == 0, err(done)
    assert (target_dir / f"{SID}.jsonl").read_bytes() == expected

    nested = tmp_path / "a" / "b" / "copy.jsonl"
    done = ctl(env, "restore", SID, "--to", str(nested))
    assert done.returncode == 0, err(done)
    assert out(done).endswith(f" to {nested} ({N_LINES} lines, {len(expected)} bytes)\n")
    assert nested.read_bytes() == expected
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert ctl(env, "restore", SID, "--to", str(nested)).returncode == 1


def test_restore_with_a_broken_chain_writes_nothing(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env, path = mirrored_session("local", tmp_path, request)
    path.unlink()
    part_files(tmp_path)[1].unlink()
    done = ctl(env, "restore", SID)
    assert done.returncode == 1
    assert "part 1 is missing" in err(done)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


# ---------- S3: the same verbs, and no credential in any output ----------


def test_verbs_on_s3_never_print_the_secret_key(
    tmp_path: Path, request: pytest.FixtureRequest, s3_env: dict[str, str]
) -> None:
    env, path = mirrored_session("s3", tmp_path, request)
    outputs = []
    done = ctl(env, "verify")
    assert done.returncode == 0, out(done)
    outputs.append(done)
    path.unlink()
    done = ctl(env, "restore", SID)
    assert done.returncode == 0, err(done)
    assert path.read_bytes() == b"".join(copy_lines())
    outputs.append(done)
    outputs.append(ctl(env, "cat", "no-such-session"))
    outputs.append(ctl(env, "restore", SID))  # refuses: the file exists
    closed = {**env, "TRACEMIRROR_S3__ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    done = ctl(closed, "cat", SID, timeout=120)
    assert done.returncode == 1
    assert len(err(done).splitlines()) == 1 and env["TRACEMIRROR_BUCKET"].removeprefix("s3://") in err(done)
    outputs.append(done)
    for done in outputs:
        assert S3_SECRET.encode() not in done.stdout + done.stderr


# ---------- status --bucket ----------


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def heartbeat(agent_id: str, status: str, age_s: float, **fields: Any) -> bytes:
    """A tracemirrord heartbeat as the daemon writes it, ``age_s`` old."""
    now = datetime.now(UTC)
    doc = {
        "id": agent_id,
        "status": status,
        "step": None,
        "started_at": iso(now - timedelta(hours=1)),
        "heartbeat": iso(now - timedelta(seconds=age_s)),
        "summary": "tracemirrord",
        "kind": "tracemirrord",
        "version": "0.9.0",
        "host": agent_id.split("@")[-1],
        "pid": 4242,
        "instance": "abc123",
        "heartbeat_interval_s": 60.0,
        "sessions": 3,
        "lag_s": 0.4,
        "store": "ok",
        "health": "healthy",
        "problems": [],
        "harnesses": {"claude-code": "running"},
        "recent_sessions": [
            {
                "harness": "claude-code",
                "session_id": SID,
                "last_flush_at": iso(now - timedelta(seconds=age_s + 5)),
                "state": "following",
            }
        ],
        "totals": {"parts": 12, "bytes_uploaded": 48213},
    }
    doc.update(fields)
    return json.dumps(doc).encode()


def put_objects(bucket: str, objects: dict[str, bytes]) -> None:
    async def use(store: ObjectStore) -> None:
        for key, body in objects.items():
            await store.put(key, body)

    with_store(bucket, use)


def team_env(tmp_path: Path) -> tuple[str, dict[str, str]]:
    bucket = f"file://{tmp_path / 'bucket'}"
    return bucket, daemon_env(tmp_path, bucket)


def team_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    done = ctl(env, *STATUS_BUCKET, "--json", *args)
    return done.returncode, json.loads(done.stdout)


def test_status_bucket_lists_each_daemon_and_other_agents(tmp_path: Path) -> None:
    """Fresh, stopped and silent tracemirrords; another tool's heartbeat apart; a broken one named."""
    bucket, env = team_env(tmp_path)
    put_objects(
        bucket,
        {
            "default/agents/alice@laptop.json": heartbeat("alice@laptop", "running", 5),
            "default/agents/bob@desk.json": heartbeat("bob@desk", "running", 14 * 60 + 3),
            "default/agents/carol@old.json": heartbeat("carol@old", "stopped", 3 * 86400),
            "default/agents/planner-1.json": json.dumps(
                {"id": "planner-1", "status": "running", "step": "plan", "heartbeat": iso(datetime.now(UTC))}
            ).encode(),
            "default/agents/broken.json": b"{not json",
            "default/agents/list.json": b"[1, 2]",
        },
    )
    done = ctl(env, *STATUS_BUCKET)
    assert done.returncode == 1, "bob is silent"
    text = out(done)
    assert re.search(r"^tracemirrord alice@laptop  running  healthy  heartbeat \d+s ago$", text, re.M)
    assert "tracemirrord bob@desk  SILENT (last heartbeat 14m ago)" in text
    assert "tracemirrord carol@old  stopped  heartbeat 3d ago" in text
    assert "  host laptop, version 0.9.0, pid 4242, store ok, 3 sessions followed, lag 0.4s" in text
    assert re.search(rf"^    claude-code/{SID}  following  flushed \d+s ago$", text, re.M)
    assert re.search(r"other agents \(not tracemirrord\):\n  planner-1  running  heartbeat \d+s ago\n", text)
    assert "unreadable heartbeat default/agents/broken.json" in text
    assert "unreadable heartbeat default/agents/list.json" in text
    assert text.splitlines()[-1] == "3 tracemirrords (1 running, 1 silent, 1 stopped): NOT healthy"

    code, doc = team_json(env)
    assert code == 1
    states = {d["agent_id"]: d["state"] for d in doc["daemons"]}
    assert states == {"alice@laptop": "running", "bob@desk": "silent", "carol@old": "stopped"}
    assert [o["id"] for o in doc["other_agents"]] == ["planner-1"]
    assert sorted(doc["unreadable"]) == ["default/agents/broken.json", "default/agents/list.json"]
    assert doc["problems"] == ["bob@desk: silent, last heartbeat 14m ago"]
    assert doc["healthy"] is False


def test_status_bucket_healthy_degraded_and_empty(tmp_path: Path) -> None:
    bucket, env = team_env(tmp_path)
    done = ctl(env, *STATUS_BUCKET)
    assert done.returncode == 1
    assert "no tracemirrord has written a heartbeat here yet" in out(done)

    put_objects(
        bucket,
        {
            "default/agents/alice@laptop.json": heartbeat("alice@laptop", "running", 2),
            "default/agents/carol@old.json": heartbeat("carol@old", "stopped", 86400, health="degraded"),
            # a 10 s interval: silent after 30 s (150 s is silent, though under the 180 s default)
            "default/agents/fast@box.json": heartbeat("fast@box", "running", 1, heartbeat_interval_s=10.0),
        },
    )
    code, doc = team_json(env)
    assert code == 0, doc
    assert doc["healthy"] is True and doc["problems"] == []
    quiet = ctl(env, *STATUS_BUCKET, "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == b""

    put_objects(
        bucket,
        {"default/agents/fast@box.json": heartbeat("fast@box", "running", 150, heartbeat_interval_s=10.0)},
    )
    code, doc = team_json(env)
    assert code == 1 and doc["problems"] == ["fast@box: silent, last heartbeat 2m ago"]

    put_objects(
        bucket,
        {
            "default/agents/fast@box.json": heartbeat("fast@box", "stopped", 10),
            "default/agents/alice@laptop.json": heartbeat(
                "alice@laptop",
                "running",
                2,
                health="degraded",
                store="unreachable",
                problems=["store unreachable"],
            ),
        },
    )
    done = ctl(env, *STATUS_BUCKET)
    assert done.returncode == 1
    assert re.search(r"^tracemirrord alice@laptop  running  DEGRADED  heartbeat \d+s ago$", out(done), re.M)
    assert "  problems:\n    store unreachable" in out(done)


def test_status_bucket_counts_sessions_per_writer(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """meta.json files tell which agent holds how many sessions; --no-sessions skips reading them."""
    env, _ = mirrored_session("local", tmp_path, request)
    put_objects(
        env["TRACEMIRROR_BUCKET"], {"default/agents/tester@host.json": heartbeat("tester@host", "running", 1)}
    )
    code, doc = team_json(env)
    assert code == 0
    assert doc["sessions"]["meta_total"] == 1
    (held,) = doc["sessions"]["by_agent"]
    assert held["agent_id"] == "tester@host" and held["sessions"] == 1 and held["has_heartbeat"] is True
    assert held["last_session"] == f"claude-code/{SID}"
    done = ctl(env, *STATUS_BUCKET)
    assert "  in the bucket: 1 session, last upload " in out(done)
    code, doc = team_json(env, "--no-sessions")
    assert code == 0 and doc["sessions"] is None


def test_status_bucket_with_two_daemons_on_s3(tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]) -> None:
    """Two tracemirrords of different agent ids on one bucket: both running; one stopped shows stopped."""
    bucket = f"s3://{s3_bucket}/shared"
    envs = {}
    for n, agent in enumerate(("alice@laptop", "bob@desk")):
        (tmp_path / agent).mkdir()
        envs[agent] = daemon_env(
            tmp_path / agent,
            bucket,
            {
                **s3_env_with_secret(s3_env),
                "TRACEMIRROR_AGENT_ID": agent,
                "TRACEMIRROR_HEARTBEAT_INTERVAL": "1s",
            },
        )
        write_claude_session(envs[agent], SID[:-1] + str(n))  # a session each: no lease to contend for
    ctl_env = daemon_env(tmp_path, bucket, s3_env_with_secret(s3_env))

    def states() -> dict[str, str]:
        _, doc = team_json(ctl_env)
        return {d["agent_id"]: d["state"] for d in doc["daemons"]}

    with (
        Daemon(envs["alice@laptop"], tmp_path / "alice.log") as alice,
        Daemon(envs["bob@desk"], tmp_path / "bob.log") as bob,
    ):
        wait_for(
            lambda: states() == {"alice@laptop": "running", "bob@desk": "running"}, 30, "two running daemons"
        )
        done = ctl(ctl_env, *STATUS_BUCKET)
        assert done.returncode == 0, out(done)
        assert "tracemirrord alice@laptop  running  healthy" in out(done)
        assert "tracemirrord bob@desk  running  healthy" in out(done)
        assert bob.stop() == 0, bob.log()
        wait_for(lambda: states() == {"alice@laptop": "running", "bob@desk": "stopped"}, 30, "bob stopped")
        done = ctl(ctl_env, *STATUS_BUCKET)
        print(out(done))  # the team view as a person sees it (pytest -s shows it)
        assert done.returncode == 0, out(done)
        assert "tracemirrord bob@desk  stopped  heartbeat" in out(done)
        assert S3_SECRET.encode() not in done.stdout + done.stderr
        assert alice.stop() == 0, alice.log()


def test_status_bucket_on_an_unreachable_bucket(tmp_path: Path, s3_env: dict[str, str]) -> None:
    closed = {**s3_env_with_secret(s3_env), "TRACEMIRROR_S3__ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    env = daemon_env(tmp_path, "s3://tm-nowhere", closed)
    done = ctl(env, *STATUS_BUCKET, timeout=120)
    assert done.returncode == 1
    assert err(done).startswith("tracemirrorctl: bucket s3://tm-nowhere")
    assert len(err(done).splitlines()) == 1
    assert S3_SECRET.encode() not in done.stdout + done.stderr


def test_ctl_modules_are_light() -> None:
    """Importing the bucket verbs loads no store, layout, redaction, harness or config code."""
    code = (
        "import sys, tracemirrord.ctl.bucket, tracemirrord.ctl.team;"
        "heavy = [m for m in ('tracemirrord.store', 'tracemirrord.layout', 'tracemirrord.redact',"
        " 'tracemirrord.harnesses', 'tracemirrord.config', 'tracemirrord.reassemble') if m in sys.modules];"
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
