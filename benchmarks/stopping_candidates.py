"""The candidates of the stopping study (issue 14): what each one watches during a fit, and how it picks an iteration
from what it watched.

`Signals`, a `dipcore.fit.Monitor`, records per iteration, on the device, every series a candidate reads: the
running variance of ES-WMV, the data fit against the observation (the discrepancy principle), the data fit on
held-out pixels (self-validation), and longer moving averages with their PSNR. The fit reads none of it; the study
reads it once when the fit ends. The rules are then functions of those series, so every rule, and every parameter
of a rule, is judged on the same run — and new ones on stored runs, without refitting.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dipcore.metrics import PsnrProtocol, psnr_stacked
from dipcore.selfvalidation import DataFit
from dipcore.stopping import WindowVariance

OUTPUTS = ("raw", "avg")  # the two outputs of every run: the iterate and its moving average


# ------------------------------------------------------------------------------------------------------ signals


@dataclass
class SignalSpec:
    """What one fit's `Signals` record, besides the iterate and the loop's average (the curves of the loop itself)."""

    iterations: int
    window: int = 100  # ES-WMV's W
    averages: Sequence[Average] = ()  # longer moving averages, each watched as an output of its own
    data: DataFit | None = None  # the data fit of every output (the discrepancy principle)
    heldout: DataFit | None = None  # the data fit on held-out pixels (self-validation)
    reference: Tensor | None = None  # ground truth: the PSNR curves of the longer averages
    protocol: PsnrProtocol = field(default_factory=PsnrProtocol)
    timed: bool = True  # host time per signal; only meaningful where the device computes synchronously (a CPU)


@dataclass(frozen=True)
class Average:
    """A longer moving average of the iterates: weight ``weight`` at every iteration, or with ``warmup``
    min(weight, (1 + t) / (10 + t)) at iteration t (TensorFlow's ExponentialMovingAverage). A plain 0.999 still holds
    0.999^1800 = 17 % of the first, shapeless, outputs at the denoising count; warmed up it averages about the last
    tenth of the run, until t = 10 / (1 − weight)."""

    weight: float
    warmup: bool = False

    @property
    def name(self) -> str:
        return f"ema{self.weight:g}" + ("w" if self.warmup else "")

    def decay(self, iteration: int) -> float:
        return min(self.weight, (1 + iteration) / (10 + iteration)) if self.warmup else self.weight


class Signals:
    """A `dipcore.fit.Monitor` recording per iteration, into device buffers: for each output watched — ``raw`` (the
    iterate), ``avg`` (the loop's moving average) and each longer average — the window variance, the data fit and
    the held-out data fit, as ``spec`` asks; and the longer averages' PSNR. Keys are ``<signal>_<output>``."""

    def __init__(self, spec: SignalSpec) -> None:
        self.spec = spec
        self.series: dict[str, Tensor] = {}
        self.seconds: dict[str, float] = {}  # host time spent per signal (all outputs together)
        self.variances: dict[str, WindowVariance] = {}
        self.averages: dict[str, Tensor | None] = {a.name: None for a in spec.averages}

    def update(self, output: Tensor, average: Tensor | None, iteration: int) -> None:
        outputs = {"raw": output}
        if average is not None:
            outputs["avg"] = average
        for average_spec in self.spec.averages:
            name = average_spec.name
            decay = average_spec.decay(iteration)
            outputs[name] = self._timed("ema", self._average, name, decay, output)
            if self.spec.reference is not None:  # ground truth: the study's own measurement, not a candidate's cost
                psnr = psnr_stacked(outputs[name], self.spec.reference, 1, self.spec.protocol)[0]
                self._write(f"psnr_{name}", iteration, psnr)
        for name, x in outputs.items():
            variance = self.variances.setdefault(name, WindowVariance(self.spec.window))
            self._write(f"variance_{name}", iteration, self._timed("variance", variance.update, x))
            if self.spec.data is not None:
                self._write(f"datafit_{name}", iteration, self._timed("datafit", self.spec.data, x))
            if self.spec.heldout is not None:
                self._write(f"heldout_{name}", iteration, self._timed("heldout", self.spec.heldout, x))

    def _average(self, name: str, decay: float, x: Tensor) -> Tensor:
        current = self.averages[name]
        self.averages[name] = x.clone() if current is None else current.lerp_(x, 1.0 - decay)  # as the loop's
        return self.averages[name]

    def _timed(self, key: str, fn: Callable, *args):
        if not self.spec.timed:
            return fn(*args)
        started = time.perf_counter()
        value = fn(*args)
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started
        return value

    def _write(self, key: str, iteration: int, value: Tensor | None) -> None:
        if value is None:
            return
        if key not in self.series:
            self.series[key] = torch.full((self.spec.iterations,), math.nan, device=value.device)
        self.series[key][iteration - 1] = value  # a device write: no host read

    def read(self) -> dict[str, list[float | None]]:
        """Every series, read on the host once (NaN, an iteration without a value, as None)."""
        return {k: [None if math.isnan(v) else v for v in s.tolist()] for k, s in self.series.items()}

    def ms_per_iteration(self) -> dict[str, float] | None:
        """Host milliseconds per iteration spent on each signal (summed over the outputs watched); None untimed."""
        if not self.spec.timed:
            return None
        return {k: 1e3 * s / self.spec.iterations for k, s in self.seconds.items()}


# -------------------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Context:
    """What a rule knows of a run besides its own series: its length and, for Gaussian noise, σ̂ (never σ)."""

    iterations: int
    sigma_hat: float | None = None  # in image units ([0, 1])


Detector = Callable[[list[float | None], Context], tuple[int | None, int | None]]  # -> (pick, fired at), 1-based


def minimum_with_patience(patience: int) -> Detector:
    """ES-WMV's decision on any series: keep the iteration of its lowest value so far (a strict new minimum moves
    it), fire once ``patience`` iterations have passed without one; the pick is that minimum's iteration."""

    def detect(series: list[float | None], ctx: Context) -> tuple[int | None, int | None]:
        best, best_at = math.inf, None
        for t, v in enumerate(series, start=1):
            if v is not None and (best_at is None or v < best):
                best, best_at = v, t
            if best_at is not None and t - best_at >= patience:
                return best_at, t
        return None, None

    return detect


def smoothed(detector: Detector, window: int) -> Detector:
    """``detector`` on the trailing mean of the last ``window`` values; its pick moved back to the middle of that
    window, the iteration the mean speaks for. A noisy series (a few held-out pixels) needs it."""

    def detect(series: list[float | None], ctx: Context) -> tuple[int | None, int | None]:
        means, total, count, queue = [], 0.0, 0, deque()
        for v in series:
            queue.append(v)
            if v is not None:
                total, count = total + v, count + 1
            if len(queue) > window:
                old = queue.popleft()
                if old is not None:
                    total, count = total - old, count - 1
            means.append(total / count if len(queue) == window and count else None)
        pick, fired_at = detector(means, ctx)
        return (None, None) if pick is None else (max(1, pick - (window - 1) // 2), fired_at)

    return detect


def first_below(level: Callable[[Context], float | None]) -> Detector:
    """The first iteration whose value reaches ``level(ctx)`` (no level, no pick)."""

    def detect(series: list[float | None], ctx: Context) -> tuple[int | None, int | None]:
        threshold = level(ctx)
        if threshold is None:
            return None, None
        for t, v in enumerate(series, start=1):
            if v is not None and v <= threshold:
                return t, t
        return None, None

    return detect


def below_noise_level(factor: float = 1.0) -> Detector:
    """The discrepancy principle (Morozov): the first iteration whose data fit reaches factor × σ̂² — fitting closer
    than the noise can only be fitting the noise. Needs σ̂ (Gaussian noise)."""
    return first_below(lambda ctx: None if ctx.sigma_hat is None else factor * ctx.sigma_hat**2)


@dataclass(frozen=True)
class Rule:
    """A candidate: it watches ``signal`` of output ``output`` (key ``<signal>_<output>``) and returns that output
    at the iteration ``detect`` picks; a rule that never fires returns what the run returns at its end."""

    name: str
    signal: str
    output: str  # "raw" | "avg"
    detect: Detector

    def key(self) -> str:
        return f"{self.signal}_{self.output}"


def candidate_rules(*, patiences: Sequence[int] = (1000, 300), smooth: int = 100, discrepancy: bool) -> list[Rule]:
    """The study's rules: for each patience, ES-WMV on each output and self-validation on the held-out data fit of
    each output; for Gaussian noise, the discrepancy principle with σ̂, and — on a SURE fit — the first iteration
    whose SURE estimate of the MSE is negative (impossible for an MSE: from there the fit games the estimate; SURE
    itself is the fit's loss, so its minimum never comes). A rule whose signal a run lacks is left out there."""
    rules = []
    for patience in patiences:
        wait = minimum_with_patience(patience)
        rules += [Rule(f"wmv_{output}_p{patience}", "variance", output, wait) for output in OUTPUTS]
        # A few held-out pixels make a noisy series: the iterate's is smoothed (the average's is smooth already).
        rules.append(Rule(f"selfval_raw_p{patience}", "heldout", "raw", smoothed(wait, smooth)))
        rules.append(Rule(f"selfval_avg_p{patience}", "heldout", "avg", wait))
    if discrepancy:
        rules += [Rule(f"discrepancy_{output}", "datafit", output, below_noise_level()) for output in OUTPUTS]
        rules.append(Rule("sure_negative", "sure", "raw", first_below(lambda ctx: 0.0)))
    return rules


@dataclass(frozen=True)
class Choice:
    """What a rule, or a fixed count, returns on one run: the output at an iteration, and that output's PSNR there."""

    iteration: int
    output: str
    psnr: float
    fired: bool
    fired_at: int | None = None

    def as_row(self) -> dict:
        return {
            "iteration": self.iteration,
            "output": self.output,
            "psnr": round(self.psnr, 4),
            "fired": self.fired,
            "fired_at": self.fired_at,
        }


def apply_rule(
    rule: Rule, curves: dict[str, list[float]], series: list[float | None], ctx: Context, *, default: str
) -> Choice:
    """``rule``'s choice on a run whose PSNR curves (``raw``, ``avg``) are ``curves``; unfired, the run's ``default``
    output at its last iteration (what ``restore`` with the rule returns when it never says stop)."""
    pick, fired_at = rule.detect(series, ctx)
    if pick is None:
        return Choice(ctx.iterations, default, curves[default][ctx.iterations - 1], fired=False)
    return Choice(pick, rule.output, curves[rule.output][pick - 1], fired=True, fired_at=fired_at)


def at_iteration(curves: dict[str, list[float]], output: str, iteration: int) -> Choice:
    """A fixed count's choice: ``output`` at ``iteration``."""
    return Choice(iteration, output, curves[output][iteration - 1], fired=True, fired_at=iteration)


def oracle(curves: dict[str, list[float]]) -> Choice:
    """The best output along the run (ground truth): the highest PSNR over every curve, at its first iteration (the
    first curve's on a tie)."""
    best: Choice | None = None
    for output, curve in curves.items():
        t = max(range(len(curve)), key=curve.__getitem__)  # the first maximum
        if best is None or curve[t] > best.psnr:
            best = Choice(t + 1, output, curve[t], fired=True)
    return best
