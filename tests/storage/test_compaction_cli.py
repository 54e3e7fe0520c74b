"""``unstoppable topics create --cleanup-policy ...`` and ``unstoppable compact``
as real subprocesses."""
import json

import unstoppable as us

from tests.cli.cliutil import bad, cli


def test_create_compacted_topic_then_compact_it(tmp_path):
    d = tmp_path / "log"
    cli("topics", "create", "st", "--cleanup-policy", "compact", "--delete-retention-ms", "1000",
        "--min-compaction-lag-ms", "0", "--min-cleanable-dirty-ratio", "0.25",
        "--config", "segment_bytes=4096", "--config", "max_batch_bytes=1024", log=d)
    with us.Log(d) as log:
        cfg = log.topic("st").config
        assert (cfg.cleanup_policy, cfg.delete_retention_ms, cfg.min_cleanable_dirty_ratio) == \
            ("compact", 1000, 0.25)
        p = log.topic("st").partition(0)
        for i in range(600):
            p.append([(b"k%d" % (i % 7), b"v%d" % i)])
        p.flush()
    out = json.loads(cli("compact", "st", "--json", log=d).stdout)
    assert len(out) == 1 and out[0]["topic"] == "st" and out[0]["records_removed"] > 0
    r = cli("compact", "--progress", log=d)      # every compacted topic; the bar is on stderr
    assert "st/0:" in r.stdout and "compact [" in r.stderr
    assert "OK" in cli("verify", log=d).stdout
    # end - start is an offset range on a compacted topic, not a record count.
    desc = json.loads(cli("topics", "describe", "st", "--json", log=d).stdout)
    assert desc["records"] is None and desc["offset_range"] == 600
    assert "600 offsets (compacted: fewer records, offsets skip)" in \
        cli("topics", "describe", "st", log=d).stdout
    assert "600 offsets (compacted: fewer records)" in cli("topics", "list", log=d).stdout
    with us.Log(d) as log:
        p = log.topic("st").partition(0)
        assert p.end_offset == 600
        seen, off = {}, 0
        while off < p.end_offset:
            recs = p.read(off)
            seen.update((bytes(r.key), bytes(r.value)) for r in recs)
            off = recs[-1].offset + 1
        assert seen == {b"k%d" % (i % 7): b"v%d" % i for i in range(593, 600)}


def test_compact_bad_input(tmp_path):
    d = tmp_path / "log"
    cli("topics", "create", "plain", log=d)
    assert "cleanup_policy='delete'" in bad("compact", "plain", log=d)
    assert "unknown topic 'nope'" in bad("compact", "nope", log=d)
    assert "min_compaction_lag_ms must be in 0" in bad(
        "topics", "create", "x", "--cleanup-policy", "compact", "--min-compaction-lag-ms", "-5", log=d)
    assert "min_cleanable_dirty_ratio" in bad(
        "topics", "create", "x", "--cleanup-policy", "compact", "--min-cleanable-dirty-ratio", "2",
        log=d)
    assert "cleanup_policy must be one of" in bad(
        "topics", "create", "x", "--config", "cleanup_policy=forever", log=d)
    bad("topics", "create", "x", "--cleanup-policy", "forever", log=d, code=2)
    assert "no compacted topics" in cli("compact", log=d).stdout


def test_topics_alter_switches_the_policy(tmp_path):
    """``topics alter`` (alias of alter-config) takes Kafka's names
    (cleanup.policy, retention.ms=-1) as well as ours, and says what is wrong."""
    d = tmp_path / "log"
    cli("topics", "create", "t", "--config", "retention_ms=60000", log=d)
    out = cli("topics", "alter", "t", "--config", "cleanup.policy=compact", "--set",
              "min.cleanable.dirty.ratio=0.1", "--config", "retention.ms=-1", log=d).stdout
    assert "cleanup_policy = compact" in out and "retention_ms = None" in out
    info = json.loads(cli("topics", "describe", "t", "--json", log=d).stdout)
    assert info["config"]["cleanup_policy"] == "compact"
    assert info["config"]["min_cleanable_dirty_ratio"] == 0.1
    assert "refuses records without a key" in bad("produce", "t", stdin="keyless\n", log=d)
    cli("topics", "alter-config", "t", "--config", "cleanup_policy=delete", log=d)
    cli("produce", "t", stdin="keyless\n", log=d)
    assert "cannot alter the partitions" in bad("topics", "alter", "t", "--config", "partitions=4",
                                                log=d)
    assert "delete_retention_ms must be in 0" in bad(
        "topics", "alter", "t", "--config", "delete.retention.ms=-1", log=d)
    assert "unknown topic 'nope'" in bad("topics", "alter", "nope", "--config",
                                         "cleanup.policy=compact", log=d)
    with us.Log(d) as log:
        assert log.topic("t").config.cleanup_policy == "delete"
        assert log.topic("t").config.retention_ms is None
