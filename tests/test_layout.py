"""The bucket layout: keys, part metadata and meta.json round trips, tracecraft's field types."""

from __future__ import annotations

import json
import re

import pytest

from tracemirrord import layout
from tracemirrord.model import Fingerprint, Lease, PartRecord, SessionKey, SessionState, is_safe_segment

KEY = SessionKey("claude-code", "0b7f6a4e-1111-2222-3333-444455556666")
TRACECRAFT_PART = re.compile(r"part-(\d{5})-[a-f0-9]{8}\.jsonl$")  # how tracecraft's readers match parts


def part(seq: int, start: int, end: int, redactions: dict[str, int] | None = None) -> PartRecord:
    return PartRecord(
        seq=seq,
        token=layout.part_token(KEY, seq),
        generation=0,
        start=start,
        end=end,
        sha256="ab" * 32,
        uploaded_bytes=end - start,
        redactions=redactions or {},
        uploaded_at="2026-11-23T10:00:00.000Z",
        check=Fingerprint(1024, "0" * 16, "1" * 16).encode(),
        source_bytes=end - start,
    )


def test_part_keys_follow_the_shared_layout() -> None:
    """Part keys sit under <project>/sessions/<harness>/<id>/ and match tracecraft's part pattern."""
    key = layout.format_part_key("proj", KEY, 7)
    assert key.startswith(f"proj/sessions/claude-code/{KEY.session_id}/part-00007-")
    assert TRACECRAFT_PART.search(key)
    assert layout.parse_part_key(key) == 7
    assert layout.parse_part_key("proj/sessions/x/y/meta.json") is None


def test_part_token_is_fixed_by_session_and_seq() -> None:
    """The same seq always maps to the same key, so racing writers race for one key."""
    assert layout.part_token(KEY, 3) == layout.part_token(KEY, 3)
    assert layout.part_token(KEY, 3) != layout.part_token(KEY, 4)
    assert layout.part_token(KEY, 3) != layout.part_token(SessionKey("codex", KEY.session_id), 3)


def test_unsafe_segments_are_refused() -> None:
    """Ids with '/', '..' or control characters never become keys."""
    for bad in ["a/b", "..", "x..y", "tab\there", "nl\n", "", "back\\slash", "a" * 300]:
        assert not is_safe_segment(bad)
        with pytest.raises(layout.LayoutError):
            layout.format_part_key("proj", SessionKey("codex", bad), 0)
    assert is_safe_segment("0b7f6a4e__agent-acompact-1")


def test_part_metadata_round_trips() -> None:
    """What a part's metadata says is exactly what was put."""
    original = part(4, 100, 250, {"github-token": 2, "aws-access-key-id": 1})
    meta = layout.encode_part_metadata(original)
    assert all(v.isascii() for v in meta.values()) and sum(len(k) + len(v) for k, v in meta.items()) < 400
    key = layout.format_part_key("p", KEY, 4)
    back = layout.decode_part_metadata(key, meta, 150, 1763892000.0)
    assert (back.seq, back.start, back.end, back.sha256, back.redactions, back.check) == (
        4,
        100,
        250,
        original.sha256,
        original.redactions,
        original.check,
    )


def test_foreign_part_metadata_is_a_layout_error() -> None:
    """A part without our metadata is reported, not guessed at."""
    with pytest.raises(layout.LayoutError):
        layout.decode_part_metadata(layout.format_part_key("p", KEY, 0), {}, 10, None)


def state_with_parts(n: int) -> SessionState:
    state = SessionState(key=KEY, source_path="/home/u/.claude/projects/p/x.jsonl", cwd="/home/u/p")
    for seq in range(n):
        state.adopt(
            part(seq, seq * 100, seq * 100 + 100, {"github-token": 1}), window=layout.META_PARTS_WINDOW
        )
    state.lease = Lease("me@host", "abc", "2026-11-23T10:00:00.000Z")
    return state


def test_meta_json_has_tracecrafts_fields_and_types() -> None:
    """meta.json carries tracecraft's fields with the types its readers slice and sort."""
    doc = json.loads(layout.render_meta(state_with_parts(3), agent_id="me@host", host="h"))
    assert (
        doc["schema_version"] == 1 and doc["harness"] == "claude-code" and doc["session_id"] == KEY.session_id
    )
    for name in ("started_at", "last_uploaded_at", "ended_at"):
        assert doc[name] is None or isinstance(doc[name], str)
    assert isinstance(doc["total_source_bytes"], int) and doc["total_source_bytes"] == 300
    assert doc["redaction_counts"] == {"github-token": 3}
    entry = doc["parts"][0]
    assert set(entry) >= {
        "seq",
        "uuid",
        "cursor_range",
        "source_bytes",
        "uploaded_bytes",
        "redactions",
        "uploaded_at",
    }
    assert entry["cursor_range"] == [0, 100] and len(entry["uuid"]) == 8


def test_meta_json_stays_bounded_as_the_session_grows() -> None:
    """A session with thousands of parts has a meta.json no larger than one with a window's worth."""
    small = layout.render_meta(state_with_parts(layout.META_PARTS_WINDOW), agent_id="a", host="h")
    large = layout.render_meta(state_with_parts(5000), agent_id="a", host="h")
    assert len(large) < len(small) + 400
    doc = json.loads(large)
    assert doc["part_count"] == 5000 and len(doc["parts"]) == layout.META_PARTS_WINDOW


def test_meta_json_round_trips_to_state() -> None:
    """parse_meta(render_meta(state)) gives back the state that matters for resuming."""
    state = state_with_parts(40)
    back = layout.parse_meta(layout.render_meta(state, agent_id="a", host="h"), KEY)
    assert (back.cursor, back.next_seq, back.generation, back.check) == (
        state.cursor,
        state.next_seq,
        state.generation,
        state.check,
    )
    assert back.redaction_counts == state.redaction_counts and back.lease == state.lease


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"harness": "codex", "session_id": "x"}', b'{"harness":"claude-code"}'],
)
def test_unusable_meta_json_is_a_layout_error(body: bytes) -> None:
    """A meta.json that is not ours (or not JSON) is reported as such, never half-read."""
    with pytest.raises(layout.LayoutError):
        layout.parse_meta(body, KEY)


def test_heartbeat_has_tracecrafts_agent_fields() -> None:
    """agents/<id>.json holds id, status, step, started_at, heartbeat and summary."""
    doc = json.loads(
        layout.render_heartbeat("me@host", status="running", started_at="t0", heartbeat="t1", summary="s")
    )
    assert doc == {
        "id": "me@host",
        "status": "running",
        "step": None,
        "started_at": "t0",
        "heartbeat": "t1",
        "summary": "s",
    }
    assert layout.agent_key("proj", "me@host") == "proj/agents/me@host.json"
