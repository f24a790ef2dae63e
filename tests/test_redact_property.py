"""Property test over every rule: random JSON with planted secrets keeps its shape and loses the secrets.

Each planted text is one rule's true positive from the catalog (``test_rules_catalog.CASES``:
a template with its context, and the secret in it). Hypothesis plants them in keys, values and
strings of JSON nested inside strings (once or twice), next to quotes, backslashes and escapes,
with dashes and slashes hidden behind ``\\u002d`` and ``\\/`` and non-ASCII text escaped or raw.
The expectations are built from the document, not from the redactor: the output parses, has the
same shape (types, list lengths, key count, non-secret strings untouched), and no planted secret
is left at any level, raw or decoded. Private keys are planted whole (tests/test_pem.py has every
line prefix).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_redact import strings
from test_rules_catalog import CASES

from tracemirrord.redact import WITHHELD_RULE, Redactor

REDACTOR = Redactor()
# Characters a planted text may have on either side: none of them can extend a token.
_BEFORE = [" ", "\n", "\t", '"', "'", ",", "(", "[", "\\", "> ", ": "]
_AFTER = [" ", "\n", "\t", '"', "'", ",", ")", "]", "\\", ". ", "\r\n"]
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_SCALARS = st.none() | st.booleans() | st.integers(min_value=0) | _TEXT
_DOCS = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_MARK = "\x00PLANT\x00"  # stands for one planted text until the document is serialised


@st.composite
def planted_lines(draw: st.DrawFn) -> tuple[bytes, Any, list[str], list[str]]:
    """A JSON line, the document it encodes, the planted secrets, and the rules planted."""
    doc = draw(_DOCS)
    texts: list[str] = []
    secrets: list[str] = []
    rules: list[str] = []

    def planted() -> str:
        rule, template, secret, _ = draw(st.sampled_from(CASES))
        before, after = draw(st.sampled_from(_BEFORE)), draw(st.sampled_from(_AFTER))
        text = before + template.replace("{s}", secret) + after
        texts.append(text)
        secrets.append(secret)
        rules.append(rule)
        return text

    def plant(value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if draw(st.integers(0, 4)) == 0:
                    key = key + planted() + key  # a secret in a key
                out[key] = plant(item)
            return out
        if isinstance(value, list):
            return [plant(item) for item in value]
        if isinstance(value, str) and draw(st.booleans()):
            cut = draw(st.integers(0, len(value)))
            return value[:cut] + planted() + value[cut:]
        return value

    top = plant({"type": "user", "doc": doc, "text": "see below"})
    if not secrets:
        top["text"] = planted()
    for _ in range(draw(st.integers(0, 2))):  # a tool result holding JSON text, nested once or twice
        top = {"type": "tool_result", "content": json.dumps(top, ensure_ascii=draw(st.booleans()))}
    raw = json.dumps(top, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    if draw(st.booleans()):
        raw = raw.replace("/", "\\/")  # a writer that escapes slashes (valid JSON)
    if draw(st.booleans()):
        raw = raw.replace("-", "\\u002d")  # no negative numbers here, so every dash is in a string
    return raw.encode() + b"\n", top, secrets, rules


def shape(value: Any) -> Any:
    """The structure of a JSON value with string contents left out (types, lengths, nesting)."""
    if isinstance(value, dict):
        return ("dict", sorted(repr(shape(item)) for item in value.values()))
    if isinstance(value, list):
        return ("list", [shape(item) for item in value])
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            return "str"
        return ("json", shape(inner)) if isinstance(inner, dict | list) else "str"
    return type(value).__name__


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted_lines())
def test_every_rule_planted_anywhere_keeps_the_shape_and_loses_the_secret(
    case: tuple[bytes, Any, list[str], list[str]],
) -> None:
    line, doc, secrets, rules = case
    result = REDACTOR.redact(line)
    assert WITHHELD_RULE not in result.counts
    assert result.data.endswith(b"\n") and result.data.count(b"\n") == 1
    parsed = json.loads(result.data)
    assert shape(parsed) == shape(doc)
    found = strings(parsed)
    for secret in secrets:
        assert secret.encode() not in result.data
        assert not any(secret in s for s in found), secret
    for rule in set(rules):  # each planted rule is named (another rule may take an overlapping span)
        assert f"[REDACTED:{rule}]" in "".join(found) or sum(result.counts.values()) >= len(secrets), rule
