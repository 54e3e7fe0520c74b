"""A quixstreams app with a stateful count, run against ``unstoppable serve``
(tests/server/test_apps.py runs it in its own virtualenv).

Reads keyed words from the input topic, counts each key in RocksDB state
(backed by a changelog topic that quixstreams creates through CreateTopics),
and writes ``{"word": ..., "count": n}`` to the output topic. Stops after
``count`` messages or ``timeout`` seconds.

Usage: quix_count.py BOOTSTRAP INPUT OUTPUT STATE_DIR COUNT TIMEOUT
"""
import sys

from quixstreams import Application


def main() -> None:
    bootstrap, src, dst, state_dir, count, timeout = sys.argv[1:7]
    app = Application(broker_address=bootstrap, consumer_group="quix-count",
                      auto_offset_reset="earliest", state_dir=state_dir, commit_interval=0.5,
                      loglevel="INFO")
    words = app.topic(src, key_deserializer="str", value_deserializer="str")
    out = app.topic(dst, key_serializer="str", value_serializer="json")

    def count_word(value, state):
        n = state.get("count", 0) + 1
        state.set("count", n)
        return {"word": value, "count": n}

    sdf = app.dataframe(words)
    sdf = sdf.apply(count_word, stateful=True)
    sdf.to_topic(out)
    app.run(count=int(count), timeout=float(timeout))
    print("quix-count done", flush=True)


if __name__ == "__main__":
    main()
