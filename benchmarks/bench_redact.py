"""Throughput of the redactor on realistic Claude-Code-like JSONL (standalone; not a pytest module).

Builds about 100 MB of transcript lines with a fixed seed (user prompts, assistant text, Bash
tool_use, tool_result with file contents, git logs, lockfiles, ANSI test output, nested JSON with
Go-style ``\\u003c`` escapes, a few base64 PNG images, secrets sprinkled rarely), redacts it in
buffers of about 8 MiB of complete lines, and prints MB/s and the counts per rule.

    .venv/bin/python benchmarks/bench_redact.py [--mb 100] [--buffer-mib 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracemirrord.redact import Redactor

SEED = 20240611

WORDS = (
    "the of and to in is that it for on with as this was be by are from at or an have not but "
    "file function test error config value return import class module should would could "
    "update change fix add remove check run build install package version branch commit merge "
    "server client request response token user session cache index query result data path "
    "because which there their about after before when where while since until then also only "
    "let me look at the failing test and see what is going on here I think the issue is that "
    "we need to handle the case where"
).split()
# Keyword look-alikes (the engine must check and reject them): about one per 500 words of prose.
LOOKALIKES = "task-runner disk-usage hf_hub_download scikit sk-learn ask-user Bearer bearer-token".split()

PY_SNIPPET = '''import os
import json
from dataclasses import dataclass


@dataclass
class Settings:
    """Runtime settings loaded from the environment."""

    bucket_name: str
    flush_interval_s: float = 2.0
    max_line_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(bucket_name=os.environ.get("TM_BUCKET", "traces"))


def load_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
'''

ANSI_PYTEST = (
    "\x1b[1m============================= test session starts ==============================\x1b[0m\n"
    "platform linux -- Python 3.11.7, pytest-8.2.0, pluggy-1.5.0\n"
    "collected 42 items\n\n"
    "tests/test_frame.py \x1b[32m.........\x1b[0m\x1b[32m                       [ 21%]\x1b[0m\n"
    "tests/test_layout.py \x1b[32m..........\x1b[0m\x1b[31mF\x1b[0m\x1b[32m             [ 47%]\x1b[0m\n"
    "\x1b[32m=========== \x1b[32m\x1b[1m41 passed\x1b[0m, \x1b[31m1 failed\x1b[0m in 0.42s\x1b[0m\n"
)

BASH_COMMANDS = [
    "git status",
    "git log --oneline -20",
    "git diff HEAD~1 -- src/",
    "ls -la",
    "npm install",
    "npm test -- --watch=false",
    "python -m pytest -q tests/",
    "cat package-lock.json | head -80",
    "rg -n 'def redact' --type py",
    'curl -s -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/repos/o/r/pulls',
    "docker compose up -d && docker compose ps",
    "kubectl get pods -n default -o json",
    "find . -name '*.py' -not -path './.venv/*' | xargs wc -l",
]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(LOOKALIKES if rng.random() < 0.002 else WORDS) for _ in range(n))


def _prose(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        s = _words(rng, rng.randint(6, 22))
        out.append(s[0].upper() + s[1:] + ".")
    return " ".join(out)


def _git_log(rng: random.Random, n: int) -> str:
    return "\n".join(f"{rng.getrandbits(160):040x} {_words(rng, rng.randint(3, 9))}" for _ in range(n))


def _lockfile(rng: random.Random, n: int) -> str:
    packages = {}
    for i in range(n):
        name = f"node_modules/{rng.choice(WORDS)}-{i}"
        digest = base64.b64encode(rng.randbytes(64)).decode()
        packages[name] = {
            "version": f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
            "resolved": f"https://registry.npmjs.org/{name}/-/{name}-1.0.0.tgz",
            "integrity": f"sha512-{digest}",
        }
    return json.dumps({"name": "app", "lockfileVersion": 3, "packages": packages}, indent=2)


def _go_json(rng: random.Random) -> str:
    # Go's encoder escapes <, > and & as \u003c, \u003e, \u0026 (HTML-safe output).
    items = [
        {
            "name": f"pod-{rng.getrandbits(32):08x}",
            "status": "Running",
            "note": "a \\u003c b \\u0026\\u0026 c",
        }
        for _ in range(rng.randint(3, 30))
    ]
    return json.dumps({"items": items}, indent=2).replace("\\\\u", "\\u")


def _secret(rng: random.Random) -> tuple[str, str]:
    """A realistic snippet holding a secret, and the secret itself (to check that it is gone)."""
    alnum = string.ascii_letters + string.digits

    def r(n: int, alphabet: str = alnum) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    pem_lines = [r(64, alnum + "+/") for _ in range(6)]
    choices = [
        ("export AWS_ACCESS_KEY_ID=", "AKIA" + r(16, string.ascii_uppercase + "234567")),
        ("aws_secret_access_key = ", r(40, alnum + "/+")),
        ("ANTHROPIC_API_KEY=", "sk-ant-api03-" + r(93, alnum + "-_") + "AA"),
        ("OPENAI_API_KEY=", "sk-proj-" + r(120, alnum + "-_")),
        ("token: ", "ghp_" + r(36)),
        ('{"Authorization": "Bearer ', r(48, alnum + "._-") + "1"),
        ("SLACK_BOT_TOKEN=", "xoxb-" + r(12, string.digits) + "-" + r(13, string.digits) + "-" + r(24)),
        ("HF_TOKEN=", "hf_" + r(34, string.ascii_letters)),
        ("", "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(pem_lines) + "\n-----END RSA PRIVATE KEY-----"),
    ]
    context, secret = rng.choice(choices)
    closing = '"}' if context.startswith("{") else ""
    return context + secret + closing, pem_lines[3] if secret.startswith("-----") else secret


def _envelope(rng: random.Random, session: str, kind: str, message: dict, extra: dict | None = None) -> dict:
    day, hour, ms = rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 999)
    line = {
        "parentUuid": str(uuid.UUID(int=rng.getrandbits(128))),
        "isSidechain": False,
        "userType": "external",
        "cwd": "/home/dev/src/tracemirror",
        "sessionId": session,
        "version": "1.0.61",
        "gitBranch": "main",
        "type": kind,
        "message": message,
        "uuid": str(uuid.UUID(int=rng.getrandbits(128))),
        "timestamp": f"2025-07-{day:02d}T{hour:02d}:12:33.{ms:03d}Z",
    }
    if extra:
        line.update(extra)
    return line


def _tool_output(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.25:
        return PY_SNIPPET * rng.randint(1, 12)
    if pick < 0.4:
        return _git_log(rng, rng.randint(5, 60))
    if pick < 0.5:
        return _lockfile(rng, rng.randint(5, 80))
    if pick < 0.65:
        return ANSI_PYTEST * rng.randint(1, 4)
    if pick < 0.72:
        return _go_json(rng)
    if pick < 0.8:
        return json.dumps({"ok": True, "items": [_words(rng, 8) for _ in range(rng.randint(3, 40))]})
    return "\n".join(_prose(rng, 3) for _ in range(rng.randint(2, 30)))


def build_lines(target_bytes: int, seed: int = SEED) -> tuple[list[bytes], list[str]]:
    """About ``target_bytes`` of Claude-Code-like JSONL lines (deterministic), and the planted secrets."""
    rng = random.Random(seed)
    session = str(uuid.UUID(int=rng.getrandbits(128)))
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(600_000)).decode()
    lines: list[bytes] = []
    planted: list[str] = []
    size = 0
    while size < target_bytes:
        pick = rng.random()
        secret = ""
        if rng.random() < 0.0005:
            secret, bare = _secret(rng)
            planted.append(bare)
        if pick < 0.2:
            msg = {
                "role": "user",
                "content": _prose(rng, rng.randint(1, 6)) + (" " + secret if secret else ""),
            }
            obj = _envelope(rng, session, "user", msg)
        elif pick < 0.45:
            text = _prose(rng, rng.randint(2, 20)) + ("\n" + secret if secret else "")
            msg = {
                "id": f"msg_01{rng.getrandbits(100):025x}",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-20250514",
                "content": [{"type": "text", "text": text}],
                "stop_reason": None,
                "usage": {"input_tokens": rng.randint(1, 9000), "output_tokens": rng.randint(1, 2000)},
            }
            obj = _envelope(rng, session, "assistant", msg, {"requestId": f"req_011{rng.getrandbits(90):x}"})
        elif pick < 0.65:
            command = rng.choice(BASH_COMMANDS) + (" # " + secret if secret else "")
            msg = {
                "id": f"msg_01{rng.getrandbits(100):025x}",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-20250514",
                "content": [
                    {
                        "type": "tool_use",
                        "id": f"toolu_01{rng.getrandbits(100):025x}",
                        "name": "Bash",
                        "input": {"command": command, "description": _words(rng, 6)},
                    }
                ],
            }
            obj = _envelope(rng, session, "assistant", msg)
        elif pick < 0.997:
            out = _tool_output(rng) + ("\n" + secret if secret else "")
            tool_id = f"toolu_01{rng.getrandbits(100):025x}"
            msg = {
                "role": "user",
                "content": [{"tool_use_id": tool_id, "type": "tool_result", "content": out}],
            }
            obj = _envelope(
                rng,
                session,
                "user",
                msg,
                {"toolUseResult": {"stdout": out, "stderr": "", "interrupted": False}},
            )
        else:
            start = rng.randrange(0, len(png) // 2) // 4 * 4
            data = png[start : start + rng.randint(50_000, 400_000) // 4 * 4]
            source = {"type": "base64", "media_type": "image/png", "data": data}
            msg = {"role": "user", "content": [{"type": "image", "source": source}]}
            obj = _envelope(rng, session, "user", msg)
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        lines.append(line)
        size += len(line)
    return lines, planted


def buffers(lines: list[bytes], buffer_bytes: int) -> list[bytes]:
    """Group complete lines into buffers of at least ``buffer_bytes`` (the last may be smaller)."""
    out: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for line in lines:
        pending.append(line)
        size += len(line)
        if size >= buffer_bytes:
            out.append(b"".join(pending))
            pending, size = [], 0
    if pending:
        out.append(b"".join(pending))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size in MB (10^6 bytes)")
    parser.add_argument("--buffer-mib", type=float, default=8.0, help="redaction buffer size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported")
    args = parser.parse_args()

    t0 = time.perf_counter()
    lines, planted = build_lines(int(args.mb * 1e6))
    bufs = buffers(lines, int(args.buffer_mib * 1024 * 1024))
    total = sum(len(b) for b in bufs)
    built_s = time.perf_counter() - t0
    print(f"corpus: {total / 1e6:.1f} MB, {len(lines)} lines, {len(bufs)} buffers ({built_s:.1f}s to build)")

    redactor = Redactor()
    best = float("inf")
    outputs: list[bytes] = []
    counts: dict[str, int] = {}
    for _ in range(args.repeat):
        outputs, counts = [], {}
        t = time.perf_counter()
        for buf in bufs:
            result = redactor.redact(buf)
            outputs.append(result.data)
            for name, n in result.counts.items():
                counts[name] = counts.get(name, 0) + n
        best = min(best, time.perf_counter() - t)

    leaked = sum(1 for secret in planted if any(secret.encode() in out for out in outputs))
    same_lines = sum(out.count(b"\n") for out in outputs) == len(lines)
    mb_s = total / best / 1e6
    print(f"redact: {mb_s:.0f} MB/s (best of {args.repeat}: {best:.3f}s for {total / 1e6:.1f} MB)")
    print(f"planted secrets: {len(planted)}, leaked: {leaked}, line count kept: {same_lines}")
    print("counts:", json.dumps(dict(sorted(counts.items()))))


if __name__ == "__main__":
    main()
