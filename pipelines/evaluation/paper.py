"""The paper's published numbers per benchmark (Ulyanov, Vedaldi, Lempitsky, "Deep Image Prior", CVPR 2018): what
dipflow is compared with.

The figures come from the paper's text and its Table 1. Each belongs to one benchmark of the registry
(`pipelines.evaluation.benchmarks`), where the HTML report and the results document (`pipelines.reporting`) find
them, so they are written down once. Pure Python: no pyarrow, no torch (the CLI reads the registry for its help).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipelines.stats import mean

__all__ = ["CBM3D9", "HEIDE11", "SET5", "SET14", "Figure", "PaperBenchmark", "match_image"]


@dataclass(frozen=True)
class Figure:
    """One published PSNR: what it measures (``label``) and its value in dB."""

    label: str
    psnr: float


@dataclass(frozen=True)
class PaperBenchmark:
    """What the paper reports for one benchmark: the set, its protocol in words, DIP's figures and the baselines'."""

    title: str
    images: int  # images in the set
    iterations: int  # the paper's iteration count behind its headline DIP figure
    protocol: str  # how the paper measured, in words
    dip: tuple[Figure, ...]  # DIP's figures; the first is the headline, the others variants of it
    baselines: tuple[Figure, ...] = ()  # other methods' figures in the paper
    per_image: Mapping[str, float] = field(default_factory=dict)  # DIP per image, by the paper's image name
    baseline_per_image: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # method → name → PSNR
    aliases: Mapping[str, str] = field(default_factory=dict)  # normalised file-name stem → the paper's name

    @property
    def psnr(self) -> float:
        """DIP's headline figure (mean PSNR over the set, dB)."""
        return self.dip[0].psnr

    def baseline(self, name: str | None) -> Figure | None:
        """The paper's figure for a baseline dipflow measures itself (``bicubic``), matched by label; else None."""
        if not name:
            return None
        return next((f for f in self.baselines if f.label.lower() == name.lower()), None)

    @property
    def note(self) -> str:
        """The paper's other figures in one line (e.g. for a tooltip)."""
        return "; ".join(f"{f.label} {f.psnr:.2f}" for f in (*self.dip[1:], *self.baselines))


# Table 1 of the paper: inpainting with 50 % of the pixels dropped, per image (DIP, and Papyan et al.'s
# convolutional sparse coding). The set's mean (33.48; Papyan 31.19) is computed from these, not written again.
_TABLE1_DIP = {
    "Barbara": 32.22,
    "Boat": 33.06,
    "House": 39.16,
    "Lena": 36.16,
    "Peppers": 33.05,
    "C.man": 29.8,
    "Couple": 32.52,
    "Finger": 32.84,
    "Hill": 32.77,
    "Man": 32.20,
    "Montage": 34.54,
}
_TABLE1_PAPYAN = {
    "Barbara": 28.14,
    "Boat": 31.44,
    "House": 34.58,
    "Lena": 35.04,
    "Peppers": 31.11,
    "C.man": 27.90,
    "Couple": 31.18,
    "Finger": 31.34,
    "Hill": 32.35,
    "Man": 31.92,
    "Montage": 28.05,
}
_SR_PROTOCOL = (
    "PSNR on Y (BT.601) with 4 pixels shaved, after a centre crop to a multiple of 32 "
    "(the authors' evaluation script); LR by Pillow LANCZOS ×4"
)


def _sr_x4(name: str, images: int, dip: float, bicubic: float, srresnet: float) -> PaperBenchmark:
    """An SR ×4 row of the paper's Table 2: DIP beside bicubic and the trained SRResNet, 2000 iterations."""
    return PaperBenchmark(
        f"SR ×4 on {name}",
        images=images,
        iterations=2000,
        protocol=_SR_PROTOCOL,
        dip=(Figure("DIP", dip),),
        baselines=(Figure("bicubic", bicubic), Figure("SRResNet (trained)", srresnet)),
    )


SET5 = _sr_x4("Set5", 5, dip=29.90, bicubic=28.43, srresnet=32.10)
SET14 = _sr_x4("Set14", 14, dip=27.00, bicubic=26.05, srresnet=28.53)

CBM3D9 = PaperBenchmark(
    "Denoising σ = 25 on the 9 colour images",
    images=9,
    iterations=1800,
    protocol="PSNR over RGB; Gaussian noise σ = 25",
    dip=(
        Figure("DIP, raw output after 1800 steps", 29.22),
        Figure("DIP, exponential average of outputs", 30.43),
        Figure("DIP, averaged over 2 runs", 31.00),
    ),
    baselines=(Figure("CBM3D", 31.42), Figure("NLM", 30.26)),
)

HEIDE11 = PaperBenchmark(
    "Inpainting, 50 % of pixels dropped, on the 11 grey images",
    images=11,
    iterations=11000,
    protocol="PSNR on the grey image; a Bernoulli mask drops 50 % of the pixels",
    dip=(Figure("DIP, mean of Table 1", mean(_TABLE1_DIP.values())),),
    baselines=(Figure("Papyan et al. (CSC), mean of Table 1", mean(_TABLE1_PAPYAN.values())),),
    per_image=_TABLE1_DIP,
    baseline_per_image={"Papyan et al.": _TABLE1_PAPYAN},
    aliases={
        "barbara": "Barbara",
        "boat": "Boat",
        "house": "House",
        "lena": "Lena",
        "peppers": "Peppers",
        "pepper": "Peppers",
        "cameraman": "C.man",
        "cman": "C.man",
        "couple": "Couple",
        "fingerprint": "Finger",
        "finger": "Finger",
        "hill": "Hill",
        "man": "Man",
        "montage": "Montage",
    },
)


# Tokens in file names that say what kind of file it is, not which image: "barbara_GT.png", "lena_gray.png".
_NOISE_TOKENS = {"gt", "gray", "grey", "clean", "orig", "original", "hr", "rgb", "png"}


def match_image(benchmark: PaperBenchmark, image_key: str) -> str | None:
    """The paper's name for an image key (``"Cameraman256_GT.png"`` → ``"C.man"``), or None when it names none.

    The file name's stem is split into letter runs (digits and punctuation separate them), tokens such as ``GT``
    are dropped, and what is left must be exactly one of the benchmark's aliases: ``man`` is Man, ``cameraman`` is
    C.man — never a substring match.
    """
    stem = image_key.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    tokens = [t for t in re.findall(r"[a-z]+", stem.lower()) if t not in _NOISE_TOKENS]
    return benchmark.aliases.get("".join(tokens))
