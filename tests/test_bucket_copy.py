"""The embedded bucket copied, restored or damaged: real daemons, real copies, real files.

A copy (``cp -a``, or ``shutil.copytree`` with plain ``shutil.copy``: new inodes and new mtimes)
of a bucket whose meta.json trails its parts, with the state dir gone, is read from its parts'
metadata: ``--once`` and a live daemon then add nothing twice and lose nothing. Dead writers'
temp files go away; a part whose metadata is gone is described from meta.json or passed over as a
new generation, never wedging the session.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from sessions import SessionFile, complete_lines, make_session, record

from tracemirrord import layout
from tracemirrord.model import SessionKey
from tracemirrord.redact import Redactor
from tracemirrord.rollforward import read_bucket
from tracemirrord.store.local import HIDDEN_DIR, TEMP_PREFIX, LocalStore

HARNESSES = ("claude-code", "codex", "pi")


def append(s: SessionFile, start: int, count: int) -> None:
    rng = random.Random(start * 7919 + len(s.session_id))
    with s.path.open("ab") as f:
        f.write(b"".join(record(s.harness, s.session_id, i, rng) for i in range(start, start + count)))


def once(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--once"], env=env, capture_output=True, timeout=90
    )


def part_files(bucket: Path) -> list[str]:
    return sorted(
        str(p.relative_to(bucket)) for p in bucket.rglob("part-*.jsonl") if HIDDEN_DIR not in p.parts
    )


def expected(s: SessionFile) -> bytes:
    return Redactor().redact(complete_lines(s.path)).data


def assert_exact(bucket: Path, files: list[SessionFile]) -> None:
    for s in files:
        got = read_back(f"file://{bucket}", SessionKey(s.harness, s.session_id))
        assert list(got.generations) == [0], f"{s.harness}: generations {list(got.generations)}"
        assert got.generations[0] == expected(s), f"{s.harness}: the copy differs from the source"
        lines = got.generations[0].splitlines()
        assert len(lines) == len(set(lines)), "a line appears twice"


def is_current(bucket: Path, files: list[SessionFile]) -> bool:
    try:
        return all(
            read_back(f"file://{bucket}", SessionKey(s.harness, s.session_id)).generations.get(0)
            == expected(s)
            for s in files
        )
    except Exception:
        return False


def meta_part_count(bucket: Path, s: SessionFile) -> int:
    path = bucket / layout.meta_key("default", SessionKey(s.harness, s.session_id))
    return int(json.loads(path.read_bytes())["part_count"])


def mirror_with_meta_behind(tmp_path: Path) -> tuple[dict[str, str], list[SessionFile], Path]:
    """Sessions mirrored by a live daemon (meta.json due only hourly) killed with -9: meta.json
    trails the parts, as in a bucket backed up while its daemon ran."""
    bucket = tmp_path / "bucket"
    env = daemon_env(tmp_path, f"file://{bucket}", {"TRACEMIRROR_META_INTERVAL": "1h"})
    files = [make_session(Path(env["HOME"]), h) for h in HARNESSES]
    for s in files:
        append(s, 0, 20)
    with Daemon(env, tmp_path / "first.log") as daemon:
        wait_for(lambda: is_current(bucket, files), 20, "the first copy")
        for s in files:
            append(s, 20, 10)
        wait_for(lambda: is_current(bucket, files), 20, "the second part")
        daemon.kill9()
    for s in files:
        assert meta_part_count(bucket, s) < len(
            list((bucket / "default" / "sessions" / s.harness / s.session_id).glob("part-*"))
        )
    return env, files, bucket


@pytest.mark.parametrize("how", ["cp-a", "copytree-copy"])
def test_copied_bucket_without_state_resumes_exactly(tmp_path: Path, how: str) -> None:
    """A copied bucket (new inodes; with plain copy new mtimes too), state dir deleted: ``--once``
    adopts every part (uploads none again), and a live daemon continues it exactly."""
    env, files, bucket = mirror_with_meta_behind(tmp_path)
    copy = tmp_path / "copy"
    if how == "cp-a":
        subprocess.run(["cp", "-a", str(bucket), str(copy)], check=True)
    else:
        shutil.copytree(bucket, copy, copy_function=shutil.copy)
    assert (copy / "default").stat().st_ino != (bucket / "default").stat().st_ino
    shutil.rmtree(Path(env["XDG_STATE_HOME"]) / "tracemirror")
    env_copy = dict(env, TRACEMIRROR_BUCKET=f"file://{copy}")
    before = part_files(copy)
    done = once(env_copy)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert part_files(copy) == before, "--once uploaded parts the copy already held"
    assert_exact(copy, files)
    shutil.rmtree(Path(env["XDG_STATE_HOME"]) / "tracemirror")
    with Daemon(env_copy, tmp_path / "copy.log") as daemon:
        for s in files:
            append(s, 30, 5)
        wait_for(lambda: is_current(copy, files), 20, "the live daemon on the copy")
        assert daemon.stop() == 0
    assert set(before) < set(part_files(copy))
    assert_exact(copy, files)


def test_dead_writers_temp_files_are_removed(tmp_path: Path) -> None:
    """Temp files a killed writer left next to parts and sidecars are removed by the next write there."""
    bucket = tmp_path / "bucket"
    env = daemon_env(tmp_path, f"file://{bucket}")
    s = make_session(Path(env["HOME"]), "claude-code")
    append(s, 0, 10)
    assert once(env).returncode == 0
    session_dir = bucket / "default" / "sessions" / s.harness / s.session_id
    sidecar_dir = bucket / HIDDEN_DIR / "meta" / "default" / "sessions" / s.harness / s.session_id
    strays = [session_dir / f"{TEMP_PREFIX}0123456789abcdef", sidecar_dir / f"{TEMP_PREFIX}fedcba9876543210"]
    for stray in strays:
        stray.write_bytes(b"half a part")
    append(s, 10, 5)
    assert once(env).returncode == 0
    assert [p for p in strays if p.exists()] == []
    assert_exact(bucket, [s])


def test_part_without_metadata_continues_as_new_generation(tmp_path: Path) -> None:
    """The last part's metadata deleted (state dir gone, meta.json behind): ``--once`` succeeds, the
    session goes on as a new generation that holds the whole source, and nothing is wedged."""
    env, files, bucket = mirror_with_meta_behind(tmp_path)
    s = files[0]
    sidecars = sorted(
        (bucket / HIDDEN_DIR / "meta" / "default" / "sessions" / s.harness / s.session_id).glob("part-*")
    )
    sidecars[-1].unlink()
    shutil.rmtree(Path(env["XDG_STATE_HOME"]) / "tracemirror")
    done = once(env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"continuing as a new generation" in done.stderr
    generations = generations_by_metadata(bucket, s)
    assert sorted(generations) == [0, 1]
    assert generations[1] == expected(s), "the new generation holds the whole source"
    assert expected(s).startswith(generations[0]), "generation 0 keeps what its described parts held"
    append(s, 30, 5)
    again = once(env)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert generations_by_metadata(bucket, s)[1] == expected(s), "and it keeps going"
    assert_exact(bucket, files[1:])


def generations_by_metadata(bucket: Path, s: SessionFile) -> dict[int, bytes]:
    """Each generation's bytes from the parts that have metadata (in seq order)."""

    async def go() -> dict[int, bytes]:
        store = LocalStore(bucket)
        prefix = layout.session_prefix("default", SessionKey(s.harness, s.session_id))
        out: dict[int, bytes] = {}
        for info in sorted(await store.list(prefix + "part-"), key=lambda i: i.key):
            got = await store.get(info.key)
            if layout.PART_METADATA_KEY in got.info.metadata:
                part = layout.decode_part_metadata(info.key, got.info.metadata, info.size, None)
                out[part.generation] = out.get(part.generation, b"") + got.body
        return out

    return asyncio.run(go())


@pytest.mark.anyio
async def test_part_without_metadata_is_described_from_meta_json(tmp_path: Path) -> None:
    """Parts that lost their sidecars are described from meta.json's window when their sha256 matches.

    The bucket: three parts written by the daemon, meta.json up to date; then the last part deleted
    by hand and the sidecars of the other two removed, so the roll-forward must HEAD them again.
    """
    bucket = tmp_path / "bucket"
    env = daemon_env(tmp_path, f"file://{bucket}")
    s = make_session(Path(env["HOME"]), "claude-code")
    ends = []
    for start in (0, 5, 10):
        append(s, start, 5)
        ends.append(len(s.path.read_bytes()))
        assert once(env).returncode == 0
    key = SessionKey(s.harness, s.session_id)
    session_dir = bucket / "default" / "sessions" / s.harness / s.session_id
    parts = sorted(session_dir.glob("part-*"))
    assert len(parts) == 3
    parts[-1].unlink()
    for sidecar in (bucket / HIDDEN_DIR / "meta" / "default" / "sessions" / s.harness / s.session_id).glob(
        "part-*"
    ):
        sidecar.unlink()

    def no_lease_check(_lease: object) -> None:
        return None

    import structlog

    view = await read_bucket(
        LocalStore(bucket),
        "default",
        key,
        None,
        unit="bytes",
        parts_window=32,
        check_lease=no_lease_check,
        log=structlog.get_logger("test"),
    )
    assert (view.state.generation, view.state.cursor, view.state.next_seq) == (0, ends[1], 2)
    assert [(p.seq, p.start, p.end) for p in view.state.recent_parts] == [
        (0, 0, ends[0]),
        (1, ends[0], ends[1]),
    ]
