"""Remote backends: the same Producer and Consumer on a distributed engine.

Today that is NATS JetStream (:mod:`unstoppable.backends.jetstream`); open one
with ``await unstoppable.connect("nats://host:port[,host:port...]")``. Needs
the ``nats`` extra (``pip install unstoppable[nats]``).
"""
from unstoppable.backends.jetstream import (
    JetStreamBackend,
    JetStreamLog,
    JetStreamOffsetStore,
    JetStreamRecord,
    JetStreamTopic,
)

__all__ = ["JetStreamLog", "JetStreamBackend", "JetStreamOffsetStore", "JetStreamRecord",
           "JetStreamTopic"]
