"""Where the bridge publishes: the broker URL, the destination template and the pin list (pure)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

SCHEMES = {"stomp": (False, 61613), "stomp+ssl": (True, 61614)}
SUBMITTED = "submitted"
PLACEHOLDER = "{conversationId}"


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    """A parsed ``GATEWAY_BRIDGE_URL``; the passcode never appears in repr or ``display``."""

    host: str
    port: int
    tls: bool
    vhost: str = "/"
    login: str | None = None
    passcode: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """The URL without its passcode, safe for logs and /readyz."""
        scheme = "stomp+ssl" if self.tls else "stomp"
        user = f"{quote(self.login, safe='')}@" if self.login else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}/{quote(self.vhost, safe='')}"


def parse_broker_url(url: str) -> BrokerTarget:
    """``stomp://user:pass@host:61613/vhost`` (or ``stomp+ssl://``) → BrokerTarget; ValueError says why."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"expected a stomp:// or stomp+ssl:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.query or parts.fragment:
        raise ValueError("query and fragment are not supported (TLS has its own GATEWAY_BRIDGE_TLS_* settings)")
    tls, default_port = SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("the port must be an integer 1-65535") from None
    # RabbitMQ reads the CONNECT host header as the vhost and refuses unknown ones, so an empty path
    # means the default vhost "/" (like AMQP URLs); "/%2F" spells it explicitly.
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = unquote(path) or "/"
    login = unquote(parts.username) if parts.username else None
    passcode = unquote(parts.password) if parts.password is not None else None
    return BrokerTarget(parts.hostname, port, tls, vhost, login, passcode)


def destination_for(template: str, conversation_id: str) -> str:
    """The broker destination of one conversation (plain replace: other braces stay literal)."""
    return template.replace(PLACEHOLDER, conversation_id)


@dataclass(frozen=True, slots=True)
class PinPolicy:
    """``GATEWAY_BRIDGE_PIN``: conversations pinned at start, and whether submissions pin."""

    conversations: tuple[str, ...] = ()
    submitted: bool = False


def parse_pin_policy(raw: str) -> PinPolicy:
    """A comma list of conversation UUIDs and/or ``submitted``; ValueError names the bad item."""
    ids: list[str] = []
    submitted = False
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item.lower() == SUBMITTED:
            submitted = True
            continue
        try:
            canonical = str(uuid.UUID(item))
        except ValueError:
            raise ValueError(f"expected conversation UUIDs or {SUBMITTED!r}, got {item[:60]!r}") from None
        if canonical not in ids:
            ids.append(canonical)
    return PinPolicy(tuple(ids), submitted)
