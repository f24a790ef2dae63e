"""Shared pytest fixtures; each block says which module's tests it serves. Machinery lives in helpers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from s3server import BytesCountingProxy, MotoServer, s3_subprocess_env


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, as the daemon does."""
    return "asyncio"


# --- S3: moto's server as a process, fresh buckets, a fault proxy (machinery in tests/s3server.py) ---


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 server in its own process for the whole session (``.endpoint_url``)."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with MotoServer(log_path) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    """The name of a fresh, empty bucket on ``s3_server``."""
    return s3_server.create_bucket()


@pytest.fixture
def s3_env(s3_server: MotoServer) -> dict[str, str]:
    """Environment entries that point a subprocess at ``s3_server`` (merge them over os.environ)."""
    return s3_subprocess_env(s3_server.endpoint_url)


@pytest.fixture
def s3_environ(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``s3_env`` applied to this process's environment for one test (undone afterwards)."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    return s3_env


@pytest.fixture
def s3_proxy(s3_server: MotoServer) -> Iterator[BytesCountingProxy]:
    """A BytesCountingProxy in front of ``s3_server``, in "pass" mode."""
    with BytesCountingProxy(s3_server.endpoint_url) as proxy:
        yield proxy
