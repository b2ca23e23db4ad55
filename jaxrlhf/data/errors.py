"""Errors and counters for data validation.

A bad row either raises `DataError` (one line: source, 1-based row number, field, reason) or, with
`on_invalid="skip"`, is dropped and counted by reason in a `DataReport`, which the trainer logs.
"""

from __future__ import annotations

import collections
import dataclasses

ON_INVALID = ("raise", "skip")


def row_policy(config_value: str) -> str:
    """A config's `data.on_invalid` ("error" | "skip", the words a user reads) as a `RowGuard` policy."""
    return "raise" if config_value == "error" else config_value


class DataError(ValueError):
    """A row of a data source is unusable. `str()` is one line naming source, row and field."""

    def __init__(self, source: str, row: int | None, field: str | None, reason: str):
        self.source, self.row, self.field, self.reason = source, row, field, reason
        parts = [str(source)]
        if row is not None:
            parts.append(f"row {row}")
        if field is not None:
            parts.append(f"field {field!r}")
        msg = ": ".join(parts) + ": " + reason
        super().__init__(" ".join(msg.split("\n")))


class RowInvalid(Exception):
    """Raised inside row parsers; turned into `DataError` or a skip count by the caller."""

    def __init__(self, field: str | None, kind: str, detail: str = ""):
        super().__init__(kind)
        self.field, self.kind, self.detail = field, kind, detail

    def message(self) -> str:
        return self.kind.replace("_", " ") + (f" ({self.detail})" if self.detail else "")


@dataclasses.dataclass
class DataReport:
    """What happened to the rows of one source.

    rows: rows read. kept: records produced (pairs, lists or rated responses).
    invalid: rows skipped as invalid, by reason (`missing`, `empty`, `not_string`, `identical`,
        `not_numeric`, `bad_structure`, `no_shared_prompt`, ...).
    filtered: valid rows or pairs dropped by a rule (`low_agreement`, `tie`).
    notes: counts worth logging that drop nothing (`empty_response`, `truncated`, ...).
    """

    source: str = ""
    format: str = ""  # the format the rows were read as (auto resolved)
    response_prefix: str = ""  # " " when most responses start with whitespace: what separates them from the prompt
    rows: int = 0
    kept: int = 0
    invalid: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    filtered: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, int]:
        """Flat `{name: count}` for a metrics writer."""
        out = {"rows": self.rows, "kept": self.kept}
        groups = (("invalid", self.invalid), ("filtered", self.filtered), ("notes", self.notes))
        for prefix, counter in groups:
            for key in sorted(counter):
                out[f"{prefix}/{key}"] = int(counter[key])
        return out

    def __str__(self) -> str:
        items = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"{self.source}: {items}"


class RowGuard:
    """Applies the `on_invalid` policy: raise `DataError` or count the reason and skip."""

    def __init__(self, source: str, on_invalid: str, report: DataReport):
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        self.source, self.on_invalid, self.report = source, on_invalid, report

    def invalid(self, index: int, err: RowInvalid) -> None:
        """Row `index` (0-based) is invalid: raise, or count it."""
        if self.on_invalid == "raise":
            raise DataError(self.source, index + 1, err.field, err.message())
        self.report.invalid[err.kind] += 1
