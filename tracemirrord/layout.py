"""The bucket layout: the only module that builds or parses bucket keys, part metadata and meta.json.

Layout (design.md section 4, shared with tracecraft's readers)::

    [<prefix>/]<project>/agents/<agent-id>.json
    [<prefix>/]<project>/sessions/<harness>/<session-id>/part-NNNNN-<8 hex>.jsonl
    [<prefix>/]<project>/sessions/<harness>/<session-id>/meta.json
    [<prefix>/]<project>/.probe/<agent-id>.json     (the conditional-write probe's scratch key)

(The ``<prefix>`` of an ``s3://bucket/prefix`` URL is applied by the store, not here.)

Invariants:
- A part's key is a function of its session and sequence number alone (``part_token``), so two
  writers racing for the same seq race for the same key, and ``If-None-Match: *`` lets one win.
  Parts are therefore disjoint and never interleaved, with or without a lease.
- A part's object metadata says which source bytes it holds (generation, cursor range,
  fingerprint) and the sha256 of its body, so the bucket alone tells where mirroring stopped.
- meta.json keeps tracecraft's fields and types, plus our own; its ``parts`` list is a recent window,
  so its size stays bounded however long the session runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tracemirrord import __version__
from tracemirrord.model import Lease, PartRecord, SessionKey, SessionState, is_safe_segment

SCHEMA_VERSION = 1
META_NAME = "meta.json"
PART_METADATA_KEY = "tracemirror"
META_PARTS_WINDOW = 8
# Session metadata beyond tracecraft's cwd/started_at, from each harness's (redacted) records.
INFO_META_FIELDS = ("model", "git_branch", "title", "agent_version")
_PART_NAME = re.compile(r"^part-(\d{5,})-([0-9a-f]{8})\.jsonl$")


class LayoutError(ValueError):
    """A name or document in the bucket does not follow the layout."""


def _check(segment: str, what: str) -> str:
    if not is_safe_segment(segment):
        raise LayoutError(f"{what} {segment!r} is not a safe key segment")
    return segment


def session_prefix(project: str, key: SessionKey) -> str:
    return (
        f"{_check(project, 'project')}/sessions/"
        f"{_check(key.harness, 'harness')}/{_check(key.session_id, 'session id')}/"
    )


def part_token(key: SessionKey, seq: int) -> str:
    """The 8 hex digits of a part's name: fixed by session and seq, so a seq has exactly one key."""
    return hashlib.sha256(f"{key.harness}/{key.session_id}/{seq}".encode()).hexdigest()[:8]


def format_part_key(project: str, key: SessionKey, seq: int) -> str:
    return f"{session_prefix(project, key)}part-{seq:05d}-{part_token(key, seq)}.jsonl"


def parse_part_key(object_key: str) -> int | None:
    """The seq of a part key, or None when the last segment is not a part of ours."""
    match = _PART_NAME.match(object_key.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def meta_key(project: str, key: SessionKey) -> str:
    return session_prefix(project, key) + META_NAME


def agent_key(project: str, agent_id: str) -> str:
    return f"{_check(project, 'project')}/agents/{_check(agent_id, 'agent id')}.json"


PROBE_DIR = ".probe"


def probe_key(project: str, agent_id: str) -> str:
    """The scratch key on which each start (and ``--check``) proves the store enforces conditional writes.

    Outside ``sessions/`` and ``agents/``, so no reader of sessions or heartbeats meets it. One per agent
    id, replaced by compare-and-swap at every probe and never deleted (the daemon deletes nothing, and
    its least-privilege policy has no DeleteObject), so probes do not accumulate.
    """
    return f"{_check(project, 'project')}/{PROBE_DIR}/{_check(agent_id, 'agent id')}.json"


# ---------- part metadata ----------


def encode_part_metadata(part: PartRecord) -> dict[str, str]:
    """One compact ASCII metadata value (one header): every byte of a PUT counts on the wire.

    ``s``/``e`` are the source cursors the part covers, ``ck`` the source's check value at ``e``
    (written ``fp`` before 0.2, still read), ``n`` the source bytes when they are not ``e - s``
    (rows, documents).
    """
    fields = ["v=1", f"g={part.generation}", f"s={part.start}", f"e={part.end}", f"sha={part.sha256}"]
    if part.check is not None:
        fields.append(f"ck={part.check}")
    if part.source_bytes != part.end - part.start:
        fields.append(f"n={part.source_bytes}")
    if part.redactions:
        fields.append("r=" + ",".join(f"{rule}:{n}" for rule, n in sorted(part.redactions.items())))
    return {PART_METADATA_KEY: ";".join(fields)}


def check_value_ok(check: str) -> bool:
    """Whether a source's check value can travel in part metadata (printable ASCII, no ';')."""
    return check.isascii() and check.isprintable() and ";" not in check


def decode_part_metadata(
    object_key: str, metadata: Mapping[str, str], size: int, last_modified: float | None
) -> PartRecord:
    """Rebuild a PartRecord from a HEAD of a part (LayoutError when it is not one of ours)."""
    seq = parse_part_key(object_key)
    raw = metadata.get(PART_METADATA_KEY)
    if seq is None or raw is None:
        raise LayoutError(f"{object_key} has no tracemirror part metadata")
    try:
        fields = dict(item.split("=", 1) for item in raw.split(";"))
        redactions: dict[str, int] = {}
        if fields.get("r"):
            for item in fields["r"].split(","):
                rule, count = item.rsplit(":", 1)
                redactions[rule] = int(count)
        start, end = int(fields["s"]), int(fields["e"])
        return PartRecord(
            seq=seq,
            token=object_key.rsplit("-", 1)[-1].removesuffix(".jsonl"),
            generation=int(fields["g"]),
            start=start,
            end=end,
            sha256=fields["sha"],
            uploaded_bytes=size,
            redactions=redactions,
            uploaded_at=_iso(last_modified),
            check=fields.get("ck", fields.get("fp")),
            source_bytes=int(fields.get("n", end - start)),
        )
    except (KeyError, ValueError) as exc:
        raise LayoutError(f"{object_key} has malformed part metadata: {exc}") from None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------- meta.json ----------


def _part_entry(part: PartRecord) -> dict[str, Any]:
    return {
        "seq": part.seq,
        "uuid": part.token,
        "cursor_range": [part.start, part.end],
        "source_bytes": part.source_bytes,
        "uploaded_bytes": part.uploaded_bytes,
        "redactions": dict(part.redactions),
        "uploaded_at": part.uploaded_at,
        "generation": part.generation,
        "sha256": part.sha256,
        "check": part.check,
    }


def render_meta(state: SessionState, *, agent_id: str, host: str) -> bytes:
    """meta.json for a session: tracecraft's fields with their types, then ours."""
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "harness": state.key.harness,
        "session_id": state.key.session_id,
        "source_path": state.source_path,
        "cwd": state.cwd,
        "agent_id": agent_id,
        "started_at": state.started_at,
        "last_uploaded_at": state.last_uploaded_at,
        "ended_at": state.ended_at,
        "total_source_bytes": state.total_source_bytes,
        "total_uploaded_bytes": state.total_uploaded_bytes,
        "redaction_counts": dict(sorted(state.redaction_counts.items())),
        "parts": [_part_entry(p) for p in state.recent_parts[-META_PARTS_WINDOW:]],
        "part_count": state.next_seq,
        "generation": state.generation,
        "cursor": state.cursor,
        "cursor_unit": state.unit,
        "check": state.check,
        **{name: state.info.get(name) for name in INFO_META_FIELDS},
        "source_info": dict(sorted(state.extra.items())),
        "host": host,
        "writer": _render_lease(state.lease),
        "writer_version": f"tracemirror {__version__}",
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _render_lease(lease: Lease | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    doc: dict[str, Any] = {
        "agent_id": lease.agent_id,
        "instance": lease.instance,
        "renewed_at": lease.renewed_at,
    }
    if lease.pid is not None:
        doc["pid"], doc["pid_scope"] = lease.pid, lease.pid_scope
    return doc


def _parse_lease(writer: Any) -> Lease | None:
    """The ``writer`` object of meta.json (``pid``/``pid_scope`` are optional: older leases lack them)."""
    if not isinstance(writer, dict):
        return None
    pid = writer.get("pid")
    scope = writer.get("pid_scope")
    return Lease(
        str(writer["agent_id"]),
        str(writer["instance"]),
        str(writer["renewed_at"]),
        pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        scope if isinstance(scope, str) else None,
    )


def _int(doc: Mapping[str, Any], name: str) -> int:
    value = doc.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise LayoutError(f"meta.json field {name} is not a non-negative integer")
    return value


def _opt_str(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise LayoutError(f"meta.json field {name} is not a string")
    return value


def _check_of(entry: Mapping[str, Any]) -> str | None:
    """The check value of a meta.json (or parts entry); before 0.2 it was called ``fingerprint``."""
    value = entry.get("check", entry.get("fingerprint"))
    if value is not None and not isinstance(value, str):
        raise ValueError("check is not a string")
    return value


def parse_meta(body: bytes | str, key: SessionKey) -> SessionState:
    """A SessionState from a meta.json body (LayoutError if it is not a usable meta.json of ours)."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise LayoutError(f"meta.json is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LayoutError("meta.json is not an object")
    if doc.get("harness") != key.harness or doc.get("session_id") != key.session_id:
        raise LayoutError("meta.json names another session")
    try:
        parts = [
            PartRecord(
                seq=int(p["seq"]),
                token=str(p["uuid"]),
                generation=int(p.get("generation", 0)),
                start=int(p["cursor_range"][0]),
                end=int(p["cursor_range"][1]),
                sha256=str(p.get("sha256", "")),
                uploaded_bytes=int(p["uploaded_bytes"]),
                redactions={str(k): int(v) for k, v in p.get("redactions", {}).items()},
                uploaded_at=p.get("uploaded_at"),
                check=_check_of(p),
                source_bytes=int(
                    p.get("source_bytes", int(p["cursor_range"][1]) - int(p["cursor_range"][0]))
                ),
            )
            for p in doc.get("parts", [])
        ]
        check = _check_of(doc)
        info = {name: doc[name] for name in INFO_META_FIELDS if isinstance(doc.get(name), str)}
        source_info = doc.get("source_info") or {}
        extra = {str(k): v for k, v in source_info.items() if isinstance(v, str)}
        unit = doc.get("cursor_unit", "bytes")
        if unit not in ("bytes", "rows", "records"):
            raise ValueError(f"cursor_unit {unit!r}")
        lease = _parse_lease(doc.get("writer"))
        counts = {str(k): int(v) for k, v in doc.get("redaction_counts", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise LayoutError(f"meta.json is malformed: {exc!r}") from None
    if "part_count" not in doc or "cursor" not in doc:
        raise LayoutError("meta.json was not written by tracemirror (no part_count/cursor)")
    return SessionState(
        key=key,
        source_path=_opt_str(doc, "source_path") or "",
        cwd=_opt_str(doc, "cwd"),
        started_at=_opt_str(doc, "started_at"),
        ended_at=_opt_str(doc, "ended_at"),
        last_uploaded_at=_opt_str(doc, "last_uploaded_at"),
        generation=_int(doc, "generation"),
        cursor=_int(doc, "cursor"),
        check=check,
        unit=unit,
        info=info,
        extra=extra,
        next_seq=_int(doc, "part_count"),
        total_source_bytes=_int(doc, "total_source_bytes"),
        total_uploaded_bytes=_int(doc, "total_uploaded_bytes"),
        redaction_counts=counts,
        recent_parts=parts,
        lease=lease,
    )


def render_heartbeat(
    agent_id: str,
    *,
    status: str,
    started_at: str,
    heartbeat: str,
    summary: str,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """``agents/<agent-id>.json`` in tracecraft's shape (id, status, step, started_at, heartbeat,
    summary), then ours (``extra``: see docs/bucket-layout.md, "Heartbeats")."""
    doc: dict[str, Any] = {
        "id": agent_id,
        "status": status,
        "step": None,
        "started_at": started_at,
        "heartbeat": heartbeat,
        "summary": summary,
    }
    for name, value in (extra or {}).items():
        doc.setdefault(name, value)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
