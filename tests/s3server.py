"""Test machinery for S3: moto's server as a real process, and a byte-counting fault proxy in front of it.

Not a test module. ``conftest.py`` builds its fixtures from here, and fault tests and benchmarks import
``BytesCountingProxy`` directly:

    with BytesCountingProxy(server.endpoint_url) as proxy:
        store = S3Store(bucket, endpoint_url=proxy.endpoint_url, ...)
        ...
        proxy.mode = "down"      # connections refused until set back to "pass"
        print(proxy.bytes_up, proxy.requests)

Everything here is loopback TCP, so the S3 client's real retry and timeout code runs.
"""

from __future__ import annotations

import contextlib
import http.client
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

ProxyMode = Literal[
    "pass",
    "down",
    "slow",
    "latency",
    "error503",
    "error500",
    "error403",
    "reset",
    "blackhole",
    "strip_preconditions",
]
PROXY_MODES: tuple[ProxyMode, ...] = get_args(ProxyMode)
# Modes between which open connections may carry on: each forwards every byte as it came.
_STREAM_MODES = frozenset({"pass", "slow", "latency"})
# The headers an S3 server that ignores conditional writes acts as if it never received.
PRECONDITION_HEADERS = (b"if-none-match", b"if-match")

TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
TEST_REGION = "us-east-1"
_RECV_BYTES = 65536


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- moto's server, as its own process ------------------------------------------------------------------


class MotoServer:
    """``python -m moto.server`` on a free loopback port, in its own process."""

    def __init__(self, log_path: Path | None = None, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def start(self, timeout_s: float = 30.0) -> MotoServer:
        """Start the process and return once it answers HTTP (RuntimeError with its log if it never does)."""
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        try:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self._wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        """Terminate the process (kill it if it lingers)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def client(self) -> Any:
        """A plain synchronous botocore S3 client for this server (test credentials), made once."""
        if self._client is None:
            self._client = sync_s3_client(self.endpoint_url)
        return self._client

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name unless given) and return its name."""
        name = name or f"tm-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}: {self._log_tail()}")
            if _answers_http("127.0.0.1", self.port):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer within {timeout_s} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        return self._log_path.read_text(errors="replace")[-2000:]


def sync_s3_client(endpoint_url: str) -> Any:
    """A new synchronous botocore S3 client for a test endpoint (path-style, test credentials)."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        region_name=TEST_REGION,
        endpoint_url=endpoint_url,
        config=Config(s3={"addressing_style": "path"}),
        **TEST_CREDENTIALS,
    )


def _answers_http(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=1)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


# -- the byte-counting fault proxy ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One HTTP request seen going up: its request line and sizes (head includes the blank line)."""

    method: str
    target: str
    head_bytes: int
    body_bytes: int
    head: bytes


class _RequestParser:
    """Incremental HTTP/1.1 request framing of one client stream: finds each request's head and body.

    With ``drop_headers``, it also rebuilds the stream without those headers (``take_output``): the
    proxy forwards that instead of the bytes as they came.
    """

    def __init__(self, drop_headers: tuple[bytes, ...] = ()) -> None:
        self._buffer = b""
        self._body_left = 0
        self._chunked = False
        self._drop_headers = drop_headers
        self._output: list[bytes] = []

    def _emit(self, data: bytes) -> None:
        if self._drop_headers:  # only a rewriting parser keeps what it forwards
            self._output.append(data)

    def take_output(self) -> bytes:
        """The stream so far, heads rewritten, bodies as they came; what was returned is forgotten."""
        out, self._output = b"".join(self._output), []
        return out

    def feed(self, data: bytes) -> list[RequestRecord]:
        """Consume ``data``; return the requests whose head completed in it."""
        self._buffer += data
        records: list[RequestRecord] = []
        while self._buffer:
            if self._body_left:
                taken = min(self._body_left, len(self._buffer))
                self._emit(self._buffer[:taken])
                self._buffer, self._body_left = self._buffer[taken:], self._body_left - taken
            elif self._chunked:
                if not self._skip_chunk():
                    break
            else:
                end = self._buffer.find(b"\r\n\r\n")
                if end == -1:
                    break
                head, self._buffer = self._buffer[: end + 4], self._buffer[end + 4 :]
                records.append(self._start_request(head))
                self._emit(_without_headers(head, self._drop_headers))
        return records

    def _start_request(self, head: bytes) -> RequestRecord:
        lines = head.decode("latin-1").split("\r\n")
        method, target, *_ = [*lines[0].split(" "), "", ""][:3]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._body_left = 0 if self._chunked else int(headers.get("content-length", "0") or 0)
        return RequestRecord(method, target, len(head), self._body_left, head)

    def _skip_chunk(self) -> bool:
        line_end = self._buffer.find(b"\r\n")
        if line_end == -1:
            return False
        size = int(self._buffer[:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            trailer_end = self._buffer.find(b"\r\n\r\n", line_end)
            if trailer_end == -1 and self._buffer[line_end : line_end + 4] != b"\r\n\r\n":
                return False
            consumed = (trailer_end if trailer_end != -1 else line_end) + 4
            self._emit(self._buffer[:consumed])
            self._buffer = self._buffer[consumed:]
            self._chunked = False
            return True
        if len(self._buffer) < line_end + 2 + size + 2:
            return False
        self._emit(self._buffer[: line_end + 2 + size + 2])
        self._buffer = self._buffer[line_end + 2 + size + 2 :]
        return True


def _without_headers(head: bytes, names: tuple[bytes, ...]) -> bytes:
    """A request head with the header lines named in ``names`` (lower case) left out."""
    if not names:
        return head
    lines = head.split(b"\r\n")
    kept = [lines[0]] + [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() not in names]
    return b"\r\n".join(kept)


_RESPONSE_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/xml\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)
_BODY_503 = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>injected by BytesCountingProxy</Message></Error>"
)
_STATUS_LINES = {403: b"403 Forbidden", 500: b"500 Internal Server Error", 503: b"503 Service Unavailable"}


def error_response(status: int, code: str) -> bytes:
    """A whole S3 error answer (XML body, connection closed) with this status and error code."""
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code>'
        b"<Message>injected by BytesCountingProxy</Message></Error>" % code.encode()
    )
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/xml\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (_STATUS_LINES[status], len(body), body)
    )


class BytesCountingProxy:
    """A loopback TCP proxy to an HTTP server that counts bytes and requests and injects faults.

    Modes (switch any time through ``mode``; every switch but one between "pass" and "slow" drops open
    connections, so that keep-alive connections cannot bypass the new mode):

    - ``pass``: forward everything;
    - ``down``: nothing listens: connections are refused;
    - ``slow``: forward, but every chunk waits ``slow_delay_s`` first (in both directions);
    - ``latency``: forward, but each request waits ``latency_s`` once, when its head is complete,
      before it goes on (a client's distance to a cloud region: one round trip more per request;
      its body and the answer then flow at loopback speed);
    - ``error503``: answer every request ``503 ServiceUnavailable`` (S3 XML) without forwarding it;
    - ``error500``: the same with ``500 InternalError``;
    - ``error403``: the same with ``403`` and the S3 code in ``error403_code`` (``InvalidAccessKeyId``
      by default; ``SignatureDoesNotMatch``, ``ExpiredToken``, ``AccessDenied`` ...): credentials that
      are wrong or were revoked;
    - ``reset``: forward half of the first chunk of a request, then reset both connections;
    - ``blackhole``: accept connections, never read, forward or answer anything (a client's request
      waits for an answer, and a large body for the proxy to read it, until the client gives up);
    - ``strip_preconditions``: forward everything but the ``If-None-Match`` and ``If-Match`` headers,
      as an S3-compatible server that ignores conditional writes behaves.

    ``bytes_up`` counts what clients sent, ``bytes_down`` what they received, ``requests`` the request
    heads seen (in every mode but ``down``); ``request_log`` keeps each one's sizes.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        mode: ProxyMode = "pass",
        slow_delay_s: float = 1.0,
        latency_s: float = 0.02,
    ) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._mode: ProxyMode = mode
        self.slow_delay_s = slow_delay_s
        self.latency_s = latency_s
        self.error403_code = "InvalidAccessKeyId"
        self.port = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self.reset_counters()

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> BytesCountingProxy:
        """Start listening (unless the mode is "down") and return self."""
        self._stopping.clear()
        if self._mode != "down":
            self._listen()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection."""
        self._stopping.set()
        self._close_listener()
        self._drop_connections()

    def __enter__(self) -> BytesCountingProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """Where clients connect: ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    # -- mode and counters ---------------------------------------------------------------------------

    @property
    def mode(self) -> ProxyMode:
        """The current fault mode (see the class docstring)."""
        return self._mode

    @mode.setter
    def mode(self, mode: ProxyMode) -> None:
        if mode not in PROXY_MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; known: {', '.join(PROXY_MODES)}")
        previous, self._mode = self._mode, mode
        if not {previous, mode} <= _STREAM_MODES:
            self._drop_connections()
        if mode == "down":
            self._close_listener()
        elif previous == "down" and not self._stopping.is_set():
            self._listen()

    @property
    def bytes_up(self) -> int:
        """Bytes clients sent to the proxy."""
        with self._lock:
            return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes the proxy sent back to clients."""
        with self._lock:
            return self._bytes_down

    @property
    def requests(self) -> int:
        """HTTP requests seen (their heads complete)."""
        with self._lock:
            return len(self._request_log)

    @property
    def request_log(self) -> list[RequestRecord]:
        """A copy of every request seen, in order."""
        with self._lock:
            return list(self._request_log)

    def reset_counters(self) -> None:
        """Zero the byte counters and forget the request log."""
        with self._lock:
            self._bytes_up = 0
            self._bytes_down = 0
            self._request_log: list[RequestRecord] = []

    # -- listening -----------------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._accept_thread.start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        thread, self._accept_thread = self._accept_thread, None
        if listener is not None:
            listener.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    # -- one connection ------------------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        self._track(client)
        if self._mode == "blackhole":
            self._hold(client)
            return
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
            upstream.settimeout(None)
            self._track(upstream)
            self._pump(client, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._untrack(sock)
                    _close(sock)

    def _hold(self, client: socket.socket) -> None:
        """Keep the connection open and silent until the mode changes (which drops it) or the proxy stops."""
        while self._mode == "blackhole" and not self._stopping.is_set():
            with self._lock:
                if client not in self._connections:
                    break
            time.sleep(0.05)
        self._untrack(client)
        _close(client)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        # a connection lives in one mode (a switch drops it), so its parser is chosen once
        parser = _RequestParser(PRECONDITION_HEADERS if self._mode == "strip_preconditions" else ())
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, "up")
            selector.register(upstream, selectors.EVENT_READ, "down")
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=0.5):
                    data = key.fileobj.recv(_RECV_BYTES)  # type: ignore[union-attr]
                    if not data:
                        return
                    if key.data == "up":
                        if not self._upward(data, parser, client, upstream):
                            return
                    elif not self._downward(data, client):
                        return

    def _upward(
        self, data: bytes, parser: _RequestParser, client: socket.socket, upstream: socket.socket
    ) -> bool:
        records = parser.feed(data)
        with self._lock:
            self._bytes_up += len(data)
            self._request_log.extend(records)
        mode = self._mode
        if mode == "error503":
            if records:
                self._send_down(client, _RESPONSE_503 % (len(_BODY_503), _BODY_503))
                return False
            return True
        if mode in ("error500", "error403"):
            if records:
                status, code = (500, "InternalError") if mode == "error500" else (403, self.error403_code)
                self._send_down(client, error_response(status, code))
                return False
            return True
        if mode == "strip_preconditions":
            upstream.sendall(parser.take_output())
            return True
        if mode == "reset":
            upstream.sendall(data[: len(data) // 2])
            _reset(upstream)
            _reset(client)
            return False
        if mode == "down":
            return False
        if mode == "slow":
            time.sleep(self.slow_delay_s)
        elif mode == "latency" and records:  # this connection's thread only: others go on
            time.sleep(self.latency_s * len(records))
        upstream.sendall(data)
        return True

    def _downward(self, data: bytes, client: socket.socket) -> bool:
        if self._mode == "slow":
            time.sleep(self.slow_delay_s)
        self._send_down(client, data)
        return True

    def _send_down(self, client: socket.socket, data: bytes) -> None:
        client.sendall(data)
        with self._lock:
            self._bytes_down += len(data)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)

    def _drop_connections(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            _abort(sock)


def _abort(sock: socket.socket) -> None:
    """Make a connection owned by another thread end now; that thread sees EOF and closes it (RST)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (linger 0), so the peer sees 'connection reset', not a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def s3_subprocess_env(endpoint_url: str) -> dict[str, str]:
    """Environment entries a subprocess needs to reach a test S3 endpoint (merge over os.environ)."""
    return {
        "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": TEST_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "TRACEMIRROR_S3__ENDPOINT_URL": endpoint_url,
    }


__all__ = [
    "PRECONDITION_HEADERS",
    "PROXY_MODES",
    "TEST_CREDENTIALS",
    "TEST_REGION",
    "BytesCountingProxy",
    "MotoServer",
    "ProxyMode",
    "RequestRecord",
    "error_response",
    "free_port",
    "s3_subprocess_env",
    "sync_s3_client",
]
