"""Canvases shared by a batch: fits of images of different sizes stacked into one net (``dipcore.batched``).

Every fit runs its net on a canvas (``nets.canvas_size``: each side rounded up to the net's multiple, at least its
minimum) with its image centred in it. Stacked fits share one net, hence one canvas: images of different sizes each
get their own box in a canvas that holds them all (here the elementwise maximum of their own canvases), and each
fit's loss, curves, average and output use its own box. A fit on a larger canvas than its own is another fit (its
code is drawn at the canvas's size, its BatchNorm statistics cover the whole canvas): of the same quality, not
bit-identical to the fit alone. The pixels beyond its own canvas are waste, bounded by `MAX_CANVAS_WASTE`.

`canvas_bucket` is what a packer groups by: it maps an observation's shape to a bucketed canvas, each side on a
ladder of four steps per octave (multiples of 64 up to 512, of 128 up to 1024, …; the net's multiple below), so
images whose canvases share a bucket waste less than 1.25 per side (< 1.57× the pixels) when stacked.

`fit_canvases` is the choice ``restore`` and ``restore_batch`` make from their ``canvas`` argument: each fit on its
own canvas, a batch on the canvas that holds them all, or each fit on its bucket. Buckets are for compiled nets
(``dipcore.compiled``): static shapes mean a graph per canvas, and a dataset's images of a hundred sizes would compile
a hundred graphs; on buckets they compile a few, for at most 1.57× the pixels of each fit.
Pure: no fit runs here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import nets
from .errors import ConfigError
from .task_defs import get_task

if TYPE_CHECKING:
    from .preset import TaskPreset

__all__ = [
    "CANVAS_CHOICES",
    "MAX_CANVAS_WASTE",
    "canvas_bucket",
    "canvas_waste",
    "fit_canvases",
    "own_canvas",
    "shared_canvas",
]

# The most pixels a shared canvas may hold per pixel of a fit's own canvas (restore_batch's default): above it a
# batch is refused rather than pay that much for its smallest image. Images of one canvas_bucket stay below 1.57.
MAX_CANVAS_WASTE = 2.0

# What ``restore``/``restore_batch``'s ``canvas`` may name besides a (height, width): see `fit_canvases`.
CANVAS_CHOICES = ("own", "shared", "bucket")


def own_canvas(p: TaskPreset, observed_shape: Sequence[int]) -> tuple[int, int]:
    """``(Hc, Wc)``: the canvas one fit of preset ``p`` runs on alone for an observation of ``observed_shape``
    (H, W[, C]): the task's output size (SR: ×scale), rounded up as the net needs (``nets.canvas_size``)."""
    h, w, _ = get_task(p.task).output_shape((*observed_shape[:2], 3), p.scale)
    return nets.canvas_size(p.net, h, w, **p.net_options)


def _bucket_side(side: int, multiple: int) -> int:
    """``side`` rounded up to a ladder of four steps per octave, each a multiple of ``multiple``."""
    octave = 1 << (max(side, 1).bit_length() - 1)  # the largest power of two ≤ side
    step = max(multiple, octave // 4 // multiple * multiple)
    return math.ceil(side / step) * step


def canvas_bucket(p: TaskPreset, observed_shape: Sequence[int]) -> tuple[int, int]:
    """``(Hb, Wb)``: the bucketed canvas of an observation of ``observed_shape`` (H, W[, C]) under preset ``p`` —
    its own canvas (`own_canvas`) with each side rounded up to four steps per octave (multiples of the net's
    multiple below 256 for the paper's nets, of 64 up to 512, of 128 up to 1024, …).

    Observations with equal buckets can share a canvas no larger than the bucket: less than 1.25× a side of any
    one's own canvas, 1.57× its pixels, within `MAX_CANVAS_WASTE`. The bucket is itself a canvas the net runs on.

    >>> from dipcore import preset_for
    >>> canvas_bucket(preset_for("sr", scale=4), (72, 88, 3)), canvas_bucket(preset_for("sr", scale=4), (64, 80, 3))
    ((320, 384), (256, 320))
    """
    return _bucketed(p, own_canvas(p, observed_shape))


def _bucketed(p: TaskPreset, canvas: tuple[int, int]) -> tuple[int, int]:
    multiple = nets.required_multiple(p.net, **p.net_options)
    return _bucket_side(canvas[0], multiple), _bucket_side(canvas[1], multiple)


def shared_canvas(canvases: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The smallest canvas that holds each of ``canvases``: their elementwise maximum."""
    return max(c[0] for c in canvases), max(c[1] for c in canvases)


def canvas_waste(shared: tuple[int, int], own: tuple[int, int]) -> float:
    """How many pixels a fit computes on ``shared`` per pixel of its ``own`` canvas (1.0: none wasted)."""
    return shared[0] * shared[1] / (own[0] * own[1])


def check_canvas(canvases: Sequence[tuple[int, int]], own: Sequence[tuple[int, int]], max_waste: float | None) -> None:
    """ConfigError unless each of ``canvases`` holds the fit whose own canvas is the same item of ``own``, with at
    most ``max_waste`` × its pixels (``None``: any waste)."""
    for i, (c, o) in enumerate(zip(canvases, own, strict=True)):
        if c[0] < o[0] or c[1] < o[1]:
            raise ConfigError(f"a canvas of {c[1]}×{c[0]} cannot hold fit {i}, whose own canvas is {o[1]}×{o[0]}")
        waste = canvas_waste(c, o)
        if max_waste is not None and waste > max_waste:
            raise ConfigError(
                f"a canvas of {c[1]}×{c[0]} is {waste:.2f}× the pixels of fit {i}'s own "
                f"{o[1]}×{o[0]} canvas, above max_canvas_waste={max_waste}: batch images of closer sizes "
                f"(dipcore.canvas_bucket groups them), run them on their own canvases (canvas='own', one size per "
                f"batch), or raise max_canvas_waste"
            )


def fit_canvases(
    p: TaskPreset,
    own: Sequence[tuple[int, int]],
    canvas: str | Sequence[int],
    *,
    stacked: bool,
    max_waste: float | None,
) -> list[tuple[int, int] | None]:
    """The canvas each of the fits whose own canvases are ``own`` runs on (None: its own), as ``canvas`` says:

    - ``"own"``: each its own; stacked fits share one net, so their own canvases must then be one (ConfigError);
    - ``"shared"``: stacked, the smallest canvas that holds them all (`shared_canvas`); side by side, each its own;
    - ``"bucket"``: each on its bucket (`canvas_bucket`); stacked, on the smallest canvas holding their buckets — the
      bucket itself when they share one, as packers group them;
    - ``(Hc, Wc)``: every fit on that canvas.

    ConfigError where a fit would compute more than ``max_waste`` × its own pixels (None: any)."""
    own = [tuple(c) for c in own]
    if canvas == "own" or (canvas == "shared" and not stacked):
        if stacked and len(set(own)) > 1:
            raise ConfigError(
                f"stacked fits on their own canvases need one canvas size, as observations of one shape have (theirs "
                f"are {sorted(set(own))}): canvas='shared' puts them on one"
            )
        return [None] * len(own)
    if canvas == "bucket":
        buckets = [_bucketed(p, c) for c in own]
        chosen = [shared_canvas(buckets)] * len(own) if stacked else buckets
    elif canvas == "shared":
        chosen = [shared_canvas(own)] * len(own)
    elif isinstance(canvas, (tuple, list)) and len(canvas) == 2 and all(isinstance(n, int) for n in canvas):
        chosen = [(int(canvas[0]), int(canvas[1]))] * len(own)
    else:
        raise ConfigError(
            f"canvas must be one of {', '.join(map(repr, CANVAS_CHOICES))} or (height, width), not {canvas!r}"
        )
    check_canvas(chosen, own, max_waste)
    return chosen
