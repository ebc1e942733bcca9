"""The tunables of one SockJS service (and of its raw WebSocket endpoint)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SockJsOptions:
    """Tunables of one SockJS service; the defaults are sockjs-node's."""

    heartbeat_s: float = 25.0
    disconnect_delay_s: float = 5.0
    allowed_origins: frozenset[str] | None = None  # None: any origin
    max_message_bytes: int = 65536  # one WebSocket message or one xhr_send body
    max_queue: int = 1000  # messages held for an HTTP session between receivers
    cookie_needed: bool = False
    response_limit: int = 128 * 1024  # bytes before a streaming response ends so the client GCs it
    max_sessions: int = 10_000
    # WebSocket subprotocols the app speaks, preferred first (e.g. v12.stomp); offered → chosen.
    subprotocols: tuple[str, ...] = ()
    # Also serve the raw (unframed) WebSocket at the prefix itself, as Spring's endpoint does.
    raw_at_prefix: bool = False

    def __post_init__(self) -> None:
        limits = ("heartbeat_s", "disconnect_delay_s", "max_message_bytes", "max_queue", "response_limit")
        for name in (*limits, "max_sessions"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"sockjs {name}: expected a positive number, got {getattr(self, name)!r}")

    def origin_allowed(self, origin: str | None) -> bool:
        allowed = self.allowed_origins
        return origin is None or allowed is None or "*" in allowed or origin.lower().rstrip("/") in allowed
