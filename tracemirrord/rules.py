"""Redaction rules as data: which secrets tracemirror scrubs, and the shape of one rule.

Owns ``Rule``, ``DEFAULT_RULES`` and ``load_rules``. The rules themselves live in
``default_rules.toml`` (package data) so they can be read, reviewed and tested one by one; the
engine that runs them is ``tracemirrord.redact``.

A rule is a name, a byte regex and the literal keywords that must be present for the regex to
run. Contract every rule keeps (``tests/test_rules_catalog.py`` checks each one on its own):

- **Keywords anchor the match.** Every match of ``pattern`` starts exactly where one of
  ``keywords`` starts (case-sensitive). The engine finds all keyword occurrences in a few passes
  over the buffer and runs ``pattern.match`` only there, so a secret without its keyword is never
  seen. Context before the keyword goes into a lookbehind (``(?<=[Bb])earer``); case variants are
  separate keywords (``keywords_ignore_case`` says the format is case-insensitive, for an engine
  that can fold case; the pattern itself accepts the variants).
- **The replaced group may reach back.** A secret whose fixed marker sits in its middle or at its
  end (Mailchimp's ``-us6``, Azure's ``Q~``, New Relic's ``NRAL``) is keyed by that marker and
  captured by a lookahead inside a lookbehind, so ``secret_group`` starts before the keyword.
  The engine takes ``match.span(secret_group)`` on the whole buffer, so this needs no support.
- **No start anchor on ``\\b``.** In raw JSON ``...\\nAKIA...`` the ``n`` of the escape is a word
  character; anchoring on the keyword itself is what catches a secret right after an escape. A
  rule whose short keyword also occurs inside words uses a lookbehind that rejects a letter
  before it but accepts the ``n`` of ``\\n``.
- **Bounded and end-anchored.** Every repetition over a token class is bounded (``{20,300}``) and
  every token ends with a negative lookahead over its class, so a longer run does not match a
  prefix of itself and a keyword repeated many times costs a bounded amount per occurrence.
- **JSON-safe spans.** The replaced span (``secret_group``, 0 = whole match) never contains ``"``
  or ``\\`` except whole escape sequences that the pattern consumes on purpose (``\\n`` inside an
  escaped PEM block); token character classes exclude both, so a replacement never breaks an
  escape or a string. The engine checks this again and fails closed if a span is unsafe.
- **Escaped forms come for free.** Characters hidden as ``\\u002d`` or ``\\/`` are decoded by the
  engine before matching (for lines that hold them), so patterns are written for plain text;
  the characters a secret may hide that way are ``TOKEN_CHARS``.
- **No generic entropy rule.** Git SHAs, UUIDs, digests, integrity hashes and base64 images are
  everywhere in transcripts; every rule is keyed by a prefix or a key name. A rule whose token
  alphabet is that of base64 (``AIza``) ends with a boundary so a run inside image data does not
  match. ``entropy`` and ``allowlist`` only filter matches of patterns that are already specific:
  every rule is correct without them.
"""

from __future__ import annotations

import math
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

__all__ = [
    "DEFAULT_RULES",
    "DETECTORS",
    "TOKEN_CHARS",
    "Rule",
    "configured_rules",
    "load_rules",
    "parse_rules",
    "shannon_entropy",
]

#: Characters a secret (or a keyword) may contain; an escape such as ``\\u002d`` that decodes to
#: one of them makes the engine scan the line in decoded form too. Others (Go's ``\\u003c``) do not.
TOKEN_CHARS = frozenset((string.ascii_letters + string.digits + "-_./+=~:, ").encode())

_RULES_FILE = "default_rules.toml"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_REQUIRED = ("name", "description", "keywords")
_OPTIONAL = ("pattern", "detector", "secret_group", "entropy", "allowlist", "keywords_ignore_case")
#: Structural detectors: code the engine runs where a rule's keyword occurs, for secrets no regex
#: can take whole (a private key block under arbitrary per-line prefixes; ``tracemirrord.pem``).
DETECTORS = ("private-key-block",)


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind of secret: a byte regex that runs only where one of its keywords occurs.

    ``name`` is the rule's id in counts and in the replacement ``[REDACTED:<name>]``
    (lowercase letters, digits and dashes). ``pattern`` is a regex over bytes, written as ASCII
    text; every match starts at a keyword. ``secret_group`` is the group that is replaced (0: the
    whole match), so context such as ``Bearer`` or a key name stays readable.

    ``entropy``: minimum Shannon entropy (bits per byte) of the replaced span; a span below it is
    kept as not a secret (``xxxxxxxx``). ``allowlist``: regexes; a replaced span that fullmatches
    one is kept (a documented placeholder). ``keywords_ignore_case``: the format is
    case-insensitive; ``keywords`` still lists the case variants the pattern accepts.
    ``detector``: the name of a structural detector (``DETECTORS``) that finds the spans where a
    keyword occurs, for a rule that has no ``pattern``.
    """

    name: str
    pattern: str
    keywords: tuple[str, ...]
    secret_group: int = 0
    description: str = ""
    entropy: float | None = None
    allowlist: tuple[str, ...] = ()
    keywords_ignore_case: bool = False
    detector: str = ""  # one of DETECTORS instead of a pattern ("": the pattern is the rule)


def shannon_entropy(data: bytes) -> float:
    """Shannon entropy of ``data`` in bits per byte (0.0 for empty input): the ``entropy`` floor's measure."""
    if not data:
        return 0.0
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in (data.count(b) for b in set(data)))


def load_rules(text: str, source: str = "rules") -> tuple[Rule, ...]:
    """Parse and validate a rules TOML document (``[[rule]]`` tables); raise ``ValueError`` naming the rule.

    Checked here, so a broken rule file fails at import with a message that says which rule is
    wrong, never later while a line is redacted: TOML syntax, unknown or missing keys, types,
    names (``[a-z0-9-]``, unique), keywords (non-empty ASCII), patterns and allowlist entries
    that compile as byte regexes, and ``secret_group`` within the pattern's groups.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"rule"}
    if unknown:
        raise ValueError(f"{source}: unknown top-level keys {sorted(unknown)} (only [[rule]] tables)")
    tables = doc.get("rule", [])
    if not isinstance(tables, list):
        raise ValueError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    return parse_rules(tables, source)


def parse_rules(tables: list[Any], source: str = "rules") -> tuple[Rule, ...]:
    """Rules from already-parsed ``[[rule]]`` tables (a rules file, or the config file's
    ``[[redaction.rules]]``); the same checks as ``load_rules``, errors naming ``source``."""
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, table in enumerate(tables, 1):
        rule = _parse_rule(table, f"{source}: rule #{index}")
        if rule.name in seen:
            raise ValueError(f"{source}: rule #{index} {rule.name!r}: duplicate name")
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _parse_rule(table: Any, where: str) -> Rule:
    """One ``[[rule]]`` table as a ``Rule``; ``where`` names it in errors until its name is known."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: must be a table")
    name = table.get("name")
    if isinstance(name, str):
        where = f"{where} {name!r}"
    unknown = sorted(set(table) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (allowed: {', '.join(_REQUIRED + _OPTIONAL)})")
    missing = [key for key in _REQUIRED if key not in table]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: name must be lowercase letters, digits and dashes")
    description = table["description"]
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"{where}: description must be a non-empty string")
    keywords = table["keywords"]
    if (
        not isinstance(keywords, list)
        or not keywords
        or not all(isinstance(kw, str) and kw and kw.isascii() for kw in keywords)
    ):
        raise ValueError(f"{where}: keywords must be a non-empty list of non-empty ASCII strings")
    detector = table.get("detector", "")
    if "pattern" in table and detector:
        raise ValueError(f"{where}: give a pattern or a detector, not both")
    if detector:
        if detector not in DETECTORS:
            raise ValueError(f"{where}: unknown detector {detector!r} (known: {', '.join(DETECTORS)})")
        regex = re.compile(b"(?!)")
    elif "pattern" in table:
        regex = _compile(table["pattern"], f"{where}: pattern")
    else:
        raise ValueError(f"{where}: missing pattern")
    group = table.get("secret_group", 0)
    if type(group) is not int or not 0 <= group <= regex.groups:
        raise ValueError(f"{where}: secret_group must be a group of the pattern (0 to {regex.groups})")
    entropy = table.get("entropy")
    if entropy is not None and (type(entropy) not in (int, float) or not 0 < entropy <= 8):
        raise ValueError(f"{where}: entropy must be a number of bits per byte above 0 and at most 8")
    allowlist = table.get("allowlist", [])
    if not isinstance(allowlist, list):
        raise ValueError(f"{where}: allowlist must be a list of regexes")
    for entry in allowlist:
        _compile(entry, f"{where}: allowlist entry")
    ignore_case = table.get("keywords_ignore_case", False)
    if type(ignore_case) is not bool:
        raise ValueError(f"{where}: keywords_ignore_case must be true or false")
    return Rule(
        name=name,
        pattern=table.get("pattern", ""),
        keywords=tuple(keywords),
        secret_group=group,
        description=description,
        entropy=None if entropy is None else float(entropy),
        allowlist=tuple(allowlist),
        keywords_ignore_case=ignore_case,
        detector=detector,
    )


def configured_rules(
    extra: Sequence[Rule] = (),
    allowlist: Sequence[str] = (),
    disable: Sequence[str] = (),
    defaults: Sequence[Rule] | None = None,
) -> tuple[Rule, ...]:
    """The default rules less ``disable`` (names), then ``extra``, each with ``allowlist`` added.

    What a user's config file may change (``[redaction]``): rules of their own (a token format of
    their company), spans never to redact (a documented example key their tests use), default
    rules to switch off. Raises ``ValueError`` for an unknown name to disable, an extra rule whose
    name is taken, or an allowlist entry that does not compile.
    """
    base = DEFAULT_RULES if defaults is None else tuple(defaults)
    names = {rule.name for rule in base}
    off = set(disable)
    unknown = sorted(off - names)
    if unknown:
        raise ValueError(f"cannot disable unknown rule {', '.join(unknown)}")
    for rule in extra:
        if rule.name in names:
            raise ValueError(f"rule {rule.name!r} is a default rule: give yours another name, or disable it")
    for entry in allowlist:
        _compile(entry, "allowlist entry")
    kept = [rule for rule in base if rule.name not in off] + list(extra)
    if not allowlist:
        return tuple(kept)
    return tuple(replace(rule, allowlist=(*rule.allowlist, *allowlist)) for rule in kept)


def _compile(pattern: Any, where: str) -> re.Pattern[bytes]:
    """Compile ``pattern`` as the engine does (ASCII text, bytes regex); ValueError names ``where``."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{where} must be a non-empty string")
    try:
        return re.compile(pattern.encode("ascii"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} must be ASCII: {exc}") from exc
    except re.error as exc:
        raise ValueError(f"{where} does not compile: {exc}") from exc


DEFAULT_RULES: tuple[Rule, ...] = load_rules(
    resources.files("tracemirrord").joinpath(_RULES_FILE).read_text(encoding="utf-8"), _RULES_FILE
)
"""The rules ``Redactor()`` runs by default, in file order (a tie between two rules goes to the earlier)."""
