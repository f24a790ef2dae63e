"""Verbs that read the bucket directly: cat, verify, restore (being written)."""

from tracemirrord.ctl.common import Verb

VERBS: tuple[Verb, ...] = ()
