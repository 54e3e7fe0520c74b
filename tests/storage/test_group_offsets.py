"""The group offsets file keeps each offset's metadata (a Kafka client's
OffsetCommit metadata), and files written before metadata existed still load."""
import os
import struct

import pytest

from unstoppable._core.hashing import crc32c
from unstoppable.storage.groups import MAGIC, MAX_METADATA_BYTES, OffsetsFile


def _v1_record(ts, entries):
    """A record as versions before metadata wrote it, built by hand from the
    layout in the module docstring."""
    body = struct.pack("<qI", ts, len(entries))
    for (topic, partition), off in entries:
        t = topic.encode()
        body += struct.pack("<H", len(t)) + t + struct.pack("<Iq", partition, off)
    return struct.pack("<II", len(body), crc32c(body)) + body


def test_old_file_loads_and_takes_metadata(tmp_path):
    d = tmp_path / "log" / "groups" / "g"
    d.mkdir(parents=True)
    (d / "offsets").write_bytes(MAGIC + _v1_record(1, [(("t", 0), 5), (("t", 1), 6)])
                                + _v1_record(2, [(("t", 0), 7)]))
    f = OffsetsFile(str(tmp_path / "log"), "g")
    assert f.load_with_metadata() == {("t", 0): (7, ""), ("t", 1): (6, "")}
    f.commit({("t", 1): 9}, metadata={("t", 1): "ünï"})
    f.close()
    g = OffsetsFile(str(tmp_path / "log"), "g")
    assert g.load() == {("t", 0): 7, ("t", 1): 9}
    assert g.metadata() == {("t", 1): "ünï"}
    g.close()


def test_metadata_latest_wins_and_survives_compaction(tmp_path):
    log = str(tmp_path / "log")
    f = OffsetsFile(log, "g", compact_bytes=2048)
    size0 = None
    for i in range(200):
        meta = {("t", 0): f"m{i}"}
        if i % 2:
            meta[("t", 1)] = "odd"
        f.commit({("t", 0): i, ("t", 1): i, ("u", 3): i}, metadata=meta, sync=False)
        if i == 0:
            size0 = os.path.getsize(f.path)
    # compaction rewrote the file at least once (it would be ~40 KB otherwise)
    assert os.path.getsize(f.path) < 200 * (size0 - len(MAGIC))
    assert f.load_with_metadata() == {("t", 0): (199, "m199"), ("t", 1): (199, "odd"),
                                      ("u", 3): (199, "")}
    # a commit without metadata clears it, as in Kafka
    f.commit({("t", 1): 200})
    assert f.metadata() == {("t", 0): "m199"}
    other = OffsetsFile(log, "g")        # another reader sees the same
    assert other.load_with_metadata() == {("t", 0): (199, "m199"), ("t", 1): (200, ""),
                                          ("u", 3): (199, "")}
    other.close()
    f.close()


def test_metadata_checks(tmp_path):
    f = OffsetsFile(str(tmp_path / "log"), "g")
    with pytest.raises(ValueError, match="over the limit of 4096"):
        f.commit({("t", 0): 1}, metadata={("t", 0): "x" * (MAX_METADATA_BYTES + 1)})
    with pytest.raises(ValueError, match="has no offset in this commit"):
        f.commit({("t", 0): 1}, metadata={("t", 1): "x"})
    f.commit({("t", 0): 1}, metadata={("t", 0): "x" * MAX_METADATA_BYTES})
    assert f.metadata() == {("t", 0): "x" * MAX_METADATA_BYTES}
    f.close()


def test_torn_metadata_record_is_dropped(tmp_path):
    log = str(tmp_path / "log")
    f = OffsetsFile(log, "g")
    f.commit({("t", 0): 1}, metadata={("t", 0): "first"})
    f.commit({("t", 0): 2}, metadata={("t", 0): "second"})
    f.close()
    path = os.path.join(log, "groups", "g", "offsets")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 3)      # a crash cut the last record
    g = OffsetsFile(log, "g")
    assert g.load_with_metadata() == {("t", 0): (1, "first")}
    g.commit({("t", 0): 3})                         # the torn record is truncated away
    assert OffsetsFile(log, "g").load_with_metadata() == {("t", 0): (3, "")}
    g.close()
