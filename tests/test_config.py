"""Settings: defaults, environment over TOML over defaults, units, and errors that name the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracemirrord.config import KNOWN_HARNESSES, ConfigError, load_settings

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY-tm-7f3a"
TOKEN = "FwoGZXIvYXdzEBYaDtm-session-token-9c2e"


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A clean environment: own HOME and XDG dirs, no TRACEMIRROR_ or AWS_ variable leaking in."""
    for name in list(os.environ):
        if name.startswith(("TRACEMIRROR_", "XDG_", "AWS_")):
            monkeypatch.delenv(name)
    dirs = {
        "HOME": tmp_path / "home",
        "XDG_DATA_HOME": tmp_path / "data",
        "XDG_STATE_HOME": tmp_path / "state",
        "XDG_CONFIG_HOME": tmp_path / "config",
    }
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    return dirs


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error() -> str:
    """The message of the ConfigError that load_settings raises in the current environment."""
    with pytest.raises(ConfigError) as info:
        load_settings()
    return str(info.value)


# ---------- defaults ----------


def test_defaults_follow_the_xdg_dirs(xdg: dict[str, Path]) -> None:
    """With no configuration the embedded bucket and the state dir live under the XDG dirs."""
    s = load_settings()
    assert s.bucket == f"file://{xdg['XDG_DATA_HOME']}/tracemirror/bucket"
    assert s.state_dir == xdg["XDG_STATE_HOME"] / "tracemirror"
    assert s.project == "default"
    assert s.harnesses == list(KNOWN_HARNESSES)
    assert {"claude-code", "codex", "pi"} <= set(s.harnesses)
    assert s.redact is True
    assert s.backfill == "all" and s.backfill_max_age_s is None
    assert s.s3.endpoint_url is None and s.s3.secret_access_key is None
    assert "@" in s.agent_id


def test_defaults_without_xdg_fall_back_to_home(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without XDG variables the XDG base-directory fallbacks under $HOME apply."""
    for name in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name)
    home = xdg["HOME"]
    write_toml(home / ".config" / "tracemirror" / "config.toml", 'project = "from-home-config"\n')
    s = load_settings()
    assert s.bucket == f"file://{home}/.local/share/tracemirror/bucket"
    assert s.state_dir == home / ".local" / "state" / "tracemirror"
    assert s.project == "from-home-config"


# ---------- environment ----------


def test_environment_overrides(xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every TRACEMIRROR_ variable sets its setting, nested ones with a double underscore."""
    env = {
        "TRACEMIRROR_BUCKET": "s3://traces/team-a",
        "TRACEMIRROR_PROJECT": "myproject",
        "TRACEMIRROR_AGENT_ID": "me@laptop",
        "TRACEMIRROR_REDACT": "false",
        "TRACEMIRROR_BACKFILL": "7d",
        "TRACEMIRROR_STATE_DIR": str(tmp_path / "st"),
        "TRACEMIRROR_S3__ENDPOINT_URL": "http://minio.local:9000",
        "TRACEMIRROR_S3__REGION": "auto",
        "TRACEMIRROR_S3__ADDRESSING_STYLE": "path",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.bucket == "s3://traces/team-a"
    assert s.project == "myproject"
    assert s.agent_id == "me@laptop"
    assert s.redact is False
    assert s.backfill == "7d" and s.backfill_max_age_s == 7 * 86400
    assert s.state_dir == tmp_path / "st"
    assert s.s3.endpoint_url == "http://minio.local:9000"
    assert s.s3.region == "auto"
    assert s.s3.addressing_style == "path"


def test_harnesses_comma_list(xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """TRACEMIRROR_HARNESSES restricts to a comma list; blanks around names are ignored."""
    monkeypatch.setenv("TRACEMIRROR_HARNESSES", "claude-code, pi")
    assert load_settings().harnesses == ["claude-code", "pi"]
    monkeypatch.setenv("TRACEMIRROR_HARNESSES", "codex")
    assert load_settings().harnesses == ["codex"]


def test_harnesses_listed_twice_are_followed_once(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A harness named twice is enabled once."""
    monkeypatch.setenv("TRACEMIRROR_HARNESSES", "pi,codex,pi")
    assert load_settings().harnesses == ["pi", "codex"]


@pytest.mark.parametrize(
    ("name", "value", "attr", "expected"),
    [
        ("TRACEMIRROR_FLUSH_INTERVAL", "500ms", "flush_interval", 0.5),
        ("TRACEMIRROR_FLUSH_INTERVAL", "2s", "flush_interval", 2.0),
        ("TRACEMIRROR_FLUSH_INTERVAL", "1.5", "flush_interval", 1.5),
        ("TRACEMIRROR_SCAN_INTERVAL", "1m", "scan_interval", 60.0),
        ("TRACEMIRROR_META_INTERVAL", "250ms", "meta_interval", 0.25),
        ("TRACEMIRROR_PART_MAX_BYTES", "4MiB", "part_max_bytes", 4 * 2**20),
        ("TRACEMIRROR_PART_MAX_BYTES", "512KiB", "part_max_bytes", 512 * 1024),
        ("TRACEMIRROR_PART_MAX_BYTES", "65536", "part_max_bytes", 65536),
        ("TRACEMIRROR_MAX_LINE_BYTES", "1GB", "max_line_bytes", 10**9),
    ],
)
def test_durations_and_sizes_carry_units(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str, value: str, attr: str, expected: float
) -> None:
    """Durations accept ms/s/m suffixes (seconds by default); sizes accept KiB/MiB/GB (bytes by default)."""
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(), attr) == expected


# ---------- TOML ----------


def test_toml_file_given_by_path(xdg: dict[str, Path], tmp_path: Path) -> None:
    """load_settings(path) reads every setting, nested tables and units included, from a TOML file."""
    path = write_toml(
        tmp_path / "tm.toml",
        'bucket = "s3://traces/team-a"\n'
        'project = "myproject"\n'
        'harnesses = ["codex", "pi"]\n'
        'flush_interval = "2s"\n'
        'part_max_bytes = "8MiB"\n'
        "redact = true\n"
        'backfill = "none"\n'
        "\n[s3]\n"
        'endpoint_url = "http://minio.local:9000"\n'
        'region = "auto"\n',
    )
    s = load_settings(path)
    assert s.bucket == "s3://traces/team-a"
    assert s.project == "myproject"
    assert s.harnesses == ["codex", "pi"]
    assert s.flush_interval == 2.0
    assert s.part_max_bytes == 8 * 2**20
    assert s.backfill_max_age_s == 0.0
    assert s.s3.endpoint_url == "http://minio.local:9000"
    assert s.s3.region == "auto"


def test_toml_file_in_xdg_config_home_is_read(xdg: dict[str, Path]) -> None:
    """Without --config, $XDG_CONFIG_HOME/tracemirror/config.toml is read when it exists."""
    write_toml(
        xdg["XDG_CONFIG_HOME"] / "tracemirror" / "config.toml",
        'bucket = "s3://from-default-file"\nflush_interval = 0.5\n',
    )
    s = load_settings()
    assert s.bucket == "s3://from-default-file"
    assert s.flush_interval == 0.5


def test_environment_beats_toml(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A variable wins over the same setting in the file; the file's other settings, nested ones too, stay."""
    path = write_toml(
        tmp_path / "tm.toml",
        'bucket = "s3://from-file"\nproject = "fileproject"\n'
        '[s3]\nendpoint_url = "http://file:9000"\nregion = "eu-west-1"\n',
    )
    monkeypatch.setenv("TRACEMIRROR_PROJECT", "envproject")
    monkeypatch.setenv("TRACEMIRROR_S3__ENDPOINT_URL", "http://env:9000")
    s = load_settings(path)
    assert s.project == "envproject"
    assert s.bucket == "s3://from-file"
    assert s.s3.endpoint_url == "http://env:9000"
    assert s.s3.region == "eu-west-1"


def test_an_explicit_config_file_replaces_the_default_one(xdg: dict[str, Path], tmp_path: Path) -> None:
    """--config PATH is read instead of the default file, and a later load without it is not affected."""
    write_toml(xdg["XDG_CONFIG_HOME"] / "tracemirror" / "config.toml", 'project = "default-file"\n')
    explicit = write_toml(tmp_path / "other.toml", 'project = "explicit-file"\n')
    assert load_settings(explicit).project == "explicit-file"
    assert load_settings().project == "default-file"


# ---------- bad values: a ConfigError naming the setting and its variable ----------


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        ("TRACEMIRROR_BUCKET", "http://example.com/bucket", "bucket"),
        ("TRACEMIRROR_BUCKET", "s3://", "bucket"),
        ("TRACEMIRROR_BUCKET", "relative/dir", "bucket"),
        ("TRACEMIRROR_HARNESSES", "claude-code,vim", "harnesses"),
        ("TRACEMIRROR_FLUSH_INTERVAL", "-1s", "flush_interval"),
        ("TRACEMIRROR_FLUSH_INTERVAL", "-2", "flush_interval"),
        ("TRACEMIRROR_FLUSH_INTERVAL", "0", "flush_interval"),
        ("TRACEMIRROR_FLUSH_INTERVAL", "soon", "flush_interval"),
        ("TRACEMIRROR_PART_MAX_BYTES", "4 parsecs", "part_max_bytes"),
        ("TRACEMIRROR_PART_MAX_BYTES", "10", "part_max_bytes"),
        ("TRACEMIRROR_PROJECT", "a/b", "project"),
        ("TRACEMIRROR_PROJECT", "..", "project"),
        ("TRACEMIRROR_AGENT_ID", "me/../you", "agent_id"),
        ("TRACEMIRROR_BACKFILL", "soon", "backfill"),
        ("TRACEMIRROR_REDACT", "perhaps", "redact"),
        ("TRACEMIRROR_UPLOAD_CONCURRENCY", "0", "upload_concurrency"),
        ("TRACEMIRROR_LOG_LEVEL", "loud", "log_level"),
        ("TRACEMIRROR_S3__ADDRESSING_STYLE", "sideways", "s3.addressing_style"),
    ],
)
def test_bad_environment_value_names_setting_and_variable(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str, value: str, setting: str
) -> None:
    """A bad value stops loading with a ConfigError that names the setting and its variable."""
    monkeypatch.setenv(name, value)
    message = config_error()
    assert setting in message
    assert name in message


@pytest.mark.parametrize("value", ["file://relative/dir", "file://host/srv/bucket", "s3://user:pw@bucket"])
def test_bucket_url_the_store_cannot_open_is_a_config_error(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A bucket URL that open_store refuses is refused by load_settings already, naming the setting."""
    monkeypatch.setenv("TRACEMIRROR_BUCKET", value)
    message = config_error()
    assert "TRACEMIRROR_BUCKET" in message
    assert "pw" not in message, "the message must not echo credentials"


def test_bad_bucket_url_error_does_not_echo_credentials(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused bucket URL with user:password in it is named without the password."""
    password = "tmPassw0rd-9f3a7c51"
    monkeypatch.setenv("TRACEMIRROR_BUCKET", f"https://tm-user:{password}@s3.example.com/bucket")
    message = config_error()
    assert "TRACEMIRROR_BUCKET" in message
    assert password not in message


def test_bad_value_in_toml_names_setting_variable_and_file(xdg: dict[str, Path], tmp_path: Path) -> None:
    """A bad value read from the TOML file names the setting, its variable and the file."""
    path = write_toml(tmp_path / "tm.toml", 'project = "a/b"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "project" in message and "TRACEMIRROR_PROJECT" in message
    assert str(path) in message


def test_unknown_toml_key_is_refused(xdg: dict[str, Path], tmp_path: Path) -> None:
    """A misspelt top-level key in the file is an error naming it, not silently ignored."""
    path = write_toml(tmp_path / "tm.toml", 'bucket = "s3://traces"\nflush_intervall = "2s"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "flush_intervall" in str(info.value)
    assert "not a known setting" in str(info.value)


def test_unknown_key_in_s3_table_is_refused(xdg: dict[str, Path], tmp_path: Path) -> None:
    """A misspelt key in the [s3] table is an error naming it."""
    path = write_toml(tmp_path / "tm.toml", '[s3]\nendpointurl = "http://minio.local:9000"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "endpointurl" in str(info.value)


def test_malformed_toml_is_a_config_error_naming_the_file(xdg: dict[str, Path], tmp_path: Path) -> None:
    """A file that is not TOML stops loading with a ConfigError naming the file and the position."""
    path = write_toml(tmp_path / "tm.toml", 'bucket = "s3://traces\nproject = \n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert "line 1" in str(info.value)


def test_malformed_default_toml_is_a_config_error(xdg: dict[str, Path]) -> None:
    """The default file is checked as strictly as an explicit one."""
    path = write_toml(xdg["XDG_CONFIG_HOME"] / "tracemirror" / "config.toml", "[s3\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path) in str(info.value)


def test_missing_config_file_is_a_config_error(xdg: dict[str, Path], tmp_path: Path) -> None:
    """--config naming a file that does not exist is an error naming that path."""
    missing = tmp_path / "nowhere" / "tm.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing)
    assert str(missing) in str(info.value)


def test_every_problem_is_reported_at_once(xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two bad settings give one error that names both."""
    monkeypatch.setenv("TRACEMIRROR_PROJECT", "a/b")
    monkeypatch.setenv("TRACEMIRROR_BACKFILL", "soon")
    message = config_error()
    assert "TRACEMIRROR_PROJECT" in message and "TRACEMIRROR_BACKFILL" in message


# ---------- secrets ----------


def test_secrets_never_appear_in_repr_or_str(xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 secret key and session token are masked in every rendering of the settings."""
    monkeypatch.setenv("TRACEMIRROR_S3__SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("TRACEMIRROR_S3__SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("TRACEMIRROR_S3__ACCESS_KEY_ID", "tm-access-key-id")
    s = load_settings()
    assert s.s3.secret_access_key is not None
    assert s.s3.secret_access_key.get_secret_value() == SECRET
    assert s.s3.session_token is not None and s.s3.session_token.get_secret_value() == TOKEN
    renderings = [repr(s), str(s), repr(s.s3), str(s.s3), s.model_dump_json(), str(s.model_dump())]
    for text in renderings:
        assert SECRET not in text
        assert TOKEN not in text


def test_secrets_never_appear_in_config_errors(xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in another setting does not drag the secret into the message."""
    monkeypatch.setenv("TRACEMIRROR_S3__SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("TRACEMIRROR_S3__REGION", "eu-west-1")
    monkeypatch.setenv("TRACEMIRROR_S3__ADDRESSING_STYLE", "sideways")
    message = config_error()
    assert "TRACEMIRROR_S3__ADDRESSING_STYLE" in message
    assert SECRET not in message


# ---------- every setting validated at start (issue 10) ----------

PASSWORD = "tmEndpointPassw0rd-5b7e"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (f"http://minio:{PASSWORD}@127.0.0.1:9000", "holds credentials"),
        (f"http://minio:{PASSWORD}@local host:9000/", "blanks"),
        (f"http://minio:{PASSWORD}@127.0.0.1:99999/", "holds credentials"),
        ("http://127.0.0.1:99999/", "Port out of range"),
        (f"http://minio:{PASSWORD}@[::1/", "holds credentials"),
        ("http://[::1/", "not a URL"),
        (f"http://mi@nio:{PASSWORD}/x@127.0.0.1:9000", "holds credentials"),
        ("127.0.0.1:9000", "not an http:// or https:// URL"),
        ("ftp://127.0.0.1:9000", "not an http:// or https:// URL"),
        ("http://:9000", "names no host"),
        ("http://127.0.0.1:9000/?x=1", "query"),
    ],
)
def test_bad_endpoint_url_is_one_line_naming_the_setting_without_the_password(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    """An endpoint URL botocore would refuse late (with a traceback quoting it) is refused at load."""
    monkeypatch.setenv("TRACEMIRROR_BUCKET", "s3://traces")
    monkeypatch.setenv("TRACEMIRROR_S3__ENDPOINT_URL", value)
    message = config_error()
    assert "\n" not in message, message
    assert message.startswith(
        "invalid configuration: setting s3.endpoint_url "
        "(TRACEMIRROR_S3__ENDPOINT_URL, from the environment): "
    ), message
    assert says in message
    assert PASSWORD not in message and "minio" not in message


def test_good_endpoint_urls_pass(xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoints people use (moto, MinIO on a port, R2 over https with a path) are accepted."""
    for value in ("http://127.0.0.1:5000", "https://acc.r2.cloudflarestorage.com", "http://[::1]:9000/s3"):
        monkeypatch.setenv("TRACEMIRROR_S3__ENDPOINT_URL", value)
        assert load_settings().s3.endpoint_url == value


def test_aws_endpoint_variable_is_checked_when_it_applies(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ENDPOINT_URL feeds the S3 client like s3.endpoint_url does: the same check, named by it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://u:{PASSWORD}@127.0.0.1:9000")
    assert load_settings().bucket.startswith("file://"), "an embedded bucket does not use it"
    monkeypatch.setenv("TRACEMIRROR_BUCKET", "s3://traces")
    message = config_error()
    assert message.startswith("invalid configuration: S3 endpoint (AWS_ENDPOINT_URL, from the environment)")
    assert PASSWORD not in message
    monkeypatch.setenv("TRACEMIRROR_S3__ENDPOINT_URL", "http://127.0.0.1:9000")
    assert load_settings().s3.endpoint_url == "http://127.0.0.1:9000", "the setting wins over the chain"


@pytest.mark.parametrize("name", ["TRACEMIRROR_PROJECT", "TRACEMIRROR_AGENT_ID"])
@pytest.mark.parametrize("value", [".tracemirror", ".tracemirror-tmp-x", ".TraceMirror.lock"])
def test_names_reserved_by_the_bucket_are_refused(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A project or agent id the embedded bucket keeps for itself fails at load, not at the first PUT."""
    monkeypatch.setenv(name, value)
    message = config_error()
    assert name in message and "reserved" in message


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("TRACEMIRROR_BUCKT", "TRACEMIRROR_BUCKET"),
        ("TRACEMIRROR_FLUSH_INTERVALL", "TRACEMIRROR_FLUSH_INTERVAL"),
        ("TRACEMIRROR_S3__ENDPOINT", "TRACEMIRROR_S3__ENDPOINT_URL"),
        ("tracemirror_redcat", "TRACEMIRROR_REDACT"),
    ],
)
def test_misspelled_variable_is_refused_naming_the_closest_setting(
    xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str, closest: str
) -> None:
    """A TRACEMIRROR_* variable that names no setting is an error, like an unknown key in the file."""
    monkeypatch.setenv(name, "x")
    message = config_error()
    assert message == (
        f"invalid configuration: environment variable {name} is not a known setting; did you mean {closest}?"
    )


def test_every_documented_variable_is_known(xdg: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables of docs/configuration.md (written out here) all pass the unknown-variable check."""
    documented = {
        "TRACEMIRROR_BUCKET": "s3://traces",
        "TRACEMIRROR_PROJECT": "p",
        "TRACEMIRROR_AGENT_ID": "me@host",
        "TRACEMIRROR_HARNESSES": "pi",
        "TRACEMIRROR_REDACT": "true",
        "TRACEMIRROR_ANONYMIZE": "false",
        "TRACEMIRROR_BACKFILL": "7d",
        "TRACEMIRROR_STATE_DIR": str(xdg["HOME"] / "state"),
        "TRACEMIRROR_SOCKET": str(xdg["HOME"] / "ctl.sock"),
        "TRACEMIRROR_FLUSH_INTERVAL": "1s",
        "TRACEMIRROR_PART_MAX_BYTES": "4MiB",
        "TRACEMIRROR_META_INTERVAL": "30s",
        "TRACEMIRROR_MAX_LINE_BYTES": "64MiB",
        "TRACEMIRROR_UPLOAD_CONCURRENCY": "4",
        "TRACEMIRROR_SCAN_INTERVAL": "2s",
        "TRACEMIRROR_HEARTBEAT_INTERVAL": "60s",
        "TRACEMIRROR_METRICS_ADDR": "127.0.0.1:9464",
        "TRACEMIRROR_LOG_LEVEL": "info",
        "TRACEMIRROR_LOG_FORMAT": "json",
        "TRACEMIRROR_S3__ENDPOINT_URL": "http://127.0.0.1:9000",
        "TRACEMIRROR_S3__REGION": "us-east-1",
        "TRACEMIRROR_S3__ACCESS_KEY_ID": "id",
        "TRACEMIRROR_S3__SECRET_ACCESS_KEY": SECRET,
        "TRACEMIRROR_S3__SESSION_TOKEN": TOKEN,
        "TRACEMIRROR_S3__PROFILE": "default",
        "TRACEMIRROR_S3__ADDRESSING_STYLE": "path",
    }
    for name, value in documented.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.bucket == "s3://traces" and s.s3.profile == "default"


@pytest.mark.parametrize(
    ("toml", "setting", "says"),
    [
        ('state_dir = "relative/state"\n', "state_dir", "absolute"),
        ('socket = "ctl.sock"\n', "socket", "absolute"),
        (f'socket = "/tmp/{"s" * 120}.sock"\n', "socket", "longer than a unix socket path"),
        ('[roots]\npi = "here"\n', "roots.pi", "absolute"),
        ('[s3]\nregion = "us east"\n', "s3.region", "not a region"),
        ('[s3]\naccess_key_id = "AKIAEXAMPLE"\n', "s3", "set together"),
        ('[s3]\nendpointurl = "http://x"\n', "s3.endpointurl", "did you mean s3.endpoint_url?"),
        ('heartbeat_interval = "2h"\n', "heartbeat_interval", "at most 1h"),
        ('metrics_addr = "127.0.0.1:70000"\n', "metrics_addr", "HOST:PORT"),
    ],
)
def test_bad_file_value_names_setting_and_file_on_one_line(
    xdg: dict[str, Path], tmp_path: Path, toml: str, setting: str, says: str
) -> None:
    """A value from the file is named with its setting, its variable and the file, one line each."""
    path = write_toml(tmp_path / "tm.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    (line,) = info.value.problems
    assert line.startswith(f"invalid configuration: setting {setting} (TRACEMIRROR_"), line
    assert f"from config file {path}" in line and says in line


def test_home_relative_paths_are_expanded(xdg: dict[str, Path], tmp_path: Path) -> None:
    """``~`` in a path setting is the user's home, not a directory called ``~`` in the working dir."""
    path = write_toml(tmp_path / "tm.toml", 'state_dir = "~/tm-state"\n[roots]\npi = "~/pi"\n')
    s = load_settings(path)
    assert s.state_dir == xdg["HOME"] / "tm-state"
    assert s.roots["pi"] == xdg["HOME"] / "pi"
