"""Outbound relay of journaled envelopes into an external STOMP broker (RabbitMQ, ActiveMQ, Artemis).

Delivery is at least once and in order per conversation: a conversation's bridge cursor advances only
when the broker's RECEIPT for a SEND arrives, and after a reconnect everything after the cursor is
resent from the journal. Consumers drop the rare duplicate by the ``seq`` header (dense and
increasing per ``conversation-id``): keep the highest ``seq`` seen per conversation, skip anything
not above it.

Layout: ``target`` (URL, destination, pin list: pure), ``window`` (receipt window and cursors: pure),
``store`` (cursor and pin store protocols, memory implementations), ``link`` (the process's one
stomp.py connection, in its own thread), ``sender`` (pumps journal → link through the window),
``pins`` (one pinned conversation's state), ``relay`` (the ``Bridge``: lifecycle, pins, health).
"""
