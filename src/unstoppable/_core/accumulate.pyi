from typing import Any

STOP_END: int
STOP_OTHER: int
STOP_TOO_LARGE: int
STOP_SPACE: int
STOP_SEALED: int
ALG_XXH64: int
ALG_MURMUR2: int

def fill_pairs(
    records: list[Any] | tuple[Any, ...],
    i: int,
    buffers: Any,
    space: Any,
    open_: list[Any],
    alg: int,
    n: int,
    hard: int,
    limit: int,
    max_record: int,
    overhead: int,
    out: list[Any] | None,
    last: dict[Any, int],
    cur: list[Any],
    reserved: int = 0,
    sealed_max: int = ...,
) -> tuple[int, int]: ...
