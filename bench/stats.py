"""Percentiles and summaries (nearest-rank; no numpy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q ≤ 100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def round_ms(value: float | None) -> float | None:
    if value is None or math.isinf(value):
        return value
    return round(value, 2)


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": round_ms(percentile(values, 50)),
        "p90": round_ms(percentile(values, 90)),
        "p99": round_ms(percentile(values, 99)),
        "max": round_ms(max(values)) if values else None,
        "mean": round_ms(sum(values) / len(values)) if values else None,
    }
