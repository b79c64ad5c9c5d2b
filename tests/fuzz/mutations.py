"""Deterministic mutations of a valid file, and the rule every case must keep.

Each mutation returns (case name, bytes). A reader given the bytes must, within a few
seconds, either read them or raise one of our error types, never anything else.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

SECONDS_PER_CASE = 5.0


def truncations(data: bytes, count: int = 16) -> Iterator[tuple[str, bytes]]:
    for cut in np.linspace(0, len(data) - 1, count).astype(int):
        yield f"truncated at byte {cut}", data[:cut]


def byte_flips(data: bytes, count: int = 16, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    for k in range(count):
        mutated = bytearray(data)
        positions = rng.integers(0, len(data), size=1 + k % 8)
        for p in positions:
            mutated[p] = int(rng.integers(0, 256))
        yield f"{len(positions)} bytes replaced ({k})", bytes(mutated)


def inflated_numbers(data: bytes, count: int = 8, seed: int = 1) -> Iterator[tuple[str, bytes]]:
    """Integers in the file (counts, lengths, ids) made huge, zero or negative."""
    rng = np.random.default_rng(seed)
    numbers = list(re.finditer(rb"(?<![\d.eE+-])\d+(?![\d.])", data))
    for k in range(min(count, len(numbers))):
        match = numbers[int(rng.integers(0, len(numbers)))]
        value = [b"999999999999", b"0", b"-5", b"2147483648"][k % 4]
        yield f"number {match.group()[:12]!r} at {match.start()} -> {value.decode()}", \
            data[: match.start()] + value + data[match.end():]


def renamed_keys(data: bytes, keys: list[bytes]) -> Iterator[tuple[str, bytes]]:
    for key in keys:
        if key in data:
            yield f"key {key.decode()} renamed", data.replace(key, key[:-1] + b"Q")


def broken_text(data: bytes) -> Iterator[tuple[str, bytes]]:
    middle = len(data) // 2
    yield "invalid UTF-8 in the middle", data[:middle] + b"\xff\xfe\xc3" + data[middle:]
    yield "NUL bytes in the middle", data[:middle] + b"\x00" * 16 + data[middle:]
    yield "empty file", b""
    yield "only blank lines", b"\n\n\n\n"
    yield "a 2 MB line in front", b"x" * (2 << 20) + b"\n" + data
    yield "random bytes", np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()


@contextmanager
def time_limit(seconds: float = SECONDS_PER_CASE):
    def stop(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(read: Callable[[], object], ours: tuple[type[BaseException], ...]) -> str:
    """``"read"``, ``"refused"`` (one of ``ours``) or what went wrong (anything else, or too slow)."""
    try:
        with time_limit():
            read()
        return "read"
    except ours:
        return "refused"
    except TimeoutError as exc:
        return f"HUNG: {exc}"
    except BaseException as exc:  # noqa: BLE001 - that is the finding
        return f"ESCAPED {type(exc).__name__}: {str(exc)[:200]}"
