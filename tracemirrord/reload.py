"""What a SIGHUP may change while the daemon runs, and what needs a restart.

Live: the harnesses and their roots, flush and meta intervals, part size, scan and rescan intervals,
upload concurrency, the heartbeat interval, redaction on/off and its rules, the backfill window and
the log level. A change to anything else (the bucket, project, agent id, state dir, socket, S3
settings, metrics address, line limit, log format, anonymizer, lease TTL, single-writer mode,
notifications or polling, the privacy filter) would move or rename what is already mirrored or
bound, change what other daemons were promised, undo the start-up probe of the store, change how
each harness watches its files, or undo a session's verdict (each is decided once), so a reload
that touches it is refused as a whole and the running configuration stays.
"""

from __future__ import annotations

import time
from typing import Any

from tracemirrord.anonymize import AnonymizingRedactor
from tracemirrord.config import Settings, build_redactor, log_redactor
from tracemirrord.logs import configure_logging, set_log_redactor
from tracemirrord.writer import MirrorContext

RESTART_ONLY = (
    "bucket",
    "project",
    "agent_id",
    "state_dir",
    "socket",
    "s3",
    "metrics_addr",
    "max_line_bytes",
    "log_format",
    "anonymize",
    "lease_ttl",
    "single_writer",
    "watch",
    "include",
    "exclude",
)


def live_settings(settings: Settings) -> dict[str, Any]:
    """The settings status shows (nothing secret: no S3 credentials)."""
    return {
        "harnesses": list(settings.harnesses),
        "flush_interval_s": settings.flush_interval,
        "part_max_bytes": settings.part_max_bytes,
        "meta_interval_s": settings.meta_interval,
        "scan_interval_s": settings.scan_interval,
        "watch": settings.watch,
        "rescan_interval_s": settings.rescan_interval,
        "heartbeat_interval_s": settings.heartbeat_interval,
        "upload_concurrency": settings.upload_concurrency,
        "backfill": settings.backfill,
        "socket": str(settings.socket_path),
        "metrics_addr": settings.metrics_addr,
        "state_dir": str(settings.state_dir),
    }


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """The settings that differ but cannot change while running (empty: the reload may go on)."""
    return [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]


def apply_live_settings(ctx: MirrorContext, old: Settings, new: Settings) -> list[str]:
    """Apply the live settings to the shared context; one line per change."""
    changes = []
    if new.flush_interval != old.flush_interval:
        ctx.flush_interval_s = new.flush_interval
        changes.append(f"flush interval {old.flush_interval:g}s -> {new.flush_interval:g}s")
    if new.part_max_bytes != old.part_max_bytes:
        ctx.part_max_bytes = new.part_max_bytes
        changes.append(f"part size {old.part_max_bytes} -> {new.part_max_bytes} bytes")
    if new.meta_interval != old.meta_interval:
        ctx.meta_interval_s = new.meta_interval
        changes.append(f"meta interval {old.meta_interval:g}s -> {new.meta_interval:g}s")
    if new.scan_interval != old.scan_interval:
        changes.append(f"scan interval {old.scan_interval:g}s -> {new.scan_interval:g}s")
    if new.rescan_interval != old.rescan_interval:
        changes.append(f"rescan interval {old.rescan_interval:g}s -> {new.rescan_interval:g}s")
    if new.heartbeat_interval != old.heartbeat_interval:
        changes.append(f"heartbeat interval {old.heartbeat_interval:g}s -> {new.heartbeat_interval:g}s")
    if new.upload_concurrency != old.upload_concurrency:
        ctx.limiter.total_tokens = new.upload_concurrency
        changes.append(f"upload concurrency {old.upload_concurrency} -> {new.upload_concurrency}")
    if new.redact != old.redact or new.redaction != old.redaction:
        redactor = build_redactor(new)
        if isinstance(ctx.redactor, AnonymizingRedactor):
            ctx.redactor = AnonymizingRedactor(redactor, ctx.redactor.anonymizer)
        else:
            ctx.redactor = redactor
        if new.redact != old.redact:
            changes.append(f"redaction {'on' if new.redact else 'OFF'}")
        if new.redaction != old.redaction:
            set_log_redactor(log_redactor(new))
            changes.append(f"redaction rules: {len(redactor.rule_names)} rules")
    if new.backfill != old.backfill:
        max_age = new.backfill_max_age_s
        ctx.backfill_cutoff = None if max_age is None else time.time() - max_age
        changes.append(f"backfill {old.backfill} -> {new.backfill}")
    if new.log_level != old.log_level:
        configure_logging(new.log_level, new.log_format, redactor=log_redactor(new))
        changes.append(f"log level {old.log_level} -> {new.log_level}")
    return changes
