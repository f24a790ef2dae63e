"""Hostile lines for tracemirrord.redact: linear time and fail closed.

Each hostile line must be redacted within a generous ceiling (about ten times or more what a
linear engine takes here; ``benchmarks/bench_redact_hostile.py`` measures the scaling itself).
Exact outputs use this module's own small rules, so they do not move when the default rule set
changes; the default rules get the same lines with checks that hold for any rule set (time,
line count, valid JSON, the secret gone). Expected outputs are written out by hand.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable

import pytest

from tracemirrord import redact as redact_module
from tracemirrord.redact import MAX_MATCH, Redaction, Redactor, native_available
from tracemirrord.rules import Rule

# The keyword scan under test: the Hyperscan one (when installed) and the pure-Python one.
ENGINES = [pytest.param(False, id="pure-python")]
if native_available():
    ENGINES.insert(0, pytest.param(True, id="aho-corasick"))

# Small rules of the shapes the default set has: a token with an unbounded tail, one with a
# bounded tail, a fixed-length key id with an end boundary.
GH = Rule(name="gh", pattern=r"ghp_[A-Za-z0-9]{36,}", keywords=("ghp_",))
PROJ = Rule(name="proj", pattern=r"sk-proj-[A-Za-z0-9_-]{20,}", keywords=("sk-",))
PROJ_BOUNDED = Rule(name="proj", pattern=r"sk-proj-[A-Za-z0-9_-]{20,100}", keywords=("sk-",))
AKID = Rule(name="akid", pattern=r"AKIA[A-Z0-9]{16}(?![A-Z0-9])", keywords=("AKIA",))
RULES = [GH, PROJ, AKID]

TOKEN = "ghp_" + "q8Zr3LmX0pVn7KcWa1Bt5YhE9uJ2oD6sF4gH"  # 36 characters after the prefix
CEILING_S = 15.0  # a generous ceiling: the slowest line here (20 MB, pure-Python scan) takes 1.4 s of CPU


def timed(redactor: Redactor, line: bytes) -> Redaction:
    """Redact ``line``, fail if it takes longer than the ceiling, check the line count."""
    start = time.perf_counter()
    result = redactor.redact(line)
    elapsed = time.perf_counter() - start
    assert elapsed < CEILING_S, f"{len(line)} bytes took {elapsed:.2f}s"
    assert result.data.count(b"\n") == line.count(b"\n")
    return result


def json_line(text: bytes) -> bytes:
    """A JSONL line whose one string value is ``text`` (already escaped as JSON)."""
    return b'{"t":"' + text + b'"}\n'


@pytest.fixture(params=ENGINES)
def own(request: pytest.FixtureRequest) -> Redactor:
    """A Redactor with this module's rules, on one keyword scan."""
    return Redactor(RULES, native=request.param)


# --- Exact outputs with this module's rules ----------------------------------------------------------


def test_megabyte_of_backslashes_then_a_token(own: Redactor) -> None:
    """An even 1 MB backslash run ends in whole escapes: the token after it starts fresh and goes."""
    line = json_line(b"\\" * 1_000_000 + TOKEN.encode())
    assert timed(own, line).data == json_line(b"\\" * 1_000_000 + b"[REDACTED:gh]")


def test_megabyte_of_backslashes_then_an_escaped_newline(own: Redactor) -> None:
    """An odd run is escaped backslashes and one \\n escape; the token after it goes."""
    line = json_line(b"\\" * 1_000_001 + b"n" + TOKEN.encode())
    assert timed(own, line).data == json_line(b"\\" * 1_000_001 + b"n[REDACTED:gh]")


def test_megabyte_of_backslashes_alone(own: Redactor) -> None:
    """Nothing to find: the line comes back as it was, the same object."""
    line = json_line(b"\\" * 1_000_000)
    assert timed(own, line).data is line


def test_backslashes_then_an_escaped_slash(own: Redactor) -> None:
    """1 MB of backslashes before \\/ (the decoded probe path): linear, token replaced."""
    line = json_line(b"\\" * 1_000_000 + b"\\/" + TOKEN.encode())
    assert timed(own, line).data == json_line(b"\\" * 1_000_000 + b"\\/[REDACTED:gh]")


def test_backslash_backslash_quote_repeated_raw(own: Redactor) -> None:
    """\\\\" repeated (not JSON) then a token: the quote ends each run, the token goes."""
    line = b'\\\\"' * 300_000 + TOKEN.encode() + b"\n"
    assert timed(own, line).data == b'\\\\"' * 300_000 + b"[REDACTED:gh]\n"


def test_escaped_backslash_and_quote_repeated_in_json(own: Redactor) -> None:
    """\\\\\\" (an escaped backslash, an escaped quote) repeated in a JSON string, then a token."""
    line = json_line(b'\\\\\\"' * 250_000 + TOKEN.encode())
    result = timed(own, line)
    assert result.data == json_line(b'\\\\\\"' * 250_000 + b"[REDACTED:gh]")
    assert json.loads(result.data) == {"t": '\\"' * 250_000 + "[REDACTED:gh]"}


def test_deep_escape_runs_in_json(own: Redactor) -> None:
    """\\\\\\\\\\\\\\" (three escaped backslashes and a quote, nested JSON's shape) repeated."""
    line = json_line(b'\\\\\\\\\\\\\\"' * 125_000 + TOKEN.encode())
    assert timed(own, line).data == json_line(b'\\\\\\\\\\\\\\"' * 125_000 + b"[REDACTED:gh]")


def test_keyword_repeated_along_an_unbounded_run_withholds_the_line(own: Redactor) -> None:
    """sk-proj- 100,000 times: one match fills MAX_MATCH, may be cut short, so the line is withheld."""
    line = json_line(b"sk-proj-" * 100_000)
    result = timed(own, line)
    assert result.data == b'{"tracemirror":"line_withheld","reason":"match_too_long","bytes":800008}\n'
    assert result.counts == {"withheld-line": 1}


@pytest.mark.parametrize("native", ENGINES)
def test_keyword_repeated_along_a_bounded_run(native: bool) -> None:
    """With a bounded rule, matches tile the run: 108 bytes each, 4 left between, hits inside skipped."""
    line = json_line(b"sk-proj-" * 100_000)
    result = timed(Redactor([PROJ_BOUNDED], native=native), line)
    # 800,000 bytes = 7,142 tiles of 112 (a 108-byte match and "roj-") + 96 bytes matched whole.
    assert result.data == json_line(b"[REDACTED:proj]roj-" * 7_142 + b"[REDACTED:proj]")
    assert result.counts == {"proj": 7_143}


def test_akia_repeated(own: Redactor) -> None:
    """AKIA 100,000 times: every hit fails its end boundary except the last 20 bytes."""
    line = json_line(b"AKIA" * 100_000)
    result = timed(own, line)
    assert result.data == json_line(b"AKIA" * 99_995 + b"[REDACTED:akid]")
    assert result.counts == {"akid": 1}


@pytest.mark.parametrize("byte", [b"a", b'"', b"A", b"\\", b"-"])
def test_twenty_megabytes_of_one_byte(own: Redactor, byte: bytes) -> None:
    """A 20 MB line of one byte (a, a quote, a keyword's first byte, a backslash, a dash)."""
    line = byte * 20_000_000 + b"\n"
    assert timed(own, line).data is line


def test_run_of_escaped_dashes(own: Redactor) -> None:
    """\\u002d 200,000 times (every line with it is scanned decoded too), then a token."""
    line = json_line(b"\\u002d" * 200_000 + TOKEN.encode())
    assert timed(own, line).data == json_line(b"\\u002d" * 200_000 + b"[REDACTED:gh]")


def test_run_of_escaped_dashes_hiding_keywords(own: Redactor) -> None:
    """sk\\u002dproj\\u002d 100,000 times: found in the decoded probe; the run is too long, withheld."""
    line = json_line(b"sk\\u002dproj\\u002d" * 100_000)
    result = timed(own, line)
    assert result.data == b'{"tracemirror":"line_withheld","reason":"match_too_long","bytes":1800008}\n'


def test_secret_in_deeply_nested_json(own: Redactor) -> None:
    """A token 16 JSON levels down (backslash runs of 65,535) is replaced; every level parses."""
    inner = {"env": {"GITHUB_TOKEN": TOKEN}, "note": 'a "quoted" \\ path'}
    doc = json.dumps(inner)
    for _ in range(16):
        doc = json.dumps({"c": doc})
    line = doc.encode() + b"\n"
    assert b"\\" * 65_535 + b'"' in line  # 2**16 - 1 backslashes before the innermost quotes
    result = timed(own, line)
    assert result.counts == {"gh": 1}
    value = json.loads(result.data)
    for _ in range(16):
        value = json.loads(value["c"])
    assert value == {"env": {"GITHUB_TOKEN": "[REDACTED:gh]"}, "note": 'a "quoted" \\ path'}


def test_megabyte_of_base64_image_between_secrets(own: Redactor) -> None:
    """1 MB of base64 image data (the alphabet of key ids) between a key id and a token."""
    data = base64.b64encode(random.Random(3).randbytes(750_000))
    akid = b"AKIA" + b"Q" * 12 + b"2345"
    line = json_line(akid + b" " + data + b"\\n" + TOKEN.encode())
    result = timed(own, line)
    assert result.data == json_line(b"[REDACTED:akid] " + data + b"\\n[REDACTED:gh]")
    assert result.counts == {"akid": 1, "gh": 1}


# --- The default rules: the same lines, checks that hold for any rule set -------------------------


def _nested(depth: int) -> bytes:
    doc = json.dumps({"env": {"GITHUB_TOKEN": TOKEN}})
    for _ in range(depth):
        doc = json.dumps({"c": doc})
    return doc.encode() + b"\n"


HOSTILE: dict[str, Callable[[], bytes]] = {
    "backslashes": lambda: json_line(b"\\" * 1_000_000 + TOKEN.encode()),
    "backslashes-slash": lambda: json_line(b"\\" * 1_000_000 + b"\\/" + TOKEN.encode()),
    "backslash-quote-raw": lambda: b'\\\\"' * 300_000 + TOKEN.encode() + b"\n",
    "backslash-quote-json": lambda: json_line(b'\\\\\\"' * 250_000 + TOKEN.encode()),
    "sk-proj-run": lambda: json_line(b"sk-proj-" * 100_000),
    "akia-run": lambda: json_line(b"AKIA" * 100_000),
    "a-20mb": lambda: b"a" * 20_000_000 + b"\n",
    "quote-20mb": lambda: b'"' * 20_000_000 + b"\n",
    "u002d-run": lambda: json_line(b"\\u002d" * 200_000 + TOKEN.encode()),
    "nested-json": lambda: _nested(16),
    "image": lambda: json_line(
        base64.b64encode(random.Random(3).randbytes(750_000)) + b"\\n" + TOKEN.encode()
    ),
    "pem-no-end": lambda: json_line(b"-----BEGIN RSA PRIVATE KEY-----\\n" + b"QUJD" * 250_000),
    "bearer-run": lambda: json_line(b"Authorization: Bearer " * 40_000),
}


@pytest.mark.parametrize("native", ENGINES)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_lines_with_the_default_rules(name: str, native: bool) -> None:
    """Each hostile line: within the ceiling, one line out, valid JSON if it was, no token left."""
    line = HOSTILE[name]()
    result = timed(Redactor(native=native), line)
    assert TOKEN.encode() not in result.data
    try:
        json.loads(line)
    except ValueError:
        return
    json.loads(result.data)


def test_second_buffer_is_not_held_up() -> None:
    """A hostile line in one buffer does not slow the next one (no state kept between calls)."""
    redactor = Redactor()
    redactor.redact(json_line(b"sk-proj-" * 100_000))
    start = time.perf_counter()
    result = redactor.redact(json_line(TOKEN.encode()))
    assert time.perf_counter() - start < 0.5
    assert result.data == json_line(b"[REDACTED:github-token]")


# --- Fail closed ----------------------------------------------------------------------------------


def test_match_too_long_withholds_every_line_it_touches() -> None:
    """A multi-line match that fills MAX_MATCH withholds each line it touched, no more."""
    block = Rule(name="block", pattern=r"BEGIN(?:\n[A-Z]{1,64})+", keywords=("BEGIN",))
    body = [b"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ"] * 400  # 62 bytes each
    buffer = b'{"before":1}\nBEGIN\n' + b"\n".join(body) + b"\nnot upper case\n"
    assert len(b"BEGIN\n" + b"\n".join(body)) > MAX_MATCH
    result = Redactor([block]).redact(buffer)
    out = result.data.split(b"\n")
    assert len(out) == 404  # 403 lines and the empty rest after the last newline
    assert out[0] == b'{"before":1}'
    assert out[1] == b'{"tracemirror":"line_withheld","reason":"match_too_long","bytes":5}'
    # The match stops MAX_MATCH (16,384) bytes after its start: "BEGIN" (5) and 259 whole body lines of
    # "\n" and 62 letters (16,322 bytes), then 62 bytes into body line 260.
    withheld = b'{"tracemirror":"line_withheld","reason":"match_too_long","bytes":62}'
    assert out[2:262] == [withheld] * 260
    assert out[262:402] == [body[0]] * 140
    assert out[402:] == [b"not upper case", b""]
    assert result.counts == {"withheld-line": 261}


def test_error_in_the_decoded_scan_withholds_only_that_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while scanning a line's decoded probe withholds that line; others are redacted."""

    def boom(line: bytes) -> bytes:
        raise RuntimeError("simulated")

    monkeypatch.setattr(redact_module, "_quick_probe", boom)
    buffer = json_line(TOKEN.encode()) + json_line(b"a\\/b") + b'{"ok":1}\n'
    result = Redactor(RULES).redact(buffer)
    assert result.data == (
        json_line(b"[REDACTED:gh]")
        + b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":12}\n'
        + b'{"ok":1}\n'
    )
    assert result.counts == {"gh": 1, "withheld-line": 1}


def test_probes_that_disagree_withhold_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the quick probe and the mapped probe differ, spans cannot be mapped back: withheld."""
    monkeypatch.setattr(redact_module, "_quick_probe", lambda line: line.replace(b"\\/", b"/") + b"!")
    line = json_line(b"x\\/" + TOKEN.encode())
    result = Redactor(RULES).redact(line)
    assert result.data == b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":51}\n'


def test_error_in_a_rule_check_withholds_the_lines_it_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in the per-match work (here the allowlist check) withholds the line that
    raised it: the buffer is redone line by line and only that line is withheld."""

    def boom(*args: object) -> bool:
        raise ValueError("simulated")

    monkeypatch.setattr(redact_module, "_kept", boom)
    listed = Rule(name="listed", pattern=r"key_[a-z]{8}", keywords=("key_",), allowlist=(r"key_example",))
    buffer = b'{"a":"key_abcdefgh"}\n{"b":"clean"}\n'
    result = Redactor([listed]).redact(buffer)
    assert result.data == (
        b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":20}\n{"b":"clean"}\n'
    )
    assert result.counts == {"withheld-line": 1}


def test_last_resort_withholds_every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the buffer and the line-by-line redo both fail, every line is withheld; nothing raises."""

    def boom(self: Redactor, data: bytes) -> Redaction:
        raise MemoryError

    monkeypatch.setattr(Redactor, "_redact_buffer", boom)
    monkeypatch.setattr(Redactor, "_redact_line_by_line", boom)
    result = Redactor(RULES).redact(b'{"a":1}\nplain\nno newline at the end')
    assert result.data == (
        b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":7}\n'
        b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":5}\n'
        b'{"tracemirror":"line_withheld","reason":"redaction_error","bytes":21}'
    )
    assert result.counts == {"withheld-line": 3}


def test_unsafe_span_in_one_line_leaves_the_others() -> None:
    """A span that would swallow a quote withholds its line; the lines around it are untouched."""
    greedy = Rule(name="greedy", pattern=r"secret[^}]*", keywords=("secret",))
    buffer = b'{"a":1}\n{"s":"secret","b":"x"}\n{"c":"secret"\n'
    result = Redactor([greedy]).redact(buffer)
    assert result.data == (
        b'{"a":1}\n{"tracemirror":"line_withheld","reason":"unsafe_span","bytes":22}\n'
        b'{"tracemirror":"line_withheld","reason":"unsafe_span","bytes":13}\n'
    )
