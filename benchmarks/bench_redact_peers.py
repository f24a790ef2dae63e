"""Our redactor beside tracecraft's on the same lines, one core, in one run (standalone).

Two corpora from bench_redact.py's generator (realistic Claude-Code-like JSONL, fixed seed): as
generated ("clean": a few planted secrets), and with 1% of lines given one secret each from a
spread of families (cloud, code hosts, AI providers, payments, database URLs, JWTs, a private key
read with Claude Code's numbered lines). Both redactors get the same 8 MiB buffers of complete
lines; the figure is the whole redaction step. Leaks count planted secrets still present.

tracecraft is the peer named in the issue (pip package ``tracecraft-ai``, not a dependency of
ours): install it into the venv first, ``.venv/bin/pip install --no-deps tracecraft-ai``.

    .venv/bin/python benchmarks/bench_redact_peers.py [--mb 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_redact import buffers, build_lines

from tracemirrord.redact import Redactor

PEM_BODY = [
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
    "LxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo",
]


def _pem_read_by_claude() -> str:
    lines = ["-----BEGIN RSA PRIVATE KEY-----", *PEM_BODY, "-----END RSA PRIVATE KEY-----"]
    return "\n".join(f"{n:>6}\u2192{text}" for n, text in enumerate(lines, 1))


def _secrets(rng: random.Random) -> list[tuple[str, list[str]]]:
    """(text to plant, the substrings that must not survive) per family; made up, well formed."""

    def token(alphabet: str, n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    aws = "AKIA" + token(upper, 16)
    gh = "ghp_" + token(alnum, 36)
    openai = "sk-proj-" + token(alnum, 48)
    anthropic = "sk-ant-api03-" + token(alnum, 93) + "AA"
    stripe = "sk_live_" + token(alnum, 24)
    slack = "xoxb-" + token("0123456789", 12) + "-" + token("0123456789", 12) + "-" + token(alnum, 24)
    password = token(alnum, 16)
    jwt = "eyJhbGciOiJIUzI1NiJ9." + token(alnum, 40) + "." + token(alnum, 43)
    return [
        (f"export AWS_ACCESS_KEY_ID={aws}", [aws]),
        (f"git remote set-url origin https://{gh}@github.com/acme/app", [gh]),
        (f"OPENAI_API_KEY={openai}", [openai]),
        (f"ANTHROPIC_API_KEY={anthropic}", [anthropic]),
        (f"stripe.api_key = '{stripe}'", [stripe]),
        (f"SLACK_BOT_TOKEN={slack}", [slack]),
        (f"DATABASE_URL=postgres://app:{password}@db.internal:5432/app", [password]),
        (f"Authorization: Bearer {jwt}", [jwt]),
        (_pem_read_by_claude(), PEM_BODY),
    ]


def with_secrets(lines: list[bytes], share: float, seed: int = 7) -> tuple[list[bytes], list[str]]:
    """``lines`` with one secret planted into ``share`` of them (inside a tool result's text)."""
    rng = random.Random(seed)
    out, planted = [], []
    for line in lines:
        if rng.random() < share:
            text, must_go = rng.choice(_secrets(rng))
            line = json.dumps({"type": "tool_result", "content": text}).encode() + b"\n"
            planted.extend(must_go)
        out.append(line)
    return out, planted


def time_redactor(
    name: str, redact: Callable[[bytes], bytes], bufs: list[bytes], planted: list[str], repeat: int
) -> None:
    total = sum(len(b) for b in bufs)
    best, outputs = float("inf"), []
    for _ in range(repeat):
        t = time.perf_counter()
        outputs = [redact(buf) for buf in bufs]
        best = min(best, time.perf_counter() - t)
    leaked = sum(1 for secret in planted if any(secret.encode() in out for out in outputs))
    print(f"  {name:<22} {total / best / 1e6:7.0f} MB/s   leaked {leaked} of {len(planted)} planted")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--buffer-mib", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    try:
        from tracecraft.redact import redact as tracecraft_redact
    except ImportError:
        sys.exit("install the peer first: .venv/bin/pip install --no-deps tracecraft-ai")
    ours = Redactor()
    clean, clean_planted = build_lines(int(args.mb * 1e6))
    dirty, dirty_planted = with_secrets(clean, 0.01)
    for label, lines, planted in (("clean", clean, clean_planted), ("1% secrets", dirty, dirty_planted)):
        bufs = buffers(lines, int(args.buffer_mib * 2**20))
        print(f"{label}: {sum(map(len, bufs)) / 1e6:.1f} MB, {len(lines)} lines")
        time_redactor(
            f"tracemirror ({len(ours.rule_names)} rules)",
            lambda b: ours.redact(b).data,
            bufs,
            planted,
            args.repeat,
        )
        time_redactor("tracecraft (8 rules)", lambda b: tracecraft_redact(b)[0], bufs, planted, args.repeat)


if __name__ == "__main__":
    main()
