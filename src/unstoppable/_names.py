"""The name rule for topics and consumer groups, as Kafka has it: 1-249
characters of ``[A-Za-z0-9._-]``, and not ``.`` or ``..`` (each name becomes a
directory name in the embedded log and a subject token on JetStream).

Backend-neutral: no storage or client imports.
"""
from __future__ import annotations

import re

from unstoppable.errors import InvalidGroupNameError, InvalidTopicNameError

__all__ = ["MAX_NAME_LENGTH", "is_valid_name", "validate_topic_name", "validate_group_name"]

MAX_NAME_LENGTH = 249
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
_NAME_CHAR_RE = re.compile(r"[A-Za-z0-9._-]")


def is_valid_name(name) -> bool:
    """Whether ``name`` passes the rule (no exception)."""
    return (isinstance(name, str) and name not in (".", "..")
            and _NAME_RE.fullmatch(name) is not None)


def validate_topic_name(name) -> str:
    """Check a topic name the way Kafka does: 1-249 characters of
    ``[A-Za-z0-9._-]``, and not ``.`` or ``..``. Returns the name."""
    if not isinstance(name, str):
        raise InvalidTopicNameError(f"topic name must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidTopicNameError("topic name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidTopicNameError(
            f"topic name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if name in (".", ".."):
        raise InvalidTopicNameError(f"topic name {name!r} is not allowed")
    if not _NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not _NAME_CHAR_RE.fullmatch(c)})
        raise InvalidTopicNameError(
            f"topic name {name!r} contains {''.join(bad)!r}; only letters, digits, '.', '_' and '-' are allowed")
    return name


def validate_group_name(name) -> str:
    """A group name follows the topic-name rules: 1-249 of ``[A-Za-z0-9._-]``,
    not ``.`` or ``..`` (it becomes a directory name). Returns the name."""
    if not isinstance(name, str):
        raise InvalidGroupNameError(f"group name must be a str, got {type(name).__name__}")
    if not is_valid_name(name):
        raise InvalidGroupNameError(
            f"invalid group name {name!r}: use 1-249 of letters, digits, '.', '_' and '-' "
            "(not '.' or '..')")
    return name
