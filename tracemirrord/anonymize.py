"""The opt-in anonymizer (``TRACEMIRROR_ANONYMIZE``): who and where, replaced by stable placeholders.

For buckets shared outside a team: the user's home directory, user name, host name and e-mail
addresses are replaced after redaction, in parts and in meta.json alike. Placeholders are stable (the
same address is always the same placeholder), so a reader can still follow a transcript:

- the home directory (``/home/alice``, ``/Users/alice``) -> ``~``;
- the user name where it names the user (``/home/alice`` elsewhere, ``/Users/alice``, ``alice@``)
  -> ``[user]``; a bare word ``alice`` in prose is left alone (it is often also a common word);
- the host name as a whole token -> ``[host]`` (only names of 4 characters or more);
- an e-mail address -> ``[email:<8 hex>]``, the hex from a keyed hash of the address (the key is
  per daemon install, so the placeholder cannot be reversed by hashing guesses elsewhere).

Every replacement is of text made of characters that need no JSON escape, with JSON-safe
placeholders, so a JSON line stays valid with the same structure.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from tracemirrord.redact import Redaction, Redactor

ANONYMIZED_RULE = "anonymized"

_EMAIL = re.compile(
    rb"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}"
)
_SAFE = re.compile(r"^[A-Za-z0-9._@+-]+$")
_SEGMENT_END = rb"(?![A-Za-z0-9._@+-])"


@dataclass(frozen=True)
class Anonymized:
    data: bytes
    count: int


class Anonymizer:
    """Replaces one user's identity in transcript bytes; see the module docstring for what and how."""

    def __init__(self, *, home: str, user: str, host: str, key: bytes) -> None:
        self._key = key
        replacements: list[tuple[bytes, bytes]] = []
        home = home.rstrip("/")
        if home and len(home) > 1 and _SAFE.match(home.replace("/", "")):
            replacements.append((home.encode(), b"~"))
        if user and _SAFE.match(user):
            for parent in ("/home/", "/Users/"):
                replacements.append(((parent + user).encode(), f"{parent}[user]".encode()))
        # longest first (the home directory before /home/<user>), each only where a path segment
        # ends: /home/alice2 is someone else's
        self._paths = [
            (re.compile(re.escape(literal) + _SEGMENT_END), placeholder)
            for literal, placeholder in sorted(replacements, key=lambda r: -len(r[0]))
        ]
        self._user_at = (
            re.compile(rb"(?<![A-Za-z0-9._%+-])" + re.escape(user.encode()) + rb"@")
            if (user and _SAFE.match(user))
            else None
        )
        short_host = host.split(".")[0]
        self._host = (
            re.compile(rb"(?<![A-Za-z0-9_.-])" + re.escape(short_host.encode()) + rb"(?![A-Za-z0-9_-])")
            if len(short_host) >= 4 and _SAFE.match(short_host)
            else None
        )

    def email_placeholder(self, address: bytes) -> bytes:
        digest = hmac.new(self._key, address.lower(), hashlib.sha256).hexdigest()[:8]
        return f"[email:{digest}]".encode()

    def apply(self, data: bytes) -> Anonymized:
        count = 0
        for pattern, placeholder in self._paths:
            data, n = pattern.subn(placeholder, data)
            count += n
        data, n = _EMAIL.subn(lambda m: self.email_placeholder(m.group(0)), data)
        count += n
        if self._user_at is not None:
            data, n = self._user_at.subn(b"[user]@", data)
            count += n
        if self._host is not None:
            data, n = self._host.subn(b"[host]", data)
            count += n
        return Anonymized(data, count)


class AnonymizingRedactor:
    """The redactor, then the anonymizer, behind the redactor's own ``redact``: every consumer of
    the pipeline's redactor (parts, meta.json fields, tool-result files) gets both."""

    def __init__(self, redactor: Redactor, anonymizer: Anonymizer) -> None:
        self.redactor = redactor
        self.anonymizer = anonymizer

    @property
    def enabled(self) -> bool:
        return self.redactor.enabled

    @property
    def rule_names(self) -> tuple[str, ...]:
        return (*self.redactor.rule_names, ANONYMIZED_RULE)

    def redact(self, lines: bytes) -> Redaction:
        redacted = self.redactor.redact(lines)
        anonymized = self.anonymizer.apply(redacted.data)
        if not anonymized.count:
            return redacted
        counts = dict(redacted.counts)
        counts[ANONYMIZED_RULE] = counts.get(ANONYMIZED_RULE, 0) + anonymized.count
        return Redaction(anonymized.data, counts)


def install_key(state_dir: Path) -> bytes:
    """This install's key for e-mail placeholders (``<state dir>/anonymize.key``, 0600, made once):
    stable across restarts, unknown to anyone who reads the bucket."""
    path = state_dir / "anonymize.key"
    try:
        key = path.read_bytes()
        if len(key) >= 16:
            return key
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def for_this_machine(redactor: Redactor, state_dir: Path) -> AnonymizingRedactor:
    """The anonymizing redactor for the user running the daemon, on this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    anonymizer = Anonymizer(
        home=str(Path.home()), user=user, host=socket.gethostname(), key=install_key(state_dir)
    )
    return AnonymizingRedactor(redactor, anonymizer)
