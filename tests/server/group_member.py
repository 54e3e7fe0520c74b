"""A consumer-group member in its own process, for tests/server/test_clients.py.

A commit refused because the group is rebalancing (REBALANCE_IN_PROGRESS,
ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID) is reported on stderr and the member
goes on, as an application does: the records are consumed again by whoever
owns the partition next.

    python group_member.py CLIENT BOOTSTRAP TOPIC GROUP SESSION_MS

Prints one JSON line per poll round in which something changed:
{"assigned": [partitions...], "consumed": total records}. CLIENT is
confluent, aiokafka or kafka-python. Commits after each poll.
"""
import asyncio
import json
import sys

client, bootstrap, topic, group, session_ms = sys.argv[1:6]
session_ms = int(session_ms)
last = None
total = 0


def report(assigned):
    global last
    now = (sorted(assigned), total)
    if now != last:
        last = now
        print(json.dumps({"assigned": now[0], "consumed": total}), flush=True)


if client == "confluent":
    import confluent_kafka as ck
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "session.timeout.ms": session_ms, "heartbeat.interval.ms": 200,
                     "topic.metadata.refresh.interval.ms": 1000})
    c.subscribe([topic])
    while True:
        msgs = c.consume(500, 0.2)
        total += sum(1 for m in msgs if not m.error())
        if msgs:
            try:
                c.commit(asynchronous=False)
            except ck.KafkaException as e:
                print(f"commit refused: {e}", file=sys.stderr, flush=True)
        report(tp.partition for tp in c.assignment())
elif client == "kafka-python":
    from kafka import KafkaConsumer
    from kafka.errors import CommitFailedError, KafkaError
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      session_timeout_ms=session_ms, heartbeat_interval_ms=200)
    while True:
        got = c.poll(200)
        n = sum(len(v) for v in got.values())
        total += n
        if n:
            try:
                c.commit()
            except (CommitFailedError, KafkaError) as e:
                print(f"commit refused: {e!r}", file=sys.stderr, flush=True)
        report(tp.partition for tp in c.assignment())
elif client == "aiokafka":
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import CommitFailedError, KafkaError

    async def main():
        global total
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=session_ms, heartbeat_interval_ms=200)
        await c.start()
        while True:
            got = await c.getmany(timeout_ms=200)
            n = sum(len(v) for v in got.values())
            total += n
            if n:
                try:
                    await c.commit()
                except (CommitFailedError, KafkaError) as e:
                    print(f"commit refused: {e!r}", file=sys.stderr, flush=True)
            report(tp.partition for tp in c.assignment())
    asyncio.run(main())
else:
    sys.exit(f"unknown client {client}")
