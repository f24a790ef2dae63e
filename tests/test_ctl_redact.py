"""``tracemirrorctl redact``: a transcript as the daemon would upload it, and where its secrets were.

Expected outputs are written out here: the placeholders are the ones the bucket copies carry.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

AWS = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example key id: well-formed, not a real key
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"

TRANSCRIPT = (
    f'{{"type":"user","message":"my key is {AWS}"}}\n'
    '{"type":"assistant","message":"nothing secret here"}\n'
    f'{{"type":"tool_result","content":"pushed with {GITHUB}\\n{AWS}"}}\n'
    f"a plain text line with {AWS} and no newline"
)
REDACTED = (
    '{"type":"user","message":"my key is [REDACTED:aws-access-key-id]"}\n'
    '{"type":"assistant","message":"nothing secret here"}\n'
    '{"type":"tool_result","content":"pushed with [REDACTED:github-token]\\n'
    '[REDACTED:aws-access-key-id]"}\n'
    "a plain text line with [REDACTED:aws-access-key-id] and no newline\n"
)
REPORT = (
    "RULE               COUNT  LINES\n"
    "aws-access-key-id      3  1, 3, 4\n"
    "github-token           1  3\n"
    "4 redactions in 4 lines\n"
)


def ctl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tracemirrord.ctl", "redact", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def test_redact_prints_what_would_be_uploaded(tmp_path: Path) -> None:
    path = tmp_path / "session.jsonl"
    path.write_text(TRANSCRIPT)
    done = ctl(str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == REDACTED
    assert done.stderr.decode() == "tracemirrorctl: 4 redacted in 4 lines (--report for where)\n"


def test_report_names_rules_and_lines_never_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "session.jsonl"
    path.write_text(TRANSCRIPT)
    done = ctl("--report", str(path))
    assert done.returncode == 0 and done.stdout.decode() == REPORT
    assert AWS.encode() not in done.stdout + done.stderr and GITHUB.encode() not in done.stdout


def test_stdin_and_fail_on_secret() -> None:
    done = ctl("--fail-on-secret", "-", stdin=TRANSCRIPT.encode())
    assert done.returncode == 1 and done.stdout.decode() == REDACTED
    clean = ctl("--fail-on-secret", "--report", "-", stdin=b'{"a":"b"}\n')
    assert clean.returncode == 0 and clean.stdout == b"nothing to redact in 1 lines\n"


def test_an_unreadable_file_is_one_line_exit_2(tmp_path: Path) -> None:
    done = ctl(str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2
    assert (
        done.stderr.decode()
        == f"tracemirrorctl: cannot read {tmp_path / 'missing.jsonl'}: No such file or directory\n"
    )
