"""The config file's [redaction] table: the user's own rules, allowlist and disabled default rules.

Expected outputs are written out by hand. The daemon and tracemirrorctl build their redactor from
the same settings (config.build_redactor, RedactionSettings.rule_set); the CLI test runs the real
command as a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracemirrord.config import ConfigError, build_redactor, load_settings
from tracemirrord.rules import DEFAULT_RULES

ACME = "acmedt_" + "0123456789abcdef" * 2  # 32 hex after the prefix
AWS_EXAMPLE = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example key id
AWS_OTHER = "AKIA" + "Z7QW3PXR2LMN4TYU"
CONFIG = """
[redaction]
allowlist = ['AKIA[0-9A-Z]{9}EXAMPLE']
disable = ["password-assignment"]

[[redaction.rules]]
name = "acme-deploy-token"
description = "ACME deploy token"
pattern = 'acmedt_[0-9a-f]{32}(?![0-9a-f])'
keywords = ["acmedt_"]
"""


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No TRACEMIRROR_/XDG_ variable leaking in; returns a directory for config files."""
    for name in list(os.environ):
        if name.startswith(("TRACEMIRROR_", "XDG_")):
            monkeypatch.delenv(name)
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    return tmp_path


def config_file(directory: Path, text: str) -> Path:
    path = directory / "config.toml"
    path.write_text(text)
    return path


def test_own_rule_allowlist_and_disabled_rule(clean_env: Path) -> None:
    """A user rule redacts its token, the allowlist keeps the example key, a disabled rule stays quiet."""
    redactor = build_redactor(load_settings(config_file(clean_env, CONFIG)))
    line = json.dumps({"env": f"ACME={ACME} ID={AWS_EXAMPLE} ID2={AWS_OTHER} DB_PASSWORD=Tr0ub4dor-x9q"})
    result = redactor.redact(line.encode() + b"\n")
    expected = {
        "env": "ACME=[REDACTED:acme-deploy-token] ID="
        + AWS_EXAMPLE
        + " ID2=[REDACTED:aws-access-key-id] DB_PASSWORD=Tr0ub4dor-x9q"
    }
    assert json.loads(result.data) == expected
    assert result.counts == {"acme-deploy-token": 1, "aws-access-key-id": 1}
    assert "password-assignment" not in redactor.rule_names
    assert redactor.rule_names[-1] == "acme-deploy-token"  # after the defaults
    assert len(redactor.rule_names) == len(DEFAULT_RULES)  # one off, one on


def test_without_a_redaction_table_the_defaults_run(clean_env: Path) -> None:
    """No [redaction] table: exactly the default rule set, and the default password rule fires."""
    redactor = build_redactor(load_settings())
    assert redactor.rule_names == tuple(rule.name for rule in DEFAULT_RULES)
    result = redactor.redact(b"DB_PASSWORD=Tr0ub4dor-x9q\n")
    assert result.data == b"DB_PASSWORD=[REDACTED:password-assignment]\n"


def test_allowlist_from_the_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TRACEMIRROR_REDACTION__ALLOWLIST takes a JSON list, as nested settings do."""
    monkeypatch.setenv("TRACEMIRROR_REDACTION__ALLOWLIST", json.dumps(["AKIA[0-9A-Z]{9}EXAMPLE"]))
    result = build_redactor(load_settings()).redact(f"{AWS_EXAMPLE} {AWS_OTHER}\n".encode())
    assert result.data == f"{AWS_EXAMPLE} [REDACTED:aws-access-key-id]\n".encode()


RULE = '[[redaction.rules]]\nname = "{name}"\ndescription = "x"\n'


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            RULE.format(name="aws-access-key-id") + 'pattern = "x"\nkeywords = ["x"]\n',
            "'aws-access-key-id' is a default rule",
        ),
        (
            RULE.format(name="acme") + 'pattern = "acme_[a-z"\nkeywords = ["acme_"]\n',
            "rule #1 'acme': pattern does not compile",
        ),
        (RULE.format(name="acme") + 'pattern = "acme"\n', "'acme': missing keywords"),
        ('[redaction]\ndisable = ["no-such-rule"]\n', "cannot disable unknown rule no-such-rule"),
        ("[redaction]\nallowlist = ['(unclosed']\n", "allowlist entry does not compile"),
        ("[redaction]\nallow_list = ['x']\n", "redaction.allow_list"),
    ],
    ids=["default-name", "bad-pattern", "no-keywords", "unknown-disable", "bad-allowlist", "unknown-key"],
)
def test_a_bad_table_stops_the_start_naming_the_rule(clean_env: Path, table: str, message: str) -> None:
    """Every mistake is a ConfigError at load time that says which rule or entry is wrong."""
    with pytest.raises(ConfigError) as info:
        load_settings(config_file(clean_env, table))
    assert message in str(info.value)


def test_tracemirrorctl_redact_uses_the_config_file(clean_env: Path) -> None:
    """The CLI check runs the configured set: the user's rule fires, --report names it, not the token."""
    path = config_file(clean_env, CONFIG)
    text = json.dumps({"t": f"deploy with {ACME}"}) + "\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEMIRROR_")}
    run = [sys.executable, "-m", "tracemirrord.ctl", "redact", "--config", str(path)]
    out = subprocess.run([*run, "-"], input=text.encode(), capture_output=True, env=env, check=True)
    assert out.stdout == b'{"t": "deploy with [REDACTED:acme-deploy-token]"}\n'
    report = subprocess.run([*run, "--report", "-"], input=text.encode(), capture_output=True, env=env)
    assert report.returncode == 0
    assert b"acme-deploy-token      1  1" in report.stdout
    assert ACME.encode() not in report.stdout + report.stderr
    bad = config_file(clean_env, "[redaction]\ndisable = ['nope']\n")
    failed = subprocess.run([*run[:-1], str(bad), "-"], input=b"x\n", capture_output=True, env=env)
    assert failed.returncode == 2
    assert b"cannot disable unknown rule nope" in failed.stderr
    assert b"Traceback" not in failed.stderr


def test_log_lines_pass_the_configured_rules(clean_env: Path) -> None:
    """An error text holding a token of the user's own rule is redacted in a rendered log line, even
    with redaction of uploads switched off (logs stay secret-free). The renderer is called as
    structlog calls it; structlog itself is not reconfigured (that would leak into other tests)."""
    import structlog

    from tracemirrord import logs
    from tracemirrord.config import log_redactor

    settings = load_settings(config_file(clean_env, "redact = false\n" + CONFIG))
    assert not settings.redact
    before = logs._log_redactor()
    logs.set_log_redactor(log_redactor(settings))
    try:
        render = logs._SecretFreeRenderer(structlog.processors.JSONRenderer())
        line = render(None, "warning", {"event": "store error", "error": f"403 for token {ACME}"})
        assert logs.secret_free(f"token {ACME}") == "token [REDACTED:acme-deploy-token]"
    finally:
        logs.set_log_redactor(before)
    assert json.loads(line) == {"event": "store error", "error": "403 for token [REDACTED:acme-deploy-token]"}
