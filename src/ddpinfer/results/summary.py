"""The end-of-run table on rank 0's console: each rank's share of the work, and the totals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HEADER = ("rank", "inputs", "tokens", "seconds", "inputs/s", "padding", "errors")


def _row(name: str, stats: dict[str, Any], seconds: float) -> tuple[str, ...]:
    padded = stats.get("padded_tokens", 0)
    padding = f"{stats.get('real_tokens', 0) / padded:.2f}" if padded else "-"
    return (
        name,
        f"{stats.get('rows', 0):,}",
        f"{stats.get('real_tokens', 0):,}",
        f"{seconds:.1f}",
        f"{stats.get('rows', 0) / seconds:,.1f}" if seconds > 0 else "-",
        padding,
        f"{stats.get('errors', 0):,}",
    )


def totals(ranks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summed counts; ``seconds`` is the slowest rank's (the ranks work side by side)."""
    keys = ("rows", "errors", "inputs", "real_tokens", "padded_tokens")
    summed: dict[str, Any] = {k: sum(r.get(k, 0) for r in ranks) for k in keys}
    summed["seconds"] = max((r.get("seconds", 0.0) for r in ranks), default=0.0)
    return summed


def table(ranks: Sequence[dict[str, Any]]) -> str:
    """One line per rank and a total line, columns right-aligned under a header."""
    lines = [HEADER]
    lines += [_row(str(rank), stats, stats.get("seconds", 0.0)) for rank, stats in enumerate(ranks)]
    total = totals(ranks)
    lines.append(_row("all", total, total["seconds"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)
