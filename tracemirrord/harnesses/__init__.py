"""The harness registry: every agent tracemirrord can follow, by name, one line each.

This list is the only one: config's accepted names, ``--help`` and ``--check`` read it. Adding an
agent is one module in this package and one line below (docs/adding-a-harness.md).
"""

from __future__ import annotations

import importlib

from tracemirrord.harnesses.base import Harness, JsonlHarness, SessionRef, UnsafeSessionId

_HARNESSES = (
    "claude_code:ClaudeCode",
    "codex:Codex",
    "pi:Pi",
    "openclaw:OpenClaw",
    "hermes:Hermes",
    "opencode:Opencode",
    "gemini_cli:GeminiCli",
)


def _load(spec: str) -> type[Harness]:
    module, cls = spec.split(":")
    return getattr(importlib.import_module(f"tracemirrord.harnesses.{module}"), cls)


REGISTRY: dict[str, type[Harness]] = {cls.name: cls for cls in map(_load, _HARNESSES)}

__all__ = ["REGISTRY", "Harness", "JsonlHarness", "SessionRef", "UnsafeSessionId"]
