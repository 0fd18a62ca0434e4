"""One DIP optimisation step — forward, per-fit loss, backward, optional backtracking, Adam — run eagerly or
replayed from a captured CUDA graph.

A DIP step at 256² is a few hundred short kernels, so on a fast GPU the host's launch overhead, not the maths,
sets the pace. Capturing the whole step once and replaying it removes that overhead: the shapes never change
during a fit, and everything the step touches (weights, Adam state, gradients, the jitter) lives in tensors
whose addresses stay fixed. The jitter is drawn outside the graph, from the fit's own generator, into a static
buffer, so graphed and eager fits draw the same numbers.

A checkpointed net (``dipcore.checkpointing``) recomputes its units inside the backward pass, so the recomputation
is captured with the rest of the step; it neither reads nor sets an RNG state, which a capture forbids. That a
checkpointed step captures and replays correctly has been checked on the CPU's eager path only: the GPU suite's
``checkpoint+graph`` case and its checkpoint check are what test it on a GPU.

A compiled net (``dipcore.compiled``) runs its forward pass, and the backward pass derived from it, as compiled
graphs: both are compiled by the first warm-up step, so the capture records the compiled kernels and compiles
nothing (a recompilation there would raise rather than run inside the capture). Inductor's own CUDA graphs are off:
captures do not nest. Compiled code has run on the CPU only so far, where there is no graph: the GPU suite's compile
section is what tests its capture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .compiled import compiled_forward

__all__ = ["TrainingStep"]

# Eager steps before capture: cuDNN picks its algorithms, the allocator settles (PyTorch docs), and a compiled
# net's graphs are compiled (the first step) and run once more as they will be captured.
_WARMUP = 3


def _eager_forward(net: nn.Module, z: Tensor) -> Tensor:
    return net(z)


class TrainingStep:
    """``step(jitter) -> (output, per_fit_loss)``; outputs of a graphed step are overwritten by the next call."""

    def __init__(
        self,
        net: nn.Module,
        z: Tensor,  # (1, K·D, Hc, Wc)
        per_fit_loss: Callable[[Tensor], Tensor],  # the output inside `crop` (1, K·C, H, W) -> (K,) (FitProblem's)
        crop: tuple[int, int, int, int],
        optimizer: torch.optim.Optimizer,
        *,
        reg_noise_std: float,
        autocast: contextlib.AbstractContextManager | None = None,
        before_step: Callable[[Tensor], None] | None = None,
        cuda_graph: bool = False,
        compile: bool = False,  # the net's forward through torch.compile (dipcore.compiled)
    ):
        self.net, self.z, self.per_fit_loss = net, z, per_fit_loss
        self.crop, self.opt, self.reg_noise_std = crop, optimizer, reg_noise_std
        self.autocast = autocast or contextlib.nullcontext()
        self.before_step = before_step
        self.cuda_graph = cuda_graph and z.is_cuda
        self.compiled = compile
        self.forward = compiled_forward() if compile else _eager_forward
        self.jitter = torch.zeros_like(z)  # static: graph replays read it from the same address
        self.calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[Tensor, Tensor] | None = None

    def _compute(self) -> tuple[Tensor, Tensor]:
        top, left, h, w = self.crop
        z_in = self.z + self.reg_noise_std * self.jitter if self.reg_noise_std > 0 else self.z
        # Only the net under autocast: the operator and the loss stay fp32. A compiled forward is traced inside the
        # autocast, so its graph holds the bf16 casts (dynamo guards on the autocast state).
        with self.autocast:
            out = self.forward(self.net, z_in)[..., top : top + h, left : left + w]
        out = out.float()  # (1, K·C, H, W)
        per_fit = self.per_fit_loss(out)  # (K,) each fit's MSE, on its own box when the fits differ in size
        per_fit.sum().backward()
        if self.before_step is not None:
            self.before_step(per_fit.detach())
        self.opt.step()
        return out.detach(), per_fit.detach()

    def __call__(self, jitter: Tensor | None) -> tuple[Tensor, Tensor]:
        if jitter is not None:
            self.jitter.copy_(jitter)
        self.calls += 1
        if not self.cuda_graph:
            self.opt.zero_grad(set_to_none=True)
            return self._compute()
        if self.calls <= _WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.opt.zero_grad(set_to_none=True)
                result = tuple(t.clone() for t in self._compute())
            torch.cuda.current_stream().wait_stream(side)
            return result
        if self._graph is None:
            # Gradients are allocated inside the graph's pool and overwritten (not accumulated) on each replay.
            self.opt.zero_grad(set_to_none=True)
            self._graph = torch.cuda.CUDAGraph()
            # A compiled net's graphs were compiled in the warm-up: compiling now would run inside the capture.
            compiling = torch.compiler.set_stance("fail_on_recompile") if self.compiled else contextlib.nullcontext()
            with torch.cuda.graph(self._graph), compiling:
                self._static = self._compute()
        self._graph.replay()
        return self._static
