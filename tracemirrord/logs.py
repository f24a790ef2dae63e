"""structlog set-up: readable on a terminal, JSON lines otherwise, and never a secret in either.

Log calls never pass transcript content, but an error message can quote a URL or an exception
text; as a last net, every rendered line goes through the same Redactor that guards the uploads,
and the userinfo of any URL is masked.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog

from tracemirrord.redact import Redactor

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"']+@")


# The redactor every log line and shown error passes: the default rules until the daemon's
# configuration (with the user's [redaction] rules) is known. Built once: a Redactor compiles.
_redactor: Redactor | None = None


def _log_redactor() -> Redactor:
    global _redactor
    if _redactor is None:
        _redactor = Redactor()
    return _redactor


def set_log_redactor(redactor: Redactor) -> None:
    """Use ``redactor`` for every log line and shown error from now on (a reload's new rules)."""
    global _redactor
    _redactor = redactor


class _SecretFreeRenderer:
    """Wraps the final renderer: masks URL credentials and redacts what looks like a secret."""

    def __init__(self, render: Any) -> None:
        self._render = render

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> str:
        return secret_free(self._render(logger, name, event))


class _SparingPrintLogger(structlog.PrintLogger):
    """A PrintLogger that drops a line it cannot write (its disk full, its pipe closed) instead of
    raising into the code that logged it: a daemon must outlive its log file."""

    dropped = 0

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except (OSError, ValueError):
            type(self).dropped += 1

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def secret_free(text: str) -> str:
    """``text`` as it may be shown to a person: URL credentials masked, secrets redacted."""
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    cleaned = _log_redactor().redact(text.encode("utf-8", "replace").replace(b"\n", b"\r") + b"\n")
    return cleaned.data[:-1].replace(b"\r", b"\n").decode("utf-8", "replace")


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None, redactor: Redactor | None = None
) -> None:
    """Route structlog to ``stream`` (stderr) as console text on a TTY, JSON lines otherwise.

    ``redactor`` (the configured rule set, always enabled: logs stay secret-free even with
    ``TRACEMIRROR_REDACT=false``) replaces the default one for log lines and shown errors.
    """
    if redactor is not None:
        set_log_redactor(redactor)
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if not use_console
            else structlog.processors.StackInfoRenderer(),
            _SecretFreeRenderer(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=lambda *_: _SparingPrintLogger(stream),
        cache_logger_on_first_use=True,
    )
