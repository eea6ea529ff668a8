from __future__ import annotations

def parse(
    records: list[bytes],
    start: int,
    plan: tuple[
        int,
        int,
        tuple[int, ...],
        bytes,
        int,
        tuple[tuple[int, bytes], ...],
        tuple[tuple[int, bytes], ...],
        bool,
    ],
    source: bytes,
    /,
) -> tuple[int, list[str], list[str], list[str], list[str], set[int], list[int]]: ...
