"""Redaction rules as data: which secrets tracemirror scrubs, and the shape of one rule.

Owns ``Rule`` and ``DEFAULT_RULES``. The engine that runs them is ``tracemirrord.redact``.

A rule is a name, a byte regex and the literal keywords that must be present for the regex to
run. Contract every rule here keeps (``tests/test_redact.py`` checks each one on its own):

- **Keywords anchor the match.** Every match of ``pattern`` starts exactly where one of
  ``keywords`` starts (case-sensitive). The engine finds all keyword occurrences in a few passes
  over the buffer and runs ``pattern.match`` only there, so a secret without its keyword is never
  seen. Context before
  the keyword goes into a lookbehind (``(?<=[Bb])earer``); case variants are separate keywords.
- **No start anchor on ``\\b``.** In raw JSON ``...\\nAKIA...`` the ``n`` of the escape is a word
  character; anchoring on the keyword itself is what catches a secret right after an escape.
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
  match.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

__all__ = ["DEFAULT_RULES", "TOKEN_CHARS", "Rule"]

#: Characters a secret (or a keyword) may contain; an escape such as ``\\u002d`` that decodes to
#: one of them makes the engine scan the line in decoded form too. Others (Go's ``\\u003c``) do not.
TOKEN_CHARS = frozenset((string.ascii_letters + string.digits + "-_./+=~:, ").encode())


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind of secret: a byte regex that runs only where one of its keywords occurs.

    ``name`` is the rule's id in counts and in the replacement ``[REDACTED:<name>]``
    (lowercase letters, digits and dashes). ``pattern`` is a regex over bytes, written as ASCII
    text; every match starts at a keyword. ``secret_group`` is the group that is replaced (0: the
    whole match), so context such as ``Bearer`` or a key name stays readable.
    """

    name: str
    pattern: str
    keywords: tuple[str, ...]
    secret_group: int = 0
    description: str = ""


# Building blocks (bytes regex syntax, kept as str here). No token class admits `"` or `\`; the
# separators consume quotes and whole escapes only outside the replaced group, or whole escapes
# inside a PEM block.
_AWS_SECRET_SEP = r"""(?:\\*["'])?[ \t]*(?:=>|:=|[:=])?[ \t]*(?:\\*["'])?"""
_PEM_HEADER = r"[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
# Between the lines of a PEM block: real newlines, escaped newlines at any nesting depth (\n,
# \\n, ...) or spaces (a key flattened into one line). Every escape is consumed whole.
_PEM_SEP = r"(?:\r?\n|\\+[nrt]|[ \t])+"
_PEM_B64 = r"(?:[A-Za-z0-9+/=]|\\+/|\\+u00[0-9a-fA-F]{2})"
_PEM_LINE = rf"(?:{_PEM_B64}{{8,}}|(?:Proc-Type|DEK-Info|Comment|Version):[ \t]*[A-Za-z0-9,:. +/=-]*)"
_PEM_END = rf"-----END {_PEM_HEADER}"
_BEARER_TOKEN = r"[A-Za-z0-9._~+/-]"

DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        name="aws-access-key-id",
        pattern=r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])",
        keywords=("AKIA", "ASIA", "ABIA", "ACCA"),
        description=(
            "AWS access key id (long-term AKIA, temporary ASIA, ABIA, ACCA): exactly 20 characters, "
            "so a longer upper-case run (a constant, base64) does not match."
        ),
    ),
    Rule(
        name="anthropic-admin-key",
        pattern=r"sk-ant-admin\d{2}-[A-Za-z0-9_-]{20,}",
        keywords=("sk-ant-",),
        description="Anthropic Admin API key (sk-ant-admin01-...).",
    ),
    Rule(
        name="anthropic-api-key",
        pattern=r"sk-ant-(?!admin)[a-z]{2,8}\d{2}-[A-Za-z0-9_-]{20,}",
        keywords=("sk-ant-",),
        description="Anthropic API key (sk-ant-api03-...) and OAuth tokens (sk-ant-oat01-, sk-ant-ort01-).",
    ),
    Rule(
        name="openai-admin-key",
        pattern=r"sk-admin-[A-Za-z0-9_-]{20,}",
        keywords=("sk-",),
        description="OpenAI admin key (sk-admin-...).",
    ),
    Rule(
        name="openai-api-key",
        pattern=r"sk-(?:(?:proj|svcacct|None)-[A-Za-z0-9_-]{20,}|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})",
        keywords=("sk-",),
        description="OpenAI project, service-account and legacy keys (the legacy ones hold T3BlbkFJ).",
    ),
    Rule(
        name="github-token",
        pattern=r"gh[pousr]_[A-Za-z0-9]{36,}",
        keywords=("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
        description="GitHub classic PAT, OAuth, user-to-server, server-to-server and refresh tokens.",
    ),
    Rule(
        name="github-pat",
        pattern=r"github_pat_[A-Za-z0-9_]{22,}",
        keywords=("github_pat_",),
        description="GitHub fine-grained personal access token.",
    ),
    Rule(
        name="gitlab-pat",
        pattern=r"glpat-[A-Za-z0-9_-]{20,}",
        keywords=("glpat-",),
        description="GitLab personal access token.",
    ),
    Rule(
        name="slack-token",
        pattern=r"(?:xox[abprse]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{10,})",
        keywords=("xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-", "xapp-"),
        description="Slack bot, user, app, refresh and configuration tokens.",
    ),
    Rule(
        name="slack-webhook",
        pattern=r"hooks\.slack\.com/(?:services|workflows|triggers)/([A-Za-z0-9_/-]{20,})",
        keywords=("hooks.slack.com",),
        secret_group=1,
        description="Slack incoming webhook URL (the path after the kind is replaced).",
    ),
    Rule(
        name="huggingface-token",
        pattern=r"hf_[A-Za-z]{30,}",
        keywords=("hf_",),
        description="Hugging Face user access token.",
    ),
    Rule(
        name="huggingface-org-token",
        pattern=r"api_org_[A-Za-z]{30,}",
        keywords=("api_org_",),
        description="Hugging Face organization API token.",
    ),
    Rule(
        name="google-api-key",
        pattern=r"AIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_+/=-])",
        keywords=("AIza",),
        description="Google API key; the end boundary keeps base64 image data from matching.",
    ),
    Rule(
        name="stripe-api-key",
        pattern=r"[sr]k_live_[A-Za-z0-9]{20,}",
        keywords=("sk_live_", "rk_live_"),
        description="Stripe live secret and restricted keys.",
    ),
    Rule(
        name="npm-token",
        pattern=r"npm_[A-Za-z0-9]{36,}",
        keywords=("npm_",),
        description="npm access token.",
    ),
    Rule(
        name="aws-secret-access-key",
        pattern=(
            r"(?i:aws_?secret(?:_?access)?_?key|secret_?access_?key)"
            + _AWS_SECRET_SEP
            + r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
        keywords=(
            "aws_secret",
            "AWS_SECRET",
            "secret_access_key",
            "SECRET_ACCESS_KEY",
            "SecretAccessKey",
            "secretAccessKey",
        ),
        secret_group=1,
        description="AWS secret access key next to an aws_secret_access_key-like key (value replaced).",
    ),
    Rule(
        name="bearer-token",
        pattern=(
            r"(?:(?<=[Bb])earer|(?<=B)EARER)(?:[ \t]|\\t)+"
            rf"((?={_BEARER_TOKEN}{{0,512}}?[0-9]|{_BEARER_TOKEN}{{32}}){_BEARER_TOKEN}{{16,}}=*)"
        ),
        keywords=("earer", "EARER"),
        secret_group=1,
        description=(
            "Authorization: Bearer <token> in headers and curl -H lines (token replaced); the "
            "token has 16+ characters and a digit, or 32+ characters, so prose does not match."
        ),
    ),
    Rule(
        name="private-key",
        pattern=(
            # Greedy and linear: body lines, then a short last line only if END follows, then END.
            rf"-----BEGIN {_PEM_HEADER}"
            rf"(?:(?:{_PEM_SEP}{_PEM_LINE})+(?:{_PEM_SEP}{_PEM_B64}{{1,7}}(?={_PEM_SEP}-----END))?"
            rf"(?:{_PEM_SEP}{_PEM_END})?|{_PEM_SEP}{_PEM_END})"
        ),
        keywords=("-----BEGIN",),
        description=(
            "PEM/OpenSSH/PGP private key block, with \\n escapes inside a JSON string or real "
            "newlines in plain text; a block cut before its END line is redacted through its "
            "last base64 line."
        ),
    ),
)
