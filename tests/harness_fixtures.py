"""What every harness's test fixture provides, for the contract suite (tests/test_harness_contract.py).

Each harness has a module ``tests/fixture_<name>.py`` (``-`` as ``_``) exposing ``FIXTURE``, a
``HarnessFixture``. It writes sessions in the agent's real on-disk format, as the agent would
(appending lines, inserting rows, rewriting a document), and says independently of tracemirrord
what the bucket copy must hold: the JSON records, in order.
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any, Protocol

from tracemirrord.harnesses import REGISTRY


class FixtureSession(Protocol):
    harness: str
    session_id: str  # the id tracemirrord must mirror it under

    def append(self, n: int) -> None:
        """Add ``n`` records as the agent would (another process may call this too)."""
        ...

    def expected(self) -> list[Any]:
        """The JSON values the reassembled bucket copy must hold, in order (redaction on; no secrets)."""
        ...

    def remove(self) -> None:
        """Delete the session's source as the agent's own cleanup would."""
        ...


class HarnessFixture(Protocol):
    harness: str

    def env(self, home: Path) -> dict[str, str]:
        """Environment entries that point the agent's root below ``home`` ({} for the default paths)."""
        ...

    def create(self, home: Path, rng: random.Random) -> FixtureSession:
        """A new session (with at least one record, so it exists for discovery)."""
        ...


def load_fixtures() -> dict[str, HarnessFixture]:
    """The fixture of every registered harness by name, and its variants (other on-disk formats of
    the same agent, a module's ``VARIANTS``) as ``<name>/<variant>``; a harness without one is an
    error."""
    found: dict[str, HarnessFixture] = {}
    for name in REGISTRY:
        module = importlib.import_module(f"fixture_{name.replace('-', '_')}")
        assert module.FIXTURE.harness == name, f"tests/fixture_{name}.py describes {module.FIXTURE.harness}"
        found[name] = module.FIXTURE
        for variant, fixture in getattr(module, "VARIANTS", {}).items():
            assert fixture.harness == name
            found[f"{name}/{variant}"] = fixture
    return found
