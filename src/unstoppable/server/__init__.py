"""``unstoppable serve``: the embedded log behind a Kafka-protocol port.

Any Kafka client (librdkafka and everything built on it, kcat, aiokafka,
kafka-python, Java) can produce to and consume from a log directory through
:class:`Broker`, while Python processes keep using the same directory through
``us.Log``. Run it with ``python -m unstoppable.server --log DIR``. Needs the
``server`` extra (``pip install 'unstoppable[server]'``).

Modules: ``broker`` (the listener and the data APIs), ``coordinator`` (the
classic group protocol and committed offsets), ``protocol`` (framing and the
kio codecs), ``wire`` (the hand-written framing of Produce and Fetch, whose
records pass through as bytes), ``recordbatch`` (the checks of a client's
batches, and the two cases that still translate), ``metrics`` (Prometheus),
``_log`` (the storage internals the server uses).
"""
__all__ = ["Broker"]


def __getattr__(name: str):
    # The broker (and kio, which takes about a second to import) loads when it
    # is used: `unstoppable --help` and every other command register `serve`
    # through unstoppable.server.__main__ without starting a server.
    if name == "Broker":
        from unstoppable.server.broker import Broker
        return Broker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
