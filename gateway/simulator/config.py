"""Settings of one simulated HQ, validated once when built."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.errors import ConfigError
from gateway.simulator.faults import FaultSpec


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulated HQ behaves; the defaults suit local frontend development."""

    token: str = "hq_pat_simulator"
    keepalive_s: float = 15.0
    delta_interval_ms: float = 40.0
    journal_max: int = 100_000
    seed: int | None = None
    retry_ms: int = 1000
    subscriber_max_pending: int = 10_000
    idempotency_ttl_s: float = 86_400.0
    agent_name: str = "HQ Simulator"
    faults: FaultSpec = field(default_factory=FaultSpec)

    def __post_init__(self) -> None:
        if not self.token:
            raise ConfigError("simulator token: must not be empty")
        if not self.keepalive_s > 0:
            raise ConfigError(f"simulator keepalive_s: expected a positive number, got {self.keepalive_s}")
        if not self.delta_interval_ms >= 0:
            raise ConfigError(f"simulator delta_interval_ms: expected a number >= 0, got {self.delta_interval_ms}")
        for name in ("journal_max", "subscriber_max_pending"):
            if getattr(self, name) < 1:
                raise ConfigError(f"simulator {name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.retry_ms < 0:
            raise ConfigError(f"simulator retry_ms: expected an integer >= 0, got {self.retry_ms}")
        if not self.idempotency_ttl_s > 0:
            raise ConfigError(f"simulator idempotency_ttl_s: expected a positive number, got {self.idempotency_ttl_s}")
