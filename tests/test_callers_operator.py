"""restore(…, operator=A): a caller's observation model in place of the task's, as deepinv's physics objects are.

Equivalent operators give bit-identical fits to the built-in tasks; one that does not map the output onto the
observation is refused before any fit."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dipcore
from dipcore.operators import LanczosDown, Mask, Operator, lanczos_kernel

CLEAN = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
FAST = {"preset": "fast", "channels": 8, "iterations": 12, "seed": 3, "device": "cpu"}


class _BlurDecimate(nn.Module):
    """A caller's own blur-and-decimate in plain torch: the published Lanczos-2 kernel, replicate padding, stride f."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", torch.from_numpy(lanczos_kernel(factor))[None, None])  # (1, 1, 4f, 4f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (1, C, H, W) -> (1, C, H/f, W/f)
        total = self.kernel.shape[-1] - self.factor
        x = F.pad(x, (total // 2, total - total // 2) * 2, mode="replicate")
        return F.conv2d(x, self.kernel.expand(x.shape[1], 1, -1, -1), stride=self.factor, groups=x.shape[1])


class _GaussianBlur(Operator):
    """y = k * x: a 5×5 Gaussian blur with reflection padding (deblurring, a task the paper's list lacks)."""

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        g = torch.exp(-(torch.arange(-2, 3.0) ** 2) / (2 * sigma**2))
        self.register_buffer("kernel", (g[:, None] * g[None, :] / g.sum() ** 2)[None, None])  # (1, 1, 5, 5)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(x, self.kernel.expand(x.shape[1], 1, -1, -1), groups=x.shape[1])


def test_a_callers_mask_fits_as_the_inpainting_task_does():
    obs = dipcore.degrade(CLEAN, task="inpaint", drop=0.5, seed=0)
    built_in = dipcore.restore(obs, task="inpaint", **FAST)
    theirs = dipcore.restore(obs.image, task="inpaint", operator=Mask(torch.from_numpy(obs.mask)), **FAST)
    assert np.array_equal(built_in.image, theirs.image)
    assert built_in.history["loss"] == theirs.history["loss"]


def test_a_callers_blur_and_decimate_fits_as_super_resolution_does():
    obs = dipcore.degrade(CLEAN, task="sr", scale=4, seed=0)
    built_in = dipcore.restore(obs, task="sr", **FAST)
    theirs = dipcore.restore(obs.image, task="sr", scale=4, operator=_BlurDecimate(4), **FAST)
    assert theirs.image.shape == (32, 32, 3)
    assert np.array_equal(built_in.image, theirs.image)


def test_any_module_is_an_operator_and_the_identity_one_is_denoising():
    noisy = dipcore.degrade(CLEAN, task="denoise", seed=0)
    built_in = dipcore.restore(noisy, task="denoise", **FAST)
    assert np.array_equal(built_in.image, dipcore.restore(noisy, task="denoise", operator=nn.Identity(), **FAST).image)


def test_deblurring_fits_the_blurred_observation():
    blur = _GaussianBlur()
    blurred = blur(torch.from_numpy(CLEAN.transpose(2, 0, 1))[None])[0].numpy().transpose(1, 2, 0)
    res = dipcore.restore(blurred, task="reconstruct", operator=blur, reference=CLEAN, **{**FAST, "iterations": 40})
    assert res.image.shape == CLEAN.shape
    assert res.history["loss"][-1] < 0.5 * res.history["loss"][0]  # ‖A(f_θ(z)) − y‖² is what falls


@pytest.mark.parametrize(
    ("task", "operator", "message"),
    [
        ("denoise", LanczosDown(2), r"to \(1, 3, 16, 16\), but the observation is \(1, 3, 32, 32\)"),
        ("sr", _BlurDecimate(2), r"A\(x\) must have the observation's shape"),  # ×2 where the task says ×4
        ("denoise", nn.Conv2d(1, 1, 3), "the operator fails on an output of shape"),
        ("denoise", lambda x: x, "takes a torch.nn.Module"),
    ],
)
def test_an_operator_that_does_not_map_the_output_onto_the_observation_is_refused(task, operator, message):
    observed = CLEAN if task != "sr" else CLEAN[:8, :8]
    with pytest.raises(dipcore.ConfigError, match=message):
        dipcore.restore(observed, task=task, operator=operator, **FAST)


class _RotateColours(nn.Module):
    """y = x with its colour channels rotated: an operator that mixes channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, 3, H, W)
        return x[:, [1, 2, 0]]


def test_a_channel_mixing_operator_fits_alone_or_side_by_side_and_is_refused_stacked():
    kw = {**FAST, "operator": _RotateColours(), "task": "reconstruct"}
    observed = CLEAN[..., [1, 2, 0]]
    assert dipcore.restore(observed, **kw).image.shape == CLEAN.shape
    side_by_side = dipcore.EngineOptions(batch_mode="threads")
    assert len(dipcore.restore(observed, restarts=2, engine=side_by_side, **kw).runs) == 2
    with pytest.raises(dipcore.ConfigError, match="acts on each channel alike"):
        dipcore.restore(observed, restarts=2, engine=dipcore.EngineOptions(batch_mode="stack"), **kw)
