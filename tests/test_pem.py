"""Tests for tracemirrord.pem: private key blocks under every line prefix, raw and JSON-escaped.

The key body is made up (base64 text saying it is fake), and the marker lines are
assembled at run time, so no key-shaped literal sits in the source for secret scanners to flag.
Expected outputs are written out by hand with ``<B>``/``<E>`` standing for the marker lines.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracemirrord.pem import PLACEHOLDER, RULE_NAME, find_private_keys, private_key_spans

BODY = [
    "ZmFrZSBrZXkgbWF0ZXJpYWwgZm9yIHRyYWNlbWlycm9yIHRlc3RzLCBuZXZlciBh",
    "IHJlYWwga2V5LCBsaW5lIDE+/fake+key/body+for/tests+only/not+a/key0",
    "ZmFrZSBrZXkgZW5kcyBoZXJlLi4=",
]
DASHES = "-" * 5


def begin(label: str) -> str:
    """A BEGIN marker line (built here so the source holds no key-shaped literal)."""
    return f"{DASHES}BEGIN {label}{DASHES}"


def end(label: str) -> str:
    """An END marker line."""
    return f"{DASHES}END {label}{DASHES}"


RSA = "RSA PRIVATE" + " KEY"
OPENSSH = "OPENSSH PRIVATE" + " KEY"
PGP = "PGP PRIVATE" + " KEY BLOCK"
MARKERS = {
    "<B>": begin(RSA),
    "<E>": end(RSA),
    "<OB>": begin(OPENSSH),
    "<OE>": end(OPENSSH),
    "<PB>": begin(PGP),
    "<PE>": end(PGP),
    "<CB>": begin("CERTIFICATE"),
    "<CE>": end("CERTIFICATE"),
}


def lit(text: str) -> bytes:
    """A hand-written expected line with its marker placeholders filled in."""
    for short, marker in MARKERS.items():
        text = text.replace(short, marker)
    return text.encode()


def rows(label: str = RSA, body: list[str] = BODY) -> list[str]:
    """The lines of a key file."""
    return [begin(label), *body, end(label)]


def numbered(lines: list[str], prefix: Callable[[int], str]) -> str:
    """``lines`` as a tool shows them, each behind ``prefix(line number)``."""
    return "\n".join(prefix(n) + line for n, line in enumerate(lines, 1))


def read_tool(n: int) -> str:
    """Claude Code's Read tool: the line number right-aligned in six columns, then an arrow."""
    return f"{n:>6}→"


def record(text: str, *, ascii_only: bool = False) -> bytes:
    """A compact transcript-like JSONL line holding ``text`` (raw UTF-8, as agents write it)."""
    obj = {"type": "tool_result", "content": text}
    return json.dumps(obj, ensure_ascii=ascii_only, separators=(",", ":")).encode()


def redacted(line: bytes) -> bytes:
    """``line`` with each span replaced by the placeholder, right to left."""
    spans = private_key_spans(line)
    for start, stop in reversed(spans):
        line = line[:start] + PLACEHOLDER + line[stop:]
    return line


def test_rule_name_and_placeholder() -> None:
    """The engine counts blocks under ``private-key`` and writes the usual placeholder."""
    assert RULE_NAME == "private-key"
    assert PLACEHOLDER == b"[REDACTED:private-key]"


# (case, input line, expected output written by hand)
EXACT: list[tuple[str, bytes, bytes]] = [
    (
        "read-tool-json",
        record(numbered(rows(), read_tool)),
        lit(r'{"type":"tool_result","content":"     1→<B>\n[REDACTED:private-key]\n     5→<E>"}'),
    ),
    (
        "read-tool-json-ascii",
        record(numbered(rows(), read_tool), ascii_only=True),
        lit(r'{"type":"tool_result","content":"     1\u2192<B>\n[REDACTED:private-key]\n     5\u2192<E>"}'),
    ),
    (
        "cat-n-raw-text",
        numbered(rows(), lambda n: f"{n:>6}\t").encode(),
        lit("     1\t<B>\n[REDACTED:private-key]\n     5\t<E>"),
    ),
    (
        "nl-json",
        record(numbered(rows(), lambda n: f"{n:>6}\t")),
        lit(r'{"type":"tool_result","content":"     1\t<B>\n[REDACTED:private-key]\n     5\t<E>"}'),
    ),
    (
        "grep-n-json",
        record(numbered(rows(), lambda n: f"{n}:")),
        lit(r'{"type":"tool_result","content":"1:<B>\n[REDACTED:private-key]\n5:<E>"}'),
    ),
    (
        "quote-json",
        record(numbered(rows(), lambda n: "> ")),
        lit(r'{"type":"tool_result","content":"> <B>\n[REDACTED:private-key]\n> <E>"}'),
    ),
    (
        "diff-removed-json",
        record(numbered(rows(), lambda n: "-")),
        lit(r'{"type":"tool_result","content":"-<B>\n[REDACTED:private-key]\n-<E>"}'),
    ),
    (
        "diff-added-raw-text",
        numbered(rows(), lambda n: "+").encode(),
        lit("+<B>\n[REDACTED:private-key]\n+<E>"),
    ),
    (
        "indented-raw-text",
        numbered(rows(), lambda n: "    ").encode(),
        lit("    <B>\n[REDACTED:private-key]\n    <E>"),
    ),
    (
        "crlf-json",
        record("\r\n".join(rows()) + "\r\n"),
        lit(r'{"type":"tool_result","content":"<B>\r\n[REDACTED:private-key]\r\n<E>\r\n"}'),
    ),
    (
        "nested-json",
        record(json.dumps({"private_key": "\n".join(rows()) + "\n", "type": "service_account"})),
        lit(
            r'{"type":"tool_result","content":"{\"private_key\": \"<B>\\n[REDACTED:private-key]\\n<E>\\n\", '
            r'\"type\": \"service_account\"}"}'
        ),
    ),
    (
        "env-file-with-backslash-n",
        record('PRIVATE_KEY="' + "\\n".join(rows()) + '\\n"\nPORT=8080'),
        lit(
            r'{"type":"tool_result","content":"PRIVATE_KEY=\"<B>\\n[REDACTED:private-key]\\n<E>\\n\"\nPORT=8080"}'
        ),
    ),
    (
        "flattened-on-one-line",
        record("PRIVATE_KEY=" + " ".join(rows()) + " # from the vault"),
        lit(r'{"type":"tool_result","content":"PRIVATE_KEY=<B>[REDACTED:private-key]<E> # from the vault"}'),
    ),
    (
        "cut-short-head-n-3",
        record("\n".join(rows()[:3]) + "\n"),
        lit(r'{"type":"tool_result","content":"<B>\n[REDACTED:private-key]\n"}'),
    ),
    (
        "cut-short-read-limit-then-reminder",
        record(numbered(rows()[:3], read_tool) + "\n\n<system-reminder>file truncated</system-reminder>"),
        lit(
            r'{"type":"tool_result","content":"     1→<B>\n[REDACTED:private-key]\n'
            r'<system-reminder>file truncated</system-reminder>"}'
        ),
    ),
    (
        "cut-short-then-prose",
        record("\n".join(rows()[:3]) + "\nThe file goes on for 24 more lines"),
        lit(
            r'{"type":"tool_result","content":"<B>\n[REDACTED:private-key]\n'
            r'The file goes on for 24 more lines"}'
        ),
    ),
    (
        "encrypted-pem-headers",
        record(
            numbered(
                rows(body=["Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-128-CBC,0123456789ABCDEF", "", *BODY]),
                read_tool,
            )
        ),
        lit(r'{"type":"tool_result","content":"     1→<B>\n[REDACTED:private-key]\n     8→<E>"}'),
    ),
    (
        "pgp-armor-raw-text",
        "\n".join(
            rows(
                PGP, ["Version: GnuPG v2.0.22 (GNU/Linux)", "Comment: https://gnupg.org", "", *BODY, "=AbCd"]
            )
        ).encode(),
        lit("<PB>\n[REDACTED:private-key]\n<PE>"),
    ),
    (
        "two-keys-in-one-line",
        json.dumps(
            {"a": "\n".join(rows()), "b": "and the other one:", "c": numbered(rows(OPENSSH), read_tool)},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode(),
        lit(
            r'{"a":"<B>\n[REDACTED:private-key]\n<E>","b":"and the other one:",'
            r'"c":"     1→<OB>\n[REDACTED:private-key]\n     5→<OE>"}'
        ),
    ),
    (
        "grep-rn-with-file-names",
        record(numbered(rows(), lambda n: f"/home/dev/.ssh/id_rsa:{n}:")),
        lit(r'{"type":"tool_result","content":"/home/dev/.ssh/id_rsa:1:<B>\n[REDACTED:private-key]<E>"}'),
    ),
    (
        "json-with-escaped-slashes",
        record("\n".join(rows())).replace(b"/", b"\\/"),
        lit(r'{"type":"tool_result","content":"<B>\n[REDACTED:private-key]\n<E>"}'),
    ),
]


@pytest.mark.parametrize(("case", "line", "expected"), EXACT, ids=[c[0] for c in EXACT])
def test_exact_output(case: str, line: bytes, expected: bytes) -> None:
    """Each case redacts to exactly the hand-written line, one span per block."""
    assert redacted(line) == expected
    blocks = find_private_keys(line)
    assert len(blocks.spans) == expected.count(PLACEHOLDER)
    assert blocks.unsafe == ()


PREFIXES: dict[str, Callable[[int], str]] = {
    "read-tool": read_tool,
    "cat-n": lambda n: f"{n:>6}\t",
    "nl-width-3": lambda n: f"{n:>3}\t",
    "less-N": lambda n: f"{n:>7} ",
    "grep-n": lambda n: f"{n}:",
    "grep-context": lambda n: f"{n}-",
    "quote": lambda n: "> ",
    "quote-twice": lambda n: ">> ",
    "diff-removed": lambda n: "-",
    "diff-added": lambda n: "+",
    "diff-context": lambda n: " ",
    "indent": lambda n: "    ",
    "tab": lambda n: "\t",
    "bat": lambda n: f"{n:>4} │ ",
    "table": lambda n: f"| {n} | ",
    "read-tool-of-a-quoted-diff": lambda n: f"{n:>6}→> -",
}
ENCODINGS = ["raw-text", "json", "json-ascii", "json-crlf", "nested-json"]


def encode(text: str, encoding: str) -> bytes:
    """``text`` (lines joined by ``\\n``) as it sits in a transcript line."""
    if encoding == "raw-text":
        return text.encode()
    if encoding == "json":
        return record(text)
    if encoding == "json-ascii":
        return record(text, ascii_only=True)
    if encoding == "json-crlf":
        return record(text.replace("\n", "\r\n"))
    return record(json.dumps({"stdout": text, "exit_code": 0}))


def decode(line: bytes, encoding: str) -> str:
    """The text back out of ``encode``'s line (checking the JSON structure on the way)."""
    if encoding == "raw-text":
        return line.decode()
    doc = json.loads(line)
    assert list(doc) == ["type", "content"] and doc["type"] == "tool_result"
    if encoding == "nested-json":
        inner = json.loads(doc["content"])
        assert list(inner) == ["stdout", "exit_code"] and inner["exit_code"] == 0
        return str(inner["stdout"])
    return str(doc["content"]).replace("\r\n", "\n")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("prefix_name", list(PREFIXES))
def test_every_prefix_kind(prefix_name: str, encoding: str) -> None:
    """Whatever stands before each line, the body goes, the JSON keeps its keys, the markers stay."""
    prefix = PREFIXES[prefix_name]
    lines = ["Here is the key:", *rows(), "Done."]
    line = encode(numbered(lines, prefix), encoding)
    blocks = find_private_keys(line)
    assert len(blocks.spans) == 1 and blocks.unsafe == ()
    text = decode(redacted(line), encoding)
    for body_line in BODY:
        assert body_line not in text
    assert text == "\n".join(
        [
            prefix(1) + "Here is the key:",
            prefix(2) + begin(RSA),
            "[REDACTED:private-key]",
            prefix(6) + end(RSA),
            prefix(7) + "Done.",
        ]
    )


LABELS = [
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "DSA PRIVATE KEY",
    "OPENSSH PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "PRIVATE KEY",
    "PGP PRIVATE KEY BLOCK",
]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("label", LABELS)
def test_every_kind_of_private_key(label: str, encoding: str) -> None:
    """Every private key label is caught, its body removed and both marker lines kept."""
    line = encode(numbered(rows(label), read_tool), encoding)
    assert len(private_key_spans(line)) == 1
    text = decode(redacted(line), encoding)
    assert text == f"     1→{begin(label)}\n[REDACTED:private-key]\n     5→{end(label)}"


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("label", ["PUBLIC KEY", "RSA PUBLIC KEY", "CERTIFICATE", "CERTIFICATE REQUEST"])
def test_public_keys_and_certificates_are_left_alone(label: str, encoding: str) -> None:
    """Public keys and certificates are not secret: no span, the line is untouched."""
    line = encode(numbered(rows(label), read_tool), encoding)
    assert find_private_keys(line).spans == ()
    assert find_private_keys(line).unsafe == ()


def test_certificate_next_to_a_private_key() -> None:
    """In a bundle (certificate, then key) only the key's body goes."""
    line = record("\n".join([*rows("CERTIFICATE"), *rows()]))
    assert redacted(line) == lit(
        r'{"type":"tool_result","content":"<CB>\n'
        r"ZmFrZSBrZXkgbWF0ZXJpYWwgZm9yIHRyYWNlbWlycm9yIHRlc3RzLCBuZXZlciBh\n"
        r"IHJlYWwga2V5LCBsaW5lIDE+/fake+key/body+for/tests+only/not+a/key0\n"
        r"ZmFrZSBrZXkgZW5kcyBoZXJlLi4=\n"
        r'<CE>\n<B>\n[REDACTED:private-key]\n<E>"}'
    )


def test_bare_quote_inside_the_block_gives_no_span() -> None:
    """A block whose body holds a bare quote (split over two JSON strings) is reported, not cut."""
    line = lit(r'{"a":"<B>\n' + BODY[0] + r'\n","b":"' + BODY[1] + r'\n<E>"}')
    assert private_key_spans(line) == []
    blocks = find_private_keys(line)
    assert blocks.spans == ()
    assert len(blocks.unsafe) == 1
    start, stop = blocks.unsafe[0]
    assert line[:start].endswith(lit("<B>")) and line[stop:].startswith(lit("<E>"))


def test_broken_escape_inside_the_block_gives_no_span() -> None:
    """A block holding an escape JSON does not have (``\\x``) is reported, not cut."""
    line = lit(r'{"a":"<B>\n' + BODY[0] + r"\x" + BODY[1] + r'\n<E>"}')
    assert private_key_spans(line) == []
    assert len(find_private_keys(line).unsafe) == 1


def test_block_split_over_two_inner_json_strings_gives_no_span() -> None:
    """One level down, a quote that ends an inner string makes the block unsafe too."""
    inner = json.dumps({"a": begin(RSA) + "\n" + BODY[0] + "\n", "b": BODY[1] + "\n" + end(RSA)})
    line = record(inner)
    assert private_key_spans(line) == []
    assert len(find_private_keys(line).unsafe) == 1


def test_escaped_quote_in_a_comment_header_is_cut() -> None:
    """An escaped quote in a header line is text, not structure: the block is cut whole."""
    line = record("\n".join(rows(body=['Comment: "rsa-key-20240101"', *BODY])))
    assert redacted(line) == lit(r'{"type":"tool_result","content":"<B>\n[REDACTED:private-key]\n<E>"}')


@pytest.mark.parametrize(
    "text",
    [
        'if line.startswith("'
        + begin(RSA)
        + '"):\n    in_key = True\nelif line.startswith("'
        + end(RSA)
        + '"):',
        "Your key file starts with " + begin(RSA) + " and ends with " + end(RSA) + ".",
        "The header " + begin(RSA) + " is followed by base64.",
        begin(RSA) + "\nMIIEpAIBAAK...\n" + end(RSA),
        "no marker at all, only " + BODY[0],
        begin(RSA),
    ],
    ids=["code", "prose", "prose-no-end", "docs-ellipsis", "no-marker", "marker-only"],
)
def test_mentions_of_the_markers_are_not_keys(text: str) -> None:
    """Code and prose that name the markers, with no key material, get no span and no report."""
    for line in (text.encode(), record(text)):
        blocks = find_private_keys(line)
        assert blocks.spans == () and blocks.unsafe == ()


def test_truncated_block_followed_by_a_full_one() -> None:
    """A block cut short (no END before the next BEGIN) is cut through its last line; the next whole."""
    line = record("\n".join(rows()[:2]) + "\n" + "\n".join(rows(OPENSSH)))
    assert redacted(line) == lit(
        r'{"type":"tool_result","content":"<B>\n[REDACTED:private-key]\n<OB>\n[REDACTED:private-key]\n<OE>"}'
    )


SAFE_PIECES = [
    begin(RSA),
    end(RSA),
    begin(PGP),
    end("CERTIFICATE"),
    "\n",
    "\r\n",
    "\t",
    " ",
    "→",
    "│",
    '"',
    "\\",
    "\\n",
    "\\u2192",
    "-",
    "--",
    "+",
    ":",
    ">",
    "|",
    "12",
    "=",
    "/",
    "é",
    "\x00",
    "{}",
    "Proc-Type: 4,ENCRYPTED",
    'Comment: "x"',
    *BODY,
]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(st.sampled_from(SAFE_PIECES), max_size=30).map("".join),
    st.integers(min_value=0, max_value=3),
    st.booleans(),
)
def test_spans_keep_any_json_line_valid(text: str, depth: int, ascii_only: bool) -> None:
    """Whatever the string holds (quotes, backslashes, markers, nesting), the line still parses."""
    value: Any = text
    for _ in range(depth):
        value = json.dumps({"k": value, "n": 1}, ensure_ascii=ascii_only)
    line = json.dumps({"c": value, "d": [1, "x"]}, ensure_ascii=ascii_only).encode()
    out = redacted(line)
    doc = json.loads(out)
    assert list(doc) == ["c", "d"] and doc["d"] == [1, "x"]


def _huge_block(size: int) -> tuple[bytes, list[str]]:
    """A Read-tool transcript line holding one fake key block of over ``size`` bytes, and its body."""
    data = base64.b64encode(random.Random(7).randbytes(size * 3 // 4)).decode()
    body = [data[i : i + 64] for i in range(0, len(data), 64)]
    return record(numbered(rows(body=body), read_tool)), body


def test_ten_megabyte_line_without_a_key_is_fast() -> None:
    """A line without ``-----BEGIN`` costs one search."""
    line = record("lorem ipsum " * 900_000 + DASHES + "END " + RSA + DASHES)
    assert len(line) > 10_000_000
    started = time.perf_counter()
    assert private_key_spans(line) == []
    assert time.perf_counter() - started < 5


def test_ten_megabyte_key_block_is_fast() -> None:
    """A huge block is read once: well under a second here, five at most."""
    line, body = _huge_block(10_000_000)
    assert len(line) > 10_000_000
    started = time.perf_counter()
    spans = private_key_spans(line)
    elapsed = time.perf_counter() - started
    assert elapsed < 5
    assert len(spans) == 1
    out = line[: spans[0][0]] + PLACEHOLDER + line[spans[0][1] :]
    assert out.startswith(lit(r'{"type":"tool_result","content":"     1→<B>\n[REDACTED:private-key]\n'))
    assert out.endswith(lit('→<E>"}'))
    assert len(out) < 200
    assert body[0].encode() not in out and body[-1].encode() not in out


@pytest.mark.parametrize(
    "line",
    [
        (begin(RSA) + "\\n" + BODY[0] + ".").encode() * 150_000,
        (begin(RSA) + "\\n").encode() + b"\\" * 10_000_000 + end(RSA).encode(),
        (begin(RSA) + "\\n" + BODY[0]).encode() + b"-" * 10_000_000,
        (begin(RSA) + "\\n" + BODY[0] + ".").encode() + end("CERTIFICATE").encode() * 400_000,
    ],
    ids=["many-markers", "backslash-run", "dash-run", "many-other-ends"],
)
def test_hostile_lines_stay_linear(line: bytes) -> None:
    """Markers repeated, long backslash or dash runs: each 10 MB line well under the ceiling."""
    started = time.perf_counter()
    find_private_keys(line)
    assert time.perf_counter() - started < 5
