"""The mean of report figures, written once for the three places that take one: the report's summary
(`reporting.reports.summarize`), the results document (`reporting.results_doc`) and the paper's means of its Table 1
(`evaluation.paper`). The standard library only, so that paper.py, which the CLI's help reads, stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["mean"]


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values present — None and NaN are missing ones, not zeros — or None when there are none.

    A plain sum divided by the count, so that every figure keeps the value it had (``statistics.fmean`` rounds
    differently in the last digit).
    """
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None
