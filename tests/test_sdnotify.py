"""tracemirrord.sdnotify against a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from daemon import daemon_env, wait_for

from tracemirrord.sdnotify import Notifier

MAX_UNIX_PATH = 100  # sun_path is 104 bytes on macOS, 108 on Linux


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that names it (a path)."""
    directory = tmp_path
    if len(str(tmp_path / "notify")) > MAX_UNIX_PATH:  # a deep tmp_path: bind in a short dir instead
        directory = Path(tempfile.mkdtemp(prefix="sdn-"))
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, str(path)
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        if directory != tmp_path:
            directory.rmdir()


def receive(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_messages_are_the_exact_datagrams(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    notifier.ready("following 3 sessions")
    notifier.status("claude-code: 3 sessions; store ok")
    notifier.stopping("flushing")
    notifier.close()
    assert receive(sock) == b"READY=1\nSTATUS=following 3 sessions"
    assert receive(sock) == b"STATUS=claude-code: 3 sessions; store ok"
    assert receive(sock) == b"STOPPING=1\nSTATUS=flushing"


def test_status_is_kept_on_one_line(listener: tuple[socket.socket, str]) -> None:
    """A newline in the text would start a new assignment; it becomes a space."""
    sock, address = listener
    notifier = Notifier({"NOTIFY_SOCKET": address})
    notifier.status("store unreachable:\nREADY=1\n  retrying")
    assert receive(sock) == b"STATUS=store unreachable: READY=1 retrying"


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier({"NOTIFY_SOCKET": address})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.ready_after_reload("reloaded")
    first, usec = receive(sock).split(b"\nMONOTONIC_USEC=")
    assert first == b"RELOADING=1"
    assert before <= int(usec) <= after
    assert receive(sock) == b"READY=1\nSTATUS=reloaded"


def test_watchdog_at_half_the_interval_for_this_process(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier(
        {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.watchdog_interval_s == 30.0
    notifier.watchdog()
    assert receive(sock) == b"WATCHDOG=1"
    without_pid = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "5000000"})
    assert without_pid.watchdog_interval_s == 2.5
    without_pid.watchdog()
    assert receive(sock) == b"WATCHDOG=1"


def test_watchdog_of_another_process_is_not_ours(listener: tuple[socket.socket, str]) -> None:
    """A child that inherited WATCHDOG_* must not keep its parent's watchdog happy."""
    sock, address = listener
    other = str(os.getpid() + 1)
    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": other})
    assert notifier.watchdog_interval_s is None
    notifier.watchdog()
    notifier.status("after")
    assert receive(sock) == b"STATUS=after"  # the first datagram: no WATCHDOG=1 was sent


@pytest.mark.parametrize("usec", ["", "0", "-5", "sixty"])
def test_no_watchdog_without_a_positive_interval(listener: tuple[socket.socket, str], usec: str) -> None:
    sock, address = listener
    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval_s is None
    notifier.watchdog()
    notifier.status("after")
    assert receive(sock) == b"STATUS=after"


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the abstract socket namespace is Linux only"
)
def test_abstract_namespace_socket() -> None:
    name = f"tracemirror-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("ready")
        assert receive(sock) == b"READY=1\nSTATUS=ready"
    finally:
        sock.close()


def test_without_notify_socket_nothing_happens() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "60000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    with structlog.testing.capture_logs() as logs:
        notifier.ready("x")
        notifier.status("x")
        notifier.watchdog()
        notifier.stopping("x")
        notifier.reloading()
    assert logs == []


@pytest.mark.parametrize("value", ["vsock:2:1234", "relative/path", "@"])
def test_addresses_we_cannot_reach_disable_it(value: str) -> None:
    assert not Notifier({"NOTIFY_SOCKET": value}).enabled


def test_reads_the_process_environment(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert notifier.watchdog_interval_s == 1.0
    notifier.watchdog()
    assert receive(sock) == b"WATCHDOG=1"


def test_a_missing_socket_does_not_raise_and_logs_once(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000000"})
    with structlog.testing.capture_logs() as logs:
        notifier.ready("x")
        notifier.watchdog()
        notifier.status("y")
        notifier.stopping("z")
    notifier.close()
    assert [entry["log_level"] for entry in logs] == ["debug"]
    assert logs[0]["event"] == "sd_notify failed; further failures are not logged"


def test_the_daemon_speaks_it_as_the_unit_expects(
    listener: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """systemd/tracemirrord.service says Type=notify and WatchdogSec: a real tracemirrord sends READY=1,
    then WATCHDOG=1 within the interval, RELOADING=1 and READY=1 around a SIGHUP, STOPPING=1 on SIGTERM."""
    sock, address = listener
    sock.settimeout(0.2)
    env = daemon_env(
        tmp_path, f"file://{tmp_path / 'bucket'}", {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}
    )
    got: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                got.append(sock.recv(4096))
            except TimeoutError:
                return

    def heads() -> list[bytes]:
        return [message.split(b"\n")[0] for message in got]

    def seen(head: bytes, after: int = 0) -> bool:
        drain()
        return head in heads()[after:]

    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tracemirrord"], env=env, stdout=log, stderr=log)
    log.close()
    try:
        wait_for(lambda: seen(b"READY=1"), 60, "READY=1")
        assert heads()[0] == b"READY=1"  # nothing before it
        ready = len(got)
        wait_for(lambda: seen(b"WATCHDOG=1", ready), 5, "WATCHDOG=1 within the 2 s interval")
        before_reload = len(got)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: seen(b"RELOADING=1", before_reload), 20, "RELOADING=1")
        reloading = heads().index(b"RELOADING=1", before_reload)
        assert got[reloading].split(b"\n")[1].startswith(b"MONOTONIC_USEC=")
        wait_for(lambda: seen(b"READY=1", reloading), 20, "READY=1 after the reload")
        before_stop = len(got)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        drain()
        assert b"STOPPING=1" in heads()[before_stop:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
