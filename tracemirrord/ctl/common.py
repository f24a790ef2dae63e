"""What every ``tracemirrorctl`` verb shares: the verb shape, one-line errors, and opening the bucket.

Verbs that talk to the daemon use only ``control.schema`` and ``ctl.client``; verbs that read the
bucket (``cat``, ``verify``, ``restore``, ``status --bucket``) import the settings and store code
inside ``open_bucket``, so ``tracemirrorctl status`` loads none of it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracemirrord.control.schema import EXIT_DEGRADED

if TYPE_CHECKING:
    from tracemirrord.config import Settings
    from tracemirrord.store.base import ObjectStore


class CtlError(Exception):
    """A failure shown as one line ``tracemirrorctl: <message>`` with exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_DEGRADED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Verb:
    """One sub-command: its name, its one-line help, its arguments and what runs it (-> exit code)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


def load_settings_for(args: argparse.Namespace) -> Settings:
    """The daemon's settings as the daemon would read them (env, ``--config``, defaults)."""
    from tracemirrord.config import ConfigError, load_settings

    try:
        return load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        raise CtlError(str(exc), code=2) from None


def open_bucket(args: argparse.Namespace) -> tuple[ObjectStore, Settings]:
    """The bucket and settings the daemon would use; the caller closes the store."""
    from tracemirrord.config import build_store

    settings = load_settings_for(args)
    try:
        return build_store(settings), settings
    except ValueError as exc:
        raise CtlError(f"bucket: {exc}", code=2) from None


def config_path(args: argparse.Namespace) -> Path | None:
    value: Any = getattr(args, "config", None)
    return Path(value) if value is not None else None


def safe_text(text: str) -> str:
    """``text`` fit to print: URL credentials masked and secrets redacted (the daemon's log filter)."""
    from tracemirrord.logs import secret_free

    return secret_free(text)
