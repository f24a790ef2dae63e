"""HTTP over the daemon's unix socket, with the standard library only."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from tracemirrord.control.schema import EXIT_NO_DAEMON, unix_address
from tracemirrord.ctl.common import CtlError

DEFAULT_TIMEOUT_S = 10.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("tracemirrord", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with unix_address(self._path) as address:
                sock.connect(address)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """One request per call; every failure to reach the daemon is a CtlError with exit code 2."""

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout

    def request(
        self, method: str, target: str, body: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> tuple[int, bytes]:
        conn = _UnixConnection(self.path, timeout or self.timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except FileNotFoundError:
            raise CtlError(
                f"no tracemirrord is running here (no control socket at {self.path})", EXIT_NO_DAEMON
            ) from None
        except ConnectionRefusedError:
            raise CtlError(
                f"no tracemirrord is running here (nothing answers on {self.path})", EXIT_NO_DAEMON
            ) from None
        except PermissionError:
            raise CtlError(
                f"not allowed to connect to {self.path} (the daemon runs as another user)", EXIT_NO_DAEMON
            ) from None
        except TimeoutError:
            raise CtlError(f"tracemirrord did not answer on {self.path} in time", EXIT_NO_DAEMON) from None
        except (OSError, http.client.HTTPException) as exc:
            raise CtlError(f"cannot talk to tracemirrord on {self.path}: {exc}", EXIT_NO_DAEMON) from None
        finally:
            conn.close()

    def get_json(self, target: str) -> dict[str, Any]:
        status, body = self.request("GET", target)
        return _json_or_error(status, body)

    def post_json(
        self, target: str, body: dict[str, Any], *, timeout: float | None = None
    ) -> tuple[int, Any]:
        status, raw = self.request("POST", target, body, timeout=timeout)
        try:
            return status, json.loads(raw)
        except ValueError:
            raise CtlError(f"tracemirrord answered {status} with a body that is not JSON") from None


def _json_or_error(status: int, body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise CtlError(f"tracemirrord answered {status} with a body that is not JSON") from None
    if status != 200:
        message = doc.get("error") if isinstance(doc, dict) else None
        raise CtlError(f"tracemirrord answered {status}: {message or 'no reason given'}")
    if not isinstance(doc, dict):
        raise CtlError("tracemirrord answered with something that is not a JSON object")
    return doc
