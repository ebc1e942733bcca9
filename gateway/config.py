"""Settings: a TOML file plus GATEWAY_* environment overrides, validated once at start.

Every setting is declared once in ``SETTINGS`` with its TOML location, its environment variable,
its type and bounds. ``config/gateway.toml`` documents the same table for operators.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError

_Check = Callable[[Any], str | None]


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable value: where it lives in TOML, its env name, type, default and check."""

    field: str
    section: str
    key: str
    kind: type
    default: Any
    check: _Check | None = None

    @property
    def env(self) -> str:
        # [server] keys are top-level in the fixed contract: GATEWAY_HOST, GATEWAY_PORT.
        prefix = "" if self.section == "server" else f"{self.section}_"
        return f"GATEWAY_{prefix}{self.key}".upper()


def _range(lo: float, hi: float) -> _Check:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"expected a value between {lo:g} and {hi:g}, got {v!r}"

    return check


def _one_of(*choices: str) -> _Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"expected one of {', '.join(choices)}, got {v!r}"

    return check


def _url(*schemes: str, optional: bool = False) -> _Check:
    def check(v: Any) -> str | None:
        if v == "" and optional:
            return None
        parts = urlsplit(v)
        if parts.scheme not in schemes or not parts.hostname:
            return f"expected a {'/'.join(schemes)} URL with a host, got {v!r}"
        return None

    return check


def _template(v: Any) -> str | None:
    return None if "{conversationId}" in v else f"must contain {{conversationId}}, got {v!r}"


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "server", "host", str, "127.0.0.1"),
    Setting("port", "server", "port", int, 8080, _range(1, 65535)),
    Setting("log_level", "server", "log_level", str, "info", _one_of("debug", "info", "warning", "error")),
    Setting("log_format", "server", "log_format", str, "human", _one_of("human", "json")),
    Setting("public_url", "server", "public_url", str, ""),
    Setting("hq_base_url", "hq", "base_url", str, "http://127.0.0.1:8090", _url("http", "https")),
    Setting("hq_token", "hq", "token", str, "hq_pat_simulator"),
    Setting("hq_connect_timeout_s", "hq", "connect_timeout_s", float, 5.0, _range(0.1, 120)),
    Setting("hq_idle_timeout_s", "hq", "idle_timeout_s", float, 40.0, _range(0.2, 600)),
    Setting("hq_backoff_initial_s", "hq", "backoff_initial_s", float, 0.25, _range(0.001, 60)),
    Setting("hq_backoff_max_s", "hq", "backoff_max_s", float, 15.0, _range(0.01, 600)),
    Setting("hq_linger_s", "hq", "linger_s", float, 30.0, _range(0, 3600)),
    Setting("redis_url", "redis", "url", str, "", _url("redis", "rediss", "unix", optional=True)),
    Setting("redis_key_prefix", "redis", "key_prefix", str, "hqgw"),
    Setting("redis_lease_ttl_ms", "redis", "lease_ttl_ms", int, 5000, _range(500, 600_000)),
    Setting("journal_max_events", "journal", "max_events", int, 10_000, _range(1, 10_000_000)),
    Setting("journal_max_age_s", "journal", "max_age_s", float, 86_400.0, _range(1, 365 * 86_400)),
    Setting("replay_max_events", "journal", "replay_max_events", int, 10_000, _range(1, 10_000_000)),
    Setting("queue_max_messages", "hub", "queue_max_messages", int, 1_000, _range(1, 1_000_000)),
    Setting("queue_max_bytes", "hub", "queue_max_bytes", int, 1 << 20, _range(1024, 1 << 30)),
    Setting("sse_keepalive_s", "sse", "keepalive_s", float, 15.0, _range(0.05, 300)),
    Setting("stomp_heartbeat_ms", "stomp", "heartbeat_ms", int, 10_000, _range(0, 3_600_000)),
    Setting("stomp_max_frame_bytes", "stomp", "max_frame_bytes", int, 64 * 1024, _range(256, 64 << 20)),
    Setting("stomp_max_headers", "stomp", "max_headers", int, 64, _range(4, 10_000)),
    Setting("stomp_max_subscriptions", "stomp", "max_subscriptions", int, 100, _range(1, 100_000)),
    Setting("stomp_connect_timeout_s", "stomp", "connect_timeout_s", float, 10.0, _range(0.1, 600)),
    Setting("sockjs_heartbeat_s", "sockjs", "heartbeat_s", float, 25.0, _range(0.05, 600)),
    Setting("sockjs_disconnect_delay_s", "sockjs", "disconnect_delay_s", float, 5.0, _range(0.05, 600)),
    Setting("auth_mode", "auth", "mode", str, "none", _one_of("none", "jwt", "hq")),
    Setting("auth_allow_insecure_bind", "auth", "allow_insecure_bind", bool, False),
    Setting("allowed_origins", "auth", "allowed_origins", str, "*"),
    Setting("bridge_url", "bridge", "url", str, "", _url("stomp", "stomp+ssl", optional=True)),
    Setting(
        "bridge_destination",
        "bridge",
        "destination",
        str,
        "/topic/convengine.audit.{conversationId}",
        _template,
    ),
    Setting("mapping_file", "normalize", "mapping_file", str, ""),
    Setting("unknown_events", "normalize", "unknown_events", str, "keep", _one_of("keep", "drop")),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated configuration of one gateway process."""

    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: str = "human"
    public_url: str = ""
    hq_base_url: str = "http://127.0.0.1:8090"
    hq_token: str = "hq_pat_simulator"
    hq_connect_timeout_s: float = 5.0
    hq_idle_timeout_s: float = 40.0
    hq_backoff_initial_s: float = 0.25
    hq_backoff_max_s: float = 15.0
    hq_linger_s: float = 30.0
    redis_url: str = ""
    redis_key_prefix: str = "hqgw"
    redis_lease_ttl_ms: int = 5000
    journal_max_events: int = 10_000
    journal_max_age_s: float = 86_400.0
    replay_max_events: int = 10_000
    queue_max_messages: int = 1_000
    queue_max_bytes: int = 1 << 20
    sse_keepalive_s: float = 15.0
    stomp_heartbeat_ms: int = 10_000
    stomp_max_frame_bytes: int = 64 * 1024
    stomp_max_headers: int = 64
    stomp_max_subscriptions: int = 100
    stomp_connect_timeout_s: float = 10.0
    sockjs_heartbeat_s: float = 25.0
    sockjs_disconnect_delay_s: float = 5.0
    auth_mode: str = "none"
    auth_allow_insecure_bind: bool = False
    allowed_origins: str = "*"
    bridge_url: str = ""
    bridge_destination: str = "/topic/convengine.audit.{conversationId}"
    mapping_file: str = ""
    unknown_events: str = "keep"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(setting: Setting, raw: Any, origin: str) -> Any:
    name = f"{origin}: " if origin else ""
    try:
        if setting.kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if setting.kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        if setting.kind is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if not isinstance(raw, str):
            raise ValueError
        return raw
    except ValueError:
        raise ConfigError(f"{name}expected {setting.kind.__name__}, got {raw!r}") from None


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (optional) then apply ``GATEWAY_*`` overrides from ``env``; validate everything."""
    env = os.environ if env is None else env
    table: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                table = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"--config: file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: invalid TOML: {exc}") from None
    known = {(s.section, s.key) for s in SETTINGS}
    for section, body in table.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
        for key in body:
            if (section, key) not in known:
                raise ConfigError(f"{path}: unknown setting [{section}] {key}")
    values: dict[str, Any] = {}
    for s in SETTINGS:
        value = s.default
        if s.key in table.get(s.section, {}):
            value = _coerce(s, table[s.section][s.key], f"[{s.section}] {s.key}")
        if s.env in env:
            value = _coerce(s, env[s.env], s.env)
        if s.check is not None and (problem := s.check(value)):
            raise ConfigError(f"{s.env} ([{s.section}] {s.key}): {problem}")
        values[s.field] = value
    settings = Settings(**values)
    if settings.hq_backoff_initial_s > settings.hq_backoff_max_s:
        raise ConfigError("GATEWAY_HQ_BACKOFF_INITIAL_S: must not exceed GATEWAY_HQ_BACKOFF_MAX_S")
    if settings.mapping_file and not Path(settings.mapping_file).is_file():
        raise ConfigError(f"GATEWAY_NORMALIZE_MAPPING_FILE: file not found: {settings.mapping_file}")
    return settings
