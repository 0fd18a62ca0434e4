"""How the results document writes its numbers and tables: dB figures and signed gaps, settings' values in words,
a value shared by every image or each with its count, and markdown tables. Pure standard library."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

NOT_MEASURED = "not measured"
MINUS = "\u2212"


def finite_values(rows: Iterable[Mapping[str, Any]], column: str) -> list[float]:
    """The column's finite numbers (missing, NaN and infinite values left out)."""
    out = []
    for r in rows:
        v = r.get(column)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def db(value: float | None) -> str:
    """A PSNR in dB to two decimals; '–' when there is none."""
    return "–" if value is None else f"{value:.2f}"


def signed(value: float | None) -> str:
    """A signed dB difference: +0.28, −0.31, 0.00."""
    if value is None:
        return "–"
    text = f"{abs(value):.2f}"
    return "0.00" if text == "0.00" else ("+" if value > 0 else MINUS) + text


def plain(value: Any) -> str:
    """A setting's value in words: on/off, 0.01, [128, 128], none."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(plain(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _counted(values: Iterable[Any], fmt: Callable[[Any], str] = str) -> str:
    """Distinct values with how many images each: "NVIDIA H200 (5 images)"; '' when there are none."""
    counts = Counter(v for v in values if v not in (None, ""))
    return ", ".join(f"{fmt(v)} ({n} image{'s' * (n != 1)})" for v, n in counts.most_common())


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]


def one_or_counted(values: Iterable[Any], fmt: Callable[[Any], str] = str) -> str:
    """The value when every image shares it, else each value with its count; '' when there are none."""
    kept = [v for v in values if v not in (None, "")]
    if len(set(kept)) == 1:
        return fmt(kept[0])
    return _counted(kept, fmt)


def distinct(rows: list[dict], column: str) -> list[str]:
    """The column's distinct values that are set, sorted."""
    return sorted({r[column] for r in rows if r.get(column)})
