"""Activation checkpointing: the checkpointed net computes the same function with the same parameters, gives the
same gradients (BatchNorm uses batch statistics, so recomputation is exact) and keeps less for the backward pass."""

from __future__ import annotations

import pytest
import torch
from test_nets import SMALL  # narrow configurations of every net: milliseconds per pass at 64×64
from torch import nn

from dipcore import blocks, nets
from dipcore.batched import stack_modules
from dipcore.checkpointing import CheckpointedUnit, checkpointed
from dipcore.memory import _saved_bytes

# Tensors here are small: intra-op threads only add overhead, badly so on a loaded CI machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _code(name: str, channels: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    h, w = nets.deep_decoder_input_shape(size, size) if name == "deep_decoder" else (size, size)
    return torch.rand(1, channels, h, w, generator=torch.Generator().manual_seed(seed))  # (1, C, h, w)


def _output_and_grads(net: nn.Module, z: torch.Tensor, rng_seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(rng_seed)  # the global RNG, for texture_nets' fill_noise
    for q in net.parameters():
        q.grad = None
    out = net(z)
    (out - 0.5).pow(2).mean().backward()
    return out.detach(), [q.grad.clone() for q in net.parameters()]


def _assert_same_function(net: nn.Module, z: torch.Tensor) -> None:
    lean = checkpointed(net)
    assert any(isinstance(m, CheckpointedUnit) for m in lean.modules())
    assert not any(isinstance(m, CheckpointedUnit) for m in net.modules())  # the original is left as it was
    assert all(a is b for a, b in zip(lean.parameters(), net.parameters(), strict=True))  # shared, so Adam updates both
    assert len(list(lean.parameters())) == len(list(net.parameters()))
    out, grads = _output_and_grads(net, z)
    lean_out, lean_grads = _output_and_grads(lean, z)
    torch.testing.assert_close(lean_out, out, rtol=0, atol=1e-6)
    for g, lean_g in zip(grads, lean_grads, strict=True):
        torch.testing.assert_close(lean_g, g, rtol=1e-5, atol=1e-7)
    # The forward pass keeps less: a third for skip, resnet and texture_nets; 0.69 for unet, whose up blocks have no
    # normalisation (a unit is conv → ReLU, two tensors of which it keeps one).
    assert _saved_bytes(lean, z) < 0.75 * _saved_bytes(net, z)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_checkpointed_net_computes_the_same_outputs_and_gradients(name):
    net = nets.reinitialise(nets.get_net(name, **SMALL[name]), torch.Generator().manual_seed(0))
    _assert_same_function(net, _code(name, SMALL[name]["in_channels"]))


def test_a_checkpointed_stacked_net_computes_the_same_outputs_and_gradients():
    gen = torch.Generator().manual_seed(0)
    singles = [nets.reinitialise(nets.get_net("skip", **SMALL["skip"]), gen) for _ in range(3)]
    stacked = stack_modules(singles)  # grouped convolutions, per-fit BatchNorm, stacked concatenations
    _assert_same_function(stacked, torch.cat([_code("skip", 8, seed=i) for i in range(3)], dim=1))


def test_units_that_draw_noise_stay_plain_so_no_rng_state_is_replayed():
    net = nets.reinitialise(nets.texture_nets(**SMALL["texture_nets"], fill_noise=True), torch.Generator())
    lean = checkpointed(net)
    for unit in (m for m in lean.modules() if isinstance(m, CheckpointedUnit)):
        assert not any(isinstance(m, blocks.FillNoise) for m in unit.modules())
    z = _code("texture_nets", 8)
    # Recomputing a noise layer without replaying the RNG would draw other noise and change the gradients.
    out, grads = _output_and_grads(net, z, rng_seed=3)
    lean_out, lean_grads = _output_and_grads(lean, z, rng_seed=3)
    torch.testing.assert_close(lean_out, out, rtol=0, atol=1e-6)
    for g, lean_g in zip(grads, lean_grads, strict=True):
        torch.testing.assert_close(lean_g, g, rtol=1e-5, atol=1e-7)


def test_units_hold_one_convolution_each():
    lean = checkpointed(nets.skip(in_channels=8, channels_down=8, channels_up=8))
    units = [m for m in lean.modules() if isinstance(m, CheckpointedUnit)]
    assert all(sum(isinstance(m, nn.Conv2d) for m in u.modules()) == 1 for u in units)
    # Every convolution of the net sits in a unit: 5 scales × (skip, 2 down, up, 1×1 up) + the head.
    assert len(units) == 5 * 5 + 1
