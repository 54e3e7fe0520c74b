"""Stub of the compiled fast path of the booking decisions (_decide.pyx)."""
from typing import Any, Callable

def decide_run(st: Any, topic: str, partition: int, partitions: int, recs: list[Any],
               ttl_ms: int, check: Callable[..., Any] | None, tp: Any, dead: dict[Any, Any] | None,
               homes: dict[str, int], home: Callable[[bytes, int], int],
               from_string: Callable[[Any], Any],
               slow: Callable[[Any, Any, int, str, Any], Any]) -> Any: ...

def pack_log(history: list[Any], payments: dict[Any, Any],
             fallback: Callable[[list[Any], dict[Any, Any]], str]) -> str: ...
def booking_rows(part: Any, keys: Any, p: int, new: list[Any], old: list[Any], users: list[Any],
                 fallback: Callable[[list[Any], dict[Any, Any]], str]) -> None: ...
def seat_rows(part: Any, keys: Any, p: int, new: list[Any], old: list[Any]) -> None: ...
