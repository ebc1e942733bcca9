"""The built-in HQ simulator: HQ's conversation API with scripted turns and switchable faults."""

from gateway.simulator.app import create_app
from gateway.simulator.config import SimulatorConfig
from gateway.simulator.faults import FaultSpec

__all__ = ["FaultSpec", "SimulatorConfig", "create_app"]
