"""Stub of the compiled fast path of the booking decisions (_decide.pyx)."""
from typing import Any, Callable, ClassVar, final

@final
class Seat:
    seat_id: str
    state: str
    booking_id: str
    user_id: str
    updated_ms: int
    __hash__: ClassVar[None]  # type: ignore[assignment]
    def __init__(self, seat_id: str, state: str = ..., booking_id: str = ..., user_id: str = ...,
                 updated_ms: int = ...) -> None: ...
    def __copy__(self) -> Seat: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

@final
class Booking:
    seat_id: str
    booking_id: str
    user_id: str
    state: str
    reason: str
    payment_id: str
    amount_cents: int
    created_ms: int
    updated_ms: int
    deadline_ms: int
    nevents: int
    __hash__: ClassVar[None]  # type: ignore[assignment]
    def __init__(self, seat_id: str, booking_id: str, user_id: str = ..., state: str = ...,
                 reason: str = ..., payment_id: str = ..., amount_cents: int = ...,
                 created_ms: int = ..., updated_ms: int = ..., deadline_ms: int = ...,
                 nevents: int = ...) -> None: ...
    def __copy__(self) -> Booking: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

def decide_run(st: Any, topic: str, partition: int, partitions: int, recs: list[Any],
               ttl_ms: int, check: Callable[..., Any] | None, tp: Any, dead: dict[Any, Any] | None,
               homes: dict[str, int], home: Callable[[bytes, int], int],
               from_string: Callable[[Any], Any],
               slow: Callable[[Any, Any, int, str, Any], Any]) -> Any: ...

def pack_log(history: list[Any], payments: dict[Any, Any],
             fallback: Callable[[list[Any], dict[Any, Any]], str]) -> str: ...
def booking_rows(part: Any, keys: Any, p: int, new: list[Any], old: list[Any], users: list[Any],
                 fallback: Callable[[list[Any], dict[Any, Any]], str], freeze: bool = ...) -> None: ...
def thaw_log(logs: dict[Any, Any], k: Any, text: str) -> tuple[list[Any], dict[Any, Any]]: ...
def seat_rows(part: Any, keys: Any, p: int, new: list[Any], old: list[Any]) -> None: ...
def pack_outcomes(pairs: list[tuple[bytes, bytes]]) -> bytes: ...
