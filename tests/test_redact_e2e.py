"""End to end: planted secrets of every rule never reach the S3 server, and meta.json counts them.

A real tracemirrord process follows Claude Code sessions on a temporary HOME into moto's S3
server. Session one holds one line per rule (each rule's true positive from the catalog), a
private key as Claude Code's Read tool shows it (numbered lines), and a token of the user's own
rule from the config file; half of it is written before the start, half while the daemon runs.
Session two has a token in its cwd, which meta.json takes from the records.

Expected values are built from the planted list, not from the redactor: no planted secret in any
object of the bucket (parts, meta.json, the heartbeat), and meta.json's ``redaction_counts`` equal
to the number planted per rule.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from daemon import Daemon, daemon_env, read_back, read_meta, store_for, wait_for
from sessions import SessionFile, make_session
from test_rules_catalog import CASES

from tracemirrord.model import SessionKey

PEM_BODY = [  # not a key: base64 of a sentence saying so, in 64-character lines
    "VGhpcyBpcyBub3QgYSBrZXk6IHRyYWNlbWlycm9yIGVuZC10by1lbmQgdGVzdCBm",
    "aXh0dXJlLCBwbGFudGVkIHRvIGJlIHJlbW92ZWQgYmVmb3JlIHVwbG9hZC4uLi4u",
    "Li4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLg==",
]
LABEL = "RSA PRIVATE" + " KEY"
ACME = "acmedt_" + "5f0e9d8c7b6a5f4e" * 2
CWD_TOKEN = "ghp_" + "Zq8Wn3Lr5Tx7Vb2Mk4Hj6Gf9Ds1Ap0Ce3Yu5"
CONFIG = """
[[redaction.rules]]
name = "acme-deploy-token"
description = "ACME deploy token"
pattern = 'acmedt_[0-9a-f]{32}(?![0-9a-f])'
keywords = ["acmedt_"]
"""


def claude_line(session_id: str, i: int, content: Any, cwd: str = "/home/dev/proj") -> bytes:
    doc = {
        "parentUuid": None if i == 0 else f"u-{i - 1}",
        "cwd": cwd,
        "sessionId": session_id,
        "type": "user",
        "message": {"role": "user", "content": content},
        "uuid": f"u-{i}",
        "timestamp": f"2026-11-27T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
    }
    return json.dumps(doc).encode() + b"\n"


def read_tool_result(lines: list[str]) -> list[dict[str, Any]]:
    """A Read tool result as Claude Code records it: each line numbered, with an arrow."""
    numbered = "\n".join(f"{n:>6}\u2192{line}" for n, line in enumerate(lines, 1))
    return [{"type": "tool_result", "tool_use_id": "toolu_01", "content": numbered}]


def planted_session(home: Path) -> tuple[SessionFile, list[bytes], list[str], Counter[str]]:
    """Session one: its lines, the secrets in them, and the count planted per rule."""
    s = make_session(home, "claude-code")
    lines: list[bytes] = []
    secrets: list[str] = []
    planted: Counter[str] = Counter()
    for rule, template, secret, _ in CASES:
        lines.append(claude_line(s.session_id, len(lines), "my env:\n" + template.replace("{s}", secret)))
        secrets.append(secret)
        planted[rule] += 1
    pem = [f"-----BEGIN {LABEL}-----", *PEM_BODY, f"-----END {LABEL}-----"]
    lines.append(claude_line(s.session_id, len(lines), read_tool_result(pem)))
    secrets += PEM_BODY
    planted["private-key"] += 1
    lines.append(claude_line(s.session_id, len(lines), f"deploy with {ACME} please"))
    secrets.append(ACME)
    planted["acme-deploy-token"] += 1
    return s, lines, secrets, planted


def mirrored(bucket: str, key: SessionKey, s3_env: dict[str, str]) -> bytes:
    got = read_back(bucket, key, s3_env=s3_env)
    return b"".join(got.generations[g] for g in sorted(got.generations))


def every_object(bucket: str, s3_env: dict[str, str]) -> dict[str, bytes]:
    """Every object in the bucket, by key."""

    async def go() -> dict[str, bytes]:
        store = store_for(bucket, s3_env)
        try:
            return {info.key: (await store.get(info.key)).body for info in await store.list("")}
        finally:
            await store.close()

    return asyncio.run(go())


def test_planted_secrets_of_every_rule_never_reach_the_bucket(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    bucket = f"s3://{s3_bucket}"
    env = daemon_env(tmp_path, bucket, s3_env)
    config = Path(env["XDG_CONFIG_HOME"]) / "tracemirror" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(CONFIG)
    home = Path(env["HOME"])
    s, lines, secrets, planted = planted_session(home)
    half = len(lines) // 2
    s.path.write_bytes(b"".join(lines[:half]))
    cwd_session = make_session(home, "claude-code")
    cwd = f"/home/dev/{CWD_TOKEN}/proj"
    cwd_session.path.write_bytes(
        b"".join(claude_line(cwd_session.session_id, i, "hello", cwd) for i in range(3))
    )
    secrets.append(CWD_TOKEN)

    key = SessionKey("claude-code", s.session_id)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored(bucket, key, s3_env).count(b"\n") == half, 30, "the first half")
        with s.path.open("ab") as f:  # the rest while the daemon follows
            for line in lines[half:]:
                f.write(line)
                f.flush()

        def landed() -> bool:
            meta = read_meta(bucket, key, s3_env=s3_env)
            return meta is not None and meta.get("total_source_bytes") == s.path.stat().st_size

        wait_for(landed, 30, "every line and its meta.json")
        assert daemon.stop() == 0
        log = daemon.log()

    objects = every_object(bucket, s3_env)
    assert any(k.endswith("/meta.json") for k in objects) and any("/agents/" in k for k in objects)
    for name, body in objects.items():
        for secret in secrets:
            assert secret.encode() not in body, (name, secret)
    for secret in secrets:
        assert secret not in log

    body = mirrored(bucket, key, s3_env)
    assert body.count(b"\n") == len(lines)
    for line in body.splitlines():
        json.loads(line)
    meta = read_meta(bucket, key, s3_env=s3_env)
    assert meta is not None
    assert meta["redaction_counts"] == dict(planted)
    other = read_meta(bucket, SessionKey("claude-code", cwd_session.session_id), s3_env=s3_env)
    assert other is not None and other["cwd"] == "/home/dev/[REDACTED:github-token]/proj"


def test_a_hostile_line_in_one_session_does_not_stall_another(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    """While a 6 MB line of a repeated keyword is redacted (seconds of work), another session's new
    lines land. Ordering, not a timer: the second session's lines are all in the bucket before the
    hostile session's part is, which fails if redaction runs on the event loop (the loop would
    not put anything until the hostile line was done)."""
    bucket = f"s3://{s3_bucket}"
    env = daemon_env(tmp_path, bucket, s3_env)
    home = Path(env["HOME"])
    hostile, calm = make_session(home, "claude-code"), make_session(home, "claude-code")
    calm.path.write_bytes(claude_line(calm.session_id, 0, "first"))
    hostile_key = SessionKey("claude-code", hostile.session_id)
    calm_key = SessionKey("claude-code", calm.session_id)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored(bucket, calm_key, s3_env).count(b"\n") == 1, 30, "the calm session")
        hostile.path.write_bytes(claude_line(hostile.session_id, 0, "sk-proj-" * 750_000))
        with calm.path.open("ab") as f:
            for i in range(1, 4):
                f.write(claude_line(calm.session_id, i, f"line {i}"))
                f.flush()
        wait_for(lambda: mirrored(bucket, calm_key, s3_env).count(b"\n") == 4, 60, "the calm session's lines")
        assert not read_back(bucket, hostile_key, s3_env=s3_env).generations, "the hostile line landed first"
        wait_for(lambda: mirrored(bucket, hostile_key, s3_env).count(b"\n") == 1, 120, "the hostile line")
        assert daemon.stop() == 0
    line = json.loads(mirrored(bucket, hostile_key, s3_env))  # landed whole, as valid JSON
    assert line["uuid"] == "u-0" and line["message"]["content"].startswith("sk-proj-sk-proj-")
