"""torch.compile of the net's forward pass (``EngineOptions(compile=True)``, ``dipcore.compiled``): a compiled fit
fits as the eager one does, under bf16 autocast too, and a graph is compiled once per architecture and canvas and
reused by every fresh net, stacked fits on a shared canvas included.

On the CPU with a counting ``aot_eager`` backend: dynamo's tracing and guards and AOT autograd's forward and backward
graphs are the production path's, run by eager kernels (inductor would build C++ kernels for every graph first).
Inductor's kernels, their speed and the CUDA-graph capture of compiled code are the GPU suite's to measure.
"""

import json

import numpy as np
import pytest
import torch
from skimage import data
from torch._dynamo.backends.debugging import aot_eager

import dipcore
from dipcore import canvas_bucket, compiled, nets, preset_for
from dipcore.canvas import own_canvas
from dipcore.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
SMALL = dict(preset="fast", channels=8)  # the fast skip net at 8 channels: a graph compiles in seconds
FP32 = dict(autocast="off")  # dipcore's default on a CPU with bf16 units would lower these small fits to bf16 anyway


@pytest.fixture
def graphs(monkeypatch):
    """The graphs dynamo hands the backend, one per compilation; dynamo's caches emptied around each test, so each
    counts its own (and none comes near the recompile limit)."""
    seen: list[torch.fx.GraphModule] = []

    def counting_aot_eager(gm, example_inputs):
        seen.append(gm)
        return aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    monkeypatch.setattr(compiled, "BACKEND", counting_aot_eager)
    monkeypatch.setattr(compiled, "_compiled", {})
    yield seen
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut().astype(np.float32) / 255


def _restore(image, *, compile: bool, seed: int = 0, **kw):
    engine = dipcore.EngineOptions(compile=compile, **{**FP32, **kw.pop("engine", {})})
    return dipcore.restore(image, task="denoise", iterations=2, seed=seed, engine=engine, **SMALL, **kw)


# --------------------------------------------------------------------------------------------------- correctness


# aot_eager runs the traced graph's ops with eager kernels; what differs from the eager fit is float rounding where
# AOT autograd decomposes an op (measured: 4e-7 at most in the net's output, 1e-7 relative in the first loss). The
# first loss is the forward pass alone: 1e-5 relative leaves a margin of 100. DIP fits are chaotic in rounding from
# the first Adam step on (tests/test_batched.py: every weight moves by ±lr, so gradients at rounding level flip
# signs), so the second iteration is held to test_batched's 1e-3, and a few iterations only.
@pytest.mark.parametrize(("task", "checkpoint"), [("denoise", False), ("sr", False), ("denoise", True)])
def test_a_compiled_fit_fits_as_the_eager_one(graphs, astronaut, task, checkpoint):
    img = astronaut[:32, :32]
    obs = dipcore.degrade(img, task=task, seed=0)
    kw = dict(task=task, iterations=2, reference=img, **SMALL)
    engine = dict(checkpoint=checkpoint, **FP32)
    eager = dipcore.restore(obs, engine=dipcore.EngineOptions(**engine), **kw)
    assert graphs == []  # compile is off unless asked
    fast = dipcore.restore(obs, engine=dipcore.EngineOptions(compile=True, **engine), **kw)
    assert len(graphs) == 1  # the compiled path ran, in one graph (a graph break would make two)
    np.testing.assert_allclose(fast.history["loss"][0], eager.history["loss"][0], rtol=1e-5)
    np.testing.assert_allclose(fast.history["loss"], eager.history["loss"], rtol=1e-3)
    np.testing.assert_allclose(fast.image, eager.image, atol=3e-3)
    other = dipcore.restore(obs, seed=1, engine=dipcore.EngineOptions(**engine), **kw)
    assert abs(other.history["loss"][0] / eager.history["loss"][0] - 1) > 1e-3  # the tolerances tell fits apart


def test_under_bf16_autocast_the_compiled_net_is_lowered(graphs, astronaut):
    p = preset_for("denoise", **SMALL)
    net = nets.reinitialise(nets.get_net(p.net, in_channels=p.input_depth, **p.net_options), torch.Generator())
    z = torch.rand(1, p.input_depth, 64, 64, generator=torch.Generator().manual_seed(1))
    forward = compiled.compiled_forward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lowered, eager = forward(net, z), net(z)
    assert lowered.dtype == eager.dtype == torch.bfloat16  # the autocast reached the graph's convolutions
    torch.testing.assert_close(lowered, eager, atol=2**-8, rtol=0)  # one bf16 rounding step of a sigmoid in [0, 1]
    assert forward(net, z).dtype == torch.float32 and len(graphs) == 2  # dynamo guards on the autocast state
    img = astronaut[:32, :32]
    bf16 = [_restore(img, compile=c, engine=dict(autocast="bf16")).history["loss"] for c in (False, True)]
    assert len(graphs) == 2  # the fit's fresh net reused the bf16 graph above: same architecture, canvas, autocast
    np.testing.assert_allclose(bf16[1], bf16[0], rtol=1e-3)


# ----------------------------------------------------------------------------------------- one graph per canvas


def test_fresh_nets_on_one_canvas_compile_once_and_another_bucket_once_more(graphs, astronaut):
    p = preset_for("denoise", **SMALL)
    a, b, c = astronaut[:32, :32], astronaut[100:140, 200:240], astronaut[:96, :96]
    assert canvas_bucket(p, a.shape) == canvas_bucket(p, b.shape) != canvas_bucket(p, c.shape)
    assert own_canvas(p, a.shape) == own_canvas(p, b.shape)  # restore runs each on its own canvas: (64, 64)
    _restore(a, compile=True, seed=0)
    _restore(b, compile=True, seed=1)  # another image, another fresh net
    assert len(graphs) == 1
    _restore(c, compile=True)
    assert len(graphs) == 2


def test_stacked_fits_of_different_sizes_compile_once_per_shared_canvas(graphs, astronaut):
    stack = dipcore.EngineOptions(compile=True, batch_mode="stack", **FP32)
    kw = dict(task="denoise", iterations=2, engine=stack, **SMALL)
    first = dipcore.restore_batch([astronaut[0:80, 100:164], astronaut[200:248, 200:248]], **kw)
    second = dipcore.restore_batch([astronaut[300:380, 300:364], astronaut[10:60, 10:50]], **kw)
    assert first[1].config["canvas"] == second[1].config["canvas"] == [96, 64]  # sizes differ, the canvas not
    assert len(graphs) == 1
    dipcore.restore_batch([astronaut[0:128, 0:96], astronaut[0:96, 0:90]], **kw)
    assert len(graphs) == 2  # a (128, 96) canvas


def test_images_of_one_bucket_share_a_graph_on_the_bucket_unless_told_their_own_canvas(graphs, astronaut):
    # Own canvases 288×64 and 320×64, one bucket (320×64): compiled, both run on the bucket.
    a, b = astronaut[0:280, 0:64], astronaut[100:400, 200:264]
    first, second = _restore(a, compile=True), _restore(b, compile=True, seed=1)
    assert len(graphs) == 1
    assert first.config["canvas"] == [320, 64] and "canvas" not in second.config and first.image.shape == a.shape
    _restore(a, compile=True, canvas="own")  # what an unbucketed canvas costs: a graph of its own
    assert len(graphs) == 2


def test_stacked_batches_of_one_bucket_share_a_graph_whatever_their_largest_image(graphs, astronaut):
    stack = dipcore.EngineOptions(compile=True, batch_mode="stack", **FP32)
    kw = dict(task="denoise", iterations=1, engine=stack, **SMALL)
    short = [astronaut[0:260, 0:48], astronaut[0:280, 0:64]]  # own canvases 288×64 both: shared 288×64
    tall = [astronaut[0:280, 0:64], astronaut[0:300, 0:64]]  # 288×64 and 320×64: shared 320×64
    assert [r.config["canvas"] for r in dipcore.restore_batch(short, **kw)] == [[320, 64]] * 2
    dipcore.restore_batch(tall, **kw)
    assert len(graphs) == 1  # one bucket, one graph
    dipcore.restore_batch(short, canvas="shared", **kw)
    assert len(graphs) == 2  # the smallest shared canvas, 288×64, compiles its own


# -------------------------------------------------------------------------------------------------- the option


def test_compile_is_off_by_default_validated_and_recorded(graphs, astronaut):
    for device in ("cpu", "cuda"):  # off until the GPU suite has measured it
        assert dipcore.EngineOptions().resolved(torch.device(device)).compile is False
    with pytest.raises(ConfigError, match="compile"):
        dipcore.EngineOptions(compile="yes").resolved(CPU)
    img = astronaut[:32, :32]
    assert _restore(img, compile=None).engine["compile"] is False and graphs == []
    assert _restore(img, compile=True).engine["compile"] is True and len(graphs) == 1

    # What a report row records (engine_json), and how a run asks for it.
    from pipelines.execution.options import Execution, compile_net
    from pipelines.execution.restorer import Restorer
    from pipelines.fields import parse_field

    software = Restorer(device="cpu", engine=dipcore.EngineOptions(compile=True)).software
    assert json.loads(software["engine_json"])["compile"] is True
    assert [compile_net(parse_field(Execution, "compile", w)) for w in ("auto", "on", "off")] == [None, True, False]
    assert Execution().compile == "auto"


# ------------------------------------------------------------------------------------------------------ the worker


def _jobs(root, heights: list[int], width: int):
    """Jobs of a fast 8-channel denoising run over random images of ``heights`` × ``width``, written under ``root``."""
    import whole_plan

    from pipelines import jobs, storage
    from pipelines.settings import RestoreSettings

    rng = np.random.default_rng(0)
    for i, h in enumerate(heights):
        storage.write_bytes_atomic(f"{root}/src/{i}.png", dipcore.encode_png(rng.random((h, width, 3), np.float32)))
    config = jobs.restore_config(RestoreSettings(task="denoise", preset="fast", iterations=1, channels=8))
    return whole_plan.plan(f"{root}/src", output=f"{root}/out", config=config).jobs


def test_a_compiled_worker_runs_jobs_of_one_bucket_on_one_graph(graphs, tmp_path):
    from pipelines.execution.restorer import Restorer

    jobs = _jobs(tmp_path, [280, 300], 64)  # own canvases 288×64 and 320×64, one bucket
    worker = Restorer(device="cpu", engine=dipcore.EngineOptions(compile=True, **FP32))
    rows = [o.row for o in worker.run_batch(jobs, pack=1)]  # each job alone
    assert [(r["status"], r["height"]) for r in rows] == [("ok", 280), ("ok", 300)]
    assert len(graphs) == 1


@pytest.mark.parametrize(("compile", "batches"), [(True, [4, 2]), (False, [6])])
def test_a_compiled_stacking_worker_batches_in_powers_of_two(graphs, tmp_path, monkeypatch, compile, batches):
    # Six jobs of one shape, packs of six: compiled, a stacked net's graph is per number of fits too, so 4 + 2
    # (at most log2(8) + 1 sizes ever); eager, one batch of six.
    from pipelines.execution.restorer import Restorer

    calls = []
    real = dipcore.restore_batch
    monkeypatch.setattr(dipcore, "restore_batch", lambda obs, **kw: calls.append(len(obs)) or real(obs, **kw))
    engine = dipcore.EngineOptions(compile=compile, batch_mode="stack", **FP32)
    rows = [o.row for o in Restorer(device="cpu", engine=engine).run_batch(_jobs(tmp_path, [32] * 6, 32), pack=6)]
    assert calls == batches and [r["status"] for r in rows] == ["ok"] * 6
    assert sorted(r["pack_size"] for r in rows) == sorted(k for k in batches for _ in range(k))
    assert len(graphs) == (2 if compile else 0)
