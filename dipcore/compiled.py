"""The net's forward pass through ``torch.compile`` (``EngineOptions(compile=True)``), compiled once per architecture
and canvas for the whole process, not once per net.

DIP builds a fresh net for every image, so compiling each net would pay the compile time (the GPU suite measures it)
per image. One module-level function, ``_forward(net, z)``, is compiled instead: dynamo inlines the net's
modules (in torch 2.13 always: ``torch._dynamo.config.inline_inbuilt_nn_modules`` is deprecated and stays on) and
turns their parameters into inputs of the graph, guarded on their shapes, dtypes and strides, not on which tensors
they are. A fresh net of the same architecture on the same canvas thus reuses the compiled graph
(``tests/test_compile.py`` counts it). Fits side by side on CPU threads that meet a new shape at the same moment may
each compile it (measured: two threads, two graphs); later fits reuse it.

Shapes are static (``dynamic=False``): each canvas gets kernels specialised to it, and compiled fits run on canvas
buckets by default (``dipcore.canvas.fit_canvases``), so a worker meets a few canvases, not one per image size.
The number of stacked fits is a shape too: packed batches compile a graph per K met. Inductor's own CUDA graphs
stay off: ``dipcore.step`` captures the whole step itself, after warm-up steps in which the forward and backward
graphs are compiled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["BACKEND", "RECOMPILE_LIMIT", "compiled_forward"]

# What compiles the graphs. Inductor generates the fused kernels; the CPU tests and the GPU suite's CPU smoke run set
# "aot_eager" (or a counting wrapper of it): the same tracing and graphs, run by eager kernels, with no kernel to
# build.
BACKEND: str | Callable = "inductor"

# Graphs `_forward` may hold before dynamo gives up and runs it eagerly: one per architecture, number of stacked
# fits, canvas, precision and memory format a process meets. Dynamo's default of 8 is a worker's first few canvas
# buckets times the batch sizes packing gives them.
RECOMPILE_LIMIT = 64

_compiled: dict[str | Callable, Callable[[nn.Module, Tensor], Tensor]] = {}


def _forward(net: nn.Module, z: Tensor) -> Tensor:
    return net(z)


def compiled_forward() -> Callable[[nn.Module, Tensor], Tensor]:
    """``net(z)`` compiled by `BACKEND` with static shapes; one compiled function per backend for the process, so
    every net shares its cache of graphs."""
    backend = BACKEND
    if backend not in _compiled:
        # Inductor's CUDA graphs off whatever its global config says: the step's own capture holds the whole step.
        options = {"triton.cudagraphs": False} if backend == "inductor" else None
        _compiled[backend] = torch.compile(
            _forward, backend=backend, options=options, dynamic=False, recompile_limit=RECOMPILE_LIMIT
        )
    return _compiled[backend]
