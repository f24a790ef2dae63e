"""The files that run tracemirrord as a service: the systemd user unit, the launchd agent, the
Dockerfile. Each is parsed and checked for the settings the docs promise; the unit goes through
``systemd-analyze verify``; the Dockerfile's entrypoint runs as a process with only its ENV."""

from __future__ import annotations

import json
import os
import plistlib
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon import AGENT_VARIABLES, read_back, wait_for
from sessions import make_session, record

from tracemirrord.model import SessionKey

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "tracemirrord.service"
PLIST = REPO / "launchd" / "io.tracemirror.tracemirrord.plist"
DOCKERFILE = REPO / "Dockerfile"


# ---------- systemd ----------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value it is given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{line!r} is not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, f"{key} set {len(service.get(key, []))} times"
        return service[key][0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecStart") == "%h/.local/bin/tracemirrord"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Restart") == "on-failure"
    assert one("RestartSec") == "5"
    assert one("RestartPreventExitStatus") == "2"  # a bad configuration is not retried every 5 s
    assert one("WatchdogSec") == "60"
    assert one("TimeoutStopSec") == "30"
    assert one("KillMode") == "mixed"
    assert one("EnvironmentFile") == "-%h/.config/tracemirror/env"
    assert one("UMask") == "0077"
    assert one("RuntimeDirectory") == "tracemirror"  # the default socket: $XDG_RUNTIME_DIR/tracemirror
    assert unit["Install"]["WantedBy"] == ["default.target"]
    # The sandbox: read-only everywhere but the daemon's own directories.
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") == "read-only"
    assert one("ReadWritePaths").split() == [
        "%h/.local/state/tracemirror",
        "%h/.local/share/tracemirror",
        "%t/tracemirror",
    ]
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    for key in ("NoNewPrivileges", "PrivateTmp", "RestrictNamespaces", "LockPersonality", "RestrictRealtime"):
        assert one(key) == "true", key
    assert one("SystemCallArchitectures") == "native"
    assert one("SystemCallFilter") == "@system-service"
    assert one("SystemCallErrorNumber") == "EPERM"
    # A user unit gets file-system namespaces only inside a user namespace (systemd.exec(5)).
    assert one("PrivateUsers") == "true"
    # Options a user unit cannot have, or that would break the daemon (see the unit's comments).
    for key in ("User", "Group", "ProtectControlGroups", "MemoryDenyWriteExecute"):
        assert key not in service, key


def systemd_verify(unit: Path, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    # --user needs a runtime dir to set up its manager, even for verify (no running systemd needed).
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [analyze, "--user", "verify", str(unit)], env=env, capture_output=True, text=True, timeout=60
    )


def verify_complaints(result: subprocess.CompletedProcess[str], name: str) -> list[str]:
    """The output lines about ``name`` (a container may add lines about units of its own)."""
    return [line for line in (result.stdout + result.stderr).splitlines() if name in line]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify checks that ExecStart exists, so the copy runs this venv's tracemirrord."""
    installed = Path(sys.executable).parent / "tracemirrord"
    assert installed.is_file()
    text = UNIT.read_text()
    assert text.count("ExecStart=%h/.local/bin/tracemirrord\n") == 1
    units = tmp_path / "units"
    units.mkdir()
    copy = units / "tracemirrord.service"
    copy.write_text(text.replace("ExecStart=%h/.local/bin/tracemirrord", f"ExecStart={installed}"))
    result = systemd_verify(copy, tmp_path / "runtime")
    assert result.returncode == 0, result.stdout + result.stderr
    assert verify_complaints(result, "tracemirrord.service") == []

    # The same check sees a mistake: a misspelt key is reported against the file.
    broken = units / "broken.service"
    broken.write_text(copy.read_text().replace("WatchdogSec=60", "WatchdogSecs=60"))
    result = systemd_verify(broken, tmp_path / "runtime")
    assert any("WatchdogSecs" in line for line in verify_complaints(result, "broken.service"))


# ---------- launchd ----------


def test_launchd_agent() -> None:
    with PLIST.open("rb") as f:
        agent = plistlib.load(f)
    assert agent["Label"] == PLIST.stem == "io.tracemirror.tracemirrord"
    program = agent["ProgramArguments"]
    assert isinstance(program, list) and all(isinstance(a, str) for a in program)
    assert program[0].endswith("/tracemirrord")
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}  # a crash restarts it, a clean stop does not
    assert agent["ExitTimeOut"] == 30
    assert isinstance(agent["ThrottleInterval"], int)
    assert agent["ProcessType"] == "Background"
    assert agent["EnvironmentVariables"]["TRACEMIRROR_LOG_FORMAT"] == "json"
    assert "/usr/bin" in agent["EnvironmentVariables"]["PATH"].split(":")
    # launchd expands neither ~ nor $HOME: every path is absolute, and every per-user one starts
    # with the placeholder home that the install command in docs/running-launchd.md replaces.
    paths = [program[0], agent["StandardOutPath"], agent["StandardErrorPath"]]
    for path in paths:
        assert path.startswith("/Users/you/"), path
    for value in [*program, *agent["EnvironmentVariables"].values(), *paths]:
        assert "~" not in value and "$" not in value, value


# ---------- Dockerfile ----------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # a comment line, even inside a continuation, is not part of the instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        line = pending + stripped
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continuation"
    return out


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Every ENV setting, later ones over earlier ones (both ``K=V ...`` and ``K V`` forms)."""
    env: dict[str, str] = {}
    for word, args in instructions:
        if word != "ENV":
            continue
        tokens = shlex.split(args)
        if "=" not in tokens[0]:
            env[tokens[0]] = args.split(None, 1)[1]
            continue
        for token in tokens:
            name, _, value = token.partition("=")
            env[name] = value
    return env


def only(instructions: list[tuple[str, str]], word: str) -> list[str]:
    return [args for w, args in instructions if w == word]


CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|KEY_ID|CREDENTIAL|PRIVATE|^AWS_", re.I)
CREDENTIAL_VALUE = re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}|-----BEGIN|[A-Za-z0-9/+=]{40}")


def test_dockerfile() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    assert re.fullmatch(r"python:3\.1[1-9]-slim(@sha256:[0-9a-f]{64})?", only(instructions, "FROM")[0])
    assert len(only(instructions, "FROM")) == 1

    user = only(instructions, "USER")[-1].split(":")[0]
    assert user not in ("", "root", "0"), user
    assert user == "10001"
    runs = [shlex.split(args.replace("&&", " ; ")) for args in only(instructions, "RUN")]
    useradd = next(tokens for tokens in runs if "useradd" in tokens)
    assert useradd[useradd.index("--uid") + 1] == user
    env = dockerfile_env(instructions)
    assert useradd[useradd.index("--home-dir") + 1] == env["HOME"] == "/home/tracemirror"
    pip = [tokens for tokens in runs if "pip" in tokens]
    assert len(pip) == 1
    assert pip[0][pip[0].index("pip") + 1] == "install" and "." in pip[0] and "--no-cache-dir" in pip[0]

    for word, args in instructions:
        if word in ("ENV", "ARG"):
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                assert not CREDENTIAL_NAME.search(name), f"{word} {name}: credentials belong to run time"
                assert not CREDENTIAL_VALUE.search(value), f"{word} {name} looks like a credential"

    volumes = [v for args in only(instructions, "VOLUME") for v in exec_form(args)]
    assert volumes == ["/var/lib/tracemirror"]
    assert env["TRACEMIRROR_STATE_DIR"] == "/var/lib/tracemirror/state"
    assert env["TRACEMIRROR_BUCKET"] == "file:///var/lib/tracemirror/bucket"
    assert env["TRACEMIRROR_SOCKET"] == "/var/lib/tracemirror/state/ctl.sock"
    assert env["TRACEMIRROR_LOG_FORMAT"] == "json"
    # The volume is the user's own, or the daemon cannot write its state there.
    chown = next(tokens for tokens in runs if "chown" in tokens)
    assert chown[chown.index("chown") + 2 :][:2] == ["10001:10001", "/var/lib/tracemirror"]

    (healthcheck,) = only(instructions, "HEALTHCHECK")
    tokens = healthcheck.split()
    command = healthcheck.split(" CMD ", 1)[1]
    assert all(t.startswith("--") for t in tokens[: tokens.index("CMD")])
    assert exec_form(command) == ["tracemirrorctl", "status"]
    assert only(instructions, "STOPSIGNAL") in ([], ["SIGTERM"])
    assert [exec_form(args) for args in only(instructions, "ENTRYPOINT")] == [["tracemirrord"]]
    assert only(instructions, "CMD") == []


def test_dockerfile_parser_joins_continuations() -> None:
    parsed = dockerfile_instructions(
        "# comment\nFROM python:3.12-slim\nENV A=1 \\\n    B='two words'\nRUN a \\\n# inside\n && b\n"
    )
    assert parsed == [("FROM", "python:3.12-slim"), ("ENV", "A=1 B='two words'"), ("RUN", "a && b")]
    assert dockerfile_env(parsed) == {"A": "1", "B": "two words"}


def container_env(tmp_path: Path, image_env: dict[str, str]) -> dict[str, str]:
    """The Dockerfile's ENV with its paths moved under ``tmp_path``, over a clean environment."""
    moves = {"/var/lib/tracemirror": str(tmp_path / "volume"), "/home/tracemirror": str(tmp_path / "home")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEMIRROR_", "AWS_", "XDG_"))}
    for name in AGENT_VARIABLES:
        env.pop(name, None)
    (tmp_path / "empty-config").mkdir()
    env["XDG_CONFIG_HOME"] = str(tmp_path / "empty-config")  # no config file of the runner's leaks in
    for name, value in image_env.items():
        for old, new in moves.items():
            value = value.replace(old, new)
        assert "/var/lib/" not in value and "/home/tracemirror" not in value, (name, value)
        env[name] = value
    return env


def test_entrypoint_runs_on_the_image_environment_alone(tmp_path: Path) -> None:
    """What the container runs: ENTRYPOINT, no arguments, no config file, configured by ENV; the
    agent's directory below HOME as the read-only mount would put it; SIGTERM drains and exits 0."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    env = container_env(tmp_path, dockerfile_env(instructions))
    (tmp_path / "volume").mkdir()  # the volume exists, empty; the daemon makes what it needs in it
    home = Path(env["HOME"])
    session = make_session(home, "claude-code")
    rng = random.Random(8)
    written: list[bytes] = []

    def append(n: int) -> None:
        lines = [record("claude-code", session.session_id, len(written) + i, rng) for i in range(n)]
        with session.path.open("ab") as f:
            f.write(b"".join(lines))
        written.extend(lines)

    append(5)
    agent_files = sorted(p.relative_to(home) for p in home.rglob("*"))
    (entrypoint,) = [exec_form(args) for args in only(instructions, "ENTRYPOINT")]
    program = [str(Path(sys.executable).parent / entrypoint[0]), *entrypoint[1:]]
    stop = signal.Signals[(only(instructions, "STOPSIGNAL") or ["SIGTERM"])[-1]]
    bucket = env["TRACEMIRROR_BUCKET"]
    key = SessionKey("claude-code", session.session_id)

    def mirrored() -> bytes:
        try:
            got = read_back(bucket, key)
        except Exception:
            return b"<unreadable>"
        return b"".join(got.generations[g] for g in sorted(got.generations))

    log_path = tmp_path / "tracemirrord.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(program, env=env, stdout=log, stderr=log, cwd=home)
    try:
        wait_for(lambda: mirrored() == b"".join(written), 60, "the first lines in the bucket")
        for _ in range(3):
            append(4)
            wait_for(lambda: mirrored() == b"".join(written), 60, "the appended lines in the bucket")
        proc.send_signal(stop)
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert len(written) == 17
    got = read_back(bucket, key)
    assert got.generations == {0: b"".join(written)}
    assert (tmp_path / "volume" / "state").is_dir()  # TRACEMIRROR_STATE_DIR was honoured
    # Nothing was written below HOME: the agent's directory is read-only in the container.
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == agent_files
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]  # json lines, as set by ENV
    assert any(line.get("event") == "tracemirrord started" for line in lines)
