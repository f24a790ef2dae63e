"""The opt-in anonymizer: each kind of identity replaced, nothing else touched, JSON kept valid.

Expected lines are written out; the e-mail placeholder's hex is computed here with hmac directly,
from the key the test chose, not by the code under test.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

from daemon import daemon_env, read_back, read_meta
from sessions import make_session

from tracemirrord.anonymize import Anonymizer
from tracemirrord.model import SessionKey

KEY = b"k" * 32


def placeholder(address: str) -> str:
    return "[email:" + hmac.new(KEY, address.lower().encode(), hashlib.sha256).hexdigest()[:8] + "]"


def anonymizer() -> Anonymizer:
    return Anonymizer(home="/home/alice", user="alice", host="workstation.example.org", key=KEY)


def test_each_identity_is_replaced_and_nothing_else() -> None:
    line = (
        '{"cwd":"/home/alice/proj","text":"ssh alice@workstation; mail Alice.B@Example.com; '
        'alice said hi; /Users/alice/x; /home/alice2/y; workstations; see /home/alice"}\n'
    )
    want = (
        '{"cwd":"~/proj","text":"ssh [user]@[host]; mail '
        + placeholder("Alice.B@Example.com")
        + '; alice said hi; /Users/[user]/x; /home/alice2/y; workstations; see ~"}\n'
    )
    got = anonymizer().apply(line.encode())
    assert got.data.decode() == want
    assert got.count == 6
    assert json.loads(got.data)["cwd"] == "~/proj"


def test_the_same_address_is_the_same_placeholder_everywhere() -> None:
    a = anonymizer()
    first = a.apply(b"bob@corp.io wrote to carol@corp.io\n").data
    second = a.apply(b"and again bob@corp.io\n").data
    assert first == f"{placeholder('bob@corp.io')} wrote to {placeholder('carol@corp.io')}\n".encode()
    assert second == f"and again {placeholder('bob@corp.io')}\n".encode()


def test_a_line_without_identities_is_byte_identical() -> None:
    line = b'{"type":"assistant","message":"ran pytest in /tmp/build, 12 passed"}\n'
    got = anonymizer().apply(line)
    assert got.data == line and got.count == 0


def test_the_daemon_anonymizes_parts_and_meta_json(tmp_path: Path) -> None:
    """With TRACEMIRROR_ANONYMIZE the bucket holds no home path and no address, meta.json included."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket, {"TRACEMIRROR_ANONYMIZE": "true"})
    home = env["HOME"]
    s = make_session(Path(home), "claude-code")
    lines = [
        {"type": "user", "cwd": f"{home}/proj", "sessionId": s.session_id, "message": "hi"},
        {"type": "assistant", "message": f"wrote {home}/proj/a.py for dev@example.com"},
    ]
    s.path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    key = SessionKey("claude-code", s.session_id)
    copy = read_back(bucket, key).generations[0].decode()
    assert home not in copy and "dev@example.com" not in copy
    got = [json.loads(line) for line in copy.splitlines()]
    assert got[0]["cwd"] == "~/proj"
    assert got[1]["message"].startswith("wrote ~/proj/a.py for [email:")
    meta = read_meta(bucket, key)
    assert meta is not None and meta["cwd"] == "~/proj" and home not in json.dumps(meta)
    assert meta["host"] == "[host]"
    assert meta["source_path"] == f"~/.claude/projects/-home-dev-proj/{s.session_id}.jsonl"
    assert meta["redaction_counts"]["anonymized"] == 3
    key_file = Path(env["XDG_STATE_HOME"]) / "tracemirror" / "anonymize.key"
    assert (os.stat(key_file).st_mode & 0o777) == 0o600
