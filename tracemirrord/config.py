"""Every setting of tracemirrord, its default, and where it comes from (design.md section 3).

Precedence: environment (``TRACEMIRROR_*``, nested with ``__``) over the TOML file (``--config PATH``,
else ``$XDG_CONFIG_HOME/tracemirror/config.toml`` when it exists) over the defaults below. A bad
value stops the start with a message that names the setting and its environment variable.
Numeric settings carry their unit: seconds accept ``500ms``/``2s``/``1m``, sizes accept
``512KiB``/``4MiB``/``1GB``.
"""

from __future__ import annotations

import difflib
import getpass
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tracemirrord.model import is_safe_segment
from tracemirrord.privacy import compile_pattern
from tracemirrord.rules import Rule, configured_rules, parse_rules
from tracemirrord.store import ObjectStore, S3Options, open_store, parse_bucket_url

if TYPE_CHECKING:
    from tracemirrord.redact import Redactor

ENV_PREFIX = "TRACEMIRROR_"


def known_harnesses() -> tuple[str, ...]:
    """Every harness name, from the registry alone (imported late: harness modules use this one)."""
    from tracemirrord.harnesses import REGISTRY

    return tuple(REGISTRY)


def __getattr__(name: str) -> Any:
    if name == "KNOWN_HARNESSES":
        return known_harnesses()
    raise AttributeError(name)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}


# Key segments the embedded bucket keeps for itself (its sidecars, lock and temp files all start so);
# refused for S3 too, so a bucket can move between the two stores (compared case-insensitively: a
# macOS disk would fold the case).
RESERVED_SEGMENT_PREFIX = ".tracemirror"
# Longest path a unix socket can bind to (sun_path is 108 bytes on Linux, 104 on macOS).
MAX_SOCKET_PATH_BYTES = 103


class ConfigError(Exception):
    """A setting has a value tracemirrord cannot run with; one line per problem, each naming it.

    ``problems`` are those lines (the message joins them), so a caller can print one per line.
    """

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def parse_duration_s(value: Any) -> float:
    """Seconds from a number or a string such as ``1.5``, ``500ms``, ``7d``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (examples: 1.5, 500ms, 30s, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size_bytes(value: Any) -> int:
    """Bytes from a number or a string such as ``4MiB`` or ``512KB``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size (examples: 4194304, 512KiB, 4MiB)")
    unit = (match.group(2) or "b").lower()
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parse_metrics_addr(value: str) -> tuple[str, int]:
    """``HOST:PORT`` on a loopback address (metrics say what is mirrored: not for the network)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (example: 127.0.0.1:9464)")
    if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
        raise ValueError(f"{host!r} is not a loopback address; metrics are served on loopback only")
    return host, int(port)


def mask_url(url: str) -> str:
    """``url`` with everything between ``//`` and the last ``@`` hidden: fit for a message.

    Taken to the last ``@`` of the whole text, so a password holding ``@`` or ``/`` is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def check_endpoint_url(value: str) -> str:
    """An ``http(s)://HOST[:PORT][/PATH]`` endpoint without credentials, else ValueError (masked).

    botocore would refuse such URLs only when the first request is made (with a traceback that
    quotes the URL), or send credentials in it nowhere useful; here they are a configuration error.
    """
    shown = repr(mask_url(value))
    if not value or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError(f"{shown} is empty or holds blanks or control characters")
    if "@" in value.partition("://")[2]:  # before parsing: a parse error could quote the password
        raise ValueError(
            f"{shown} holds credentials; give them as s3.access_key_id and s3.secret_access_key, "
            "AWS_* variables or a profile"
        )
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{shown} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{shown} is not an http:// or https:// URL (example: http://127.0.0.1:9000)")
    if not parts.hostname:
        raise ValueError(f"{shown} names no host")
    if port == 0:
        raise ValueError(f"{shown}: port 0 is not a port")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown} must not hold a query or fragment")
    return value


def check_name(value: str) -> str:
    """One safe key segment that is not reserved by the bucket layout, else ValueError."""
    if not is_safe_segment(value):
        raise ValueError(f"{value!r} must be one safe key segment (no '/', '..' or control characters)")
    if value.lower().startswith(RESERVED_SEGMENT_PREFIX):
        raise ValueError(
            f"{value!r} is reserved: names starting with {RESERVED_SEGMENT_PREFIX!r} belong to the bucket"
        )
    return value


def check_local_path(value: Path) -> Path:
    """An absolute path (``~`` expanded): a relative one would depend on the service's working dir."""
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        raise ValueError(f"{str(value)!r} is not an absolute path")
    if "\x00" in str(path):
        raise ValueError("a path cannot hold a NUL byte")
    return path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def default_bucket_url() -> str:
    return f"file://{_xdg('XDG_DATA_HOME', '.local/share') / 'tracemirror' / 'bucket'}"


def default_state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "tracemirror"


def default_agent_id() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    host = socket.gethostname().split(".")[0] or "localhost"
    return re.sub(r"[^A-Za-z0-9._@+-]", "-", f"{user}@{host}")


class S3Settings(BaseModel):
    """Overrides for the standard AWS chain; anything unset comes from AWS_* variables or ~/.aws."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    profile: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] | None = None
    connect_timeout: float = 5.0  # seconds to open a connection
    read_timeout: float = 20.0  # seconds to wait for any byte of an answer

    @field_validator("connect_timeout", "read_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        seconds = parse_duration_s(value)
        if not 0 < seconds <= 600:
            raise ValueError("must be more than 0 and at most 10m")
        return seconds

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return None if value is None or value == "" else check_endpoint_url(value)

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", value):
            raise ValueError(f"{value!r} is not a region name (example: us-east-1)")
        return value

    @field_validator("profile", "access_key_id")
    @classmethod
    def _check_plain(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(ch.isspace() or not ch.isprintable() for ch in value)):
            raise ValueError("must not be empty or hold blanks or control characters")
        return value

    @model_validator(mode="after")
    def _check_key_pair(self) -> S3Settings:
        """An access key id without its secret (or the reverse) would fail only at the first request."""
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("s3.access_key_id and s3.secret_access_key are set together or not at all")
        return self


class RedactionSettings(BaseModel):
    """The config file's ``[redaction]`` table: the user's additions to the default rule set.

    ``rules``: ``[[redaction.rules]]`` tables with the fields of ``default_rules.toml`` (name,
    description, pattern, keywords, ...). ``allowlist``: regexes; a span that fullmatches one is
    never redacted, by any rule. ``disable``: names of default rules to switch off. Checked at
    start (and on reload) by building the rule set, so a bad pattern stops the start, naming it.
    """

    model_config = ConfigDict(extra="forbid")

    rules: list[dict[str, Any]] = Field(default_factory=list)
    allowlist: list[str] = Field(default_factory=list)
    disable: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_rules(self) -> RedactionSettings:
        self.rule_set()
        return self

    def rule_set(self) -> tuple[Rule, ...]:
        """The rules the redactor runs: the defaults, less ``disable``, plus ``rules``, with ``allowlist``."""
        extra = parse_rules(self.rules, "redaction.rules")
        return configured_rules(extra, self.allowlist, self.disable)


class Settings(BaseSettings):
    """The daemon's whole configuration; see docs/configuration.md for each setting."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    bucket: str = Field(default_factory=default_bucket_url)
    project: str = "default"
    agent_id: str = Field(default_factory=default_agent_id)
    harnesses: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(known_harnesses()))
    roots: dict[str, Annotated[Path, AfterValidator(check_local_path)]] = Field(default_factory=dict)
    # privacy filter (privacy.py): globs matched against each session's source path and cwd
    include: Annotated[list[str], NoDecode] = Field(default_factory=list)
    exclude: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redact: bool = True
    anonymize: bool = False
    backfill: str = "all"
    state_dir: Path = Field(default_factory=default_state_dir)
    socket: Path | None = None
    flush_interval: float = 1.0
    part_max_bytes: int = 4 * 2**20
    meta_interval: float = 30.0
    max_line_bytes: int = 64 * 2**20
    upload_concurrency: int = 4
    scan_interval: float = 2.0
    watch: Literal["auto", "poll"] = "auto"
    rescan_interval: float = 60.0
    heartbeat_interval: float = 60.0
    lease_ttl: float = 120.0
    metrics_addr: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    s3: S3Settings = Field(default_factory=S3Settings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    # Run on a store that ignores If-None-Match / If-Match, promising that one daemon writes each session.
    single_writer: bool = False

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        parse_bucket_url(value)  # the store's own parser: one definition of a valid bucket URL
        return value

    @field_validator("project", "agent_id")
    @classmethod
    def _check_segment(cls, value: str) -> str:
        return check_name(value)

    @field_validator("state_dir")
    @classmethod
    def _check_state_dir(cls, value: Path) -> Path:
        return check_local_path(value)

    @field_validator("socket")
    @classmethod
    def _check_socket(cls, value: Path | None) -> Path | None:
        if value is None or str(value) == "":
            return None
        path = check_local_path(value)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
            raise ValueError(f"is longer than a unix socket path can be ({MAX_SOCKET_PATH_BYTES} bytes)")
        return path

    @field_validator("harnesses", mode="before")
    @classmethod
    def _split_harnesses(cls, value: Any) -> list[str]:
        names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
        names = list(dict.fromkeys(n for n in names if n))
        known = known_harnesses()
        if not names:
            raise ValueError(f"name at least one harness (known: {', '.join(known)})")
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"unknown harness {', '.join(unknown)} (known: {', '.join(known)})")
        return names

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _split_patterns(cls, value: Any) -> list[str]:
        """A comma list in the environment, a list in the file; each pattern must compile."""
        patterns = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
        if not all(isinstance(p, str) for p in patterns):
            raise ValueError("each pattern must be a string")
        patterns = list(dict.fromkeys(p for p in patterns if p))
        for pattern in patterns:
            compile_pattern("exclude", pattern, Path.home())  # ValueError names the pattern
        return patterns

    @field_validator("roots")
    @classmethod
    def _check_roots(cls, value: dict[str, Path]) -> dict[str, Path]:
        known = known_harnesses()
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown harness {', '.join(unknown)} (known: {', '.join(known)})")
        return value

    @field_validator("backfill")
    @classmethod
    def _check_backfill(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("all", "none"):
            return value
        if parse_duration_s(value) <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("metrics_addr")
    @classmethod
    def _check_metrics_addr(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parse_metrics_addr(value)
        return value

    @field_validator(
        "flush_interval",
        "meta_interval",
        "scan_interval",
        "rescan_interval",
        "heartbeat_interval",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = parse_duration_s(value)
        if not 0 < seconds <= 3600:
            raise ValueError("must be more than 0 and at most 1h")
        return seconds

    @field_validator("lease_ttl", mode="before")
    @classmethod
    def _lease_ttl(cls, value: Any) -> float:
        seconds = parse_duration_s(value)
        if not 1 <= seconds <= 3600:
            raise ValueError("must be at least 1s and at most 1h")
        return seconds

    @field_validator("part_max_bytes", "max_line_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        size = parse_size_bytes(value)
        if not 1024 <= size <= 2**30:
            raise ValueError("must be between 1KiB and 1GiB")
        return size

    @field_validator("upload_concurrency")
    @classmethod
    def _concurrency(cls, value: int) -> int:
        if not 1 <= value <= 64:
            raise ValueError("must be between 1 and 64")
        return value

    @property
    def backfill_max_age_s(self) -> float | None:
        """Sessions untouched for longer than this are not mirrored (None: no limit; 0: since start)."""
        if self.backfill == "all":
            return None
        if self.backfill == "none":
            return 0.0
        return parse_duration_s(self.backfill)

    @property
    def socket_path(self) -> Path:
        if self.socket is not None:
            return self.socket
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        return Path(runtime) / "tracemirror" / "ctl.sock" if runtime else self.state_dir / "ctl.sock"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _CONFIG_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


# The TOML path for the next Settings() construction; set only by load_settings.
_CONFIG_FILE: dict[str, Path | None] = {"path": None}


def default_config_file() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "tracemirror" / "config.toml"


def _env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc)


def known_env_names() -> tuple[set[str], set[str]]:
    """(every ``TRACEMIRROR_*`` variable a setting reads, the prefixes of dict settings' variables).

    Built from the Settings model itself, so a setting added there is known here without a list.
    """
    names: set[str] = set()
    prefixes: set[str] = set()

    def walk(model: type[BaseModel], stem: str) -> None:
        for field_name, info in model.model_fields.items():
            name = stem + field_name.upper()
            names.add(name)
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, name + "__")
            elif get_origin(annotation) is dict or dict in get_args(annotation):
                prefixes.add(name + "__")

    walk(Settings, ENV_PREFIX)
    return names, prefixes


def unknown_env_problems(env: Mapping[str, str]) -> list[str]:
    """One line per ``TRACEMIRROR_*`` variable that names no setting, with the closest known name.

    Such a variable is a typo (``TRACEMIRROR_BUCKT``) whose setting silently keeps its default,
    for the bucket a different place than the user meant: refused like an unknown key in the file.
    """
    known, prefixes = known_env_names()
    problems = []
    for raw in sorted(env):
        name = raw.upper()
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(tuple(prefixes)):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (see tracemirrord --help)"
        problems.append(f"invalid configuration: environment variable {raw} is not a known setting{hint}")
    return problems


def _source_of(loc: tuple[Any, ...], env: Mapping[str, str], path: Path | None) -> str:
    """Where a setting's value came from: its variable (or its parent's JSON), the file, the default."""
    upper = {name.upper() for name in env}
    for depth in range(len(loc), 0, -1):
        if _env_name(loc[:depth]) in upper:
            return f"{_env_name(loc[:depth])}, from the environment"
    if path is not None:
        return f"{_env_name(loc)}, from config file {path}"
    return f"{_env_name(loc)}, default"


def _problem(error: Any, env: Mapping[str, str], path: Path | None) -> str:
    loc = tuple(p for p in error["loc"] if not isinstance(p, int))
    name = ".".join(str(p) for p in loc) or "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "is not a known setting"
        close = difflib.get_close_matches(str(loc[-1]), _field_names(loc[:-1]), n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?"
    return f"invalid configuration: setting {name} ({_source_of(loc, env, path)}): {mask_text(message)}"


def _reported(error: Any, env: Mapping[str, str]) -> bool:
    """An unknown nested variable (``TRACEMIRROR_S3__ENDPOINT``) is reported once, as a variable."""
    loc = tuple(p for p in error["loc"] if not isinstance(p, int))
    return error["type"] == "extra_forbidden" and _env_name(loc) in {n.upper() for n in env}


def _field_names(loc: tuple[Any, ...]) -> list[str]:
    """The setting names one level below ``loc`` (the top level for ``()``)."""
    model: Any = Settings
    for part in loc:
        info = getattr(model, "model_fields", {}).get(str(part))
        model = info.annotation if info is not None else None
    fields = getattr(model, "model_fields", None)
    return sorted(fields) if isinstance(fields, dict) else []


def mask_text(text: str) -> str:
    """Hide any URL userinfo in a message (a validator may quote a value)."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"]*@", r"\1***@", text)


def _aws_endpoint_problems(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """The AWS chain's endpoint variables, checked as strictly as ``s3.endpoint_url`` when they apply."""
    if not settings.bucket.startswith("s3://") or settings.s3.endpoint_url:
        return []
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return []
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = env.get(name)
        if value:
            try:
                check_endpoint_url(value)
            except ValueError as exc:
                return [f"invalid configuration: S3 endpoint ({name}, from the environment): {exc}"]
            return []
    return []


def load_settings(config_path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from env, TOML and defaults, or raise ConfigError naming every bad setting.

    ``env`` is only where sources are looked up for messages and unknown variables are found
    (default ``os.environ``, which pydantic-settings itself reads).
    """
    env = os.environ if env is None else env
    path = config_path
    if path is None and default_config_file().is_file():
        path = default_config_file()
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    _CONFIG_FILE["path"] = path
    problems = unknown_env_problems(env)
    settings: Settings | None = None
    try:
        settings = Settings()
    except ValidationError as exc:
        problems += [_problem(e, env, path) for e in exc.errors() if not _reported(e, env)]
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigError(f"cannot read config file {path}: {mask_text(str(exc))}") from None
    finally:
        _CONFIG_FILE["path"] = None
    if settings is not None:
        problems += _aws_endpoint_problems(settings, env)
    if problems:
        raise ConfigError(*problems)
    assert settings is not None
    return settings


def build_redactor(settings: Settings) -> Redactor:
    """The redactor the settings name: the configured rule set, on or off (no anonymizer here)."""
    from tracemirrord.redact import Redactor

    return Redactor(settings.redaction.rule_set(), enabled=settings.redact)


def log_redactor(settings: Settings) -> Redactor:
    """The redactor log lines and shown errors pass: the configured rules, on whatever ``redact`` says."""
    from tracemirrord.redact import Redactor

    return Redactor(settings.redaction.rule_set())


def build_store(settings: Settings) -> ObjectStore:
    """The store the settings name (nothing is contacted yet)."""
    s3 = settings.s3
    options = S3Options(
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
        session_token=s3.session_token.get_secret_value() if s3.session_token else None,
        profile=s3.profile,
        addressing_style=s3.addressing_style,
        connect_timeout_s=s3.connect_timeout,
        read_timeout_s=s3.read_timeout,
    )
    return open_store(settings.bucket, options)
