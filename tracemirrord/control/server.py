"""The control socket: plain HTTP/1.1 over a unix socket, one request per connection.

Small on purpose (a request line, a few headers, a JSON body of a few bytes): the callers are
``tracemirrorctl`` and health checks, never a browser. The same code serves the opt-in metrics
address on loopback TCP.

The socket is private: its directory is created 0700 (when we create it, or when it is the default
one), and the socket is bound inside a fresh 0700 directory, set to 0600 and only then linked to
its real path, so there is no moment when another user could connect. A path that exists and is not
a socket is never replaced; a socket nobody answers on (a dead daemon's) is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.abc
import structlog

from tracemirrord.control.schema import unix_address

log = structlog.get_logger("tracemirrord")

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT_S = 10.0


class SocketInUse(Exception):
    """The control socket path is taken: by a live daemon, or by something that is not a socket."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        doc = json.loads(self.body)
        if not isinstance(doc, dict):
            raise ValueError("the request body is not a JSON object")
        return doc


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    more: list[bytes] = field(default_factory=list)  # sent after ``body``, piece by piece

    @classmethod
    def of_json(cls, doc: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())

    @classmethod
    def of_pieces(cls, pieces: list[bytes], status: int = 200) -> Response:
        """A body already encoded in pieces (a large status document), never joined in memory."""
        return cls(status, pieces[0] if pieces else b"", more=pieces[1:])

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.of_json({"error": message}, status)


Handler = Callable[[Request], Awaitable[Response]]


# ---------- binding ----------


def _is_live_socket(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        with unix_address(path) as address:
            probe.connect(address)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        return True  # EACCES, a timeout ...: someone is there, or we may not tell; do not take it
    finally:
        probe.close()
    return True


def _prepare_directory(directory: Path, *, private: bool) -> None:
    """Create the socket's directory 0700; make our own default directory 0700 if it is not."""
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)
        return
    if private:
        info = directory.stat()
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(directory, 0o700)


def bind_unix(path: Path, *, private_directory: bool = True) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 from its first moment at that path.

    ``private_directory``: the directory is ours (the default location, or one we create), so it is
    made 0700; for a path the user chose inside a shared directory, only the socket is made private.
    """
    _prepare_directory(path.parent, private=private_directory)
    try:
        info = path.lstat()
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise SocketInUse(f"control socket path {path} exists and is not a socket; not replacing it")
        if _is_live_socket(path):
            raise SocketInUse(f"another process is listening on the control socket {path}")
        log.info("removing the stale control socket of a stopped daemon", socket=str(path))
        path.unlink()
    staging = Path(tempfile.mkdtemp(prefix=".ctl-", dir=path.parent))  # 0700 by mkdtemp
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        temp = staging / "s"
        with unix_address(temp) as address:
            sock.bind(address)
        os.chmod(temp, 0o600)
        os.link(temp, path)  # fails if something took the path meanwhile: never replaces it
        sock.listen(64)
        sock.setblocking(False)
    except FileExistsError:
        sock.close()
        raise SocketInUse(f"control socket path {path} was taken while binding") from None
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            (staging / "s").unlink()
        with contextlib.suppress(OSError):
            staging.rmdir()
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# ---------- serving ----------


async def serve(sock: socket.socket, handler: Handler) -> None:
    """Answer requests on ``sock`` until cancelled; a failing request never stops the server."""
    listener = await anyio.abc.SocketListener.from_socket(sock)
    async with listener:
        await listener.serve(lambda stream: _connection(stream, handler))


async def _connection(stream: anyio.abc.SocketStream, handler: Handler) -> None:
    async with stream:
        try:
            with anyio.fail_after(READ_TIMEOUT_S):
                request = await _read_request(stream)
        except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return
        except ValueError as exc:
            await _send(stream, Response.error(400, str(exc)))
            return
        try:
            response = await handler(request)
        except Exception as exc:  # a bug in a handler: say so, keep serving
            log.exception("control request failed", path=request.path)
            response = Response.error(500, f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await _send(stream, response)


async def _read_request(stream: anyio.abc.SocketStream) -> Request:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD_BYTES:
            raise ValueError("request head too large")
        buffer += await stream.receive()
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise ValueError("malformed request line") from None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_BODY_BYTES:
        raise ValueError("request body too large")
    while len(body) < length:
        body += await stream.receive()
    url = urlsplit(target)
    return Request(method.upper(), url.path, dict(parse_qsl(url.query)), body[:length])


async def _send(stream: anyio.abc.SocketStream, response: Response) -> None:
    reason = HTTPStatus(response.status).phrase
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body) + sum(map(len, response.more))}\r\n"
        "Connection: close\r\n\r\n"
    )
    await stream.send(head.encode("latin-1") + response.body)
    for piece in response.more:
        await stream.send(piece)


def unlink_socket(path: Path) -> None:
    """Remove our socket on the way out (only if it is still a socket)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
