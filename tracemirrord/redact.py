"""Redaction of complete JSONL lines: find secrets and replace them before any byte leaves the machine.

Owns ``Redactor`` (rules compiled once at construction) and ``Redaction`` (the redacted bytes and
the matches per rule). Which secrets are scrubbed is data in ``tracemirrord.rules``.

Invariants, for any input buffer (complete lines, each ending in ``\\n``):

- The output has exactly as many lines as the input; output line i is input line i with every
  finding replaced by ``[REDACTED:<rule-name>]``. A line without a finding is byte-identical.
- A replacement never crosses a quote and never starts or ends inside an escape sequence, so a
  line that was valid JSON is still valid JSON with the same structure (keys, nesting, types).
- ``redact`` never raises on its input (invalid UTF-8, NUL bytes, non-JSON text, 20+ MB lines).
- Fail closed: a line that cannot be redacted safely (a span that would break a quote or an
  escape, a match that may run past ``MAX_MATCH`` bytes, any exception while redacting it) is
  withheld: replaced by ``{"tracemirror":"line_withheld","reason":"<why>","bytes":N}`` (valid
  JSON) and counted under ``withheld-line``. It never passes through as it was.
- Linear time: the cost per input byte is bounded by a small constant whatever the input (runs
  of backslashes, a keyword repeated 100,000 times, a 20 MB line of one byte), for rules whose
  patterns do not backtrack over their own window (``tests/test_redact_hostile.py``).
- Nothing here logs, and counts name rules only: no secret reaches a log.

How a buffer is scanned (the hot path of backfill, so it scans the whole buffer at once):

1. ``_Keywords`` finds every occurrence of every rule's keywords in one pass, chunk by chunk: a
   Hyperscan literal database (``hyperscan``, caseless where a rule's format is) when it is
   installed, else ``_KeywordIndex`` (a few regex and ``bytes.find`` passes over the data and a
   lowercased copy); both give the same hits. The same pass finds the escapes of step 3.
2. Rules with a structural detector instead of a pattern (``private-key``: ``tracemirrord.pem``)
   run once per buffer when their keyword occurs.
3. At each hit, in order, the keyword's rules run ``pattern.match`` on at most ``MAX_MATCH`` bytes.
   A hit inside the previous match of the same rule is skipped (a rule's matches never overlap,
   as with ``finditer``), so a keyword repeated along a run costs one match, not one per keyword.
   A match of an unbounded pattern that fills its window may have been cut short: its lines are
   withheld. A span below the rule's entropy floor, or that fullmatches one of its allowlist
   regexes, is kept.
4. Lines that hold an escape decoding to a token character (``\\u002d``, ``\\/``; see
   ``rules.TOKEN_CHARS``) are scanned again in decoded form (a probe in which each such escape
   is one byte), and probe spans are mapped back to the raw bytes, so the replacement covers the
   whole escape sequences. Nested JSON needs no parsing: token classes stop at ``\\`` and ``"``
   at any nesting depth, and a backslash run of any length is one escape in the probe.
5. Spans are merged, cut at line ends (only a PEM block in plain text spans lines), and only the
   lines that hold one are rebuilt. Escape parity is read from the backslash run before a
   position in growing C-level slices, never by a walk from every position.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from tracemirrord import pem
from tracemirrord.rules import DEFAULT_RULES, DETECTORS, TOKEN_CHARS, Rule, shannon_entropy

try:  # Hyperscan's literal matcher: one pass for all keywords, whatever their number
    import hyperscan
except ImportError:  # pragma: no cover - a platform without its wheel: _KeywordIndex gives the same hits
    hyperscan = None

__all__ = ["ERROR_RULE", "MAX_MATCH", "WITHHELD_RULE", "Redaction", "Redactor", "Rule", "native_available"]

#: The count name of withheld lines (replaced by a placeholder because redacting them was unsafe).
WITHHELD_RULE = "withheld-line"
#: The name importers used before; the same count.
ERROR_RULE = WITHHELD_RULE
#: Longest match a rule may have: a pattern scans at most this far from its keyword. A match of an
#: unbounded pattern that reaches it may be a longer secret cut short, so its lines are withheld.
MAX_MATCH = 16 * 1024
# Keywords are scanned for in chunks of this size, so the hits held at once stay bounded.
_CHUNK = 256 * 1024
# A match ending this close to its window's end may have been shortened by the window (a lookahead
# or boundary that could not see past it), so it counts as cut short too.
_CUT_SLACK = 64

# Why a line was withheld (the placeholder's "reason").
_UNSAFE = "unsafe_span"
_TOO_LONG = "match_too_long"
_ERROR = "redaction_error"

# Structural detectors by name (rules.DETECTORS): each finds the spans of its secrets in a buffer,
# and the ones it cannot cut safely (their lines are withheld).
_DETECT: dict[str, Callable[[bytes], pem.KeyBlocks]] = {"private-key-block": pem.find_private_keys}
assert set(_DETECT) == set(DETECTORS)

_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_RESERVED_NAMES = frozenset({WITHHELD_RULE, "redaction_error"})
_BACKSLASH = 0x5C
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Bytes shared by many token prefixes (ghp_, sk-, AKIA): one scan per pivot byte finds them all.
_PIVOTS = (b"_", b"-", b"A")


def native_available() -> bool:
    """Whether the native keyword scan (``hyperscan``) can be used here."""
    return hyperscan is not None


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


_TOKEN_HEX = _escaped_token_chars(TOKEN_CHARS)
# An escape hiding a token character: \/ or \u00XX (e.g. \u002d). Not Go's \u003c, \u0026.
_TOKEN_ESCAPE = re.compile(rb"\\(?:/|u00(?:" + _TOKEN_HEX + rb"))")
# The same escapes with their whole backslash run (one backslash per nesting level), found from the
# run's first backslash; the lookbehind and the possessive run keep the search linear on any run.
_TOKEN_ESCAPE_RUN = re.compile(rb"(?<!\\)\\++(?:/|u00(" + _TOKEN_HEX + rb"))")
_U00_RUN = re.compile(rb"(?<!\\)\\++u00(" + _TOKEN_HEX + rb")")
_SLASH_RUN = re.compile(rb"(?<!\\)\\++/")


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
    unbounded: bool  # a match may be as long as MAX_MATCH (so one that long may be cut short)
    entropy: float | None  # a span with fewer bits per byte is kept
    allowlist: tuple[re.Pattern[bytes], ...]  # a span that fullmatches one is kept
    detect: Callable[[bytes], pem.KeyBlocks] | None  # a structural detector instead of the regex


class _UnsafeSpan(Exception):
    """A span would break an escape or a string; the line is withheld instead (fail closed)."""


class _KeywordIndex:
    """Finds every occurrence of a fixed set of case-sensitive keywords in a few passes.

    The pure-Python keyword scan (``_Keywords`` uses it when ``ahocorasick_rs`` is missing).
    Keywords holding a pivot byte share one regex per pivot. The regex stops on the pivot (sre
    scans for a literal first byte in C), then tries one branch per keyword: the bytes after the
    pivot as a literal (a cheap first-byte test) followed by a lookbehind over the whole keyword;
    keywords that end at the pivot sit behind a one-byte lookbehind gate. Every search restarts
    one byte after the previous stop, so overlapping occurrences are all found. Keywords without a
    pivot byte share one regex per first byte instead; a group of one keyword is found with
    ``bytes.find``. So the passes number the pivots and first bytes, not the keywords.
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
            else:  # no shared pivot: keywords that start with the same byte share a regex on it
                groups.setdefault(kw[:1], []).append((kw, 0))
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
    """True if ``other`` (pivot at ``at``) can occur where ``kw`` (pivot at ``other_at``) does."""
    shift = at - other_at  # position of other[0] relative to kw[0]
    for i, byte in enumerate(other):
        j = i + shift
        if 0 <= j < len(kw) and kw[j] != byte:
            return False
    return True


class _Keywords:
    """Every keyword occurrence of every rule, as ``(start, rule indexes)`` sorted by start.

    ``specs`` maps ``(keyword, ignore_case)`` to the indexes of the rules it keys (a keyword that
    ignores case is given lowercased). Two scans give the same hits (tests compare them):

    - native: one Hyperscan literal database holds every keyword (caseless where the rule says so)
      and the escapes that hide a token character; one pass over the data as it is, no lowercased
      copy, at GB/s whatever the number of keywords.
    - pure Python (``native=False``, or where ``hyperscan`` has no wheel): ``_KeywordIndex`` finds
      the case-sensitive keywords in the data as it is (where its pivots are fast) and the others
      in a lowercased copy; ``_TOKEN_ESCAPE`` finds the escapes.
    """

    __slots__ = ("_db", "_find", "_info", "_local", "_lower", "_native", "_overlap")

    def __init__(self, specs: Mapping[tuple[bytes, bool], Sequence[int]], *, native: bool) -> None:
        if native and hyperscan is None:
            raise ValueError("the native keyword scan needs hyperscan, which is not installed")
        self._native = native
        self._lower = any(ignore_case for _, ignore_case in specs)
        self._overlap = max((len(kw) for kw, _ in specs), default=1) + 6  # 6: the longest escape
        self._local = threading.local()
        self._find: Any = None
        if native:
            # Per literal id: its length, the rules it keys (None for an escape only), whether it
            # is an escape. Escapes are caseless (upper-case hex); a hit is checked later.
            literals: list[bytes] = []
            flags: list[int] = []
            info: list[tuple[int, tuple[int, ...] | None, bool]] = []
            for (kw, ignore_case), indexes in sorted(specs.items()):
                literals.append(kw)
                flags.append(hyperscan.HS_FLAG_CASELESS if ignore_case else 0)
                info.append((len(kw), tuple(sorted(set(indexes))), False))
            for escape in sorted(_escape_literals()):
                literals.append(escape)
                flags.append(hyperscan.HS_FLAG_CASELESS)
                info.append((len(escape), None, True))
            self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self._db.compile(
                expressions=literals,
                ids=list(range(len(literals))),
                elements=len(literals),
                flags=flags,
                literal=True,
            )
            self._info = tuple(info)
        else:  # case-sensitive keywords on the data as it is (the index's fast pivots), the others lowercased
            self._db = None
            self._info = ()
            by_case: dict[bool, dict[bytes, set[int]]] = {False: {}, True: {}}
            for (kw, ignore_case), indexes in specs.items():
                by_case[ignore_case].setdefault(kw, set()).update(indexes)
            self._find = tuple(
                (
                    ignore_case,
                    _KeywordIndex(keyed).occurrences,
                    {kw: tuple(sorted(ix)) for kw, ix in keyed.items()},
                )
                for ignore_case, keyed in by_case.items()
                if keyed
            )

    @property
    def native(self) -> bool:
        return self._native

    def hits(self, data: bytes, escapes: list[int] | None = None) -> Iterator[tuple[int, tuple[int, ...]]]:
        """``(start, indexes of the rules keyed there)`` in order of start (a start may repeat).

        The data is scanned in chunks of ``_CHUNK`` bytes (plus the longest keyword, so an
        occurrence across a chunk end is whole), so the hits held at once stay bounded however
        many the buffer has (a 20 MB line of one repeated keyword). Each chunk reports only the
        occurrences that start in it. Given ``escapes``, the start of every token-hiding escape
        (or what may be one: check it with ``_TOKEN_ESCAPE``) is added to it, in no fixed order.
        """
        if self._native:
            yield from self._hits_native(data, escapes)
        else:
            yield from self._hits_pure(data, escapes)

    def _hits_native(self, data: bytes, escapes: list[int] | None) -> Iterator[tuple[int, tuple[int, ...]]]:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:  # one scratch space per thread: writers redact in worker threads
            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        info = self._info
        scan = self._db.scan
        ends: list[tuple[int, int]] = []
        on_match = _collector(ends)
        for low in range(0, len(data), _CHUNK):
            ends.clear()
            scan(data[low : low + _CHUNK + self._overlap], match_event_handler=on_match, scratch=scratch)
            found: list[tuple[int, tuple[int, ...]]] = []
            append = found.append
            for number, end in ends:
                size, indexes, escape = info[number]
                start = end - size
                if start >= _CHUNK:
                    continue  # starts in the next chunk, which finds it
                if escape:
                    if escapes is not None:
                        escapes.append(low + start)
                    continue
                append((low + start, indexes))  # type: ignore[arg-type]
            found.sort(key=_START)
            yield from found

    def _hits_pure(self, data: bytes, escapes: list[int] | None) -> Iterator[tuple[int, tuple[int, ...]]]:
        """``hits`` with ``_KeywordIndex``: the same hits in the same order, no native library."""
        if escapes is not None:
            escapes += (m.start() for m in _TOKEN_ESCAPE.finditer(data))
        lowered = data.lower() if self._lower else data
        for low in range(0, len(data), _CHUNK):
            end = low + _CHUNK + self._overlap
            found = [
                (low + start, rules[kw])
                for ignore_case, occurrences, rules in self._find
                for start, kw in occurrences((lowered if ignore_case else data)[low:end])
                if start < _CHUNK
            ]
            found.sort(key=_START)
            yield from found


def _collector(ends: list[tuple[int, int]]) -> Callable[..., None]:
    """A Hyperscan match handler that records ``(literal id, end offset)`` into ``ends``."""
    append = ends.append

    def on_match(number: int, start: int, end: int, flags: int, context: object) -> None:
        append((number, end))

    return on_match


def _escape_literals() -> set[bytes]:
    """The escapes that may hide a token character: ``\\/`` and ``\\u00XX`` (lower-case hex)."""
    return {b"\\/"} | {b"\\u00%02x" % c for c in TOKEN_CHARS if 0x20 <= c < 0x80}


_START = itemgetter(0)


def _backslash_run(data: bytes, pos: int) -> int:
    """Length of the run of backslashes that ends right before ``data[pos]``.

    Read in growing slices with C-level ``rstrip``, so a run of any length costs about its length,
    not a Python step per byte.
    """
    if pos <= 0 or data[pos - 1] != _BACKSLASH:
        return 0
    size = 16
    while True:
        low = pos - size
        if low <= 0:
            chunk = data[:pos]
            return len(chunk) - len(chunk.rstrip(b"\\"))
        run = size - len(data[low:pos].rstrip(b"\\"))
        if run < size:
            return run
        size *= 8


def _inside_escape(data: bytes, pos: int) -> bool:
    """True if ``data[pos]`` continues an escape sequence (the ``n`` of ``\\n``, a hex digit of ``\\u00e9``).

    Escapes are read at the outer level: after an even backslash run (an escaped backslash) a byte
    starts a new character. Replacing there keeps the line valid JSON; inside a nested JSON string
    it may leave ``\\`` before the replacement, which is the price of never skipping a secret.
    """
    if _backslash_run(data, pos) % 2:
        return True
    # One of the four hex digits of \uXXXX: a "u" opening an escape sits 1 to 4 bytes back, with
    # only hex digits between it and pos.
    for digits_before in range(4):
        u = pos - digits_before - 1
        if u < 1:
            return False
        if digits_before and data[u + 1] not in _HEX:
            return False
        if data[u] == 0x75 and _backslash_run(data, u) % 2:
            return True
    return False


def _check_span(line: bytes, start: int, end: int) -> None:
    """Raise ``_UnsafeSpan`` unless replacing ``line[start:end]`` keeps quotes and escapes whole."""
    if (
        line.find(b'"', start, end) >= 0
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


def _placeholder(reason: str, withheld_bytes: int) -> bytes:
    """The valid JSON line that stands for a withheld line (never its content)."""
    return b'{"tracemirror":"line_withheld","reason":"%s","bytes":%d}' % (reason.encode(), withheld_bytes)


def _kept(rule: _Compiled, data: bytes, start: int, end: int) -> bool:
    """True if the rule's entropy floor or allowlist says ``data[start:end]`` is no secret."""
    if rule.entropy is not None and shannon_entropy(data[start:end]) < rule.entropy:
        return True
    return any(allowed.fullmatch(data, start, end) for allowed in rule.allowlist)


def _quick_probe(line: bytes) -> bytes:
    """``line`` with token-hiding escapes decoded, without a position map (mostly C-level work).

    The same bytes as ``_probe`` gives: a backslash run of any length before ``u00XX`` or ``/``
    is one escape (``\\u002d`` one level down still hides a dash).
    """
    if b"\\u00" in line:
        line = _U00_RUN.sub(lambda m: bytes((int(m.group(1), 16),)), line)
    if b"\\/" in line:
        line = _SLASH_RUN.sub(b"/", line)
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
    for m in _TOKEN_ESCAPE_RUN.finditer(line):
        start, end = m.span()
        parts.append(line[prev:start])
        probe_len += start - prev
        digits = m.group(1)
        parts.append(b"/" if digits is None else bytes((int(digits, 16),)))
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
    ``redact`` returns its input unchanged and no counts. A bad rule (name, keywords, pattern,
    entropy, allowlist) raises ``ValueError`` here, never later in ``redact``. ``native``
    picks the keyword scan: None uses ``hyperscan`` when installed, False the pure-Python one
    (the same results; tests compare them).
    """

    __slots__ = ("_detectors", "_enabled", "_keywords", "_matchers", "_rules")

    def __init__(
        self, rules: Sequence[Rule] | None = None, *, enabled: bool = True, native: bool | None = None
    ) -> None:
        source = DEFAULT_RULES if rules is None else tuple(rules)
        self._enabled = enabled
        allow_cache: dict[str, re.Pattern[bytes]] = {}
        self._rules = tuple(_compile(rule, allow_cache) for rule in source)
        self._matchers = tuple(rule.regex.match for rule in self._rules)
        self._detectors = tuple(i for i, rule in enumerate(self._rules) if rule.detect is not None)
        names = [rule.name for rule in self._rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        specs: dict[tuple[bytes, bool], list[int]] = {}
        for index, rule in enumerate(source):
            ignore_case = bool(rule.keywords_ignore_case)
            for kw in dict.fromkeys(rule.keywords):
                key = kw.encode("ascii")
                specs.setdefault((key.lower() if ignore_case else key, ignore_case), []).append(index)
        native = native_available() if native is None else native
        self._keywords = _Keywords(specs, native=native)

    @property
    def enabled(self) -> bool:
        """Whether ``redact`` changes anything."""
        return self._enabled

    @property
    def native(self) -> bool:
        """Whether keywords are found with ``hyperscan`` (else with the pure-Python scan)."""
        return self._keywords.native

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
            pass
        # Something outside the per-line steps failed: redo it line by line, and withhold any
        # line that still fails (fail closed).
        try:
            return self._redact_line_by_line(data)
        except Exception:
            return _withhold_all(data)

    def _redact_line_by_line(self, data: bytes) -> Redaction:
        out: list[bytes] = []
        counts: dict[str, int] = {}
        start = 0
        while start < len(data):
            end = _line_end(data, start)
            line = data[start:end]
            try:
                result = self._redact_buffer(line)
                out.append(result.data)
                for name, n in result.counts.items():
                    counts[name] = counts.get(name, 0) + n
            except Exception:
                out.append(_placeholder(_ERROR, len(line)))
                counts[WITHHELD_RULE] = counts.get(WITHHELD_RULE, 0) + 1
            out.append(data[end : end + 1])
            start = end + 1
        return Redaction(b"".join(out), counts)

    def _find(
        self, data: bytes, escapes: list[int] | None = None
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, str]]]:
        """Spans to replace, ``(start, end, rule index)`` (unsorted, may overlap), and the
        ``(start, end, reason)`` of what cannot be replaced safely: matches that may have been cut
        short, blocks a detector cannot cut (their lines are withheld)."""
        spans: list[tuple[int, int, int]] = []
        cut: list[tuple[int, int, str]] = []
        rules = self._rules
        last_end = [0] * len(rules)  # where each rule's previous match ended
        size = len(data)
        skip_to = 0  # hits before this sit on lines already withheld
        escaped: dict[int, bool] = {}
        matchers = self._matchers
        detected: list[int] = []  # detector rules whose keyword occurs: they run once, after the scan
        if self._detectors:
            matchers = _noting_detectors(matchers, self._detectors, detected)
        for at, indexes in self._keywords.hits(data, escapes):
            if at < skip_to:
                continue
            window = at + MAX_MATCH
            for index in indexes:
                if at < last_end[index]:
                    continue
                m = matchers[index](data, at, window)
                if m is None:
                    continue
                rule = rules[index]
                match_end = m.end()
                last_end[index] = match_end
                if rule.unbounded and window < size and match_end > window - _CUT_SLACK:
                    cut.append((at, match_end, _TOO_LONG))
                    skip_to = _line_end(data, match_end)
                    break
                start, end = m.span(rule.group)
                if not 0 <= start < end:
                    continue
                if (rule.entropy is not None or rule.allowlist) and _kept(rule, data, start, end):
                    continue
                # A match that starts inside an escape (the "npm_" of "\npm_") is not a secret
                # in decoded text, and replacing it would break the escape.
                inside = escaped.get(start)
                if inside is None:
                    inside = escaped[start] = _inside_escape(data, start)
                if not inside:
                    spans.append((start, end, index))
        for index in dict.fromkeys(detected):
            blocks = rules[index].detect(data)  # type: ignore[misc]
            spans += ((start, end, index) for start, end in blocks.spans)
            cut += ((start, end, _UNSAFE) for start, end in blocks.unsafe)
        return spans, cut

    def _find_decoded(
        self, data: bytes, line_start: int, line_end: int
    ) -> tuple[list[tuple[int, int, int]], str | None]:
        """Spans of one line found in its decoded probe, mapped back to raw positions in ``data``,
        and why the line must be withheld instead (a match in the probe that cannot be replaced
        safely), if it must."""
        line = data[line_start:line_end]
        quick = _quick_probe(line)
        found, cut = self._find(quick)
        if cut:
            return [], cut[0][2]
        if not found:
            return [], None  # the usual case: no secret, so no position map is needed
        probe, where, extra = _probe(line)
        if probe != quick:
            raise RuntimeError("probes disagree")  # cannot map spans back: withhold the line
        spans = []
        for start, end, index in found:
            i = bisect_left(where, start)
            raw_start = line_start + start + (extra[i - 1] if i else 0)
            i = bisect_left(where, end)
            raw_end = line_start + end + (extra[i - 1] if i else 0)
            if not _inside_escape(data, raw_start):
                spans.append((raw_start, raw_end, index))
        return spans, None

    def _redact_buffer(self, data: bytes) -> Redaction:
        escapes: list[int] = []
        spans, cut = self._find(data, escapes)
        withheld: dict[int, tuple[int, str]] = {}  # line start -> (line end, reason)
        for start, end, reason in cut:
            line_start = data.rfind(b"\n", 0, start) + 1
            while True:  # every line the match touched
                line_end = _line_end(data, line_start)
                withheld[line_start] = (line_end, reason)
                if line_end >= end or line_end >= len(data):
                    break
                line_start = line_end + 1

        # Lines hiding a token character behind an escape are scanned again, decoded.
        escapes.sort()
        line_end = -1
        i = 0
        while i < len(escapes):
            at = escapes[i]
            i += 1
            if not _TOKEN_ESCAPE.match(data, at):
                continue  # no escape in the original bytes (a lowercased \U002D)
            newline = data.rfind(b"\n", line_end + 1, at)
            line_start = line_end + 1 if newline < 0 else newline + 1
            line_end = _line_end(data, at)
            if line_start not in withheld:
                try:
                    found, unsafe = self._find_decoded(data, line_start, line_end)
                    if unsafe:
                        withheld[line_start] = (line_end, unsafe)
                    spans.extend(found)
                except Exception:
                    withheld[line_start] = (line_end, _ERROR)
            i = bisect_right(escapes, line_end, i)  # the rest of this line's escapes

        if not spans and not withheld:
            return Redaction(data, {})

        # Merge overlaps; on a tie the earlier (more specific) rule names the span.
        spans.sort(key=lambda span: (span[0], -span[1], span[2]))
        merged: list[list[int]] = []
        for start, end, index in spans:
            if merged and start < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end, index])

        # Cut spans into per-line pieces; a span is counted on the line where it starts. Spans are
        # sorted, so each line end is searched for once.
        lines: dict[int, tuple[int, list[tuple[int, int, bytes]], list[str]]] = {}
        line_start, line_end = 0, -1  # the line of the previous span ([start, end of line))
        for start, end, index in merged:
            rule = self._rules[index]
            if start > line_end:
                newline = data.rfind(b"\n", line_end + 1, start)
                line_start = line_end + 1 if newline < 0 else newline + 1
                line_end = _line_end(data, line_start)
            first = True
            while True:
                entry = lines.setdefault(line_start, (line_end, [], []))
                if first:
                    entry[2].append(rule.name)
                    first = False
                piece_end = min(end, line_end)
                if start < piece_end:
                    entry[1].append((start - line_start, piece_end - line_start, rule.placeholder))
                if end <= line_end + 1 or line_end >= len(data):
                    break
                line_start = start = line_end + 1
                line_end = _line_end(data, line_start)

        out: list[bytes] = []
        counts: dict[str, int] = {}
        prev = 0
        for line_start in sorted(lines.keys() | withheld.keys()):
            reason: str | None = None
            if line_start in withheld:
                line_end, reason = withheld[line_start]
                names: list[str] = []
            else:
                line_end, pieces, names = lines[line_start]
            line = data[line_start:line_end]
            if reason is None:
                try:
                    new_line = _apply(line, pieces)
                except _UnsafeSpan:
                    reason = _UNSAFE
                except Exception:
                    reason = _ERROR
            if reason is not None:
                new_line = _placeholder(reason, len(line))
                names = [WITHHELD_RULE]
            for name in names:
                counts[name] = counts.get(name, 0) + 1
            out.append(data[prev:line_start])
            out.append(new_line)
            prev = line_end
        out.append(data[prev:])
        return Redaction(b"".join(out), counts)


def _noting_detectors(
    matchers: Sequence[Callable[..., Any]], detectors: Sequence[int], noted: list[int]
) -> list[Callable[..., Any]]:
    """``matchers`` where each detector rule's matcher notes its index in ``noted`` and matches nothing.

    So the keyword scan says whether a detector has anything to look at, at no cost to the other
    rules' hits, and the detector runs once per buffer, not once per keyword occurrence.
    """
    out = list(matchers)
    for index in detectors:

        def note(data: bytes, at: int, window: int, _index: int = index) -> None:
            noted.append(_index)
            return None

        out[index] = note
    return out


def _withhold_all(data: bytes) -> Redaction:
    """Every line withheld: the last resort when even line-by-line redaction failed."""
    sizes = [len(line) for line in data.split(b"\n")]
    last = sizes.pop()  # the bytes after the last newline (usually none)
    out = b"".join(_placeholder(_ERROR, n) + b"\n" for n in sizes)
    if last:
        out += _placeholder(_ERROR, last)
    return Redaction(out, {WITHHELD_RULE: len(sizes) + (1 if last else 0)})


def _line_end(data: bytes, pos: int) -> int:
    """Index of the ``\\n`` ending the line that holds ``pos`` (or ``len(data)``)."""
    end = data.find(b"\n", pos)
    return len(data) if end < 0 else end


def _max_width(regex: re.Pattern[bytes]) -> int | None:
    """Most bytes a match of ``regex`` can span (lookarounds aside); None if unbounded or unknown."""
    try:
        hi = re._parser.parse(regex.pattern, regex.flags).getwidth()[1]  # type: ignore[attr-defined]
    except Exception:
        return None
    return hi if hi < MAX_MATCH else None


def _compile(rule: Rule, allow_cache: dict[str, re.Pattern[bytes]]) -> _Compiled:
    """Check one rule and compile its pattern; raise ``ValueError`` if it is unusable."""
    if not _NAME.match(rule.name) or rule.name in _RESERVED_NAMES:
        raise ValueError(f"rule name {rule.name!r}: use lowercase letters, digits and dashes")
    if not rule.keywords or not all(kw and kw.isascii() for kw in rule.keywords):
        raise ValueError(f"rule {rule.name!r}: keywords must be non-empty ASCII literals")
    try:
        regex = re.compile(rule.pattern.encode("ascii") if not rule.detector else b"(?!)")
    except (re.error, UnicodeEncodeError) as exc:
        raise ValueError(f"rule {rule.name!r}: bad pattern: {exc}") from exc
    if not 0 <= rule.secret_group <= regex.groups:
        raise ValueError(f"rule {rule.name!r}: no group {rule.secret_group}")
    entropy = rule.entropy
    if entropy is not None:
        if isinstance(entropy, bool) or not isinstance(entropy, int | float) or not 0 <= entropy <= 8:
            raise ValueError(f"rule {rule.name!r}: entropy must be a number of bits per byte, 0 to 8")
        entropy = float(entropy)
    allowlist = rule.allowlist
    if isinstance(allowlist, str | bytes):
        raise ValueError(f"rule {rule.name!r}: allowlist must be a tuple of regexes")
    allowed = []
    for source in allowlist:  # compiled once per Redactor, shared by the rules that list it
        if source not in allow_cache:
            try:
                allow_cache[source] = re.compile(source.encode("ascii"))
            except (re.error, UnicodeEncodeError, AttributeError) as exc:
                raise ValueError(f"rule {rule.name!r}: bad allowlist regex {source!r}: {exc}") from exc
        allowed.append(allow_cache[source])
    detect = None
    if rule.detector:
        if rule.detector not in _DETECT:
            raise ValueError(f"rule {rule.name!r}: unknown detector {rule.detector!r}")
        detect = _DETECT[rule.detector]
        regex = re.compile(b"(?!)")  # never runs: the detector finds the spans
    return _Compiled(
        name=rule.name,
        regex=regex,
        group=rule.secret_group,
        placeholder=f"[REDACTED:{rule.name}]".encode(),
        unbounded=_max_width(regex) is None,
        entropy=entropy,
        allowlist=tuple(allowed),
        detect=detect,
    )
