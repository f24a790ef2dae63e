"""Structural detector for private key blocks (PEM, OpenSSH, PGP) in one transcript line.

Why a module and not a regex rule: an agent reads a key file with a tool that puts a prefix on every
line (Claude Code's Read ``     1→``, ``cat -n``/``nl`` ``     1<TAB>``, ``grep -n`` ``12:``, quotes
``> ``, diff markers, indentation), and the line breaks are real or JSON escapes (``\\n``, ``\\\\n``
one JSON level down, ``\\r\\n``). A rule that accepts nothing before each line lets the whole key go up.

What is found: ``-----BEGIN <label>-----`` where the label ends in ``PRIVATE KEY`` (RSA, EC, DSA,
OPENSSH, ENCRYPTED, plain) or ``PRIVATE KEY BLOCK`` (PGP); public keys and certificates are not
secret and are left alone. What is replaced: the block's body (base64 lines, ``Proc-Type:`` and
other header lines, the per-line prefixes), one span per block; the BEGIN and END marker lines
stay, with the BEGIN line's line break and the END line's break and prefix, so a reader still sees
what was there::

    "     1→-----BEGIN RSA PRIVATE KEY-----\\n[REDACTED:private-key]\\n     5→-----END RSA PRIVATE KEY-----"

JSON safety, for any input: a span starts and ends between whole escape sequences (a backslash
run with the byte it escapes, ``\\uXXXX`` whole) and holds no quote that is not escaped at the
outer level, so replacing it keeps a JSON line valid with the same structure. A block whose body
holds a bare quote or a broken escape gets no span; it is reported in ``KeyBlocks.unsafe`` so the
caller can withhold the line (fail closed).

Cost is linear in the line: one ``bytes.find`` for lines without ``-----BEGIN``; otherwise every
byte after a BEGIN marker is read a bounded number of times (regexes here have no nested unbounded
quantifiers, backslash runs inside them are bounded, and searches for END markers are memoized).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["PLACEHOLDER", "RULE_NAME", "KeyBlocks", "find_private_keys", "private_key_spans"]

#: The rule name the engine counts blocks under, and the text that replaces a span.
RULE_NAME = "private-key"
PLACEHOLDER = b"[REDACTED:private-key]"

_BEGIN = b"-----BEGIN "
_END = b"-----END "
# The label and closing dashes after "-----BEGIN " or "-----END ": only private keys match.
_LABEL = re.compile(rb"[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")

# \u00XX escapes of the characters a body may hold (base64, space, + - / : = > |).
_U00 = rb"u00(?:2[0bBdDfF]|3[0-9aAdDeE]|4[1-9a-fA-F]|5[0-9aA]|6[1-9a-fA-F]|7[0-9aAcC])"
_ARROWS = rb"\xe2\x86\x92|\xe2\x94\x82"  # → (Read tool) and │ (bat), raw UTF-8
# A backslash run (at most 16: four JSON levels); patterns follow it with the byte it escapes, so
# escapes are taken whole and a longer run stops a scan at its start.
_ESC = rb"\\{1,16}"

# The strict body, one token per repetition: base64, blanks, line breaks, prefix characters, a dash
# that does not start a ----- marker (a dash followed by five more is a diff marker before one),
# the arrows, and whole escapes of those. It stops at anything else, at a marker, or at a bare quote.
_BODY_ESC = _ESC + rb"(?:[nrt/]|u2192|u2502|" + _U00 + rb")"
_STRICT = re.compile(
    rb"(?:[A-Za-z0-9+/= \t\r\n:>|]|-(?=-----)|-(?!----)|" + _ARROWS + rb"|" + _BODY_ESC + rb")*+"
)
# Blanks and the line break that end the BEGIN line (the body starts after them).
_LEAD = re.compile(rb"(?:[ \t\r]|" + _ESC + rb"[rt])*+(?:\n|" + _ESC + rb"n)")
# What may stand before a line's content: blanks, line numbers, separators, quote and diff marks.
_PREFIX = re.compile(
    rb"(?:[ \t0-9:>|+-]|" + _ARROWS + rb"|" + _ESC + rb"(?:t|u2192|u2502|u002[bBdD]|u003[0-9aAeE]|u0020))*+"
)
# A header line inside the block (RFC 1421 and OpenPGP armor), after its prefix.
_HEADER = re.compile(
    rb"(?:[ \t0-9:>|+-]|" + _ARROWS + rb"|" + _ESC + rb"(?:t|u2192|u2502|u003[eE])){0,40}"
    rb"(?:Proc-Type|DEK-Info|Comment|Version|Hash|Charset|MessageID):"
)
# The rest of a header line's value (commas, dots, parentheses...), up to its line break.
_HEADER_VALUE = re.compile(rb"(?:[^\"\\\r\n-]|-(?!----)|" + _ESC + rb"[/t])*+")
# A base64 run long enough to be key material rather than a word of prose or code.
_KEY_RUN = re.compile(rb"[A-Za-z0-9+/=]{20,}")
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
# A quote not escaped at the outer level (after an even backslash run, maybe empty).
_BARE_QUOTE = re.compile(rb'(?<!\\)(?:\\\\)*"')
# An escape JSON does not have (\x, \u12 without four hex digits, a backslash at the end).
_BROKEN_ESCAPE = re.compile(rb'(?<!\\)(?:\\\\)*\\(?:[^"\\/bfnrtu]|u(?![0-9a-fA-F]{4})|\Z)')


@dataclass(frozen=True, slots=True)
class KeyBlocks:
    """The private key blocks of one line."""

    spans: tuple[tuple[int, int], ...]  # byte ranges to replace, one per block; sorted, disjoint
    unsafe: tuple[tuple[int, int], ...]  # blocks that cannot be cut safely (after BEGIN, to END)


_NONE = KeyBlocks((), ())


def private_key_spans(line: bytes) -> list[tuple[int, int]]:
    """The ``(start, end)`` byte ranges to replace in ``line``, one per private key block.

    A block that cannot be cut safely gets no span here: use ``find_private_keys`` to learn of it.
    """
    return list(find_private_keys(line).spans)


def find_private_keys(line: bytes) -> KeyBlocks:
    """Find every private key block in ``line`` (a JSONL line, or plain text with real newlines)."""
    data = line if type(line) is bytes else bytes(line)
    begin = data.find(_BEGIN)
    if begin < 0:
        return _NONE
    spans: list[tuple[int, int]] = []
    unsafe: list[tuple[int, int]] = []
    ends = _Ends(data)
    while begin >= 0:
        label = _LABEL.match(data, begin + len(_BEGIN))
        if label is None:  # a public key, a certificate, or no marker at all
            begin = data.find(_BEGIN, begin + len(_BEGIN))
            continue
        head = label.end()
        stop = _strict_end(data, head)
        after = stop  # where the next BEGIN is looked for
        next_begin = -2  # not looked for yet
        span = None
        if _is_private_end(data, stop):
            if _KEY_RUN.search(data, head, stop):
                span = _cut(data, head, stop)
        else:
            next_begin = data.find(_BEGIN, stop)
            end = ends.after(stop)
            if end >= 0 and (next_begin < 0 or end < next_begin) and _looks_like_key(data, head, end):
                # The body holds something the strict scan does not take (a file name before each
                # line number, a dot, a quote) and its END follows: cut it whole if that is safe.
                after = end
                if _unsafe_between(data, head, stop, end):
                    unsafe.append((head, end))
                else:
                    span = _cut(data, head, end)
            elif _KEY_RUN.search(data, head, stop):
                # Cut short (head -n, a Read limit, a truncated output): up to its last key line.
                span = _cut(data, head, stop, cut_short=True)
            # else: a marker in code or prose, not a key
        if span is not None:
            spans.append(span)
        begin = next_begin if next_begin >= after else data.find(_BEGIN, after)
    return KeyBlocks(tuple(spans), tuple(unsafe))


class _Ends:
    """The next private key END marker at or after a position; queries only move forward."""

    __slots__ = ("_at", "_data")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = -2  # the first private END at or after the last query; -1: none; -2: not looked

    def after(self, pos: int) -> int:
        """Start of the first private key END marker at or after ``pos`` (-1 if none)."""
        at = self._at
        if at == -1 or at >= pos:
            return at  # remembered: every byte between the last query and it was searched
        data = self._data
        at = data.find(_END, pos)
        while at >= 0 and _LABEL.match(data, at + len(_END)) is None:
            at = data.find(_END, at + 1)
        self._at = at
        return at


def _is_private_end(data: bytes, pos: int) -> bool:
    """True if a private key END marker starts at ``pos``."""
    return data.startswith(_END, pos) and _LABEL.match(data, pos + len(_END)) is not None


def _strict_end(data: bytes, head: int) -> int:
    """Where the strict body scan from ``head`` stops; header lines (``DEK-Info: AES-128-CBC,...``) pass."""
    pos = low = head
    while True:
        stop = _match_end(_STRICT, data, pos)
        brk = _last_break(data, low, stop)
        if brk is None or _HEADER.match(data, brk[1], stop) is None:
            return stop
        resume = _match_end(_HEADER_VALUE, data, stop)
        if resume == stop:
            return stop
        pos = low = resume


def _unsafe_between(data: bytes, head: int, stop: int, end: int) -> bool:
    """True if ``data[stop:end]`` holds a bare quote or a broken escape, at the block's own JSON level.

    At the outer level a quote after an even backslash run is bare. A block one level down (its
    line breaks are ``\\\\n``) may also sit in two inner strings: a quote escaped by fewer
    backslashes than its line breaks use ends one, so it is unsafe too.
    """
    if _BARE_QUOTE.search(data, stop, end) or _BROKEN_ESCAPE.search(data, stop, end):
        return True
    brk = data.find(b"\\n", head, end)
    if brk < 0:
        return False
    run = brk + 1 - _run_start(data, head, brk)
    return run > 1 and _quote_after_fewer(min(run - 1, 16)).search(data, stop, end) is not None


@functools.lru_cache(maxsize=16)
def _quote_after_fewer(most: int) -> re.Pattern[bytes]:
    """A quote after a backslash run of at most ``most`` backslashes (the whole run)."""
    return re.compile(rb'(?<!\\)\\{0,%d}"' % most)


def _looks_like_key(data: bytes, start: int, end: int) -> bool:
    """True if at least half of ``data[start:end]`` is long base64 runs (key lines, not code)."""
    return 2 * sum(map(len, _KEY_RUN.findall(data, start, end))) >= end - start


def _cut(data: bytes, head: int, stop: int, *, cut_short: bool = False) -> tuple[int, int] | None:
    """The span for a body from ``head`` (after BEGIN) to ``stop`` (an END marker or where it was cut).

    The BEGIN line's break stays before the span; the last line break and what follows it stay
    after, when that is only a prefix (``\\n     5→`` before END, or a numbered empty line) or, in a
    block cut short, a line of words after the key (``\\nThe file continues``).
    """
    lead = _LEAD.match(data, head, stop)
    start = lead.end() if lead is not None else head
    end = stop
    brk = _last_break(data, start, stop)
    if brk is not None and (_is_prefix(data, brk[1], stop) or (cut_short and _is_prose(data, brk[1], stop))):
        end = brk[0]
    return (start, end) if start < end else None


def _is_prose(data: bytes, start: int, end: int) -> bool:
    """True if ``data[start:end]`` is words, not key lines: a blank inside it and no long base64 run."""
    content = data[_match_end(_PREFIX, data, start, end) : end].rstrip(b" \t")
    return b" " in content and _KEY_RUN.search(content) is None


def _last_break(data: bytes, low: int, high: int) -> tuple[int, int] | None:
    """The last line break in ``data[low:high]`` as ``(start, end)``, ``\\r`` before it included.

    A break is a real ``\\n`` or a backslash run and ``n`` (``\\n``, ``\\\\n``); its start is the
    start of the run, so cutting there never splits an escape.
    """
    real = data.rfind(b"\n", low, high)
    escaped = data.rfind(b"\\n", low, high)
    if real < 0 and escaped < 0:
        return None
    if real > escaped:
        start, end = real, real + 1
        if start > low and data[start - 1] == 0x0D:
            start -= 1
        return start, end
    start, end = escaped, escaped + 2
    start = _run_start(data, low, start)
    if start - 2 >= low and data[start - 1] == 0x72 and data[start - 2] == 0x5C:  # \r before it
        start = _run_start(data, low, start - 2)
    return start, end


def _run_start(data: bytes, low: int, pos: int) -> int:
    """Start of the backslash run that ends with the backslash at ``pos`` (not before ``low``)."""
    while pos > low and data[pos - 1] == 0x5C:
        pos -= 1
    return pos


def _is_prefix(data: bytes, start: int, end: int) -> bool:
    """True if ``data[start:end]`` is a line prefix only and cannot be the last line of a key body.

    A final base64 line has at least two characters, so one ``+`` or digit is a prefix; longer, it
    needs a byte that base64 does not use (a blank, ``→``, ``:``, ``-``...).
    """
    if _match_end(_PREFIX, data, start, end) != end:
        return False
    return end - start <= 1 or bool(data[start:end].translate(None, _B64))


def _match_end(pattern: re.Pattern[bytes], data: bytes, pos: int, endpos: int | None = None) -> int:
    """Where a match of ``pattern`` (one that may match empty) at ``pos`` ends."""
    m = pattern.match(data, pos) if endpos is None else pattern.match(data, pos, endpos)
    return pos if m is None else m.end()
