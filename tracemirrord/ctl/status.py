"""Verbs that ask the running daemon: status, sessions, flush, metrics (being written)."""

from tracemirrord.ctl.common import Verb

VERBS: tuple[Verb, ...] = ()
