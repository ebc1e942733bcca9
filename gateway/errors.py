"""The gateway's error hierarchy: each error carries what a user needs to act on it."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A setting is missing or invalid; the message names the setting."""


class JournalConflict(GatewayError):
    """An append lost a race: the expected seq or the lease owner did not match."""


class JournalRollback(JournalConflict):
    """The journal's head went backwards under a writer (Redis restored an older snapshot).

    Continuing would hand out seqs viewers already saw with other envelopes: the writer stops, and
    the next one starts a new incarnation above every seq it knows was assigned.
    """


class UpstreamFatal(GatewayError):
    """HQ refused the stream in a way retrying cannot fix (401/403/404)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HQ answered {status}: {reason}")
        self.status = status
        self.reason = reason


class JournalUnavailable(GatewayError):
    """The journal's store did not answer (Redis down, restarting, pool exhausted); the outcome is unknown."""


class UpstreamUnavailable(GatewayError):
    """A transient failure: connection refused, 5xx, wrong content type, stream cut or stalled."""
