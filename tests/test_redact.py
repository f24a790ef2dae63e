"""Tests for tracemirrord.redact: each default rule on its own, the JSONL traps, the invariants.

Secrets are assembled at run time from a prefix and a seeded random body, so no literal token
sits in the source (secret scanners and push protection stay quiet) and every run is the same.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracemirrord import redact as redact_module
from tracemirrord.redact import ERROR_RULE, Redaction, Redactor, native_available
from tracemirrord.rules import DEFAULT_RULES, Rule

REDACTOR = Redactor()
ALNUM = string.ascii_letters + string.digits
_RNG = random.Random(1234)


def body(n: int, alphabet: str = ALNUM) -> str:
    """A deterministic random token body."""
    return "".join(_RNG.choice(alphabet) for _ in range(n))


def jsonl(obj: Any) -> bytes:
    """One JSONL line, compact like the agents write it."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def envelope(text: str) -> dict[str, Any]:
    """A Claude-Code-like tool_result line holding ``text``."""
    return {
        "parentUuid": "4f0c2a8e-9f61-4c4e-8a43-2f5d1d7f0b21",
        "type": "user",
        "message": {
            "role": "user",
            "content": [{"tool_use_id": "toolu_01ABC", "type": "tool_result", "content": text}],
        },
        "toolUseResult": {"stdout": text, "stderr": "", "interrupted": False},
        "usage": {"input_tokens": 12, "cache": None, "ratio": 0.5, "ok": True},
    }


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys, nesting, types, non-string values; strings erased."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, str):
        return str
    return (type(value), value)


def strings(value: Any) -> list[str]:
    """Every string in a JSON value, nested JSON text decoded too."""
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in [key, *strings(item)]]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            return [value]
        return [value, *strings(inner)] if isinstance(inner, dict | list) else [value]
    return []


def _pem() -> tuple[str, str]:
    lines = [body(64, ALNUM + "+/") for _ in range(5)] + [body(20, ALNUM + "+/") + "=="]
    block = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----"
    return block, lines[2]


_PEM_BLOCK, _PEM_LINE = _pem()
# The marker lines a redacted block keeps (the body between them is replaced).
_RSA_BEGIN = "-----BEGIN RSA PRIVATE KEY-----"
_RSA_END = "-----END RSA PRIVATE KEY-----"
_JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + body(60) + "." + body(43, ALNUM + "-_")
_AWS_ID = "AKIA" + "IOSFODNN7EXAMPLE"
_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
_HOOK_PATH = "T0" + body(8, string.ascii_uppercase) + "/B0" + body(8, string.ascii_uppercase) + "/" + body(24)

# (rule, text as it appears in a transcript, the secret that must disappear)
SAMPLES: list[tuple[str, str, str]] = [
    ("aws-access-key-id", f"export AWS_ACCESS_KEY_ID={_AWS_ID}\n", _AWS_ID),
    (
        "aws-access-key-id",
        "Credential=ASIA" + "Y34FZKBOKMUTVV7A/20250101/us-east-1/s3",
        "ASIA" + "Y34FZKBOKMUTVV7A",
    ),
    ("aws-secret-access-key", f"[default]\naws_secret_access_key = {_AWS_SECRET}\n", _AWS_SECRET),
    ("aws-secret-access-key", json.dumps({"Credentials": {"SecretAccessKey": _AWS_SECRET}}), _AWS_SECRET),
    ("anthropic-api-key", "ANTHROPIC_API_KEY=" + (k := "sk-ant-api03-" + body(93, ALNUM + "-_") + "AA"), k),
    ("anthropic-admin-key", "key: " + (k := "sk-ant-admin01-" + body(93, ALNUM + "-_") + "AA"), k),
    ("openai-api-key", "OPENAI_API_KEY=" + (k := "sk-proj-" + body(156, ALNUM + "-_")), k),
    ("openai-api-key", "openai.api_key = '" + (k := "sk-" + body(20) + "T3BlbkFJ" + body(20)) + "'", k),
    ("openai-api-key", "service key " + (k := "sk-svcacct-" + body(100, ALNUM + "-_")), k),
    ("openai-admin-key", "admin " + (k := "sk-admin-" + body(60, ALNUM + "-_")), k),
    ("github-token", "GH_TOKEN=" + (k := "ghp_" + body(36)), k),
    ("github-token", "git clone https://x-access-token:" + (k := "ghs_" + body(36)) + "@github.com/o/r", k),
    ("github-pat", "token " + (k := "github_pat_11A" + body(21) + "_" + body(59)), k),
    ("gitlab-pat", "PRIVATE-TOKEN: " + (k := "glpat-" + body(20, ALNUM + "-_")), k),
    ("slack-token", "SLACK_BOT_TOKEN=" + (k := "xoxb-" + body(12, string.digits) + "-" + body(24)), k),
    (
        "slack-token",
        "app token " + (k := "xapp-1-A0" + body(9) + "-" + body(13, string.digits) + "-" + body(64)),
        k,
    ),
    ("slack-webhook", "curl -X POST https://hooks.slack.com/services/" + _HOOK_PATH, _HOOK_PATH),
    ("huggingface-token", "HF_TOKEN=" + (k := "hf_" + body(34, string.ascii_letters)), k),
    ("huggingface-org-token", "org " + (k := "api_org_" + body(34, string.ascii_letters)), k),
    ("google-api-key", "maps/api/js?key=" + (k := "AIza" + body(35, ALNUM + "-_")) + "&callback=init", k),
    ("stripe-api-key", "stripe.api_key = " + (k := "sk_live_" + body(24)), k),
    ("stripe-api-key", "restricted " + (k := "rk_live_" + body(24)), k),
    ("npm-token", "//registry.npmjs.org/:_authToken=" + (k := "npm_" + body(36)), k),
    ("bearer-token", f'curl -H "Authorization: Bearer {_JWT}" https://api.example.com/v1', _JWT),
    ("bearer-token", json.dumps({"headers": {"authorization": "bearer " + (k := body(40))}}), k),
    ("private-key", "cat ~/.ssh/id_rsa\n" + _PEM_BLOCK + "\n", _PEM_LINE),
]


def redact_line(line: bytes) -> Redaction:
    """Redact one line with the default rules and check the line count is kept."""
    result = REDACTOR.redact(line)
    assert result.data.count(b"\n") == line.count(b"\n")
    return result


def assert_same_json(before: bytes, after: bytes) -> Any:
    """Assert ``after`` parses with the structure of ``before``; return it parsed."""
    parsed = json.loads(after)
    assert shape(parsed) == shape(json.loads(before))
    return parsed


@pytest.mark.parametrize(
    ("rule", "text", "secret"), SAMPLES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SAMPLES)]
)
def test_rule_redacts_its_token_inside_a_json_line(rule: str, text: str, secret: str) -> None:
    """Each rule replaces its secret in both string fields of a tool_result line and counts it."""
    line = jsonl(envelope(text))
    result = redact_line(line)
    assert result.counts == {rule: 2}
    assert secret.encode() not in result.data
    assert result.data.count(f"[REDACTED:{rule}]".encode()) == 2
    parsed = assert_same_json(line, result.data)
    assert not any(secret in s for s in strings(parsed))


def test_every_sample_names_a_default_rule() -> None:
    """The engine's samples are default rules (every rule's own cases: tests/test_rules_catalog.py)."""
    assert {sample[0] for sample in SAMPLES} <= {rule.name for rule in DEFAULT_RULES}


def test_secret_in_plain_text_line() -> None:
    """A line that is not JSON still gets the byte rules."""
    line = b"plain log: token=" + ("ghp_" + body(36)).encode() + b" done\n"
    result = redact_line(line)
    assert result.data == b"plain log: token=[REDACTED:github-token] done\n"
    assert result.counts == {"github-token": 1}


def test_secret_in_invalid_utf8_with_nul_bytes() -> None:
    """Invalid UTF-8 and NUL bytes around a secret do not stop the byte rules."""
    line = b"\xff\xfe\x00\x80" + _AWS_ID.encode() + b"\x00\xc3\n"
    result = redact_line(line)
    assert result.data == b"\xff\xfe\x00\x80[REDACTED:aws-access-key-id]\x00\xc3\n"


NEGATIVES = [
    "commit 3f786850e387550fdab836ed7e6dc881de23001b\nAuthor: Dev <dev@example.com>",
    "\n".join(f"{random.Random(i).getrandbits(160):040x} fix the thing" for i in range(50)),
    f"session {uuid.UUID(int=random.Random(2).getrandbits(128))} started",
    "sha256:" + hashlib.sha256(b"layer").hexdigest(),
    '"integrity": "sha512-' + base64.b64encode(hashlib.sha512(b"pkg").digest()).decode() + '"',
    "Use the task-runner, then sk-learn; ask-user if the disk-usage grows; see sk-docs.",
    "from huggingface_hub import hf_hub_download\nhf_token = os.environ['HF_TOKEN']",
    "The API expects a Bearer token in the Authorization header: Bearer <token>",
    'curl -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user',
    "Bearer token-based-authentication is described below",
    'if line.startswith("-----BEGIN RSA PRIVATE KEY-----"):\n    return parse(line)',
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
    "export AWS_ACCESS_KEY_ID=AKIA...  # set yours; sk-ant-api03-... goes in ANTHROPIC_API_KEY",
    '{"items": [{"note": "a \\u003c b \\u0026\\u0026 c"}]}',
    "REGION = ASIAPACIFICREGIONALOFFICE2024",
]


@pytest.mark.parametrize("text", NEGATIVES, ids=range(len(NEGATIVES)))
def test_no_false_positive(text: str) -> None:
    """SHAs, UUIDs, digests, integrity hashes, prose look-alikes and placeholders pass untouched."""
    line = jsonl(envelope(text))
    result = redact_line(line)
    assert result.counts == {}
    assert result.data is line


def test_base64_image_passes_untouched() -> None:
    """A large base64 PNG block (the alphabet of AKIA and AIza keys) is not redacted."""
    data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + random.Random(5).randbytes(3_000_000)).decode()
    source = {"type": "base64", "media_type": "image/png", "data": data}
    line = jsonl({"type": "user", "message": {"content": [{"type": "image", "source": source}]}})
    result = redact_line(line)
    assert result.counts == {}
    assert result.data is line


# --- The JSONL traps -------------------------------------------------------------------------------


def test_secret_right_after_newline_escape() -> None:
    """A secret right after a \\n escape is caught (no \\b anchoring at its start)."""
    line = b'{"text":"keys:\\n' + _AWS_ID.encode() + b'\\n"}\n'
    result = redact_line(line)
    assert result.data == b'{"text":"keys:\\n[REDACTED:aws-access-key-id]\\n"}\n'


def test_secret_right_after_ansi_color_escape() -> None:
    """A secret right after an ANSI color code (\\u001b[32m) is caught."""
    line = jsonl({"text": "\x1b[32m" + _AWS_ID + "\x1b[0m"})
    result = redact_line(line)
    assert result.counts == {"aws-access-key-id": 1}
    assert json.loads(result.data) == {"text": "\x1b[32m[REDACTED:aws-access-key-id]\x1b[0m"}


def test_secret_right_after_a_unicode_escape() -> None:
    """A secret right after a complete \\u001b escape is caught; the escape stays whole."""
    line = b'{"text":"\\u001b' + _AWS_ID.encode() + b'\\u001b"}\n'
    result = redact_line(line)
    assert result.data == b'{"text":"\\u001b[REDACTED:aws-access-key-id]\\u001b"}\n'


def test_escaped_dashes_inside_a_secret_are_decoded() -> None:
    """sk\\u002dant\\u002d... (escaped dashes) is scanned in decoded form and replaced whole."""
    key = "sk-ant-api03-" + body(93, ALNUM + "_") + "AA"
    escaped = key.replace("-", "\\u002d")
    line = b'{"a":1,"text":"ANTHROPIC_API_KEY=' + escaped.encode() + b' ok"}\n'
    result = redact_line(line)
    assert result.counts == {"anthropic-api-key": 1}
    assert json.loads(result.data) == {"a": 1, "text": "ANTHROPIC_API_KEY=[REDACTED:anthropic-api-key] ok"}


def test_escaped_slashes_are_decoded() -> None:
    """A webhook and an AWS secret written with \\/ escapes (PHP, some loggers) are caught."""
    text = f"https://hooks.slack.com/services/{_HOOK_PATH} aws_secret_access_key={_AWS_SECRET}"
    line = json.dumps({"text": text}).replace("/", "\\/").encode() + b"\n"
    result = redact_line(line)
    assert result.counts == {"slack-webhook": 1, "aws-secret-access-key": 1}
    value = json.loads(result.data)["text"]
    assert _HOOK_PATH not in value and _AWS_SECRET not in value
    assert value.endswith("aws_secret_access_key=[REDACTED:aws-secret-access-key]")


def test_escaped_first_character_of_a_secret() -> None:
    """An escape that hides the keyword itself (\\u0041KIA...) is decoded and replaced whole."""
    line = b'{"text":"id \\u0041' + _AWS_ID[1:].encode() + b'!"}\n'
    result = redact_line(line)
    assert result.data == b'{"text":"id [REDACTED:aws-access-key-id]!"}\n'


def test_nested_json_string() -> None:
    """A token in JSON inside a JSON string is replaced and the inner JSON still parses."""
    token = "ghp_" + body(36)
    line = jsonl({"content": json.dumps({"token": token, "n": 1})})
    result = redact_line(line)
    assert result.counts == {"github-token": 1}
    inner = json.loads(assert_same_json(line, result.data)["content"])
    assert inner == {"token": "[REDACTED:github-token]", "n": 1}


def test_nested_json_twice() -> None:
    """A token two JSON-string levels deep is replaced and both levels still parse."""
    token = "xoxb-" + body(12, string.digits) + "-" + body(24)
    line = jsonl({"content": json.dumps({"stdout": json.dumps({"auth": {"token": token}})})})
    result = redact_line(line)
    assert result.counts == {"slack-token": 1}
    level1 = json.loads(assert_same_json(line, result.data)["content"])
    assert json.loads(level1["stdout"]) == {"auth": {"token": "[REDACTED:slack-token]"}}


def test_nested_json_with_escaped_secret_inside() -> None:
    """An escape inside a secret one level down (\\\\u002d in the raw line) is decoded too."""
    key = "sk-proj-" + body(80, ALNUM + "_")
    inner = '{"key": "' + key.replace("-", "\\u002d") + '"}'
    line = jsonl({"content": inner})
    result = redact_line(line)
    assert result.counts == {"openai-api-key": 1}
    assert json.loads(json.loads(result.data)["content"]) == {"key": "[REDACTED:openai-api-key]"}


def test_replacement_stops_at_escaped_quote_and_backslash() -> None:
    """Token classes stop at \\" and \\\\, so the escapes around a secret survive intact."""
    token = "npm_" + body(36)
    text = f'say "{token}" and C:\\{token}\\x'
    line = jsonl({"t": text})
    result = redact_line(line)
    assert result.counts == {"npm-token": 2}
    assert json.loads(result.data) == {"t": 'say "[REDACTED:npm-token]" and C:\\[REDACTED:npm-token]\\x'}


def test_match_starting_inside_an_escape_is_left_alone() -> None:
    """A keyword that begins inside an escape (the "npm_" of "\\npm_...") is no secret and stays."""
    line = b'{"t":"a\\npm_' + body(36).encode() + b'"}\n'
    result = redact_line(line)
    assert result.counts == {}
    assert result.data is line


def test_private_key_with_escaped_newlines() -> None:
    """A PEM block inside a JSON string (\\n escapes): its body is replaced, the text around it kept."""
    line = jsonl({"content": "key:\n" + _PEM_BLOCK + "\nused for deploys"})
    result = redact_line(line)
    assert result.counts == {"private-key": 1}
    assert json.loads(result.data) == {
        "content": f"key:\n{_RSA_BEGIN}\n[REDACTED:private-key]\n{_RSA_END}\nused for deploys"
    }


def test_private_key_nested_in_json_string() -> None:
    """A PEM block one JSON level down (\\\\n escapes) is replaced; the inner JSON still parses."""
    line = jsonl({"content": json.dumps({"private_key": _PEM_BLOCK, "type": "service_account"})})
    result = redact_line(line)
    assert result.counts == {"private-key": 1}
    inner = json.loads(json.loads(result.data)["content"])
    assert inner == {
        "private_key": f"{_RSA_BEGIN}\n[REDACTED:private-key]\n{_RSA_END}",
        "type": "service_account",
    }


def test_private_key_cut_before_its_end_line() -> None:
    """A PEM block cut short (head -n 4 id_rsa) is redacted through its last base64 line."""
    cut = "\n".join(_PEM_BLOCK.split("\n")[:4])
    line = jsonl({"content": cut + "\n\nthat is all"})
    result = redact_line(line)
    assert result.counts == {"private-key": 1}
    assert json.loads(result.data) == {"content": f"{_RSA_BEGIN}\n[REDACTED:private-key]\nthat is all"}


def test_private_key_with_real_newlines_in_plain_text() -> None:
    """A PEM block over several plain-text lines: each body line is replaced, the count is one block."""
    buffer = b'{"before":1}\n' + _PEM_BLOCK.encode() + b'\n{"after":2}\n'
    result = redact_line(buffer)
    out = result.data.split(b"\n")
    assert out[:2] == [b'{"before":1}', _RSA_BEGIN.encode()]
    assert out[-3:] == [_RSA_END.encode(), b'{"after":2}', b""]
    assert out[2:-3] == [b"[REDACTED:private-key]"] * 6
    assert result.counts == {"private-key": 1}


@pytest.mark.parametrize(
    ("header", "extra_lines"),
    [
        ("OPENSSH PRIVATE KEY", []),
        ("EC PRIVATE KEY", []),
        ("ENCRYPTED PRIVATE KEY", []),
        (
            "RSA PRIVATE KEY",
            ["Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-128-CBC,9F8E7D6C5B4A39281706F5E4D3C2B1A0", ""],
        ),
        ("PGP PRIVATE KEY BLOCK", ["Version: GnuPG v2", ""]),
    ],
)
def test_private_key_shapes(header: str, extra_lines: list[str]) -> None:
    """OpenSSH, EC, PKCS#8, encrypted PEM (with headers) and PGP blocks are replaced whole."""
    lines = [*extra_lines, *(body(64, ALNUM + "+/") for _ in range(4)), "Ab3="]
    block = f"-----BEGIN {header}-----\n" + "\n".join(lines) + f"\n-----END {header}-----"
    for newline in ("\n", "\r\n"):
        text = "before\n" + block.replace("\n", newline) + "\nafter"
        result = redact_line(jsonl({"t": text}))
        kept = f"-----BEGIN {header}-----{newline}[REDACTED:private-key]{newline}-----END {header}-----"
        assert json.loads(result.data) == {"t": f"before\n{kept}\nafter"}


def test_private_key_flattened_on_one_line() -> None:
    """A PEM block flattened with spaces (an env var) is replaced whole."""
    flat = _PEM_BLOCK.replace("\n", " ")
    result = redact_line(jsonl({"env": "KEY=" + flat}))
    assert json.loads(result.data) == {"env": f"KEY={_RSA_BEGIN}[REDACTED:private-key]{_RSA_END}"}


def test_bearer_after_an_escaped_tab() -> None:
    """Bearer followed by a tab (a \\t escape in the raw line) still has its token replaced."""
    result = redact_line(jsonl({"h": "Authorization: Bearer\t" + _JWT}))
    assert json.loads(result.data) == {"h": "Authorization: Bearer\t[REDACTED:bearer-token]"}


def test_overlapping_rules_count_once_under_the_specific_rule() -> None:
    """A GitHub token used as a Bearer token is one finding, named by the more specific rule."""
    token = "ghp_" + body(36)
    result = redact_line(jsonl({"h": f"Authorization: Bearer {token}"}))
    assert result.counts == {"github-token": 1}
    assert json.loads(result.data) == {"h": "Authorization: Bearer [REDACTED:github-token]"}


# --- Invariants ------------------------------------------------------------------------------------


def test_lines_without_findings_stay_byte_identical() -> None:
    """Only the line holding a secret changes; its neighbours are the very same bytes."""
    lines = [
        b'{"a": "b",   "c": [1, 2.50, 1e3]}\n',
        jsonl(envelope("x ghp_" + body(36))),
        b'{"weird":"\\u00e9\\ud83d\\ude00"}\n',
        b"not json at all\n",
    ]
    result = REDACTOR.redact(b"".join(lines))
    out = result.data.splitlines(keepends=True)
    assert len(out) == 4
    assert out[0] == lines[0] and out[2] == lines[2] and out[3] == lines[3]
    assert out[1] != lines[1]


def test_many_lines_one_buffer() -> None:
    """Secrets on several lines of one buffer are each replaced on their own line."""
    tokens = ["ghp_" + body(36) for _ in range(50)]
    lines = [jsonl({"i": i, "t": f"line {i} {tok}"}) for i, tok in enumerate(tokens)]
    result = REDACTOR.redact(b"".join(lines))
    assert result.counts == {"github-token": 50}
    for i, out in enumerate(result.data.splitlines()):
        assert json.loads(out) == {"i": i, "t": f"line {i} [REDACTED:github-token]"}


def test_disabled_redactor_passes_everything() -> None:
    """With enabled=False the input comes back unchanged and nothing is counted."""
    line = jsonl(envelope("ghp_" + body(36)))
    result = Redactor(enabled=False).redact(line)
    assert result == Redaction(line, {})


def test_empty_buffer() -> None:
    """An empty buffer is returned as is."""
    assert REDACTOR.redact(b"") == Redaction(b"", {})


def test_missing_final_newline_is_not_invented() -> None:
    """An unterminated last line (a caller bug) is still redacted and gets no newline added."""
    result = REDACTOR.redact(b'{"a":1}\n{"t":"' + _AWS_ID.encode() + b'"}')
    assert result.data == b'{"a":1}\n{"t":"[REDACTED:aws-access-key-id]"}'


def test_bytearray_and_memoryview_input() -> None:
    """Buffer types other than bytes are accepted and bytes come back."""
    line = jsonl({"t": _AWS_ID})
    for buffer in (bytearray(line), memoryview(line)):
        result = REDACTOR.redact(buffer)  # type: ignore[arg-type]
        assert type(result.data) is bytes
        assert result.counts == {"aws-access-key-id": 1}


def test_twenty_megabyte_line() -> None:
    """A 20 MB line (a big tool result) is scanned whole, secrets at both ends replaced."""
    blob = base64.b64encode(random.Random(9).randbytes(15_000_000)).decode()
    head, tail = "ghp_" + body(36), "sk-ant-api03-" + body(93, ALNUM + "-_") + "AA"
    line = jsonl({"type": "tool_result", "content": f"{head}\n{blob}\n{tail}"})
    assert len(line) > 20_000_000
    small = jsonl({"ok": True})
    result = REDACTOR.redact(small + line + small)
    assert result.counts == {"github-token": 1, "anthropic-api-key": 1}
    first, big, last, end = result.data.split(b"\n")
    assert first == last == small.rstrip(b"\n") and end == b""
    expected = {
        "type": "tool_result",
        "content": f"[REDACTED:github-token]\n{blob}\n[REDACTED:anthropic-api-key]",
    }
    assert json.loads(big) == expected


def test_fail_closed_when_a_line_cannot_be_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    """If rebuilding a line raises, that line becomes a placeholder and is counted, never passed."""

    def boom(line: bytes, pieces: object) -> bytes:
        raise RuntimeError("simulated")

    monkeypatch.setattr(redact_module, "_apply", boom)
    clean = b'{"ok":1}\n'
    secret_line = jsonl({"t": "ghp_" + body(36)})
    result = REDACTOR.redact(clean + secret_line + clean)
    lines = result.data.split(b"\n")
    assert lines[0] == lines[2] == clean.rstrip(b"\n")
    assert lines[1] == b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":%d}' % (
        len(secret_line) - 1
    )
    assert result.counts == {"withheld-line": 1}


def test_fail_closed_when_the_scan_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """If scanning itself raises, every line is dropped to a placeholder: nothing unscanned leaves."""

    def boom(self: Redactor, data: bytes) -> list[tuple[int, int, int]]:
        raise MemoryError

    monkeypatch.setattr(Redactor, "_find", boom)
    buffer = b'{"a":1}\nplain\n{"b":2}\n'
    result = REDACTOR.redact(buffer)
    lines = result.data.split(b"\n")
    assert len(lines) == 4 and lines[3] == b""
    assert lines[:3] == [
        b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":7}',
        b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":5}',
        b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":7}',
    ]
    assert result.counts == {"withheld-line": 3}


def test_unsafe_span_withholds_the_line() -> None:
    """A custom rule whose span would swallow a quote makes the line withheld, not break JSON."""
    bad = Rule(name="greedy", pattern=r"secret[^}]*", keywords=("secret",))
    line = b'{"a":"secret","b":"x"}\n'
    result = Redactor([bad]).redact(line)
    assert result.data == b'{"tracemirror":"line_withheld","reason":"unsafe_span","bytes":22}\n'
    assert result.counts == {"withheld-line": 1}


def test_custom_rules_replace_the_defaults() -> None:
    """Given rules are the only ones that run, and their name appears in the replacement."""
    rule = Rule(name="internal-token", pattern=r"itk_[a-z0-9]{12}", keywords=("itk_",))
    redactor = Redactor([rule])
    result = redactor.redact(jsonl({"t": "itk_abcdef123456 and ghp_" + body(36)}))
    assert result.counts == {"internal-token": 1}
    assert b"[REDACTED:internal-token]" in result.data and b"ghp_" in result.data
    assert redactor.rule_names == ("internal-token",)


@pytest.mark.parametrize(
    "rule",
    [
        Rule(name="Bad Name", pattern="x", keywords=("x",)),
        Rule(name="redaction_error", pattern="x", keywords=("x",)),
        Rule(name="no-keywords", pattern="x", keywords=()),
        Rule(name="bad-pattern", pattern="(", keywords=("x",)),
        Rule(name="bad-group", pattern="x", keywords=("x",), secret_group=1),
        Rule(name="non-ascii", pattern="é", keywords=("é",)),
    ],
    ids=lambda rule: rule.name,
)
def test_bad_rules_are_rejected_at_construction(rule: Rule) -> None:
    """An unusable rule raises ValueError when the Redactor is built, never during redact."""
    with pytest.raises(ValueError):
        Redactor([rule])


def test_duplicate_rule_names_are_rejected() -> None:
    """Two rules with one name would make counts ambiguous."""
    rule = Rule(name="dup", pattern="x", keywords=("x",))
    with pytest.raises(ValueError):
        Redactor([rule, rule])


def test_overlapping_keywords_are_all_found() -> None:
    """Keywords sharing a pivot position (sk- and sk-ant-) each reach their own rules."""
    rules = [
        Rule(name="short", pattern=r"sk-[a-z]{3}\b", keywords=("sk-",)),
        Rule(name="long", pattern=r"sk-ant-[0-9]{4}", keywords=("sk-ant-",)),
        Rule(name="other", pattern=r"ask-[0-9]{4}", keywords=("ask-",)),
    ]
    result = Redactor(rules).redact(b"sk-ant-1234 sk-abc ask-9999\n")
    assert result.data == b"[REDACTED:long] [REDACTED:short] [REDACTED:other]\n"


# --- Properties ------------------------------------------------------------------------------------

_SECRET_MAKERS = st.sampled_from(
    [
        lambda b: ("AKIA" + b[:16].upper().ljust(16, "Q"), None),
        lambda b: ("ghp_" + b.ljust(36, "x")[:36], None),
        lambda b: ("sk-ant-api03-" + b.ljust(40, "x"), None),
        lambda b: ("sk-proj-" + b.ljust(40, "x"), None),
        lambda b: ("xoxp-" + b.ljust(30, "1"), None),
        lambda b: ("hf_" + "".join(c for c in b if c.isalpha()).ljust(34, "q"), None),
        lambda b: ("glpat-" + b.ljust(20, "z"), None),
        lambda b: ("npm_" + b.ljust(36, "n")[:36], None),
        lambda b: ("AIza" + b.ljust(35, "Z")[:35], None),
        lambda b: (b.ljust(20, "T")[:19] + "7" + "x" * 12, "Authorization: Bearer "),
        lambda b: ((b + "/+" * 20)[:40], "aws_secret_access_key="),
    ]
)
_BODIES = st.text(alphabet=ALNUM, min_size=12, max_size=60)
_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def lines_with_secrets(draw: st.DrawFn) -> tuple[bytes, bytes, list[str]]:
    """A JSON line with secrets inserted into string values (maybe escaped, maybe nested)."""
    doc = draw(_JSON)
    secrets: list[str] = []

    def plant(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plant(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plant(item) for item in value]
        if isinstance(value, str) and draw(st.booleans()):
            secret, context = draw(_SECRET_MAKERS)(draw(_BODIES))
            secrets.append(secret)
            sep = draw(st.sampled_from([" ", "\n", "\t", '"', "'", ",", ")", "\\"]))
            cut = draw(st.integers(0, len(value)))
            return value[:cut] + (context or "") + secret + sep + value[cut:]
        return value

    planted = plant({"type": "user", "doc": doc, "text": "see below"})
    if draw(st.booleans()):  # a tool result that holds JSON text (once or twice nested)
        planted = {"type": "tool_result", "content": json.dumps(planted)}
        if draw(st.booleans()):
            planted = {"content": json.dumps(planted)}
    raw = json.dumps(planted, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    if secrets and draw(st.booleans()):  # hide some secret characters behind \u00XX and \/ escapes
        secret = draw(st.sampled_from(secrets))
        at = raw.find(secret)
        if at >= 0:
            chars = [
                ("\\/" if c == "/" else f"\\u{ord(c):04x}") if c in "-_/A" and draw(st.booleans()) else c
                for c in secret
            ]
            raw = raw[:at] + "".join(chars) + raw[at + len(secret) :]
    return raw.encode() + b"\n", json.dumps(planted).encode(), secrets


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines_with_secrets())
def test_property_json_lines_keep_structure_and_lose_secrets(case: tuple[bytes, bytes, list[str]]) -> None:
    """Any JSON line with planted secrets still parses with the same structure, secrets gone."""
    line, plain, secrets = case
    result = redact_line(line)
    parsed = assert_same_json(plain, result.data)
    found = strings(parsed)
    for secret in secrets:
        assert secret.encode() not in result.data
        assert not any(secret in s for s in found)
    assert sum(result.counts.values()) >= (1 if secrets else 0)
    assert ERROR_RULE not in result.counts


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=200)
        | st.builds(
            lambda b, s: b + s.encode() + b,
            st.binary(max_size=40),
            st.sampled_from([_AWS_ID, "ghp_" + "a" * 36, "-----BEGIN PRIVATE KEY-----"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_property_arbitrary_bytes_keep_line_count(chunks: list[bytes]) -> None:
    """Arbitrary bytes never raise, keep the line count, and only change lines with findings."""
    lines = [chunk.replace(b"\n", b" ") + b"\n" for chunk in chunks]
    result = REDACTOR.redact(b"".join(lines))
    out = result.data.split(b"\n")
    assert out[-1] == b"" and len(out) == len(lines) + 1
    for before, after in zip(lines, out, strict=False):
        assert after == before[:-1] or b"[REDACTED:" in after
    markers = result.data.count(b"[REDACTED:") - sum(line.count(b"[REDACTED:") for line in lines)
    assert sum(result.counts.values()) <= markers
    assert ERROR_RULE not in result.counts


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="ab_-A", min_size=1, max_size=5), min_size=1, max_size=8, unique=True),
    st.text(alphabet="ab_-Ax", max_size=200),
)
def test_property_keyword_index_finds_every_occurrence(keywords: list[str], text: str) -> None:
    """The pivot-grouped keyword scan finds exactly what a naive find of each keyword finds."""
    encoded = [kw.encode() for kw in keywords]
    data = text.encode()
    index = redact_module._KeywordIndex(encoded)
    naive = {(i, kw) for kw in encoded for i in range(len(data)) if data.startswith(kw, i)}
    assert set(index.occurrences(data)) == naive


# --- Rule fields: entropy floor, allowlist, case-insensitive keywords ------------------------------


def test_entropy_floor_keeps_low_entropy_spans() -> None:
    """A span below the floor (16 times "a": 0 bits) is kept and not counted; a random one goes."""
    tok = Rule(name="tok", pattern=r"tok_([A-Za-z0-9]{16})", keywords=("tok_",), secret_group=1, entropy=3.0)
    redactor = Redactor([tok])
    line = b'{"a":"tok_aaaaaaaaaaaaaaaa"}\n'
    result = redactor.redact(line)
    assert result.data is line and result.counts == {}
    result = redactor.redact(b'{"a":"tok_q8Zr3LmX0pVn7KcW"}\n')  # 16 distinct characters: 4 bits
    assert result.data == b'{"a":"tok_[REDACTED:tok]"}\n'
    assert result.counts == {"tok": 1}


def test_entropy_at_the_floor_is_redacted() -> None:
    """Only a span below the floor is kept: "abcd" four times is exactly 2 bits, "aabb" is 1 bit."""
    tok = Rule(name="tok", pattern=r"tok_([a-z]{16})", keywords=("tok_",), secret_group=1, entropy=2.0)
    result = Redactor([tok]).redact(b"tok_abcdabcdabcdabcd tok_aabbaabbaabbaabb\n")
    assert result.data == b"tok_[REDACTED:tok] tok_aabbaabbaabbaabb\n"


def test_allowlist_keeps_a_span_that_fullmatches() -> None:
    """EXAMPLEEXAMPLEEXAMPLE (a documented placeholder) is kept; a near miss and a real key go."""
    key = Rule(name="key", pattern=r"key_[A-Z]{21}", keywords=("key_",), allowlist=(r"key_(?:EXAMPLE)+",))
    line = b"key_EXAMPLEEXAMPLEEXAMPLE key_EXAMPLEEXAMPLEEXAMPLX key_QWERTZUIOPASDFGHJKLYX\n"
    result = Redactor([key]).redact(line)
    assert result.data == b"key_EXAMPLEEXAMPLEEXAMPLE [REDACTED:key] [REDACTED:key]\n"
    assert result.counts == {"key": 2}


def test_allowlist_is_matched_against_the_replaced_group() -> None:
    """With a secret group, the allowlist sees the group (the value), not the key name before it."""
    pw = Rule(
        name="pw",
        pattern=r"password=([^\s\"\\]{4,64})",
        keywords=("password=",),
        secret_group=1,
        allowlist=(r"changeme|\$\{[A-Z_]+\}",),
    )
    result = Redactor([pw]).redact(b"password=changeme password=${DB_PASS} password=hunter2!x\n")
    assert result.data == b"password=changeme password=${DB_PASS} password=[REDACTED:pw]\n"


def test_allowlist_regexes_are_compiled_once_per_redactor() -> None:
    """Two rules listing the same allowlist regex share one compiled pattern."""
    first = Rule(name="one", pattern=r"one_[a-z]{8}", keywords=("one_",), allowlist=(r"[a-z_]*example",))
    second = Rule(name="two", pattern=r"two_[a-z]{8}", keywords=("two_",), allowlist=(r"[a-z_]*example",))
    compiled = Redactor([first, second])._rules
    assert compiled[0].allowlist[0] is compiled[1].allowlist[0]


@pytest.mark.parametrize("native", [True, False] if native_available() else [False])
def test_case_insensitive_keyword(native: bool) -> None:
    """keywords_ignore_case: "authorization" finds AUTHORIZATION, Authorization and aUtHoRiZaTiOn."""
    auth = Rule(
        name="auth",
        pattern=r"(?i:authorization):[ \t]*([A-Za-z0-9]{20,64})",
        keywords=("authorization",),
        secret_group=1,
        keywords_ignore_case=True,
    )
    line = (
        b"AUTHORIZATION: abcdefghij0123456789 Authorization: ABCDEFGHIJ0123456789 "
        b"aUtHoRiZaTiOn: klmnopqrst0123456789\n"
    )
    result = Redactor([auth], native=native).redact(line)
    assert result.data == (
        b"AUTHORIZATION: [REDACTED:auth] Authorization: [REDACTED:auth] aUtHoRiZaTiOn: [REDACTED:auth]\n"
    )
    assert result.counts == {"auth": 3}


@pytest.mark.parametrize("native", [True, False] if native_available() else [False])
def test_case_sensitive_keywords_stay_so_beside_case_insensitive_ones(native: bool) -> None:
    """With another rule's keywords ignoring case, a case-sensitive keyword still needs its case."""
    auth = Rule(
        name="auth",
        pattern=r"(?i:authorization):[ \t]*([A-Za-z0-9]{20,64})",
        keywords=("authorization",),
        secret_group=1,
        keywords_ignore_case=True,
    )
    # The pattern accepts any case; only the keyword decides where it runs.
    akid = Rule(name="akid", pattern=r"(?i:akia)[A-Z0-9]{16}", keywords=("AKIA",))
    line = b"akiaABCDEFGHIJKLMNOP AKIAABCDEFGHIJKLMNOP authorization: abcdefghij0123456789\n"
    result = Redactor([auth, akid], native=native).redact(line)
    assert result.data == b"akiaABCDEFGHIJKLMNOP [REDACTED:akid] authorization: [REDACTED:auth]\n"


def test_case_sensitive_keyword_by_default() -> None:
    """Without keywords_ignore_case the keyword needs its exact case, whatever the pattern accepts."""
    auth = Rule(
        name="auth",
        pattern=r"(?i:authorization):[ \t]*([A-Za-z0-9]{20,64})",
        keywords=("authorization",),
        secret_group=1,
    )
    line = b"AUTHORIZATION: abcdefghij0123456789 authorization: ABCDEFGHIJ0123456789\n"
    result = Redactor([auth]).redact(line)
    assert result.data == b"AUTHORIZATION: abcdefghij0123456789 authorization: [REDACTED:auth]\n"


@pytest.mark.parametrize(
    "fields",
    [
        {"entropy": "high"},
        {"entropy": -1.0},
        {"entropy": 9.0},
        {"entropy": True},
        {"allowlist": "not-a-tuple"},
        {"allowlist": ("(",)},
        {"allowlist": ("é",)},
    ],
    ids=[
        "entropy-text",
        "entropy-negative",
        "entropy-over-8",
        "entropy-bool",
        "allowlist-str",
        "allowlist-bad",
        "allowlist-non-ascii",
    ],
)
def test_bad_rule_fields_are_rejected_at_construction(fields: dict[str, Any]) -> None:
    """A bad entropy floor or allowlist raises ValueError when the Redactor is built."""
    with pytest.raises(ValueError):
        Redactor([Rule(name="x", pattern="x", keywords=("x",), **fields)])


# --- The two keyword scans give the same results -----------------------------------------------------

needs_native = pytest.mark.skipif(not native_available(), reason="hyperscan is not installed")

CORPUS: list[bytes] = (
    [jsonl(envelope(text)) for _, text, _ in SAMPLES]
    + [jsonl(envelope(text)) for text in NEGATIVES]
    + [
        b'{"text":"keys:\\n' + _AWS_ID.encode() + b'\\n"}\n',
        b'{"text":"id \\u0041' + _AWS_ID[1:].encode() + b'!"}\n',
        jsonl({"content": json.dumps({"private_key": _PEM_BLOCK, "type": "service_account"})}),
        b'{"before":1}\n' + _PEM_BLOCK.encode() + b'\n{"after":2}\n',
        b"sk-ant-1234 sk-abc ask-9999 SK-ANT-1234 Sk-Proj-" + body(40).encode() + b"\n",
    ]
)


@needs_native
def test_keyword_scans_agree_on_the_corpus() -> None:
    """The Hyperscan and the pure-Python scan give the same bytes and counts on every test line."""
    native, pure = Redactor(native=True), Redactor(native=False)
    assert native.native and not pure.native
    for line in CORPUS:
        assert native.redact(line) == pure.redact(line)
    buffer = b"".join(CORPUS)
    assert native.redact(buffer) == pure.redact(buffer)


@needs_native
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines_with_secrets())
def test_property_keyword_scans_agree(case: tuple[bytes, bytes, list[str]]) -> None:
    """On random JSON lines with planted secrets the two scans give the same result."""
    line = case[0]
    assert Redactor(native=True).redact(line) == Redactor(native=False).redact(line)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(alphabet="abAB_-", min_size=1, max_size=5), st.booleans()),
        min_size=1,
        max_size=8,
        unique_by=lambda kw: kw[0],
    ),
    st.text(alphabet="abAB_-x", max_size=200),
)
def test_property_keyword_hits_are_every_occurrence(keywords: list[tuple[str, bool]], text: str) -> None:
    """Both scans (Hyperscan, pure Python) find exactly the occurrences a naive search finds, case
    folded where asked, with chunk ends anywhere."""
    specs: dict[tuple[bytes, bool], list[int]] = {}
    for index, (kw, ignore_case) in enumerate(keywords):
        key = kw.lower().encode() if ignore_case else kw.encode()
        specs.setdefault((key, ignore_case), []).append(index)
    data = text.encode()
    naive = set()
    for index, (kw, ignore_case) in enumerate(keywords):
        hay, needle = (data.lower(), kw.lower().encode()) if ignore_case else (data, kw.encode())
        naive |= {(i, index) for i in range(len(data)) if hay.startswith(needle, i)}
    for native in [True, False] if native_available() else [False]:
        for chunk in (redact_module._CHUNK, 7):  # 7: many chunk ends, keywords across them
            saved, redact_module._CHUNK = redact_module._CHUNK, chunk
            try:
                scan = redact_module._Keywords(specs, native=native)
                hits = list(scan.hits(data))
            finally:
                redact_module._CHUNK = saved
            assert [at for at, _ in hits] == sorted(at for at, _ in hits)
            assert {(at, index) for at, indexes in hits for index in indexes} == naive


def test_native_scan_without_the_library_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for the native scan where hyperscan is missing fails at construction; the default
    then falls back to the pure-Python scan."""
    monkeypatch.setattr(redact_module, "hyperscan", None)
    with pytest.raises(ValueError):
        Redactor(native=True)
    assert not Redactor().native


# --- Escape helpers --------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='\\/u002dAfx"', max_size=60))
def test_property_quick_probe_equals_mapped_probe(text: str) -> None:
    """The quick probe (no position map) and the mapped probe decode the same bytes."""
    line = text.encode()
    assert redact_module._quick_probe(line) == redact_module._probe(line)[0]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="\\ab", max_size=300), st.data())
def test_property_backslash_run(text: str, data: st.DataObject) -> None:
    """The backslash run before a position, read in growing slices, is the naive count."""
    line = text.encode()
    pos = data.draw(st.integers(0, len(line)))
    run = 0
    while pos - run > 0 and line[pos - run - 1] == 0x5C:
        run += 1
    assert redact_module._backslash_run(line, pos) == run


def test_probe_maps_long_backslash_runs() -> None:
    """A backslash run of any length before \\u002d or \\/ is one escape, decoded to one byte."""
    line = b"a" + b"\\" * 5000 + b"u002db" + b"\\" * 3 + b"/c"
    probe, where, extra = redact_module._probe(line)
    assert probe == b"a-b/c"
    assert where == [1, 3]
    assert extra == [5004, 5007]


ESCAPED_LINES = [
    b'{"t":"key sk\\u002Dant\\u002Dapi03\\u002D' + body(93, ALNUM).encode() + b'AA"}\n',  # upper-case hex
    b'{"t":"hook https:\\/\\/hooks.slack.com\\/services\\/'
    + _HOOK_PATH.replace("/", "\\/").encode()
    + b'"}\n',
    b'{"t":"\\U002D is no escape; sk\\U002Dproj\\U002D' + body(40).encode() + b'"}\n',
    jsonl({"content": '{"key": "' + ("sk-proj-" + body(80, ALNUM + "_")).replace("-", "\\u002d") + '"}'}),
]


@pytest.mark.parametrize("native", [True, False] if native_available() else [False])
def test_escaped_secrets_with_chunk_ends_anywhere(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Escapes found by the keyword scan (upper-case hex too) lead to the decoded scan; chunk ends
    inside escapes and keywords change nothing."""
    redactor = Redactor(native=native)
    buffer = b"".join(ESCAPED_LINES)
    expected = redactor.redact(buffer)
    assert expected.counts == {"anthropic-api-key": 1, "slack-webhook": 1, "openai-api-key": 1}
    assert json.loads(expected.data.split(b"\n")[0]) == {"t": "key [REDACTED:anthropic-api-key]"}
    assert expected.data.split(b"\n")[2] == ESCAPED_LINES[2].rstrip(b"\n")  # \U002D is not JSON
    for chunk in (5, 7, 64):
        monkeypatch.setattr(redact_module, "_CHUNK", chunk)
        assert redactor.redact(buffer) == expected


def test_one_redactor_shared_by_threads_gives_the_same_results() -> None:
    """Writers redact in worker threads with one Redactor: each thread gets its own scan scratch
    space, so concurrent calls give exactly what one call alone gives."""
    import threading

    buffer = b"".join(CORPUS) * 20
    redactor = Redactor()
    expected = redactor.redact(buffer)
    assert expected.counts and ERROR_RULE not in expected.counts
    results: list[Redaction] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.extend(redactor.redact(buffer) for _ in range(5))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 20 and all(result == expected for result in results)
