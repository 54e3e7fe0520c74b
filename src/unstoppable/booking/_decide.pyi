"""Stub of the compiled fast path of the booking decisions (_decide.pyx)."""
from typing import Any, Callable

def decide_run(st: Any, topic: str, partition: int, partitions: int, recs: list[Any],
               ttl_ms: int, check: Callable[..., Any] | None, tp: Any, dead: dict[Any, Any] | None,
               homes: dict[str, int], home: Callable[[bytes, int], int],
               from_string: Callable[[Any], Any],
               slow: Callable[[Any, Any, int, str, Any], Any]) -> Any: ...
