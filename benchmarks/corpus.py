"""Realistic transcript lines for the benchmarks: Claude Code, Codex and pi shapes, with rare secrets.

Not a benchmark itself; ``bench_live.py`` and ``bench_backfill.py`` import it. Content is built from
pools made once per seed (prose, Python source, diffs, git logs, ANSI pytest output, ``ls``/``find``
listings, kubectl-style JSON, npm lockfile fragments, base64 image data), so generating hundreds of MB
is fast while every line still carries the kinds of text a redactor has to scan in real transcripts.
Secrets are planted rarely and returned to the caller, so a benchmark can check they did not leak.

Line shapes follow ``shared/docs/harnesses.md`` (and ``tests/sessions.py``): Claude Code records with
``parentUuid``/``sessionId``/``message``/``uuid``; Codex rollouts starting with ``session_meta``; pi
files starting with a ``session`` header.
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

WORDS = (
    "the of and to in is that it for on with as this was be by are from at or an have not but file "
    "function test error config value return import class module should would could update change fix "
    "add remove check run build install package version branch commit merge server client request "
    "response token user session cache index query result data path because which there their about "
    "after before when where while since until then also only let me look at the failing test and see "
    "what is going on here I think the issue is that we need to handle the case where"
).split()
IDENTIFIERS = (
    "reader writer cursor offset part_seq flush_interval bucket store session_id harness redactor "
    "backoff lease etag checkpoint frame chunk payload manifest digest handler settings client"
).split()
BASH_COMMANDS = (
    "git status",
    "git log --oneline -20",
    "git diff HEAD~1 -- src/",
    "ls -la",
    "npm install",
    "npm test -- --watch=false",
    "python -m pytest -q tests/",
    "rg -n 'def redact' --type py",
    "docker compose up -d && docker compose ps",
    "kubectl get pods -n default -o json",
    "find . -name '*.py' -not -path './.venv/*' | xargs wc -l",
    "cargo build --release 2>&1 | tail -40",
    "go test ./... -run TestMirror -count=1",
)
PYTEST_ANSI = (
    "\x1b[1m============================= test session starts ==============================\x1b[0m\n"
    "platform linux -- Python 3.11.7, pytest-8.2.0, pluggy-1.5.0\n"
    "rootdir: /home/dev/src/app\ncollected 42 items\n\n"
    "tests/test_frame.py \x1b[32m.........\x1b[0m\x1b[32m                                     [ 21%]\x1b[0m\n"
    "tests/test_layout.py \x1b[32m..........\x1b[0m\x1b[31mF\x1b[0m\x1b[32m"
    "                           [ 47%]\x1b[0m\n"
    "\x1b[31mFAILED\x1b[0m tests/test_layout.py::test_meta_window - AssertionError: assert 33 == 32\n"
    "\x1b[32m============================== \x1b[32m\x1b[1m41 passed\x1b[0m, "
    "\x1b[31m1 failed\x1b[0m in 0.42s\x1b[0m\n"
)
CWDS = tuple(
    f"/home/dev/src/{name}" for name in ("tracemirror", "webapp", "infra", "ml-pipeline", "cli-tools")
)

Secret = tuple[str, str]  # (kind, the exact secret text as it appears in the JSON line)


def _alnum(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choices(alphabet, k=n))


def make_secret(rng: random.Random) -> tuple[str, str, str]:
    """One fake credential: (kind, text to embed, the token that must not reach the bucket)."""
    alnum = string.ascii_letters + string.digits
    kind = rng.choice(("aws-key-id", "aws-secret", "anthropic", "openai", "github", "slack", "hf", "bearer"))
    if kind == "aws-key-id":
        token = "AKIA" + _alnum(rng, 16, string.ascii_uppercase + "234567")
        return kind, f"export AWS_ACCESS_KEY_ID={token}", token
    if kind == "aws-secret":
        token = _alnum(rng, 40, alnum + "/+")
        return kind, f"aws_secret_access_key = {token}", token
    if kind == "anthropic":
        token = "sk-ant-api03-" + _alnum(rng, 93, alnum + "-_") + "AA"
        return kind, f"ANTHROPIC_API_KEY={token}", token
    if kind == "openai":
        token = "sk-proj-" + _alnum(rng, 120, alnum + "-_")
        return kind, f"OPENAI_API_KEY={token}", token
    if kind == "github":
        token = "ghp_" + _alnum(rng, 36)
        return kind, f"git remote set-url origin https://{token}@github.com/o/r.git", token
    if kind == "slack":
        token = f"xoxb-{_alnum(rng, 12, string.digits)}-{_alnum(rng, 13, string.digits)}-{_alnum(rng, 24)}"
        return kind, f"SLACK_BOT_TOKEN={token}", token
    if kind == "hf":
        token = "hf_" + _alnum(rng, 34, string.ascii_letters)
        return kind, f"HF_TOKEN={token}", token
    token = _alnum(rng, 48, alnum + "._-")
    return kind, f"curl -H 'Authorization: Bearer {token}' https://api.example.com/v1/me", token


@dataclass
class Pools:
    """Text fragments built once per seed; lines are assembled from them."""

    prose: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    git_logs: list[str] = field(default_factory=list)
    listings: list[str] = field(default_factory=list)
    json_docs: list[str] = field(default_factory=list)
    lockfiles: list[str] = field(default_factory=list)
    image_b64: str = ""

    @classmethod
    def build(cls, rng: random.Random, *, image_bytes: int = 3_000_000) -> Pools:
        pools = cls()
        pools.prose = [_prose(rng, rng.randint(1, 12)) for _ in range(600)]
        pools.code = [_python_file(rng) for _ in range(120)]
        pools.diffs = [_diff(rng, pools.code) for _ in range(80)]
        pools.git_logs = [_git_log(rng, rng.randint(5, 60)) for _ in range(60)]
        pools.listings = [_listing(rng, rng.randint(10, 200)) for _ in range(60)]
        pools.json_docs = [_kube_json(rng) for _ in range(60)]
        pools.lockfiles = [_lockfile(rng, rng.randint(10, 300)) for _ in range(30)]
        pools.image_b64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(image_bytes)).decode()
        return pools

    def tool_output(self, rng: random.Random, *, max_chars: int | None = None) -> str:
        """A tool result: file contents, a diff, git log, test run, listing, JSON or a lockfile."""
        pick = rng.random()
        if pick < 0.30:
            text = rng.choice(self.code)
        elif pick < 0.42:
            text = rng.choice(self.diffs)
        elif pick < 0.52:
            text = rng.choice(self.git_logs)
        elif pick < 0.62:
            text = PYTEST_ANSI * rng.randint(1, 3)
        elif pick < 0.74:
            text = rng.choice(self.listings)
        elif pick < 0.84:
            text = rng.choice(self.json_docs)
        elif pick < 0.90:
            text = rng.choice(self.lockfiles)
        else:
            text = "\n".join(rng.choice(self.prose) for _ in range(rng.randint(1, 8)))
        if max_chars is not None and len(text) > max_chars:
            start = rng.randrange(0, len(text) - max_chars + 1)
            text = text[start : start + max_chars]
        return text

    def image(self, rng: random.Random, size: int) -> str:
        """A slice of base64 image data of about ``size`` characters (a multiple of 4)."""
        size = min(size, len(self.image_b64)) // 4 * 4
        start = rng.randrange(0, len(self.image_b64) - size + 1) // 4 * 4
        return self.image_b64[start : start + size]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def _prose(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        s = _words(rng, rng.randint(5, 24))
        out.append(s[0].upper() + s[1:] + rng.choice(".....?:"))
    return " ".join(out)


def _python_file(rng: random.Random) -> str:
    lines = ["from __future__ import annotations", "", "import json", "import os", ""]
    for _ in range(rng.randint(2, 25)):
        name = f"{rng.choice(IDENTIFIERS)}_{rng.choice(IDENTIFIERS)}"
        args = ", ".join(f"{a}: int" for a in rng.sample(IDENTIFIERS, rng.randint(0, 3)))
        lines += [
            "",
            f"def {name}({args}) -> dict[str, object]:",
            f'    """{_words(rng, rng.randint(4, 14)).capitalize()}."""',
        ]
        for _ in range(rng.randint(2, 12)):
            a, b = rng.sample(IDENTIFIERS, 2)
            lines.append(f"    {a} = {b}.get({json.dumps(rng.choice(WORDS))}, {rng.randint(0, 4096)})")
        lines.append(f"    return {{'{rng.choice(IDENTIFIERS)}': {rng.choice(IDENTIFIERS)}}}")
    return "\n".join(f"{i + 1:>5}\u2192{line}" for i, line in enumerate(lines)) + "\n"


def _diff(rng: random.Random, code: list[str]) -> str:
    body = rng.choice(code).splitlines()[: rng.randint(5, 40)]
    out = [
        "diff --git a/src/app/mirror.py b/src/app/mirror.py",
        f"index {rng.getrandbits(28):07x}..{rng.getrandbits(28):07x} 100644",
        "--- a/src/app/mirror.py",
        "+++ b/src/app/mirror.py",
        f"@@ -{rng.randint(1, 400)},{len(body)} +{rng.randint(1, 400)},{len(body)} @@",
    ]
    out += [rng.choice(" +-") + line.split("\u2192", 1)[-1] for line in body]
    return "\n".join(out) + "\n"


def _git_log(rng: random.Random, n: int) -> str:
    return "\n".join(f"{rng.getrandbits(160):040x} {_words(rng, rng.randint(3, 9))}" for _ in range(n))


def _listing(rng: random.Random, n: int) -> str:
    rows = []
    for _ in range(n):
        name = f"{rng.choice(IDENTIFIERS)}{rng.choice(['.py', '.ts', '.json', '.md', '/', '.lock'])}"
        rows.append(
            f"-rw-r--r--  1 dev dev {rng.randint(0, 99999):>6} Nov 23 10:{rng.randint(0, 59):02d} {name}"
        )
    return "\n".join(rows)


def _kube_json(rng: random.Random) -> str:
    items = [
        {
            "metadata": {
                "name": f"pod-{rng.getrandbits(32):08x}",
                "uid": str(uuid.UUID(int=rng.getrandbits(128))),
            },
            "status": {
                "phase": rng.choice(["Running", "Pending", "Succeeded"]),
                "podIP": f"10.0.0.{rng.randint(2, 250)}",
            },
            "note": "a \\u003c b \\u0026\\u0026 c",
        }
        for _ in range(rng.randint(2, 25))
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2).replace("\\\\u", "\\u")


def _lockfile(rng: random.Random, n: int) -> str:
    packages = {}
    for i in range(n):
        name = f"node_modules/{rng.choice(IDENTIFIERS)}-{i}"
        packages[name] = {
            "version": f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
            "resolved": f"https://registry.npmjs.org/{name}/-/{name}-1.0.0.tgz",
            "integrity": "sha512-" + base64.b64encode(rng.randbytes(64)).decode(),
        }
    return json.dumps({"name": "app", "lockfileVersion": 3, "packages": packages}, indent=2)


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class SessionWriter:
    """Lines of one session in one harness's shape. ``line()`` returns the next line (with newline).

    ``size_hint`` steers how big a line's payload is (characters of tool output or text); ``None``
    draws from a realistic mix (mostly small lines, some tool results of tens of KB, rare images).
    Each call may plant a secret with probability ``secret_rate``; planted ones collect in ``secrets``.
    """

    def __init__(
        self,
        harness: str,
        session_id: str,
        rng: random.Random,
        pools: Pools,
        *,
        cwd: str | None = None,
        start: datetime | None = None,
        secret_rate: float = 0.0,
    ) -> None:
        self.harness = harness
        self.session_id = session_id
        self.rng = rng
        self.pools = pools
        self.cwd = cwd or rng.choice(CWDS)
        self.clock = start or datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
        self.secret_rate = secret_rate
        self.secrets: list[Secret] = []
        self.index = 0
        self.last_uuid: str | None = None
        self._builders: dict[str, Callable[[int | None, str], bytes]] = {
            "claude-code": self._claude,
            "codex": self._codex,
            "pi": self._pi,
        }

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _ts(self) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(50, 20000))
        return self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _maybe_secret(self) -> str:
        if self.secret_rate and self.rng.random() < self.secret_rate:
            kind, text, token = make_secret(self.rng)
            self.secrets.append((kind, token))
            return text
        return ""

    def line(self, size_hint: int | None = None) -> bytes:
        """The next line: the harness's header first (where it has one), then records."""
        out = self._builders[self.harness](size_hint, self._maybe_secret()) if self.index else self._header()
        self.index += 1
        return out

    # ---------- payloads ----------

    def _payload_size(self, size_hint: int | None) -> int:
        if size_hint is not None:
            return size_hint
        r = self.rng.random()
        if r < 0.55:
            return self.rng.randint(60, 1200)
        if r < 0.85:
            return self.rng.randint(1200, 8000)
        if r < 0.985:
            return self.rng.randint(8000, 60000)
        return self.rng.randint(60000, 250000)

    def _text(self, size: int) -> str:
        parts, n = [], 0
        while n < size:
            p = self.rng.choice(self.pools.prose)
            parts.append(p)
            n += len(p) + 1
        return " ".join(parts)[:size]

    def long_line(self, size: int) -> bytes:
        """One tool result of about ``size`` bytes (a huge log, or a pasted image): a multi-MB line."""
        rng = self.rng
        if self.harness == "claude-code" and rng.random() < 0.5:
            self.index += 1
            src = {"type": "base64", "media_type": "image/png", "data": self.pools.image(rng, size)}
            content = [{"type": "image", "source": src}]
            return _dumps(self._claude_envelope("user", {"role": "user", "content": content}))
        parts, n = [], 0
        while n < size:
            piece = self.pools.tool_output(rng)
            parts.append(piece)
            n += len(piece) + 1
        out = "\n".join(parts)[:size]
        self.index += 1
        if self.harness == "claude-code":
            message = {
                "role": "user",
                "content": [
                    {
                        "tool_use_id": f"toolu_01{rng.getrandbits(100):025x}",
                        "type": "tool_result",
                        "content": out,
                    }
                ],
            }
            return _dumps(self._claude_envelope("user", message))
        if self.harness == "codex":
            payload = {"type": "function_call_output", "call_id": f"call_{_alnum(rng, 24)}", "output": out}
            return _dumps({"timestamp": self._ts(), "type": "response_item", "payload": payload})
        message = {
            "role": "toolResult",
            "toolCallId": f"toolu_{_alnum(rng, 20)}",
            "toolName": "bash",
            "content": [{"type": "text", "text": out}],
            "isError": False,
        }
        return _dumps(
            {
                "type": "message",
                "id": f"{rng.getrandbits(32):08x}",
                "parentId": self.last_uuid,
                "timestamp": self._ts(),
                "message": message,
            }
        )

    # ---------- Claude Code ----------

    def _claude_envelope(
        self, kind: str, message: dict[str, object], uid: str | None = None
    ) -> dict[str, object]:
        uid = uid or self._uuid()
        doc: dict[str, object] = {
            "parentUuid": self.last_uuid,
            "isSidechain": False,
            "userType": "external",
            "cwd": self.cwd,
            "sessionId": self.session_id,
            "version": "2.1.0",
            "gitBranch": "main",
            "type": kind,
            "message": message,
            "uuid": uid,
            "timestamp": self._ts(),
        }
        self.last_uuid = uid
        return doc

    def claude_line(self, size: int, secret: str = "", *, uid: str | None = None) -> bytes:
        """One Claude Code record whose payload is about ``size`` characters (uid: its ``uuid``)."""
        rng = self.rng
        pick = rng.random()
        if size > 60000 and pick < 0.3:
            src = {"type": "base64", "media_type": "image/png", "data": self.pools.image(rng, size)}
            doc = self._claude_envelope(
                "user", {"role": "user", "content": [{"type": "image", "source": src}]}, uid
            )
        elif pick < 0.15:
            text = self._text(size) + (" " + secret if secret else "")
            doc = self._claude_envelope("user", {"role": "user", "content": text}, uid)
        elif pick < 0.40:
            text = self._text(size) + ("\n" + secret if secret else "")
            message = {
                "id": f"msg_01{rng.getrandbits(100):025x}",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-20250514",
                "content": [{"type": "text", "text": text}],
                "stop_reason": None,
                "usage": {"input_tokens": rng.randint(1, 9000), "output_tokens": rng.randint(1, 2000)},
            }
            doc = self._claude_envelope("assistant", message, uid)
        elif pick < 0.60:
            command = rng.choice(BASH_COMMANDS) + (" && " + secret if secret else "")
            message = {
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
            doc = self._claude_envelope("assistant", message, uid)
        else:
            out = self.pools.tool_output(rng, max_chars=size) + ("\n" + secret if secret else "")
            tool_id = f"toolu_01{rng.getrandbits(100):025x}"
            message = {
                "role": "user",
                "content": [{"tool_use_id": tool_id, "type": "tool_result", "content": out}],
            }
            doc = self._claude_envelope("user", message, uid)
        return _dumps(doc)

    def _claude(self, size_hint: int | None, secret: str) -> bytes:
        return self.claude_line(self._payload_size(size_hint), secret)

    # ---------- Codex ----------

    def _codex(self, size_hint: int | None, secret: str) -> bytes:
        rng = self.rng
        size = self._payload_size(size_hint)
        pick = rng.random()
        if pick < 0.25:
            text = self._text(size) + ("\n" + secret if secret else "")
            payload: dict[str, object] = {
                "type": "message",
                "role": rng.choice(["user", "assistant"]),
                "content": [{"type": "output_text", "text": text}],
            }
        elif pick < 0.5:
            command = ["bash", "-lc", rng.choice(BASH_COMMANDS) + (" && " + secret if secret else "")]
            payload = {
                "type": "function_call",
                "name": "shell",
                "arguments": json.dumps({"command": command, "workdir": self.cwd}),
                "call_id": f"call_{_alnum(rng, 24)}",
            }
        elif pick < 0.9 or secret:
            out = self.pools.tool_output(rng, max_chars=size) + ("\n" + secret if secret else "")
            payload = {
                "type": "function_call_output",
                "call_id": f"call_{_alnum(rng, 24)}",
                "output": json.dumps({"output": out, "metadata": {"exit_code": 0, "duration_seconds": 0.4}}),
            }
        else:
            return _dumps(
                {
                    "timestamp": self._ts(),
                    "type": "event_msg",
                    "payload": {"type": "token_count", "info": {"total_token_usage": {"input_tokens": size}}},
                }
            )
        return _dumps({"timestamp": self._ts(), "type": "response_item", "payload": payload})

    # ---------- pi ----------

    def _pi(self, size_hint: int | None, secret: str) -> bytes:
        rng = self.rng
        size = self._payload_size(size_hint)
        entry_id = f"{rng.getrandbits(32):08x}"
        pick = rng.random()
        if pick < 0.3:
            message: dict[str, object] = {
                "role": rng.choice(["user", "assistant"]),
                "content": [{"type": "text", "text": self._text(size) + (" " + secret if secret else "")}],
            }
        elif pick < 0.5:
            message = {
                "role": "assistant",
                "content": [
                    {
                        "type": "toolCall",
                        "id": f"toolu_{_alnum(rng, 20)}",
                        "name": "bash",
                        "arguments": {
                            "command": rng.choice(BASH_COMMANDS) + (" && " + secret if secret else "")
                        },
                    }
                ],
            }
        else:
            out = self.pools.tool_output(rng, max_chars=size) + ("\n" + secret if secret else "")
            message = {
                "role": "toolResult",
                "toolCallId": f"toolu_{_alnum(rng, 20)}",
                "toolName": "bash",
                "content": [{"type": "text", "text": out}],
                "isError": False,
            }
        doc = {
            "type": "message",
            "id": entry_id,
            "parentId": self.last_uuid,
            "timestamp": self._ts(),
            "message": message,
        }
        self.last_uuid = entry_id
        return _dumps(doc)

    # ---------- headers ----------

    def _header(self) -> bytes:
        if self.harness == "claude-code":
            message = {"role": "user", "content": self._text(self.rng.randint(40, 400))}
            return _dumps(self._claude_envelope("user", message))
        if self.harness == "codex":
            payload = {
                "id": self.session_id,
                "timestamp": self._ts(),
                "cwd": self.cwd,
                "originator": "codex_cli_rs",
                "cli_version": "0.80.0",
                "instructions": None,
                "model_provider": "openai",
                "git": {"commit_hash": f"{self.rng.getrandbits(160):040x}", "branch": "main"},
            }
            return _dumps({"timestamp": self._ts(), "type": "session_meta", "payload": payload})
        return _dumps(
            {"type": "session", "version": 3, "id": self.session_id, "timestamp": self._ts(), "cwd": self.cwd}
        )
