"""kcat's output format strings (``consume -F/--format-string``).

Codes, as kcat's ``-f``: ``%t`` topic, ``%p`` partition, ``%o`` offset,
``%T`` timestamp (ms since the epoch, UTC), ``%k`` key, ``%K`` key length,
``%s`` value, ``%S`` value length (-1 for a null key or value), ``%h``
headers as ``k=v,k=v``, ``%%`` a percent sign; ``\\n``, ``\\r``, ``\\t`` and
``\\xNN`` are those bytes. Keys, values and header values are written as
their raw bytes (no escaping), as kcat does; nothing is added at the end
(end the format with ``\\n`` for one record per line).
"""
from __future__ import annotations

import re

__all__ = ["compile_format"]

_TOKEN = re.compile(rb"%(.)|\\(x[0-9a-fA-F]{2}|.)", re.S)
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"\\": b"\\"}


def _length(b) -> bytes:
    return b"-1" if b is None else b"%d" % len(b)


_FIELDS = {
    b"t": lambda topic, r: topic.encode(),
    b"p": lambda topic, r: b"%d" % r.partition,
    b"o": lambda topic, r: b"%d" % r.offset,
    b"T": lambda topic, r: b"%d" % r.timestamp,
    b"k": lambda topic, r: b"" if r.key is None else bytes(r.key),
    b"K": lambda topic, r: _length(r.key),
    b"s": lambda topic, r: b"" if r.value is None else bytes(r.value),
    b"S": lambda topic, r: _length(r.value),
    b"h": lambda topic, r: b",".join(k.encode() + b"=" + (b"" if v is None else bytes(v))
                                     for k, v in r.headers),
}


def compile_format(fmt: str):
    """``render(topic, record) -> bytes`` for a kcat format string; ValueError
    naming an unknown ``%`` code."""
    raw = fmt.encode()
    parts: list = []
    pos = 0
    for m in _TOKEN.finditer(raw):
        if m.start() > pos:
            parts.append(raw[pos:m.start()])
        code, esc = m.group(1), m.group(2)
        if code is not None:
            if code == b"%":
                parts.append(b"%")
            elif code in _FIELDS:
                parts.append(_FIELDS[code])
            else:
                raise ValueError(f"unknown format code %{code.decode(errors='replace')} in {fmt!r} "
                                 "(known: %t %p %o %T %k %K %s %S %h %%)")
        elif esc.startswith(b"x") and len(esc) == 3:
            parts.append(bytes([int(esc[1:], 16)]))
        else:
            parts.append(_ESCAPES.get(esc, b"\\" + esc))
        pos = m.end()
    if pos < len(raw):
        parts.append(raw[pos:])

    def render(topic: str, r) -> bytes:
        return b"".join(p if isinstance(p, bytes) else p(topic, r) for p in parts)
    return render
