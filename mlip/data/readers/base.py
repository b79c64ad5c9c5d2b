"""What every reader shares: turning one raw record into a `Structure`, or reporting it.

A reader walks its file and hands each raw record to `convert_record` with a
function that builds the `Structure`. A record that cannot be used raises a
`DataError` naming ``file#record``; with ``on_error="skip"`` it is counted in a
`SkippedRecords` instead and reading carries on. Problems with the file itself
(missing, truncated, not the format) always raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlip.data.structure import DataError, Structure

ON_ERROR = ("raise", "skip")


class MalformedFileError(DataError):
    """A file whose text cannot be parsed at some record: nothing after it can be trusted."""


@dataclass
class SkippedRecords:
    """Records left out under ``on_error="skip"``: how many, and the first few reasons."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)
    keep: int = 20

    def add(self, reason: str) -> None:
        self.count += 1
        if len(self.reasons) < self.keep:
            self.reasons.append(reason)

    def summary(self) -> str:
        more = f" (first {len(self.reasons)} shown)" if self.count > len(self.reasons) else ""
        return f"skipped {self.count} record(s){more}:\n" + "\n".join(f"  {r}" for r in self.reasons)


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def convert_record(
    source: str, build: Callable[[], Structure], on_error: str = "raise", skipped: SkippedRecords | None = None
) -> Structure | None:
    """``build()``, with any failure turned into a `DataError` naming ``source``.

    Returns None for a bad record when ``on_error == "skip"`` (and counts it in ``skipped``).
    """
    try:
        return build()
    except DataError as exc:
        error = exc
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        error = DataError(f"{source}: malformed record ({type(exc).__name__}: {exc})")
    if on_error == "raise":
        raise error
    if skipped is not None:
        skipped.add(str(error))
    return None
