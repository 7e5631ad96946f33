"""How many bad input records a run may skip (``data.on_error=skip``, ``data.max_bad``).

Skipping is for the odd broken record, not for a setting that breaks them all: a misspelt
``data.text_field`` makes every record "bad", and a run that went on would succeed with an empty
output. So the preflight stops when every record is bad, or more than ``data.max_bad`` are,
naming the most common problem, which is usually the setting to fix.
"""

from __future__ import annotations

import math

from ddpinfer.inputs.readers import InputError
from ddpinfer.inputs.scan import InputScan

DEFAULT_MAX_BAD = 0.10


class TooManyBadInputs(InputError):
    """More input records are bad than data.max_bad allows."""


def max_bad_rows(max_bad: float | None, num_rows: int) -> int:
    """data.max_bad as a count: below 1 a fraction of ``num_rows``, rounded up (so that a
    fraction lets a small input skip one bad record), else a count."""
    setting = DEFAULT_MAX_BAD if max_bad is None else max_bad
    return math.ceil(round(setting * num_rows, 6)) if setting < 1 else int(setting)


def check_bad_share(scan: InputScan, max_bad: float | None, path: str) -> None:
    """Raise ``TooManyBadInputs`` when every record is bad or more than allowed are."""
    limit = max_bad_rows(max_bad, scan.num_rows)
    if scan.bad_rows == 0 or (scan.bad_rows <= limit and scan.bad_rows < scan.num_rows):
        return
    kind, count = scan.reasons.most_common(1)[0]
    how_many = (
        f"every one of its {scan.num_rows} input record(s) is bad"
        if scan.bad_rows == scan.num_rows
        else f"{scan.bad_rows} of its {scan.num_rows} input records are bad, more than "
        f"data.max_bad allows ({limit}{'' if max_bad is not None else ', 10 %'})"
    )
    hint = (
        "a run whose every record is bad always stops: fix the setting or the file this points "
        "at (a misspelt data.text_field or data.id_field makes every record bad)"
        if scan.bad_rows == scan.num_rows
        else "fix the setting or the file this points at; to go on skipping this many, raise "
        "data.max_bad (a count like 500, or a fraction like 0.5)"
    )
    raise TooManyBadInputs(
        f"{path}: {how_many}. Most common problem: {kind} ({count} record(s)), e.g. "
        f"{scan.examples[kind]} HINT: {hint}."
    )
