"""What a viewer transport may use of the running gateway: the hub, interest, presence, metrics and settings.

A narrow view of ``gateway.runtime.Gateway`` (which satisfies it), so transports depend on the hub,
the interest registry and metrics rather than on the runtime that assembles them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.config import Settings
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.presence import Presence
from gateway.upstream.registry import UpstreamRegistry


class ViewerServices(Protocol):
    """The parts of the gateway a viewer connection uses."""

    @property
    def settings(self) -> Settings: ...

    @property
    def hub(self) -> Hub: ...

    @property
    def upstreams(self) -> UpstreamRegistry: ...  # interest: an upstream per watched conversation

    @property
    def metrics(self) -> Metrics: ...

    @property
    def presence(self) -> Presence: ...  # who watches: counted on attach and detach, never per delivery

    @property
    def shutting_down(self) -> asyncio.Event: ...
