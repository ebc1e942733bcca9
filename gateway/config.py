"""Settings: a TOML file plus GATEWAY_* environment overrides, validated once at start.

Every setting is declared once in ``SETTINGS`` with its TOML location, its environment variable,
its type and bounds. ``config/gateway.toml`` documents the same table for operators.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.bridge.target import parse_broker_url, parse_pin_policy
from gateway.clientaddr import parse_trusted
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


def _cookie_name(v: Any) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}", v) else f"expected a cookie name, got {v!r}"


def _file_or_empty(v: Any) -> str | None:
    return None if v == "" or Path(v).is_file() else f"file not found: {v!r}"


def _template(v: Any) -> str | None:
    return None if "{conversationId}" in v else f"must contain {{conversationId}}, got {v!r}"


def _broker_url(v: Any) -> str | None:
    if v == "":
        return None
    try:
        parse_broker_url(v)
    except ValueError as exc:
        return str(exc)  # never echo the URL: it may carry the broker's password
    return None


def _proxies(v: Any) -> str | None:
    try:
        parse_trusted(v)
    except ValueError as exc:
        return str(exc)
    return None


def _pin_list(v: Any) -> str | None:
    try:
        parse_pin_policy(v)
    except ValueError as exc:
        return str(exc)
    return None


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "server", "host", str, "127.0.0.1"),
    Setting("port", "server", "port", int, 8080, _range(1, 65535)),
    Setting("log_level", "server", "log_level", str, "info", _one_of("debug", "info", "warning", "error")),
    Setting("log_format", "server", "log_format", str, "human", _one_of("human", "json")),
    Setting("public_url", "server", "public_url", str, ""),
    Setting("socket_sndbuf_bytes", "server", "socket_sndbuf_bytes", int, 131072, _range(0, 64 << 20)),
    Setting("websocket_compression", "server", "websocket_compression", bool, False),
    Setting("server_hooks", "server", "server_hooks", str, "on", _one_of("on", "off")),
    Setting("trusted_proxies", "server", "trusted_proxies", str, "", _proxies),
    Setting("hq_base_url", "hq", "base_url", str, "http://127.0.0.1:8090", _url("http", "https")),
    Setting("hq_token", "hq", "token", str, "hq_pat_simulator"),
    Setting("hq_connect_timeout_s", "hq", "connect_timeout_s", float, 5.0, _range(0.1, 120)),
    Setting("hq_idle_timeout_s", "hq", "idle_timeout_s", float, 40.0, _range(0.2, 600)),
    Setting("hq_backoff_initial_s", "hq", "backoff_initial_s", float, 0.25, _range(0.001, 60)),
    Setting("hq_backoff_max_s", "hq", "backoff_max_s", float, 15.0, _range(0.01, 600)),
    Setting("hq_linger_s", "hq", "linger_s", float, 30.0, _range(0, 3600)),
    Setting("hq_attach_timeout_s", "hq", "attach_timeout_s", float, 5.0, _range(0.1, 120)),
    Setting("redis_url", "redis", "url", str, "", _url("redis", "rediss", "unix", optional=True)),
    Setting("redis_key_prefix", "redis", "key_prefix", str, "hqgw"),
    Setting("redis_lease_ttl_ms", "redis", "lease_ttl_ms", int, 5000, _range(500, 600_000)),
    Setting("redis_max_connections", "redis", "max_connections", int, 64, _range(2, 100_000)),
    Setting("redis_pool_timeout_s", "redis", "pool_timeout_s", float, 5.0, _range(0.01, 600)),
    Setting("redis_max_tails", "redis", "max_tails", int, 4096, _range(1, 1_000_000)),
    Setting("redis_outage_notice_s", "redis", "outage_notice_s", float, 5.0, _range(0.1, 3600)),
    Setting("journal_max_events", "journal", "max_events", int, 10_000, _range(1, 10_000_000)),
    Setting("journal_max_age_s", "journal", "max_age_s", float, 86_400.0, _range(1, 365 * 86_400)),
    Setting("journal_max_conversations", "journal", "max_conversations", int, 10_000, _range(1, 10_000_000)),
    Setting("replay_max_events", "journal", "replay_max_events", int, 10_000, _range(1, 10_000_000)),
    Setting("queue_max_messages", "hub", "queue_max_messages", int, 1_000, _range(1, 1_000_000)),
    Setting("queue_max_bytes", "hub", "queue_max_bytes", int, 1 << 20, _range(1024, 1 << 30)),
    Setting("coalesce", "hub", "coalesce", bool, True),
    Setting("coalesce_after", "hub", "coalesce_after", int, 64, _range(2, 1_000_000)),
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
    Setting("auth_cookie_name", "auth", "cookie_name", str, "hq_session", _cookie_name),
    Setting("auth_jwt_algorithms", "auth", "jwt_algorithms", str, "HS256"),
    Setting("auth_jwt_secret", "auth", "jwt_secret", str, ""),
    Setting("auth_jwt_public_key_file", "auth", "jwt_public_key_file", str, "", _file_or_empty),
    Setting("auth_jwt_jwks_file", "auth", "jwt_jwks_file", str, "", _file_or_empty),
    Setting("auth_jwt_audience", "auth", "jwt_audience", str, "hq-gateway"),
    Setting("auth_jwt_issuer", "auth", "jwt_issuer", str, ""),
    Setting("auth_jwt_leeway_s", "auth", "jwt_leeway_s", float, 30.0, _range(0, 600)),
    Setting("auth_hq_scope", "auth", "hq_scope", str, "user", _one_of("user", "integrator", "admin")),
    Setting("auth_hq_cache_ttl_s", "auth", "hq_cache_ttl_s", float, 30.0, _range(0, 3600)),
    Setting("auth_hq_negative_ttl_s", "auth", "hq_negative_ttl_s", float, 5.0, _range(0, 3600)),
    Setting("auth_hq_cache_size", "auth", "hq_cache_size", int, 10_000, _range(1, 10_000_000)),
    Setting("max_connections_per_client", "limits", "max_connections_per_client", int, 1000, _range(0, 1_000_000)),
    Setting("max_header_bytes", "limits", "max_header_bytes", int, 16 * 1024, _range(1024, 1 << 20)),
    Setting("request_head_timeout_s", "limits", "request_head_timeout_s", float, 20.0, _range(0.05, 300)),
    Setting("submit_rate_per_s", "limits", "submit_rate_per_s", float, 2.0, _range(0.001, 100_000)),
    Setting("submit_burst", "limits", "submit_burst", int, 20, _range(1, 100_000)),
    Setting("upstream_activations_per_s", "limits", "upstream_activations_per_s", float, 2.0, _range(0.001, 100_000)),
    Setting("upstream_activation_burst", "limits", "upstream_activation_burst", int, 100, _range(0, 10_000_000)),
    Setting("max_upstreams", "limits", "max_upstreams", int, 10_000, _range(0, 10_000_000)),
    Setting("bridge_url", "bridge", "url", str, "", _broker_url),
    Setting(
        "bridge_destination",
        "bridge",
        "destination",
        str,
        "/topic/convengine.audit.{conversationId}",
        _template,
    ),
    Setting("bridge_pin", "bridge", "pin", str, "", _pin_list),
    Setting("bridge_window", "bridge", "window", int, 256, _range(1, 65_536)),
    Setting("bridge_receipt_timeout_s", "bridge", "receipt_timeout_s", float, 10.0, _range(0.1, 3600)),
    Setting("bridge_heartbeat_ms", "bridge", "heartbeat_ms", int, 10_000, _range(0, 3_600_000)),
    Setting("bridge_backoff_initial_s", "bridge", "backoff_initial_s", float, 0.5, _range(0.001, 60)),
    Setting("bridge_backoff_max_s", "bridge", "backoff_max_s", float, 30.0, _range(0.01, 600)),
    Setting("bridge_submitted_linger_s", "bridge", "submitted_linger_s", float, 300.0, _range(0, 7 * 86_400)),
    Setting("bridge_tls_ca_file", "bridge", "tls_ca_file", str, "", _file_or_empty),
    Setting("bridge_tls_cert_file", "bridge", "tls_cert_file", str, "", _file_or_empty),
    Setting("bridge_tls_key_file", "bridge", "tls_key_file", str, "", _file_or_empty),
    Setting("bridge_tls_verify", "bridge", "tls_verify", bool, True),
    Setting("mapping_file", "normalize", "mapping_file", str, ""),
    Setting("unknown_events", "normalize", "unknown_events", str, "keep", _one_of("keep", "drop")),
    Setting("presence_interval_s", "presence", "interval_s", float, 1.0, _range(0.05, 60)),
    Setting("presence_ttl_s", "presence", "ttl_s", float, 5.0, _range(0.2, 600)),
    Setting("presence_max_subjects", "presence", "max_subjects", int, 1000, _range(0, 100_000)),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated configuration of one gateway process."""

    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: str = "human"
    public_url: str = ""
    socket_sndbuf_bytes: int = 131072
    websocket_compression: bool = False
    server_hooks: str = "on"
    trusted_proxies: str = ""
    hq_base_url: str = "http://127.0.0.1:8090"
    hq_token: str = field(default="hq_pat_simulator", repr=False)
    hq_connect_timeout_s: float = 5.0
    hq_idle_timeout_s: float = 40.0
    hq_backoff_initial_s: float = 0.25
    hq_backoff_max_s: float = 15.0
    hq_linger_s: float = 30.0
    hq_attach_timeout_s: float = 5.0
    redis_url: str = ""
    redis_key_prefix: str = "hqgw"
    redis_lease_ttl_ms: int = 5000
    redis_max_connections: int = 64
    redis_pool_timeout_s: float = 5.0
    redis_max_tails: int = 4096
    redis_outage_notice_s: float = 5.0
    journal_max_events: int = 10_000
    journal_max_age_s: float = 86_400.0
    journal_max_conversations: int = 10_000
    replay_max_events: int = 10_000
    queue_max_messages: int = 1_000
    queue_max_bytes: int = 1 << 20
    coalesce: bool = True
    coalesce_after: int = 64
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
    auth_cookie_name: str = "hq_session"
    auth_jwt_algorithms: str = "HS256"
    auth_jwt_secret: str = field(default="", repr=False)
    auth_jwt_public_key_file: str = ""
    auth_jwt_jwks_file: str = ""
    auth_jwt_audience: str = "hq-gateway"
    auth_jwt_issuer: str = ""
    auth_jwt_leeway_s: float = 30.0
    auth_hq_scope: str = "user"
    auth_hq_cache_ttl_s: float = 30.0
    auth_hq_negative_ttl_s: float = 5.0
    auth_hq_cache_size: int = 10_000
    max_connections_per_client: int = 1000
    max_header_bytes: int = 16 * 1024
    request_head_timeout_s: float = 20.0
    submit_rate_per_s: float = 2.0
    submit_burst: int = 20
    upstream_activations_per_s: float = 2.0
    upstream_activation_burst: int = 100
    max_upstreams: int = 10_000
    bridge_url: str = field(default="", repr=False)  # may carry the broker password
    bridge_destination: str = "/topic/convengine.audit.{conversationId}"
    bridge_pin: str = ""
    bridge_window: int = 256
    bridge_receipt_timeout_s: float = 10.0
    bridge_heartbeat_ms: int = 10_000
    bridge_backoff_initial_s: float = 0.5
    bridge_backoff_max_s: float = 30.0
    bridge_submitted_linger_s: float = 300.0
    bridge_tls_ca_file: str = ""
    bridge_tls_cert_file: str = ""
    bridge_tls_key_file: str = ""
    bridge_tls_verify: bool = True
    mapping_file: str = ""
    unknown_events: str = "keep"
    presence_interval_s: float = 1.0
    presence_ttl_s: float = 5.0
    presence_max_subjects: int = 1000

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
    if settings.auth_mode == "none" and not settings.auth_allow_insecure_bind and not is_loopback(settings.host):
        raise ConfigError(
            f"GATEWAY_AUTH_MODE=none refuses the non-loopback GATEWAY_HOST={settings.host}: anyone could watch any "
            "conversation. Use GATEWAY_AUTH_MODE=jwt or hq, or GATEWAY_AUTH_ALLOW_INSECURE_BIND=true (development only)"
        )
    tls_files = settings.bridge_tls_ca_file or settings.bridge_tls_cert_file or settings.bridge_tls_key_file
    if tls_files and not settings.bridge_url.startswith("stomp+ssl://"):
        raise ConfigError("GATEWAY_BRIDGE_TLS_*: set, but GATEWAY_BRIDGE_URL is not a stomp+ssl:// URL")
    if settings.presence_ttl_s < 2 * settings.presence_interval_s:
        raise ConfigError("GATEWAY_PRESENCE_TTL_S: must be at least twice GATEWAY_PRESENCE_INTERVAL_S")
    if settings.mapping_file and not Path(settings.mapping_file).is_file():
        raise ConfigError(f"GATEWAY_NORMALIZE_MAPPING_FILE: file not found: {settings.mapping_file}")
    return settings


def is_loopback(host: str) -> bool:
    """True for binds only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
