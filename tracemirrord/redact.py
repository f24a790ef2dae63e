"""Redaction of complete JSONL lines: find secrets and replace them before any byte leaves the machine.

Owns ``Redactor`` (rules compiled once at construction) and ``Redaction`` (the redacted bytes and
the matches per rule). Which secrets are scrubbed is data in ``tracemirrord.rules``.

Invariants, for any input buffer (complete lines, each ending in ``\\n``):

- The output has exactly as many lines as the input; output line i is input line i with every
  finding replaced by ``[REDACTED:<rule-name>]``. A line without a finding is byte-identical.
- A replacement never crosses a quote and never starts or ends inside an escape sequence, so a
  line that was valid JSON is still valid JSON with the same structure (keys, nesting, types).
- ``redact`` never raises on its input (invalid UTF-8, NUL bytes, non-JSON text, 20+ MB lines).
- Fail closed: a line whose redaction raises is replaced by a small JSON placeholder
  (``{"tracemirror":"line_dropped","reason":"redaction_error","bytes":N}``) and counted under
  ``redaction_error``; it never passes through unredacted.
- Nothing here logs, and counts name rules only: no secret reaches a log.

How a buffer is scanned (the hot path of backfill, so it scans the whole buffer at once):

1. ``_KeywordIndex`` finds every keyword occurrence of every rule in a few passes over the
   buffer: keywords that share a pivot byte (``_``, ``-``, ``A``) go into one regex that stops on
   that byte and checks the bytes around it in C; other keywords are found with ``bytes.find``.
2. At each occurrence the keyword's rules run ``pattern.match``; each match gives a span.
3. Lines that hold an escape decoding to a token character (``\\u002d``, ``\\/``; see
   ``rules.TOKEN_CHARS``) are scanned again in decoded form (a probe in which each such escape
   is one byte), and probe spans are mapped back to the raw bytes, so the replacement covers the
   whole escape sequences. Nested JSON needs no parsing: token classes stop at ``\\`` and ``"``
   at any nesting depth, and a backslash run of any length is one escape in the probe.
4. Spans are merged, cut at line ends (only a PEM block in plain text spans lines), and only the
   lines that hold one are rebuilt.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tracemirrord.rules import DEFAULT_RULES, TOKEN_CHARS, Rule

__all__ = ["ERROR_RULE", "Redaction", "Redactor", "Rule"]

#: The count name of lines dropped because redacting them raised.
ERROR_RULE = "redaction_error"

_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_BACKSLASH = 0x5C
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Bytes shared by many token prefixes (ghp_, sk-, AKIA): one scan per pivot byte finds them all.
_PIVOTS = (b"_", b"-", b"A")


def _escaped_token_chars(chars: Iterable[int]) -> bytes:
    """Regex source for the two hex digits of a ``\\u00XX`` escape of one of ``chars``."""
    by_high: dict[int, set[int]] = {}
    for c in chars:
        if 0x20 <= c < 0x80:
            by_high.setdefault(c >> 4, set()).add(c & 0xF)
    alts = []
    for high, lows in sorted(by_high.items()):
        digits = sorted({f"{low:x}" for low in lows} | {f"{low:X}" for low in lows})
        alts.append(f"{high:x}[{''.join(digits)}]")
    return "|".join(alts).encode()


# An escape hiding a token character: \/ or \u00XX (e.g. \u002d). Not Go's \u003c, \u0026.
_TOKEN_ESCAPE = re.compile(rb"\\(?:/|u00(?:" + _escaped_token_chars(TOKEN_CHARS) + rb"))")
# The same \u00XX escapes, found from their "u" (a literal, so sre scans for it quickly).
_TOKEN_U00 = re.compile(rb"(?<=\\)u00(" + _escaped_token_chars(TOKEN_CHARS) + rb")")


@dataclass(frozen=True, slots=True)
class Redaction:
    """The result of redacting a buffer of lines."""

    data: bytes  # the redacted lines
    counts: dict[str, int]  # matches per rule name (only rules that matched)


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    regex: re.Pattern[bytes]
    group: int
    placeholder: bytes


class _UnsafeSpan(Exception):
    """A span would break an escape or a string; the line is dropped instead (fail closed)."""


class _KeywordIndex:
    """Finds every occurrence of a fixed set of case-sensitive keywords in a few passes.

    Keywords holding a pivot byte share one regex per pivot. The regex stops on the pivot (sre
    scans for a literal first byte in C), then tries one branch per keyword: the bytes after the
    pivot as a literal (a cheap first-byte test) followed by a lookbehind over the whole keyword;
    keywords that end at the pivot sit behind a one-byte lookbehind gate. Every search restarts
    one byte after the previous stop, so overlapping occurrences are all found. Keywords without a
    pivot byte (and pivots with a single keyword) are found with ``bytes.find``.
    """

    __slots__ = ("_literals", "_pivoted")

    def __init__(self, keywords: Iterable[bytes]) -> None:
        groups: dict[bytes, list[tuple[bytes, int]]] = {}
        literals: list[bytes] = []
        for kw in sorted(set(keywords)):
            for pivot in _PIVOTS:
                at = kw.find(pivot)
                if at >= 0:
                    groups.setdefault(pivot, []).append((kw, at))
                    break
            else:
                literals.append(kw)
        pivoted = []
        for pivot, members in groups.items():
            if len(members) == 1:
                literals.append(members[0][0])
                continue
            # Branch order, which is also group order: keywords with bytes after the pivot (their
            # first byte is tested quickly), then those ending at it, then the bare pivot.
            members.sort(key=lambda m: (m[1] == len(m[0]) - 1, len(m[0]) == 1, m))
            branches = [
                re.escape(kw[at + 1 :]) + b"(?<=" + re.escape(kw) + b")()"
                for kw, at in members
                if at < len(kw) - 1
            ]
            enders = [(kw, at) for kw, at in members if at == len(kw) - 1 and at > 0]
            if enders:
                gate = b"".join(re.escape(bytes((b,))) for b in sorted({kw[at - 1] for kw, at in enders}))
                ends = b"|".join(b"(?<=" + re.escape(kw) + b")()" for kw, _ in enders)
                branches.append(b"(?<=[" + gate + b"]" + re.escape(pivot) + b")(?:" + ends + b")")
            if (pivot, 0) in members:  # the pivot byte is a keyword by itself
                branches.append(b"()")
            regex = re.compile(re.escape(pivot) + b"(?:" + b"|".join(branches) + b")")
            # Members that may sit at the same pivot as member i (their aligned bytes agree): the
            # alternation reports only the first branch that matches, so those are checked too.
            siblings = tuple(
                tuple((kw2, at2) for kw2, at2 in members if _aligned(kw, at, kw2, at2)) for kw, at in members
            )
            pivoted.append((regex, siblings))
        self._pivoted: tuple[tuple[re.Pattern[bytes], tuple[tuple[tuple[bytes, int], ...], ...]], ...] = (
            tuple(pivoted)
        )
        self._literals = tuple(literals)

    def occurrences(self, data: bytes) -> list[tuple[int, bytes]]:
        """Every ``(start, keyword)`` in ``data``, overlapping ones included, in no fixed order."""
        found: list[tuple[int, bytes]] = []
        for regex, siblings in self._pivoted:
            search = regex.search
            m = search(data)
            while m is not None:
                at = m.start()
                for kw, offset in siblings[m.lastindex - 1]:  # type: ignore[operator]
                    start = at - offset
                    if start >= 0 and data.startswith(kw, start):
                        found.append((start, kw))
                m = search(data, at + 1)
        for kw in self._literals:
            start = data.find(kw)
            while start >= 0:
                found.append((start, kw))
                start = data.find(kw, start + 1)
        return found


def _aligned(kw: bytes, at: int, other: bytes, other_at: int) -> bool:
    """True if ``other`` (pivot at ``other_at``) can occur where ``kw`` (pivot at ``at``) does."""
    shift = at - other_at  # position of other[0] relative to kw[0]
    for i, byte in enumerate(other):
        j = i + shift
        if 0 <= j < len(kw) and kw[j] != byte:
            return False
    return True


def _inside_escape(data: bytes, pos: int) -> bool:
    """True if ``data[pos]`` continues an escape sequence (the ``n`` of ``\\n``, a hex digit of ``\\u00e9``).

    Escapes are read at the outer level: after an even backslash run (an escaped backslash) a byte
    starts a new character. Replacing there keeps the line valid JSON; inside a nested JSON string
    it may leave ``\\`` before the replacement, which is the price of never skipping a secret.
    """
    if _odd_backslashes_before(data, pos):
        return True
    # One of the four hex digits of \uXXXX: a "u" opening an escape sits 1 to 4 bytes back, with
    # only hex digits between it and pos.
    for digits_before in range(4):
        u = pos - digits_before - 1
        if u < 1:
            return False
        if digits_before and data[u + 1] not in _HEX:
            return False
        if data[u] == 0x75 and _odd_backslashes_before(data, u):
            return True
    return False


def _odd_backslashes_before(data: bytes, pos: int) -> bool:
    """True if an odd number of backslashes ends right before ``data[pos]``."""
    run = 0
    while pos - run > 0 and data[pos - run - 1] == _BACKSLASH:
        run += 1
    return run % 2 == 1


def _check_span(line: bytes, start: int, end: int) -> None:
    """Raise ``_UnsafeSpan`` unless replacing ``line[start:end]`` keeps quotes and escapes whole."""
    if (
        b'"' in line[start:end]
        or _inside_escape(line, start)
        or (end < len(line) and _inside_escape(line, end))
    ):
        raise _UnsafeSpan


def _apply(line: bytes, pieces: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Replace each ``(start, end, replacement)`` (sorted, disjoint, relative to ``line``)."""
    out: list[bytes] = []
    prev = 0
    for start, end, replacement in pieces:
        _check_span(line, start, end)
        out.append(line[prev:start])
        out.append(replacement)
        prev = end
    out.append(line[prev:])
    return b"".join(out)


def _placeholder(dropped_bytes: int) -> bytes:
    """The valid JSON line that stands for a line whose redaction failed."""
    return b'{"tracemirror":"line_dropped","reason":"redaction_error","bytes":%d}' % dropped_bytes


def _quick_probe(line: bytes) -> bytes:
    """``line`` with token-hiding escapes decoded, without a position map (mostly C-level work).

    The same bytes as ``_probe`` gives: a backslash run of any length before ``u00XX`` or ``/``
    is one escape (``\\u002d`` one level down still hides a dash).
    """
    if b"\\u00" in line:
        parts: list[bytes] = []
        prev = 0
        for m in _TOKEN_U00.finditer(line):
            start = m.start() - 1
            while start > prev and line[start - 1] == _BACKSLASH:
                start -= 1
            parts.append(line[prev:start])
            parts.append(bytes((int(m.group(1), 16),)))
            prev = m.end()
        if parts:
            parts.append(line[prev:])
            line = b"".join(parts)
    while b"\\/" in line:  # each pass shortens every backslash run before a slash by one
        line = line.replace(b"\\/", b"/")
    return line


def _probe(line: bytes) -> tuple[bytes, list[int], list[int]]:
    """Decode token-hiding escapes of ``line`` to one byte each, keeping a position map.

    Returns the probe, the probe positions of the decoded escapes, and for each the number of raw
    bytes the escapes up to and including it add (to map probe positions back to raw ones).
    """
    parts: list[bytes] = []
    where: list[int] = []
    extra: list[int] = []
    prev = probe_len = added = 0
    for m in _TOKEN_ESCAPE.finditer(line):
        start, end = m.span()
        while start > prev and line[start - 1] == _BACKSLASH:  # nested: \\u002d, \\\\/ ...
            start -= 1
        parts.append(line[prev:start])
        probe_len += start - prev
        token = m.group()
        parts.append(b"/" if token.endswith(b"/") else bytes((int(token[-2:], 16),)))
        where.append(probe_len)
        added += end - start - 1
        extra.append(added)
        probe_len += 1
        prev = end
    parts.append(line[prev:])
    return b"".join(parts), where, extra


class Redactor:
    """Replaces secrets in buffers of complete JSONL lines; rules are compiled once, here.

    ``rules`` defaults to ``tracemirrord.rules.DEFAULT_RULES``. With ``enabled=False``,
    ``redact`` returns its input unchanged and no counts. A bad rule (name, keywords, pattern)
    raises ``ValueError`` here, never later in ``redact``.
    """

    __slots__ = ("_by_keyword", "_enabled", "_index", "_rules")

    def __init__(self, rules: Sequence[Rule] | None = None, *, enabled: bool = True) -> None:
        source = DEFAULT_RULES if rules is None else tuple(rules)
        self._enabled = enabled
        self._rules = tuple(_compile(rule) for rule in source)
        names = [rule.name for rule in self._rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        by_keyword: dict[bytes, list[int]] = {}
        for index, rule in enumerate(source):
            for kw in dict.fromkeys(rule.keywords):
                by_keyword.setdefault(kw.encode("ascii"), []).append(index)
        self._by_keyword = {kw: tuple(indexes) for kw, indexes in by_keyword.items()}
        self._index = _KeywordIndex(self._by_keyword)

    @property
    def enabled(self) -> bool:
        """Whether ``redact`` changes anything."""
        return self._enabled

    @property
    def rule_names(self) -> tuple[str, ...]:
        """The names of the rules, in order (a tie between two rules goes to the earlier one)."""
        return tuple(rule.name for rule in self._rules)

    def redact(self, lines: bytes) -> Redaction:
        """Redact a buffer of complete lines; see the module docstring for the guarantees."""
        data = lines if type(lines) is bytes else bytes(lines)
        if not self._enabled or not data:
            return Redaction(data, {})
        try:
            return self._redact_buffer(data)
        except Exception:
            # Something outside the per-line steps failed: redo it line by line, and drop any
            # line that still fails (fail closed).
            return self._redact_line_by_line(data)

    def _redact_line_by_line(self, data: bytes) -> Redaction:
        out: list[bytes] = []
        counts: dict[str, int] = {}
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end
            line = data[start:end]
            try:
                result = self._redact_buffer(line)
                out.append(result.data)
                for name, n in result.counts.items():
                    counts[name] = counts.get(name, 0) + n
            except Exception:
                out.append(_placeholder(len(line)))
                counts[ERROR_RULE] = counts.get(ERROR_RULE, 0) + 1
            out.append(data[end : end + 1])
            start = end + 1
        return Redaction(b"".join(out), counts)

    def _find(self, data: bytes) -> list[tuple[int, int, int]]:
        """Every ``(start, end, rule index)`` to replace in ``data``, unsorted and overlapping."""
        spans: list[tuple[int, int, int]] = []
        rules = self._rules
        by_keyword = self._by_keyword
        for at, kw in self._index.occurrences(data):
            for index in by_keyword[kw]:
                rule = rules[index]
                m = rule.regex.match(data, at)
                if m is None:
                    continue
                start, end = m.span(rule.group)
                # A match that starts inside an escape (the "npm_" of "\npm_") is not a secret
                # in decoded text, and replacing it would break the escape.
                if 0 <= start < end and not _inside_escape(data, start):
                    spans.append((start, end, index))
        return spans

    def _find_decoded(self, data: bytes, line_start: int, line_end: int) -> list[tuple[int, int, int]]:
        """Spans of one line found in its decoded probe, mapped back to raw positions in ``data``."""
        line = data[line_start:line_end]
        if not self._find(_quick_probe(line)):
            return []  # the usual case: no secret, so no position map is needed
        probe, where, extra = _probe(line)
        spans = []
        for start, end, index in self._find(probe):
            i = bisect_left(where, start)
            raw_start = line_start + start + (extra[i - 1] if i else 0)
            i = bisect_left(where, end)
            raw_end = line_start + end + (extra[i - 1] if i else 0)
            if not _inside_escape(data, raw_start):
                spans.append((raw_start, raw_end, index))
        return spans

    def _redact_buffer(self, data: bytes) -> Redaction:
        spans = self._find(data)
        failed: set[int] = set()  # starts of lines whose redaction raised

        # Lines hiding a token character behind an escape are scanned again, decoded.
        m = _TOKEN_ESCAPE.search(data)
        while m is not None:
            line_start = data.rfind(b"\n", 0, m.start()) + 1
            line_end = data.find(b"\n", m.end())
            line_end = len(data) if line_end < 0 else line_end
            try:
                spans.extend(self._find_decoded(data, line_start, line_end))
            except Exception:
                failed.add(line_start)
            m = _TOKEN_ESCAPE.search(data, line_end)

        if not spans and not failed:
            return Redaction(data, {})

        # Merge overlaps; on a tie the earlier (more specific) rule names the span.
        spans.sort(key=lambda span: (span[0], -span[1], span[2]))
        merged: list[list[int]] = []
        for start, end, index in spans:
            if merged and start < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end, index])

        # Cut spans into per-line pieces; a span is counted on the line where it starts.
        lines: dict[int, tuple[int, list[tuple[int, int, bytes]], list[str]]] = {
            start: (_line_end(data, start), [], []) for start in failed
        }
        for start, end, index in merged:
            rule = self._rules[index]
            line_start = data.rfind(b"\n", 0, start) + 1
            first = True
            while True:
                line_end = _line_end(data, line_start)
                entry = lines.setdefault(line_start, (line_end, [], []))
                if first:
                    entry[2].append(rule.name)
                    first = False
                piece_end = min(end, line_end)
                if start < piece_end:
                    entry[1].append((start - line_start, piece_end - line_start, rule.placeholder))
                if end <= line_end + 1:
                    break
                line_start = start = line_end + 1

        out: list[bytes] = []
        counts: dict[str, int] = {}
        prev = 0
        for line_start in sorted(lines):
            line_end, pieces, names = lines[line_start]
            line = data[line_start:line_end]
            try:
                if line_start in failed:
                    raise _UnsafeSpan
                new_line = _apply(line, pieces)
            except Exception:
                new_line = _placeholder(len(line))
                names = [ERROR_RULE]
            for name in names:
                counts[name] = counts.get(name, 0) + 1
            out.append(data[prev:line_start])
            out.append(new_line)
            prev = line_end
        out.append(data[prev:])
        return Redaction(b"".join(out), counts)


def _line_end(data: bytes, line_start: int) -> int:
    """Index of the ``\\n`` ending the line that starts at ``line_start`` (or ``len(data)``)."""
    end = data.find(b"\n", line_start)
    return len(data) if end < 0 else end


def _compile(rule: Rule) -> _Compiled:
    """Check one rule and compile its pattern; raise ``ValueError`` if it is unusable."""
    if not _NAME.match(rule.name) or rule.name == ERROR_RULE:
        raise ValueError(f"rule name {rule.name!r}: use lowercase letters, digits and dashes")
    if not rule.keywords or not all(kw and kw.isascii() for kw in rule.keywords):
        raise ValueError(f"rule {rule.name!r}: keywords must be non-empty ASCII literals")
    try:
        regex = re.compile(rule.pattern.encode("ascii"))
    except (re.error, UnicodeEncodeError) as exc:
        raise ValueError(f"rule {rule.name!r}: bad pattern: {exc}") from exc
    if not 0 <= rule.secret_group <= regex.groups:
        raise ValueError(f"rule {rule.name!r}: no group {rule.secret_group}")
    return _Compiled(rule.name, regex, rule.secret_group, f"[REDACTED:{rule.name}]".encode())
