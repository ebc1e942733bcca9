"""The Redis key layout shared by the journal, the cluster lease and the bridge's stores.

Keys of one conversation share the Redis Cluster hash tag ``{<conversationId>}`` so every script
runs unchanged on one Redis, Sentinel or Redis Cluster:

* ``<prefix>:{<id>}:journal`` — Stream (gateway.journal.redis)
* ``<prefix>:{<id>}:meta`` — Hash: seq, first, cursor (gateway.journal.redis)
* ``<prefix>:{<id>}:lease`` — the upstream lease (gateway.cluster)
* the bridge's cursor and pin keys (gateway.bridge.redis_store)
"""

from __future__ import annotations


def conversation_key(prefix: str, conversation_id: str, kind: str) -> str:
    """``<prefix>:{<id>}:<kind>``: the braces make every key of a conversation hash to one slot."""
    return f"{prefix}:{{{conversation_id}}}:{kind}"
