"""``unstoppable topics create/alter --config`` with Kafka's timestamp configs:
message.timestamp.type, message.timestamp.before/after.max.ms and the
deprecated difference.max.ms (both limits)."""
import json
import time

from cliutil import bad, cli

import unstoppable as us


def test_timestamp_configs_from_the_command_line(tmp_path):
    log = tmp_path / "log"
    cli("topics", "create", "t", "--config", "message.timestamp.type=LogAppendTime",
        "--config", "message.timestamp.difference.max.ms=60000",
        "--config", "message.timestamp.after.max.ms=5000", log=log)
    d = json.loads(cli("topics", "describe", "t", "--json", log=log).stdout)["config"]
    assert d["message_timestamp_type"] == "LogAppendTime"
    assert (d["message_timestamp_before_max_ms"], d["message_timestamp_after_max_ms"]) == (60000, 5000)
    before = time.time_ns() // 1_000_000
    cli("produce", "t", stdin="a\nb\n", log=log)
    with us.Log(log) as lg:
        assert all(r.timestamp >= before for r in lg.topic("t").partition(0).read(0))
    out = cli("topics", "alter", "t", "--config", "message.timestamp.type=CreateTime",
              "--config", "message_timestamp_after_max_ms=none", log=log).stdout
    assert "message_timestamp_type = CreateTime" in out
    with us.Log(log) as lg:
        cfg = lg.topic("t").config
        assert (cfg.message_timestamp_type, cfg.message_timestamp_before_max_ms,
                cfg.message_timestamp_after_max_ms) == ("CreateTime", 60000, None)
    assert "message_timestamp_type must be one of 'CreateTime', 'LogAppendTime'" in bad(
        "topics", "alter", "t", "--config", "message.timestamp.type=Now", log=log)
    assert "is not an integer" in bad(
        "topics", "alter", "t", "--config", "message.timestamp.before.max.ms=soon", log=log, code=2)
