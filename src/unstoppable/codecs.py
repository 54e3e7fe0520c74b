"""Value codecs: how application objects become record bytes and back.

A codec is any object with two methods::

    encode(obj) -> bytes
    decode(data: bytes-like) -> obj

Three come with the library:

* :class:`BytesCodec`: bytes in, bytes out (the identity; accepts any
  bytes-like object, and ``str`` as UTF-8).
* :class:`JsonCodec`: any JSON-serializable value, as compact UTF-8 JSON.
* :class:`ProtobufCodec`: instances of one protobuf message class, in the
  protobuf wire format.

:func:`get` turns a name into a codec, for command lines and configuration:
``"bytes"``, ``"str"``, ``"json"``, ``"proto:package.module:MessageClass"``,
or an alias from :data:`ALIASES` (``"booking"``: the booking demo's
``BookingEvent``, resolved like any ``proto:`` name, so this module imports
nothing of the demo).

A value that does not decode raises :class:`unstoppable.errors.ValueDecodeError`;
one that cannot be encoded raises ``TypeError`` or ``ValueError``. A codec
plugs into the client as ``Producer(..., value_serializer=codec)`` (and
``key_serializer``), which calls ``codec.encode`` in ``send``, and
``Consumer(..., value_deserializer=codec)`` (and ``key_deserializer``), which
calls ``codec.decode`` and yields ConsumerRecord tuples.

These are value codecs for records. The column codecs of
:mod:`unstoppable.arrow` (``arrow.ProtobufCodec`` and friends) turn a whole
array of values into typed Arrow columns for exports; they are a different
interface.
"""
from __future__ import annotations

import importlib
import json
from typing import Any, Protocol, runtime_checkable

from unstoppable.errors import ValueDecodeError

__all__ = ["Codec", "BytesCodec", "StrCodec", "JsonCodec", "ProtobufCodec", "get", "NAMES", "ALIASES"]


@runtime_checkable
class Codec(Protocol):
    """What a value codec implements."""

    def encode(self, obj: Any) -> bytes:
        """The record bytes of ``obj``."""

    def decode(self, data) -> Any:
        """The object of record bytes ``data`` (bytes, bytearray or memoryview)."""


class BytesCodec:
    """Values are bytes: ``encode`` takes bytes-like objects (``str`` as
    UTF-8) and ``decode`` returns ``bytes``."""

    name = "bytes"

    def encode(self, obj) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        if isinstance(obj, str):
            return obj.encode()
        raise TypeError(f"BytesCodec encodes bytes-like objects or str, got {type(obj).__name__}")

    def decode(self, data) -> bytes:
        return bytes(data)

    def __repr__(self):
        return "BytesCodec()"


class StrCodec:
    """Values are UTF-8 text."""

    name = "str"

    def encode(self, obj) -> bytes:
        if not isinstance(obj, str):
            raise TypeError(f"StrCodec encodes str, got {type(obj).__name__}")
        return obj.encode()

    def decode(self, data) -> str:
        try:
            return bytes(data).decode()
        except UnicodeDecodeError as e:
            raise ValueDecodeError(f"value is not UTF-8: {e}") from None

    def __repr__(self):
        return "StrCodec()"


class JsonCodec:
    """Values are JSON documents (compact UTF-8, keys in insertion order)."""

    name = "json"

    def encode(self, obj) -> bytes:
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise type(e)(f"JsonCodec cannot encode {type(obj).__name__}: {e}") from None

    def decode(self, data):
        try:
            return json.loads(bytes(data))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueDecodeError(f"value is not valid JSON: {e}") from None

    def __repr__(self):
        return "JsonCodec()"


class ProtobufCodec:
    """ProtobufCodec(message_class)

    Values are serialized ``message_class`` messages. ``encode`` accepts an
    instance of the class (or a dict of its fields); ``decode`` returns a new
    instance. Protobuf parsing is lenient by design (unknown fields are
    kept), so only bytes that break the wire format fail to decode.
    """

    def __init__(self, message_class):
        if not (hasattr(message_class, "DESCRIPTOR") and hasattr(message_class, "FromString")):
            raise TypeError(f"expected a protobuf message class, got {message_class!r}")
        self.message_class = message_class
        self.name = "proto:" + message_class.DESCRIPTOR.full_name

    def encode(self, obj) -> bytes:
        if isinstance(obj, dict):
            obj = self.message_class(**obj)
        if not isinstance(obj, self.message_class):
            raise TypeError(f"expected a {self.message_class.DESCRIPTOR.full_name} message, "
                            f"got {type(obj).__name__}")
        return obj.SerializeToString(deterministic=True)

    def decode(self, data):
        from google.protobuf.message import DecodeError
        try:
            return self.message_class.FromString(bytes(data))
        except (DecodeError, RuntimeWarning, ValueError) as e:
            raise ValueDecodeError(
                f"value is not a valid {self.message_class.DESCRIPTOR.full_name}: {e}") from None

    def to_dict(self, msg) -> dict:
        """A message as a JSON-ready dict (field names as in the .proto)."""
        from google.protobuf import json_format
        return json_format.MessageToDict(msg, preserving_proto_field_name=True)

    def from_json(self, obj) -> Any:
        """A message from a JSON-ready dict or a JSON string (ValueError if it does not fit)."""
        from google.protobuf import json_format
        try:
            if isinstance(obj, (str, bytes)):
                return json_format.Parse(obj, self.message_class())
            return json_format.ParseDict(obj, self.message_class())
        except json_format.ParseError as e:
            raise ValueError(f"not a {self.message_class.DESCRIPTOR.full_name}: {e}") from None

    def __repr__(self):
        return f"ProtobufCodec({self.message_class.DESCRIPTOR.full_name})"


#: Names :func:`get` resolves to another spec.
ALIASES = {"booking": "proto:unstoppable.booking.booking_pb2:BookingEvent"}

#: The names :func:`get` knows besides ``proto:module:Class``.
NAMES = ("bytes", "str", "json", *ALIASES)


def get(spec) -> Codec:
    """get(spec) -> codec

    ``spec`` is a codec (returned as is), a protobuf message class, or a name:
    ``"bytes"``, ``"str"``, ``"json"``, an alias of :data:`ALIASES`
    (``"booking"``: the booking service's BookingEvent) or
    ``"proto:package.module:MessageClass"``. Unknown names raise ValueError.
    """
    if isinstance(spec, str):
        if spec == "bytes":
            return BytesCodec()
        if spec == "str":
            return StrCodec()
        if spec == "json":
            return JsonCodec()
        spec = ALIASES.get(spec, spec)
        if spec.startswith("proto:"):
            mod, _, cls = spec[len("proto:"):].partition(":")
            if not mod or not cls:
                raise ValueError(f"codec {spec!r}: write proto:package.module:MessageClass")
            try:
                m = importlib.import_module(mod)
            except ImportError as e:
                raise ValueError(f"codec {spec!r}: cannot import {mod}: {e}") from None
            try:
                klass = getattr(m, cls)
            except AttributeError:
                raise ValueError(f"codec {spec!r}: module {mod} has no {cls}") from None
            return ProtobufCodec(klass)
        raise ValueError(f"unknown codec {spec!r}: use one of {', '.join(NAMES)} "
                         "or proto:package.module:MessageClass")
    if hasattr(spec, "DESCRIPTOR") and hasattr(spec, "FromString"):
        return ProtobufCodec(spec)
    if callable(getattr(spec, "encode", None)) and callable(getattr(spec, "decode", None)):
        return spec
    raise TypeError(f"not a codec: {spec!r}")
