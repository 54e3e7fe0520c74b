"""The C hashes and checksum against reference packages and published vectors."""
import crc32c as crc32c_ref
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from unstoppable._core import hashing


# RFC 3720, appendix B.4: CRC-32C test vectors.
RFC3720 = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (bytes.fromhex(
        "01c00000" "00000000" "00000000" "00000000" "14000000" "00000400" "00000014"
        "00000018" "28000000" "00000000" "02000000" "00000000"), 0xD9963A56),
]


@pytest.mark.parametrize("data,expected", RFC3720)
def test_crc32c_rfc3720_vectors(data, expected):
    assert hashing.crc32c(data) == expected
    assert hashing.crc32c_software(data) == expected


def test_crc32c_check_value():
    assert hashing.crc32c(b"123456789") == 0xE3069283


@settings(max_examples=300)
@given(st.binary(max_size=10_000), st.integers(0, 64))
def test_crc32c_matches_package_and_extends(data, split):
    split = min(split, len(data))
    assert hashing.crc32c(data) == crc32c_ref.crc32c(data)
    assert hashing.crc32c_software(data) == crc32c_ref.crc32c(data)
    assert hashing.crc32c(data[split:], hashing.crc32c(data[:split])) == crc32c_ref.crc32c(data)


@pytest.mark.parametrize("n", [3 * 1024 - 1, 3 * 1024, 3 * 1024 + 7, 3 * 1024 * 5 + 3, 1 << 20])
def test_crc32c_long_inputs_use_the_three_stream_path(n):
    data = bytes((i * 131 + 7) & 0xFF for i in range(n))
    for start in range(0, 8):  # every alignment
        assert hashing.crc32c(data[start:]) == crc32c_ref.crc32c(data[start:])


def test_crc32c_accepts_buffers():
    import array
    a = array.array("I", range(100))
    assert hashing.crc32c(a) == crc32c_ref.crc32c(a.tobytes())
    assert hashing.crc32c(memoryview(b"abcdef")[2:]) == crc32c_ref.crc32c(b"cdef")


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.integers(0, 2**64 - 1))
def test_xxh64_matches_xxhash(data, seed):
    assert hashing.xxh64(data) == xxhash.xxh64_intdigest(data)
    assert hashing.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)
    assert hashing.xxh64(bytearray(data)) == xxhash.xxh64_intdigest(data)


@pytest.mark.parametrize("n", range(0, 70))
def test_xxh64_every_tail_length(n):
    data = bytes(range(n))
    assert hashing.xxh64(data) == xxhash.xxh64_intdigest(data)


# Kafka's own test vectors: clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java
# (testMurmur2), as Java signed ints.
KAFKA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize("key,expected", KAFKA_MURMUR2)
def test_murmur2_kafka_vectors(key, expected):
    assert hashing.murmur2(key) == expected


@pytest.mark.parametrize("key,expected", KAFKA_MURMUR2)
def test_murmur2_partition_is_kafkas_to_positive_mod(key, expected):
    for n in (1, 3, 8, 12, 100):
        assert hashing.murmur2_partition(key, n) == (expected & 0x7FFFFFFF) % n


def _murmur2_python(data: bytes) -> int:
    """A direct transcription of Kafka's Utils.murmur2, with Java int wrap-around."""
    def i32(x):
        x &= 0xFFFFFFFF
        return x - (1 << 32) if x & 0x80000000 else x

    length = len(data)
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    h = i32(seed ^ length)
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = i32(k * m)
        k = i32(k ^ ((k & 0xFFFFFFFF) >> r))
        k = i32(k * m)
        h = i32(h * m)
        h = i32(h ^ k)
    rem = length % 4
    base = length & ~3
    if rem == 3:
        h = i32(h ^ (data[base + 2] << 16))
    if rem >= 2:
        h = i32(h ^ (data[base + 1] << 8))
    if rem >= 1:
        h = i32(h ^ data[base])
        h = i32(h * m)
    h = i32(h ^ ((h & 0xFFFFFFFF) >> 13))
    h = i32(h * m)
    h = i32(h ^ ((h & 0xFFFFFFFF) >> 15))
    return h


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_murmur2_matches_transcription(data):
    assert hashing.murmur2(data) == _murmur2_python(data)


def test_partition_helpers_reject_bad_counts():
    with pytest.raises(ValueError, match="partition count"):
        hashing.xxh64_partition(b"k", 0)
    with pytest.raises(ValueError, match="partition count"):
        hashing.murmur2_partition(b"k", -1)
    assert hashing.xxh64_partition(b"k", 7) == xxhash.xxh64_intdigest(b"k") % 7
