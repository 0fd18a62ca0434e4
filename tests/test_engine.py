"""The engine's precision: bf16 autocast of the net where the CPU has native bf16 units, fp32 elsewhere, always
overridable and recorded; under bf16 only the net's forward pass is lowered."""

import numpy as np
import pytest
import torch
from skimage import data

import dipcore
from dipcore import engine as engine_mod
from dipcore.api import build_problem
from dipcore.fit import FitSettings, fit
from dipcore.observation import Observation
from dipcore.task_defs import TASK_DEFS
from dipcore.tasks import preset_for

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_the_default_precision_follows_the_cpus_bf16_units(monkeypatch, native):
    monkeypatch.setattr(engine_mod, "cpu_has_native_bf16", lambda: native)
    assert dipcore.EngineOptions().resolved(CPU).autocast == ("bf16" if native else "off")
    # A caller's choice wins either way; CUDA stays fp32 unless asked (bf16 there costs PSNR: benchmarks/RESULTS.md).
    assert dipcore.EngineOptions(autocast="off").resolved(CPU).autocast == "off"
    assert dipcore.EngineOptions(autocast="bf16").resolved(CPU).autocast == "bf16"
    assert dipcore.EngineOptions().resolved(torch.device("cuda")).autocast == "off"


def test_small_fits_stay_fp32_where_bf16_would_cost_time(monkeypatch):
    monkeypatch.setattr(engine_mod, "cpu_has_native_bf16", lambda: True)
    img = data.astronaut().astype(np.float32) / 255

    def precision(size: int, channels: int) -> str:
        res = dipcore.restore(img[:size, :size], task="denoise", preset="fast", channels=channels, iterations=1)
        return res.engine["autocast"]

    assert precision(64, 32) == "off"  # work 64²·32² = 4.2 M: bf16 measured 0.81× there
    assert precision(128, 32) == "bf16"  # 16.8 M = BF16_MIN_WORK
    assert engine_mod.fit_work(torch.nn.Conv2d(3, 48, 3), 10, 10) == 48**2 * 100


def test_bf16_is_the_default_only_for_tasks_whose_price_was_measured_small(monkeypatch):
    monkeypatch.setattr(engine_mod, "cpu_has_native_bf16", lambda: True)
    assert [name for name, task in TASK_DEFS.items() if task.bf16_default] == ["denoise", "sr"]
    img = data.astronaut()[:128, :128].astype(np.float32) / 255
    mask = np.ones(img.shape[:2], np.float32)
    res = dipcore.restore(img, task="inpaint", mask=mask, preset="fast", channels=32, iterations=1)
    assert res.engine["autocast"] == "off"  # large enough, but inpainting lost 0.08-0.13 dB in bf16
    forced = dipcore.restore(
        img,
        task="inpaint",
        mask=mask,
        preset="fast",
        channels=32,
        iterations=1,
        engine=dipcore.EngineOptions(autocast="bf16"),
    )
    assert forced.engine["autocast"] == "bf16"


def test_the_probe_answers_without_raising():
    assert isinstance(engine_mod.cpu_has_native_bf16(), bool)


def test_an_unknown_precision_is_refused():
    with pytest.raises(dipcore.ConfigError, match="autocast"):
        dipcore.EngineOptions(autocast="fp16").resolved(CPU)


def test_the_precision_a_fit_ran_with_is_recorded():
    img = data.astronaut()[:32, :32].astype(np.float32) / 255
    for choice in ("bf16", "off"):
        res = dipcore.restore(
            img, task="denoise", preset="fast", channels=8, iterations=2, engine=dipcore.EngineOptions(autocast=choice)
        )
        assert res.engine["autocast"] == choice


class _RecordingOperator(torch.nn.Module):
    """The identity, noting the dtype of what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dtypes.add(x.dtype)
        return x


def test_under_bf16_only_the_net_is_lowered():
    img = data.astronaut()[:32, :32].astype(np.float32) / 255
    p = preset_for("denoise", preset="fast", channels=8)
    problem = build_problem(p, Observation(img, "denoise"), device=CPU, seed=0, reference=img)
    operator = _RecordingOperator()
    problem.operator = operator
    settings = FitSettings(lr=p.lr, iterations=3, ema=0.9, engine=dipcore.EngineOptions(autocast="bf16").resolved(CPU))
    res = fit(problem, settings, generator=torch.Generator().manual_seed(0))
    assert operator.dtypes == {torch.float32}  # the operator, hence the loss, sees fp32
    assert res.final.dtype == res.average.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in problem.net.parameters())  # Adam updates fp32 weights
    assert np.isfinite(res.history["loss"]).all() and np.isfinite(res.history["psnr"]).all()


def test_reflection_padding_keeps_bf16_and_the_same_numbers():
    """CPU autocast runs reflection padding in fp32; the nets pad in their input's dtype instead (no cast up and
    back), which gives the very same numbers since padding only copies values."""
    from dipcore import nets

    net = nets.reinitialise(
        nets.skip(in_channels=4, channels_down=(8,) * 3, channels_up=(8,) * 3, channels_skip=(2,) * 3),
        torch.Generator().manual_seed(0),
    )
    pads = [m for m in net.modules() if isinstance(m, torch.nn.ReflectionPad2d)]
    seen = []
    for pad in pads:
        pad.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    z = torch.rand(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = net(z)
    assert any(inp == torch.bfloat16 for inp, _ in seen)
    assert all(out == inp for inp, out in seen)  # a bf16 activation stays bf16
    for pad in pads:  # torch's own module in its place: autocast's fp32 padding, as before
        pad.__class__ = torch.nn.ReflectionPad2d
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torchs = net(z)
    assert torch.equal(ours, torchs)
