"""claude-code sessions for the harness contract suite (tests/fixture_jsonl.py)."""

from fixture_jsonl import JsonlFixture

FIXTURE = JsonlFixture("claude-code")
