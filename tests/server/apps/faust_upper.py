"""A faust-streaming agent run against ``unstoppable serve``
(tests/server/test_apps.py runs it in its own virtualenv).

The agent reads the input topic as a member of the consumer group faust
forms (its own client-side assignor, passed through the server's group
protocol untouched) and sends each value upper-cased to the output topic,
with its input offset as the key. Runs until SIGTERM.

Usage: faust_upper.py BOOTSTRAP INPUT OUTPUT DATA_DIR
"""
import sys

import faust


def main() -> None:
    bootstrap, src_name, dst_name, data_dir = sys.argv[1:5]
    app = faust.App("faust-upper", broker=f"kafka://{bootstrap}", store="memory://",
                    datadir=data_dir, web_enabled=False, topic_partitions=1,
                    consumer_auto_offset_reset="earliest", broker_commit_every=1,
                    broker_commit_interval=0.5)
    src = app.topic(src_name, value_serializer="raw", key_serializer="raw")
    dst = app.topic(dst_name, value_serializer="raw", key_serializer="raw")

    @app.agent(src)
    async def upper(stream):
        async for event in stream.events():
            await dst.send(key=str(event.message.offset).encode(), value=event.value.upper())

    sys.argv = [sys.argv[0], "worker", "-l", "info", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
