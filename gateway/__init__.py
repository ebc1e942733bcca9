"""hq-gateway: one HQ SSE upstream per conversation, fanned out as ConvEngine v2 envelopes."""

__version__ = "0.1.0"
