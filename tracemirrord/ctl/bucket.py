"""Verbs that read the bucket directly, no daemon needed: cat, verify, restore.

Each opens the bucket the daemon would (``common.open_bucket``) and trusts only what the bucket says:
parts in seq order, each checked against its sha256 and against the end of the previous part of its
generation (``tracemirrord.reassemble``). A broken chain is one line naming the first bad part, and
nothing is written: a pipe or an agent directory never receives half a session.

The store, layout, redaction, harness and config modules are imported inside the functions, so that
``tracemirrorctl status`` (which imports this module for the verb list) loads none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tracemirrord.control.schema import EXIT_DEGRADED, EXIT_HEALTHY, EXIT_USAGE
from tracemirrord.ctl.common import CtlError, Verb, open_bucket, safe_text

if TYPE_CHECKING:
    from tracemirrord.config import Settings
    from tracemirrord.harnesses.base import Harness, SessionRef
    from tracemirrord.model import PartRecord, SessionKey, SessionState
    from tracemirrord.redact import Redactor
    from tracemirrord.store.base import ObjectStore

# A reassembled generation is held in memory up to this size, then in an anonymous temporary file.
_SPOOL_BYTES = 32 * 2**20
_COPY_BLOCK = 1 << 20
# Sessions verified at once (each has up to reassemble.FETCH_WINDOW part GETs in flight).
_VERIFY_SESSIONS = 4
_META_READS = 16  # meta.json GETs in flight while verify decides which sessions are its own
_ZST = ".zst"


# ---------- shared by the verbs (and ctl/team.py) ----------


def run_on_bucket(args: argparse.Namespace, work: Callable[[ObjectStore, Settings], Awaitable[int]]) -> int:
    """Open the bucket, run ``work`` on it, close it; a store or layout failure becomes one line, exit 1."""
    from tracemirrord.layout import LayoutError
    from tracemirrord.store.base import StoreError

    store, settings = open_bucket(args)

    async def go() -> int:
        try:
            return await work(store, settings)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreError as exc:
        raise CtlError(f"bucket {store.url}: {safe_text(str(exc))}", EXIT_DEGRADED) from None
    except LayoutError as exc:
        raise CtlError(f"bucket {store.url}: {safe_text(str(exc))}", EXIT_DEGRADED) from None


def parse_session_arg(text: str) -> tuple[str | None, str]:
    """``HARNESS/SESSION_ID`` or a bare ``SESSION_ID`` -> (harness or None, id); usage error if unsafe."""
    from tracemirrord.model import is_safe_segment

    harness, sep, session_id = text.partition("/")
    if not sep:
        harness, session_id = "", text
    if (sep and not is_safe_segment(harness)) or not is_safe_segment(session_id):
        raise CtlError(f"{text!r} is not a session (HARNESS/SESSION_ID, or SESSION_ID)", EXIT_USAGE)
    return (harness or None), session_id


async def resolve_session(store: ObjectStore, project: str, text: str) -> SessionKey:
    """The session ``text`` names: ``HARNESS/ID`` as given, a bare id if exactly one harness holds it."""
    from tracemirrord import layout
    from tracemirrord.harnesses import REGISTRY
    from tracemirrord.model import SessionKey

    harness, session_id = parse_session_arg(text)
    if harness is not None:
        return SessionKey(harness, session_id)
    names = list(REGISTRY)
    listings = await asyncio.gather(
        *(store.list(layout.session_prefix(project, SessionKey(name, session_id))) for name in names)
    )
    found = [SessionKey(name, session_id) for name, listed in zip(names, listings, strict=True) if listed]
    if not found:
        raise CtlError(f"no session {session_id} in {store.url} (project {project})", EXIT_DEGRADED)
    if len(found) > 1:
        candidates = ", ".join(str(k) for k in found)
        raise CtlError(
            f"session id {session_id} is ambiguous ({candidates}); name it as HARNESS/SESSION_ID", EXIT_USAGE
        )
    return found[0]


@dataclass
class SessionView:
    """What the bucket holds of one session: its listed parts and its meta.json (when readable)."""

    key: SessionKey
    listed: list[tuple[int, str]]
    doc: dict[str, Any] | None = None  # meta.json as JSON
    state: SessionState | None = None  # meta.json parsed
    meta_error: str | None = None  # why meta.json could not be read

    @property
    def part_count(self) -> int | None:
        return self.state.next_seq if self.state is not None else None

    @property
    def agent_id(self) -> str | None:
        value = (self.doc or {}).get("agent_id")
        return value if isinstance(value, str) else None


async def load_view(
    store: ObjectStore, project: str, key: SessionKey, listing: Sequence[Any] | None = None
) -> SessionView | None:
    """The session's parts and meta.json (from ``listing`` when given, else one LIST); None when absent."""
    import json

    from tracemirrord import layout
    from tracemirrord.reassemble import listed_parts
    from tracemirrord.store.base import NotFound

    if listing is None:
        listing = await store.list(layout.session_prefix(project, key))
    meta_key = layout.meta_key(project, key)
    view = SessionView(key, listed_parts(listing))
    if not any(info.key == meta_key for info in listing):
        return view if view.listed else None
    try:
        body = (await store.get(meta_key)).body
    except NotFound:
        return view if view.listed else None
    try:
        view.state = layout.parse_meta(body, key)
        doc = json.loads(body)
        view.doc = doc if isinstance(doc, dict) else None
    except (layout.LayoutError, ValueError) as exc:
        view.meta_error = f"meta.json unreadable: {exc}"
    if view.state is not None and view.state.next_seq > len(view.listed):
        # meta.json is newer than the listing (a live daemon put parts in between): list again, so
        # that only a part really gone counts as missing (parts are never deleted by the daemon)
        view.listed = listed_parts(await store.list(layout.session_prefix(project, key) + "part-"))
    return view


async def open_view(store: ObjectStore, settings: Settings, text: str) -> SessionView:
    key = await resolve_session(store, settings.project, text)
    view = await load_view(store, settings.project, key)
    if view is None:
        raise CtlError(f"no session {key} in {store.url} (project {settings.project})", EXIT_DEGRADED)
    return view


@dataclass
class Copy:
    """The chosen generation(s) of a session, reassembled and checked, in a spooled temporary file."""

    file: IO[bytes]
    size: int = 0
    lines: int = 0
    generations: list[int] = field(default_factory=list)

    def chunks(self) -> Iterator[bytes]:
        self.file.seek(0)
        while block := self.file.read(_COPY_BLOCK):
            yield block


async def read_copy(store: ObjectStore, view: SessionView, generation: int | None, every: bool) -> Copy:
    """Reassemble the latest generation (or ``generation``, or ``every`` one in order), checking the chain.

    Raises CtlError naming the first problem that touches what is returned: a missing part (whose
    generation nobody can know) always; a checksum, overlap or gap only in a chosen generation.
    """
    from contextlib import aclosing

    from tracemirrord.reassemble import ChainChecker, ReassemblyError, check_listing, iter_parts

    key = view.key
    problems: dict[int, ReassemblyError] = {}  # the first problem of each generation
    spools: dict[int, IO[bytes]] = {}  # generation (-1: all of them) -> its bytes so far
    sizes: dict[int, list[int]] = {}  # the same -> [bytes, lines]
    seen: set[int] = set()
    checker = ChainChecker(key)

    def close_all() -> None:
        for out in spools.values():
            out.close()
        spools.clear()

    try:
        check_listing(key, view.listed, view.part_count)
        async with aclosing(iter_parts(store, key, view.listed)) as parts:
            async for part, body in parts:
                gen = part.generation
                seen.add(gen)
                if gen not in problems:
                    try:
                        checker.add(part, body)
                    except ReassemblyError as exc:
                        problems[gen] = exc
                if every:
                    target = -1
                elif generation is not None:
                    if gen != generation:
                        continue
                    target = gen
                else:  # the latest: a newer generation makes the ones held so far moot
                    if spools and gen < max(spools):
                        continue
                    for older in [g for g in spools if g < gen]:
                        spools.pop(older).close()
                    target = gen
                if target not in spools:
                    spools[target] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
                    sizes[target] = [0, 0]
                spools[target].write(body)
                sizes[target][0] += len(body)
                sizes[target][1] += body.count(b"\n")
    except ReassemblyError as exc:
        close_all()
        raise CtlError(f"{exc}; nothing written", EXIT_DEGRADED) from None
    except BaseException:
        close_all()
        raise
    if generation is not None:
        if generation not in seen:
            close_all()
            have = ", ".join(str(g) for g in sorted(seen)) or "none"
            raise CtlError(f"{key} has no generation {generation} (generations: {have})", EXIT_DEGRADED)
        chosen = [generation]
    elif every:
        chosen = sorted(seen)
    else:
        chosen = [max(seen)] if seen else []
    for gen in chosen:
        if gen in problems:
            close_all()
            raise CtlError(f"{problems[gen]}; nothing written", EXIT_DEGRADED)
    target = -1 if every else (chosen[0] if chosen else -2)
    spool = spools.pop(target, None)
    close_all()
    if spool is None:  # a session without parts
        return Copy(tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES), generations=chosen)
    size, lines = sizes[target]
    return Copy(spool, size=size, lines=lines, generations=chosen)


def write_stdout(chunks: Iterable[bytes]) -> None:
    """Bytes to stdout as they are; a reader that went away (``| head``) ends it quietly."""
    out = sys.stdout.buffer
    try:
        for block in chunks:
            out.write(block)
        out.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's own flush at exit stays quiet
        os.close(devnull)


# ---------- cat ----------


def _configure_cat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "session", metavar="SESSION", help="HARNESS/SESSION_ID, or a SESSION_ID unique in the bucket"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--generation", type=int, metavar="N", help="this generation (default: the latest)")
    which.add_argument(
        "--all-generations", action="store_true", help="every generation, oldest first, one after the other"
    )


def _run_cat(args: argparse.Namespace) -> int:
    async def work(store: ObjectStore, settings: Settings) -> int:
        view = await open_view(store, settings, args.session)
        copy = await read_copy(store, view, args.generation, args.all_generations)
        with copy.file:
            write_stdout(copy.chunks())
        return EXIT_HEALTHY

    return run_on_bucket(args, work)


# ---------- restore ----------


def _configure_restore(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "session", metavar="SESSION", help="HARNESS/SESSION_ID, or a SESSION_ID unique in the bucket"
    )
    parser.add_argument(
        "--to",
        type=Path,
        metavar="PATH",
        help="write here instead (a file, or an existing directory for the original file name)",
    )
    parser.add_argument("--generation", type=int, metavar="N", help="this generation (default: the latest)")


def restore_destination(view: SessionView, to: Path | None) -> Path:
    """Where a restored session goes: ``--to`` (a file, or a directory for the agent's file name), else
    the agent's own path from meta.json, ``.jsonl.zst`` as ``.jsonl`` (the agents read plain files)."""
    source = view.state.source_path if view.state is not None else ""
    name = Path(source).name.removesuffix(_ZST) if source else f"{view.key.session_id}.jsonl"
    if to is not None:
        to = to.expanduser().absolute()
        return to / name if to.is_dir() else to
    if not source:
        raise CtlError(
            f"{view.key}: meta.json names no source path; give the destination with --to", EXIT_USAGE
        )
    return Path(source.removesuffix(_ZST)).expanduser()  # "~/...": written by an anonymizing daemon


def _make_parents(directory: Path) -> None:
    """Create the missing directories down to ``directory``, each 0700 (makedirs gives parents 0777)."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass


def write_new_file(dest: Path, copy: Copy) -> None:
    """Write ``copy`` at ``dest``, which must not exist: a 0600 temp file beside it, fsynced, then hard-
    linked to the real name (``link`` never replaces), so a crash leaves no half file under that name."""
    import secrets

    if os.path.lexists(dest):
        raise CtlError(
            f"{dest} exists; restore never overwrites a file (move it away, or use --to)", EXIT_DEGRADED
        )
    _make_parents(dest.parent)
    tmp = dest.parent / f".{dest.name}.tracemirror-restore-{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            for block in copy.chunks():
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, dest)
        except FileExistsError:
            raise CtlError(f"{dest} exists; restore never overwrites a file", EXIT_DEGRADED) from None
        except OSError:  # a file system without hard links: create the real name exclusively instead
            _write_exclusive(dest, copy)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_exclusive(dest: Path, copy: Copy) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(dest, flags, 0o600)
    except FileExistsError:
        raise CtlError(f"{dest} exists; restore never overwrites a file", EXIT_DEGRADED) from None
    with os.fdopen(fd, "wb") as out:
        for block in copy.chunks():
            out.write(block)
        out.flush()
        os.fsync(out.fileno())


def _run_restore(args: argparse.Namespace) -> int:
    async def work(store: ObjectStore, settings: Settings) -> int:
        view = await open_view(store, settings, args.session)
        if view.state is None:
            why = view.meta_error or "it has no meta.json"
            raise CtlError(f"{view.key}: cannot tell which agent file it was ({why})", EXIT_DEGRADED)
        if view.state.unit != "bytes":
            kind = "as a JSON document" if view.state.source_path.endswith(".json") else "in a database"
            raise CtlError(
                f"restore supports JSONL agents; {view.key.harness} keeps sessions {kind}", EXIT_USAGE
            )
        dest = restore_destination(view, args.to)
        if await asyncio.to_thread(os.path.lexists, dest):
            raise CtlError(
                f"{dest} exists; restore never overwrites a file (move it away, or use --to)", EXIT_DEGRADED
            )
        copy = await read_copy(store, view, args.generation, False)
        with copy.file:
            if not copy.size:
                raise CtlError(f"{view.key} has no parts to restore", EXIT_DEGRADED)
            try:
                await asyncio.to_thread(write_new_file, dest, copy)
            except OSError as exc:
                raise CtlError(f"cannot write {dest}: {exc.strerror or exc}", EXIT_DEGRADED) from None
        print(f"restored {view.key} to {dest} ({copy.lines} lines, {copy.size} bytes)")
        return EXIT_HEALTHY

    return run_on_bucket(args, work)


# ---------- verify ----------


def _configure_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "session",
        metavar="SESSION",
        nargs="?",
        help="one session (HARNESS/SESSION_ID or SESSION_ID); default: every session this agent id wrote",
    )
    parser.add_argument("--harness", metavar="NAME", help="only the sessions of this harness")


# How each outcome is shown, and whether it fails the run.
_FAILING = {"GAP", "OVERLAP", "CORRUPT", "MISMATCH", "ERROR"}
_WORD_WIDTH = 9


@dataclass
class Outcome:
    word: str  # ok, gone, unchecked, skipped; GAP, OVERLAP, CORRUPT, MISMATCH, ERROR
    key: SessionKey
    detail: str

    @property
    def failed(self) -> bool:
        return self.word in _FAILING

    def line(self) -> str:
        return f"{self.word:<{_WORD_WIDTH}} {self.key}  {self.detail}"


_PROBLEM_WORD = {
    "missing": "GAP",
    "gap": "GAP",
    "overlap": "OVERLAP",
    "checksum": "CORRUPT",
    "metadata": "CORRUPT",
}


class _BytesSource:
    """A JSONL source file as the bucket saw it: the plain file, or a ``.jsonl.zst`` decompressed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._copy: Any = None
        self.size = 0

    @classmethod
    def find(cls, source_path: str) -> _BytesSource | None:
        """The file at ``source_path``, or its compressed or decompressed twin (Codex moves between
        them; meta.json may trail by its interval); None when none is there (the agent deleted it)."""
        import stat

        source_path = os.path.expanduser(source_path) if source_path else source_path
        if not source_path:
            return None
        plain = source_path.removesuffix(_ZST)
        for candidate in (source_path, plain + _ZST if source_path == plain else plain):
            try:
                st = os.lstat(candidate)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                return cls(Path(candidate))
        return None

    def open(self) -> None:
        from tracemirrord.harnesses import zst

        if zst.is_zst(self.path):
            self._copy = zst.decompress(self.path)
            if self._copy is None:
                raise FileNotFoundError(self.path)
            self._fd, self.size = self._copy.fd, self._copy.size
        else:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
            self.size = os.fstat(self._fd).st_size

    def read(self, start: int, end: int) -> bytes:
        assert self._fd is not None
        out = bytearray()
        while len(out) < end - start:
            block = os.pread(self._fd, end - start - len(out), start + len(out))
            if not block:
                break
            out += block
        return bytes(out)

    def close(self) -> None:
        if self._copy is not None:
            self._copy.close()
        elif self._fd is not None:
            os.close(self._fd)
        self._fd = self._copy = None


def frame_lines(data: bytes, max_line_bytes: int) -> bytes:
    """``data`` as the daemon frames it: a line longer than ``max_line_bytes`` becomes its placeholder."""
    import hashlib

    from tracemirrord.frame import oversize_placeholder

    if len(data) <= max_line_bytes:
        return data
    lines = data.splitlines(keepends=True)
    if all(len(line) <= max_line_bytes for line in lines):
        return data
    return b"".join(
        line
        if len(line) <= max_line_bytes
        else oversize_placeholder(len(line), hashlib.sha256(line).hexdigest())
        for line in lines
    )


def _registry() -> dict[str, Any]:
    from tracemirrord.harnesses import REGISTRY

    return REGISTRY


class _HarnessSources:
    """Sources of rows harnesses (hermes), found as the daemon finds them; one discovery per harness."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._found: dict[str, tuple[Harness, dict[str, SessionRef]]] = {}
        self._lock = asyncio.Lock()

    async def ref(self, key: SessionKey) -> tuple[Harness, SessionRef] | None:
        from tracemirrord.harnesses import REGISTRY
        from tracemirrord.supervisor import harness_roots

        async with self._lock:
            if key.harness not in self._found:
                harness = REGISTRY[key.harness]()
                roots = harness_roots(key.harness, self.settings, os.environ)
                discovery = await harness.discover(roots)
                self._found[key.harness] = (harness, {r.session_id: r for r in discovery.sessions})
        harness, refs = self._found[key.harness]
        ref = refs.get(key.session_id)
        return (harness, ref) if ref is not None else None

    async def close(self) -> None:
        for harness, _ in self._found.values():
            await harness.close()


class _Verifier:
    """Compares bucket copies with their sources, one session at a time, streaming part by part."""

    def __init__(self, store: ObjectStore, settings: Settings, redactor: Redactor) -> None:
        self.store = store
        self.settings = settings
        self.redactor = redactor
        self.rows = _HarnessSources(settings)

    def wants(self, view: SessionView, *, explicit: bool) -> bool:
        """Whether to check a session: one named, or one this agent id wrote (or whose writer is
        unknown); another machine's sessions are skipped, since their sources are not here."""
        return explicit or view.state is None or view.agent_id == self.settings.agent_id

    async def session(self, view: SessionView) -> Outcome:
        """The outcome for one session: its chain, then its latest generation against its source."""
        from tracemirrord.reassemble import ReassemblyError, check_listing

        key = view.key
        ours = view.agent_id == self.settings.agent_id
        try:
            check_listing(key, view.listed, view.part_count)
            return await self._parts(view, ours)
        except ReassemblyError as exc:
            return Outcome(_PROBLEM_WORD[exc.kind], key, str(exc).removeprefix(f"{key}: "))

    async def _parts(self, view: SessionView, ours: bool) -> Outcome:
        from contextlib import aclosing

        from tracemirrord.reassemble import ChainChecker, iter_parts

        key, state = view.key, view.state
        reason = None  # why the source is not compared, when it is not
        if state is None:
            reason = view.meta_error or "no meta.json, so no source to compare with"
        elif not ours:
            reason = f"written by agent {view.agent_id}: its source is on that machine"
        elif state.unit == "records":
            reason = f"not comparable: {key.harness} rewrites records in place"
        elif state.unit == "rows" and key.harness not in _registry():
            reason = f"not comparable: this version does not know the harness {key.harness}"
        latest = await self._latest_generation(view)
        compare = _Comparison(self, view, latest) if reason is None else None
        checker = ChainChecker(key)
        total = 0
        older: set[int] = set()
        try:
            async with aclosing(iter_parts(self.store, key, view.listed)) as parts:
                async for part, body in parts:
                    checker.add(part, body)
                    total += len(body)
                    if part.generation != latest:
                        older.add(part.generation)
                    elif compare is not None:
                        problem = await compare.part(part, body)
                        if problem is not None:
                            return problem
        finally:
            if compare is not None:
                compare.close()
        count = len(view.listed)
        summary = f"{count} part{'' if count == 1 else 's'}, {total} bytes"
        if older:
            summary += "; older generation" + ("s " if len(older) > 1 else " ")
            summary += (
                ", ".join(str(g) for g in sorted(older)) + ": not comparable (the source was rewritten)"
            )
        if reason is not None:
            return Outcome("unchecked", key, f"{summary}; {reason}")
        assert compare is not None
        if compare.gone:
            return Outcome("gone", key, f"{summary}; source gone (copy kept)")
        return Outcome("ok", key, summary)

    async def _latest_generation(self, view: SessionView) -> int:
        """The generation of the last part (generations only grow with the seq): the one the source holds."""
        from tracemirrord import layout
        from tracemirrord.reassemble import ReassemblyError
        from tracemirrord.store.base import NotFound

        if not view.listed:
            return 0
        seq, last_key = view.listed[-1]
        try:
            info = await self.store.head(last_key)
        except NotFound:
            raise ReassemblyError(f"part {seq} is missing", kind="missing", seq=seq) from None
        try:
            return layout.decode_part_metadata(
                last_key, info.metadata, info.size, info.last_modified
            ).generation
        except layout.LayoutError as exc:
            raise ReassemblyError(f"part {seq}: {exc}", kind="metadata", seq=seq) from None

    async def close(self) -> None:
        await self.rows.close()


class _Comparison:
    """One session's latest generation against its source: bytes by offset, rows through the Source."""

    def __init__(self, verifier: _Verifier, view: SessionView, generation: int) -> None:
        assert view.state is not None
        self.verifier = verifier
        self.key = view.key
        self.state = view.state
        self.generation = generation
        self.gone = False
        self.failed: str | None = None  # why the source could not be read
        self._opened = False
        self._file: _BytesSource | None = None
        self._source: Any = None
        self._previous_check: str | None = None

    def _mismatch(self, part: PartRecord, why: str) -> Outcome:
        return Outcome("MISMATCH", self.key, f"part {part.seq} (cursor {part.start}-{part.end}): {why}")

    async def part(self, part: PartRecord, body: bytes) -> Outcome | None:
        """None when the part matches its redacted source (or the source is gone), else the mismatch."""
        from tracemirrord.source import UnknownFormat

        if not self._opened:
            self._opened = True
            try:
                await self._open()
            except (OSError, UnknownFormat) as exc:
                self.failed = f"cannot read the source: {exc}"
        if self.failed is not None:
            return Outcome("ERROR", self.key, self.failed)
        if self.gone:
            return None
        redactor = self.verifier.redactor
        if self._file is not None:
            if self._file.size < part.end:
                return self._mismatch(
                    part, f"the source is shorter ({self._file.size} bytes) than the bucket copy"
                )
            try:
                raw = await asyncio.to_thread(self._file.read, part.start, part.end)
            except OSError as exc:
                return Outcome("ERROR", self.key, f"cannot read the source: {exc}")
            framed = frame_lines(raw, self.verifier.settings.max_line_bytes)
        else:
            try:
                got = await self._read_rows(part)
            except (OSError, UnknownFormat) as exc:
                return Outcome("ERROR", self.key, f"cannot read the source: {exc}")
            if isinstance(got, Outcome) or got is None:
                return got
            framed = got
        if redactor.redact(framed).data != body:
            return self._mismatch(part, "bucket copy differs from the redacted source")
        return None

    async def _open(self) -> None:
        if self.state.unit == "bytes":
            self._file = _BytesSource.find(self.state.source_path)
            if self._file is None:
                self.gone = True
                return
            try:
                await asyncio.to_thread(self._file.open)
            except FileNotFoundError:
                self.gone = True
            return
        found = await self.verifier.rows.ref(self.key)
        if found is None:
            self.gone = True
            return
        harness, ref = found
        self._source = harness.open_source(ref, max_line_bytes=self.verifier.settings.max_line_bytes)

    async def _read_rows(self, part: PartRecord) -> bytes | Outcome | None:
        """The source's records from the part's start to its end, read as the daemon read them."""
        from tracemirrord.source import Discontinuity, Position

        check = self._previous_check if part.start else None
        after = Position(part.generation, part.start, check)
        data: list[bytes] = []
        taken = 0
        while after.cursor < part.end:
            got = await self._source.read(after, max(1, part.source_bytes - taken))
            if got is None:
                self.gone = True
                return None
            if isinstance(got, Discontinuity):
                return self._mismatch(part, f"the source no longer continues the copy ({got.reason})")
            if got.empty:
                break
            data.append(got.data)
            taken += got.source_bytes
            after = got.end
        if after.cursor != part.end:
            return self._mismatch(
                part, f"the source holds {self.state.unit} up to {after.cursor}, the part ends at {part.end}"
            )
        self._previous_check = part.check
        return b"".join(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _group_listing(infos: Sequence[Any], base: str) -> dict[tuple[str, str], list[Any]]:
    """Objects under ``<project>/sessions/`` grouped by (harness, session id)."""
    from tracemirrord.layout import META_NAME, parse_part_key
    from tracemirrord.model import is_safe_segment

    groups: dict[tuple[str, str], list[Any]] = {}
    for info in infos:
        rest = info.key[len(base) :].split("/", 2)
        if len(rest) == 3 and is_safe_segment(rest[0]) and is_safe_segment(rest[1]):
            groups.setdefault((rest[0], rest[1]), []).append(info)
    # a session is its parts and meta.json; a prefix holding only attachments is none
    return {
        k: v
        for k, v in groups.items()
        if any(i.key.endswith("/" + META_NAME) or parse_part_key(i.key) is not None for i in v)
    }


def _run_verify(args: argparse.Namespace) -> int:
    from tracemirrord.model import is_safe_segment

    if args.harness is not None and not is_safe_segment(args.harness):
        raise CtlError(f"--harness {args.harness!r} is not a harness name", EXIT_USAGE)

    async def work(store: ObjectStore, settings: Settings) -> int:
        from tracemirrord.config import build_redactor
        from tracemirrord.model import SessionKey

        project = settings.project
        if args.session is not None:
            view = await open_view(store, settings, args.session)
            if args.harness is not None and view.key.harness != args.harness:
                raise CtlError(f"{view.key} is not a {args.harness} session", EXIT_USAGE)
            views: list[Any] = [view]
        else:
            base = f"{project}/sessions/"
            prefix = base + (f"{args.harness}/" if args.harness else "")
            groups = _group_listing(await store.list(prefix), base)
            views = [(SessionKey(h, s), infos) for (h, s), infos in sorted(groups.items())]
        verifier = _Verifier(store, settings, build_redactor(settings))
        meta_reads = asyncio.Semaphore(_META_READS)
        comparisons = asyncio.Semaphore(_VERIFY_SESSIONS)

        async def one(item: Any) -> Outcome | None:
            explicit = isinstance(item, SessionView)
            if explicit:
                view = item
            else:
                async with meta_reads:
                    view = await load_view(store, project, item[0], item[1])
            if view is None or not verifier.wants(view, explicit=explicit):
                return None
            async with comparisons:
                return await verifier.session(view)

        counts: dict[str, int] = {}
        tasks = [asyncio.ensure_future(one(item)) for item in views]
        try:
            for task in tasks:
                outcome = await task
                word = "skipped" if outcome is None else outcome.word
                counts[word] = counts.get(word, 0) + 1
                if outcome is not None:
                    print(outcome.line(), flush=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await verifier.close()
        print(_verify_summary(counts, store.url, project))
        return EXIT_DEGRADED if any(counts.get(w) for w in _FAILING) else EXIT_HEALTHY

    return run_on_bucket(args, work)


def _verify_summary(counts: dict[str, int], url: str, project: str) -> str:
    checked = sum(n for w, n in counts.items() if w != "skipped")
    if not checked and not counts.get("skipped"):
        return f"nothing to verify in {url} (project {project})"
    problems = sum(counts.get(w, 0) for w in _FAILING)
    parts = [f"{counts.get('ok', 0)} ok", f"{problems} with problems"]
    if counts.get("gone"):
        parts.append(f"{counts['gone']} with the source gone")
    if counts.get("unchecked"):
        parts.append(f"{counts['unchecked']} not compared")
    line = f"{checked} session{'s' if checked != 1 else ''}: " + ", ".join(parts)
    if counts.get("skipped"):
        line += f"; {counts['skipped']} skipped (written by other agents)"
    return line


VERBS: tuple[Verb, ...] = (
    Verb(
        "cat",
        "print a session reassembled from the bucket",
        _configure_cat,
        _run_cat,
        "Reassemble a session from its parts in the bucket and write it to stdout, byte for byte (the\n"
        "redacted copy). Each part is checked against its sha256 and against the previous one; if the\n"
        "chain is broken nothing is written and the first bad part is named (exit 1).",
    ),
    Verb(
        "verify",
        "compare bucket copies with their sources",
        _configure_verify,
        _run_verify,
        "Check every part of each session (present, intact, contiguous) and compare the latest\n"
        "generation with its source on this machine, redacted as the daemon redacts it. Without\n"
        "SESSION: every session this agent id wrote. One line per session and a summary; exit 1 on\n"
        "any gap, overlap, corrupt part or mismatch.",
    ),
    Verb(
        "restore",
        "write a session back where its agent keeps it",
        _configure_restore,
        _run_restore,
        "Write a JSONL session from the bucket back into its agent's directory, under the name the\n"
        "agent expects (or --to PATH), so the agent can resume it after its own cleanup deleted it.\n"
        "Never overwrites a file; the content is the bucket's (redacted) copy.",
    ),
)
