"""The harness registry: every agent tracemirrord can follow, by name.

Harnesses named in config.KNOWN_HARNESSES but absent here are reported as not yet supported.
"""

from __future__ import annotations

from tracemirrord.harnesses.base import Harness, JsonlHarness, SessionRef, UnsafeSessionId
from tracemirrord.harnesses.claude_code import ClaudeCode
from tracemirrord.harnesses.codex import Codex
from tracemirrord.harnesses.gemini_cli import GeminiCli
from tracemirrord.harnesses.hermes import Hermes
from tracemirrord.harnesses.openclaw import OpenClaw
from tracemirrord.harnesses.opencode import Opencode
from tracemirrord.harnesses.pi import Pi

REGISTRY: dict[str, type[Harness]] = {
    h.name: h for h in (ClaudeCode, Codex, Pi, Opencode, Hermes, OpenClaw, GeminiCli)
}

__all__ = ["REGISTRY", "Harness", "JsonlHarness", "SessionRef", "UnsafeSessionId"]
