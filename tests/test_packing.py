"""Packing compatible jobs into one stacked fit: shapes from headers, pack keys, the queue, the "auto" size, and
`Restorer.run_batch` against one job at a time. Tiny images, 16-channel nets, a few iterations."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import whole_plan
from PIL import Image

import dipcore
from dipcore import batch_refusal, image_shape, preset_for
from dipcore.memory import cuda_budget
from pipelines import jobs, storage
from pipelines.evaluation import protocols
from pipelines.execution import packing
from pipelines.execution.packing import PackQueue
from pipelines.execution.restorer import Restorer
from pipelines.jobs import Synthesis

FAST = {"preset": "fast", "iterations": 2, "channels": 16}


def write(root, key: str, h: int, w: int, *, channels: int = 3, seed: int = 0) -> str:
    """A smooth image (a different one per seed) at ``<root>/<key>``."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    image = np.stack([xx, yy, ((xx + yy) / 2) ** (seed + 1)][:channels], axis=-1).astype(np.float32)
    uri = f"{root}/{key}"
    storage.write_bytes_atomic(uri, dipcore.encode_png(image))
    return uri


def plan(root, task: str = "denoise", synthesis: Synthesis | None = None, seed: int = 0, **kw) -> dict[str, jobs.Job]:
    """The jobs of a run over `root` with ``dipcore.preset_for(task, **FAST, **kw)`` (a None leaves FAST's out) and,
    for evaluation, `synthesis`, whose σ the preset records as an evaluation's does."""
    sigma = synthesis.sigma if synthesis is not None and "sigma" in dipcore.get_task(task).degrade_args else None
    preset = preset_for(task, sigma=sigma, **{k: v for k, v in {**FAST, **kw}.items() if v is not None})
    config = jobs.run_config(preset, seed=seed, synthesis=synthesis)
    return {j.key: j for j in whole_plan.plan(str(root), output=f"{root}-out", config=config).jobs}


# ------------------------------------------------------------------------------- shapes known before decoding


def _encode(array: np.ndarray, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **save)
    return buf.getvalue()


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: width and height swap
    return _encode(np.zeros((20, 30, 3), np.uint8), "JPEG", exif=exif.tobytes())


@pytest.mark.parametrize(
    "data",
    [
        _encode(np.zeros((20, 30, 3), np.uint8), "PNG"),
        _encode(np.zeros((20, 30), np.uint8), "PNG"),  # L: one channel
        _encode(np.zeros((20, 30, 4), np.uint8), "PNG"),  # RGBA: alpha dropped
        _encode(np.zeros((20, 30, 2), np.uint8), "PNG"),  # LA: one channel
        _encode(np.zeros((20, 30), np.uint16), "PNG"),  # I;16
        dipcore.encode_png(np.zeros((20, 30, 3), np.float32), bits=16),
        _encode(np.zeros((20, 30, 3), np.uint8), "GIF"),  # palette
        _rotated_jpeg(),
    ],
    ids=["rgb", "grey", "rgba", "grey-alpha", "grey16", "rgb16", "palette", "exif-rotated-jpeg"],
)
def test_the_header_gives_the_shape_decoding_gives(data):
    assert image_shape(data) == dipcore.decode_image(data).shape


def test_an_unreadable_header_is_a_decode_error():
    for data in (b"", b"\x89PNG\r\n\x1a\n broken", b"plain text"):
        with pytest.raises(dipcore.ImageDecodeError):
            image_shape(data)


def test_plan_records_header_sizes_and_plain_jobs_observe_their_input(tmp_path):
    src = tmp_path / "src"
    write(src, "rgb.png", 40, 56)
    write(src, "grey.png", 40, 56, channels=1)
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    j = plan(src)
    assert j["rgb.png"].size == (40, 56, 3) and jobs.observation_shape(j["rgb.png"]) == (40, 56, 3)
    assert jobs.observation_shape(j["grey.png"]) == (40, 56, 1)
    assert j["corrupt.png"].size is None and jobs.observation_shape(j["corrupt.png"]) is None
    assert jobs.pack_key(j["corrupt.png"]) is None  # unknown shape: it runs alone
    assert jobs.pack_key(j["rgb.png"]) != jobs.pack_key(j["grey.png"])


@pytest.mark.parametrize(
    ("size", "synthesis", "expected"),
    [
        ((100, 70), Synthesis("sr", scale=4, crop_multiple=32), (24, 16, 3)),  # 96×64 crop, then ÷4
        ((72, 72), Synthesis("sr", scale=4, crop_multiple=32), (16, 16, 3)),
        ((100, 70), Synthesis("sr", scale=3, crop_multiple=32), (32, 21, 3)),  # 96×64: LANCZOS keeps ⌊n/3⌋
        ((100, 70), Synthesis("sr", scale=4, crop_multiple=32, crop_size=48), (8, 8, 3)),  # smoke crop first
        ((100, 70), Synthesis("denoise", crop_size=40), (40, 40, 3)),
        ((100, 70), Synthesis("inpaint", variant="random"), (100, 70, 3)),
        ((20, 40), Synthesis("sr", scale=4, crop_multiple=32), None),  # smaller than the crop: the worker says so
    ],
)
def test_evaluation_jobs_know_the_shape_of_their_synthesised_observation(tmp_path, size, synthesis, expected):
    src = tmp_path / "src"
    write(src, "a.png", *size)
    scale = synthesis.scale if synthesis.task == "sr" else None
    (job,) = plan(src, synthesis.task, synthesis, scale=scale, variant=synthesis.variant).values()
    assert jobs.observation_shape(job) == expected
    if expected is not None:
        clean = dipcore.load_image(src / "a.png")
        obs, _truth, _side = protocols.observe(job, clean, dipcore.load_image)
        assert obs.image.shape == expected  # what the worker will make


def test_pack_keys_separate_configs_side_inputs_and_unstackable_settings(tmp_path):
    src = tmp_path / "src"
    for key in ("a.png", "b.png", "c.png"):
        write(src, key, 32, 32)
    write(src, "a_mask.png", 32, 32)
    j = plan(src)
    assert jobs.pack_key(j["b.png"]) == jobs.pack_key(j["c.png"]) is not None
    assert jobs.pack_key(j["a.png"]) != jobs.pack_key(j["b.png"])  # a has a mask, b has none
    assert jobs.pack_key(plan(src, seed=1)["b.png"]) != jobs.pack_key(j["b.png"])  # another config
    assert jobs.pack_key(plan(src, restarts=2)["b.png"]) is None
    unet = plan(src, net="unet", feature_scale=16, channels=None)["b.png"]
    assert not unet.packable and jobs.pack_key(unet) is None


def test_batch_refusal_names_what_restore_batch_cannot_stack():
    assert batch_refusal(preset_for("sr", scale=4)) is None
    assert batch_refusal(preset_for("denoise", net="deep_decoder", channels=16)) is None
    assert "restarts" in batch_refusal(preset_for("denoise", restarts=2))
    assert "pre-image" in batch_refusal(preset_for("preimage", preset="fast"))
    assert "do not support" in batch_refusal(preset_for("sr", net="unet"))


# ------------------------------------------------------------------------------------------------- the queue


def _job(key: str, shape: tuple[int, int, int] | None, config: str = "c") -> jobs.Job:
    run = jobs.RunConfig(preset_for("denoise"), seed=0, config={}, config_hash=config, packable=True)
    return jobs.Job(
        run_id="r", dataset="d", key=key, input_uri=f"/in/{key}", config=run, output_uri=f"/out/{key}", size=shape
    )


def test_the_queue_groups_only_equal_keys_in_order_and_up_to_k():
    small, large = (32, 32, 3), (200, 200, 3)  # canvases 64² and 224²: two buckets
    q = PackQueue(
        [
            _job("a", small),
            _job("b", large),
            _job("c", small),
            _job("d", small, config="other"),
            _job("e", small),
            _job("f", None),
            _job("g", large),
            _job("h", small),
        ]
    )
    groups = []
    while q:
        groups.append([j.key for j, _ in q.take(2)])
    assert groups == [["a", "c"], ["b", "g"], ["d"], ["e", "h"], ["f"]]
    assert len(q) == 0 and q.take(2) == []


def test_jobs_of_different_shapes_in_one_canvas_bucket_share_a_key():
    # The paper's denoising net (multiple 32): canvases 288×352 and 320×384 share the bucket 320×384.
    a, b, c = _job("a", (270, 340, 3)), _job("b", (300, 370, 3)), _job("c", (450, 450, 3))
    assert jobs.pack_key(a) == jobs.pack_key(b) != jobs.pack_key(c)
    assert jobs.pack_key(a, canvas="own") != jobs.pack_key(b, canvas="own")  # by exact shape, as before
    assert jobs.pack_key(_job("g", (270, 340, 1))) != jobs.pack_key(a)  # grey and colour apart
    assert jobs.pack_key(a, shape=(300, 370, 3)) == jobs.pack_key(b)  # a decoded shape replaces the header's
    shared, own = PackQueue([a, b, c]), PackQueue([a, b, c], canvas="own")
    assert [[j.key for j, _ in shared.take(3)] for _ in range(2)] == [["a", "b"], ["c"]]
    assert [[j.key for j, _ in own.take(3)] for _ in range(3)] == [["a"], ["b"], ["c"]]


def test_retried_jobs_come_back_first_and_run_alone():
    q = PackQueue([_job(k, (32, 32, 3)) for k in "abcd"])
    first = q.take(3)
    assert [j.key for j, _ in first] == ["a", "b", "c"]
    q.push_front([(j, 2) for j, _ in first])  # the batch died: every job lost an attempt
    assert [[(j.key, n) for j, n in q.take(3)] for _ in range(3)] == [[("a", 2)], [("b", 2)], [("c", 2)]]
    assert [(j.key, n) for j, n in q.take(3)] == [("d", 1)]


# --------------------------------------------------------------------------------------------- "auto" sizing


def test_auto_packs_one_job_per_thread_on_a_cpu_and_fills_a_gpus_free_memory(keep_torch_threads):
    assert Restorer(device="cpu", threads=1).pack_limit == 1  # a one-CPU actor
    assert Restorer(device="cpu", threads=2).pack_limit == 2
    p = preset_for("sr", scale=4, channels=16)
    one = dipcore.estimate_peak_bytes(p, 256, 256)

    def free_for(k: int) -> int:  # the free memory in which k fits just fit: dipcore keeps 1 GiB free on a small card
        return dipcore.estimate_peak_bytes(p, 256, 256, fits=k) + 2**30

    assert cuda_budget(free_for(3), free_for(3)) == dipcore.estimate_peak_bytes(p, 256, 256, fits=3)

    def pack(free: int, total: int | None = None) -> int:  # as the restorer asks, for a card with `free` of `total`
        return packing.pack_for_memory(p, 256, 256, channels=3, budget=cuda_budget(free, total or free))

    assert pack(free_for(3)) == 3
    assert pack(free_for(3) - 1) == 2
    big = free_for(3) + 3 * 2**30  # an 80 GiB card: 4 GiB kept free
    assert pack(big, 80 * 2**30) == 3
    assert pack(big - 1, 80 * 2**30) == 2
    assert pack(100 * free_for(8)) == packing.AUTO_PACK_CAP
    assert pack(one // 2) == 1  # a lone fit still runs


# ------------------------------------------------------------------------------------------ the actor's side


@pytest.fixture
def spy(monkeypatch):
    """Records the number of observations of each ``dipcore.restore_batch`` call."""
    calls: list[int] = []
    real = dipcore.restore_batch

    def restore_batch(observations, **kw):
        calls.append(len(observations))
        return real(observations, **kw)

    monkeypatch.setattr(dipcore, "restore_batch", restore_batch)
    return calls


def _losses(outcome) -> list[float]:
    return [c["loss"] for c in outcome.curves]


@pytest.mark.parametrize("case", ["inpaint-with-own-masks", "sr-evaluation"])
def test_a_packed_batch_gives_what_one_job_at_a_time_gives(tmp_path, spy, case):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i, key in enumerate(["a.png", "b.png"]):
        write(src, key, 64, 64, seed=i)
    if case == "inpaint-with-own-masks":
        for key in ["a", "b"]:
            mask = (rng.random((64, 64)) > 0.5).astype(np.float32)
            storage.write_bytes_atomic(f"{src}/{key}_mask.png", dipcore.encode_png(mask))
        j = plan(src, "inpaint", variant="random")
    else:
        j = plan(src, "sr", Synthesis("sr", scale=4, crop_multiple=32), scale=4)
    r = Restorer(device="cpu")
    packed = r.run_batch([j["a.png"], j["b.png"]], pack=2)
    assert spy == [2]
    single = [r.run(j["a.png"]), r.run(j["b.png"])]
    assert spy == [2]  # one job at a time never stacks
    # DIP is chaotic in float rounding (tests/test_batched.py): the first steps agree tightly, outputs closely.
    for p, s in zip(packed, single, strict=True):
        assert p.row["status"] == s.row["status"] == "ok", (p.row.get("error"), s.row.get("error"))
        np.testing.assert_allclose(_losses(p), _losses(s), rtol=1e-3)
        restored = dipcore.load_image(p.row["output_uri"])  # the packed output, overwritten below by the single one
        assert restored.shape == (64, 64, 3) and p.row["height"] == 64
        assert (p.row["pack_size"], s.row["pack_size"]) == (2, 1)
        if s.row.get("psnr") is not None:
            assert p.row["psnr"] == pytest.approx(s.row["psnr"], abs=0.05)
    first = [_losses(s)[0] for s in single]
    assert abs(first[0] - first[1]) > 0.05 * first[0]  # the two images differ far beyond the tolerance: no mix-up


@pytest.mark.slow
def test_packed_fits_reach_the_quality_of_single_ones(tmp_path):
    src = tmp_path / "src"
    for i, key in enumerate(["a.png", "b.png"]):
        write(src, key, 32, 32, seed=i)
    j = plan(src, "denoise", Synthesis("denoise"), iterations=30)
    r = Restorer(device="cpu")
    packed = r.run_batch([j["a.png"], j["b.png"]], pack=2)[0]
    single = r.run(j["a.png"])
    np.testing.assert_allclose(_losses(packed)[:2], _losses(single)[:2], rtol=1e-3)
    assert packed.row["psnr"] == pytest.approx(single.row["psnr"], abs=0.5)
    assert _losses(packed)[-1] < 0.5 * _losses(packed)[0]  # and it learns


def test_a_bad_image_fails_alone_and_shapes_are_checked_after_decoding(tmp_path, spy):
    src = tmp_path / "src"
    write(src, "a.png", 32, 32)
    write(src, "b.png", 96, 96)  # canvas 96², another bucket than 32²'s canvas of 64²
    write(src, "c.png", 32, 32, seed=1)
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    j = plan(src)
    lying = dataclasses.replace(j["b.png"], size=(32, 32, 3))  # the file changed since planning: now 96²
    assert jobs.pack_key(lying) == jobs.pack_key(j["a.png"])
    batch = [j["a.png"], j["corrupt.png"], lying, j["c.png"]]
    outcomes = Restorer(device="cpu").run_batch(batch, pack=4)
    assert spy == [2]  # a and c together; b (96²) alone; the corrupt image never reached a fit
    rows = [o.row for o in outcomes]
    assert [r["image_key"] for r in rows] == ["a.png", "corrupt.png", "b.png", "c.png"]
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok"]
    assert "not a recognised image format" in rows[1]["error"]
    assert (rows[2]["height"], rows[0]["height"]) == (96, 32)
    assert all(r["wall_seconds"] > 0 for r in rows) and rows[1]["wall_seconds"] < rows[0]["wall_seconds"]


@pytest.mark.parametrize("canvas", ["shared", "own"])
def test_images_of_different_sizes_in_one_bucket_run_as_one_batch(tmp_path, spy, canvas):
    # 40×40 and 56×48: one canvas (64², the fast net's smallest), so one bucket. On a CPU the batch runs side by
    # side, each fit on its own canvas; a GPU worker stacks it on the shared one (tests/test_canvas.py).
    src = tmp_path / "src"
    write(src, "a.png", 40, 40)
    write(src, "b.png", 56, 48, seed=1)
    j = plan(src, "denoise", Synthesis("denoise"), channels=8)
    outcomes = Restorer(device="cpu", canvas=canvas).run_batch([j["a.png"], j["b.png"]], pack=2)
    assert spy == ([2] if canvas == "shared" else [])  # by exact shape: each alone
    assert [o.row["status"] for o in outcomes] == ["ok", "ok"]
    assert [(o.row["height"], o.row["width"]) for o in outcomes] == [(40, 40), (56, 48)]
    assert {o.row["pack_size"] for o in outcomes} == ({2} if canvas == "shared" else {1})


def test_a_failing_stacked_fit_falls_back_to_one_job_at_a_time(tmp_path, spy):
    src = tmp_path / "src"
    for key in ("a.png", "b.png"):
        write(src, key, 32, 32)
    write(src, "a_mask.png", 32, 32, channels=1)  # grey: a mask (a coloured one is refused before any fit)
    write(src, "b_mask.png", 16, 16, channels=1)  # the wrong size: restore_batch refuses the whole batch
    j = plan(src, "inpaint", variant="random")
    outcomes = Restorer(device="cpu").run_batch([j["a.png"], j["b.png"]], pack=2)
    assert spy == [2]
    a, b = (o.row for o in outcomes)
    assert a["status"] == "ok" and a["iterations_run"] == 2  # restored on its own after the batch failed
    assert b["status"] == "error" and "mask is 16×16" in b["error"]


def test_run_inline_packs_up_to_pack_and_auto_packs_one_job_per_thread_on_a_cpu(tmp_path, spy, keep_torch_threads):
    from pipelines.execution.workers import run_inline

    src = tmp_path / "src"
    for i in range(3):
        write(src, f"im{i}.png", 32, 32, seed=i)
    j = list(plan(src).values())
    outcomes: list = []
    stats = run_inline(j, restorer=Restorer(device="cpu"), on_result=outcomes.append, pack=2)
    assert spy == [2] and (stats.ok, stats.packed) == (3, 2)
    assert sorted(o.row["image_key"] for o in outcomes) == ["im0.png", "im1.png", "im2.png"]
    assert all(o.row["attempts"] == 1 for o in outcomes)
    stats = run_inline(j, restorer=Restorer(device="cpu", threads=1), on_result=outcomes.append)  # pack="auto"
    assert spy == [2] and (stats.ok, stats.packed) == (3, 0)
    stats = run_inline(j, restorer=Restorer(device="cpu", threads=2), on_result=outcomes.append)  # two threads
    assert spy == [2, 2] and (stats.ok, stats.packed) == (3, 2)
    with pytest.raises(ValueError, match="pack must be"):
        run_inline(j, restorer=Restorer(device="cpu"), on_result=outcomes.append, pack=0)


def test_auto_on_a_gpu_actor_cuts_what_it_gets_to_its_free_memory(tmp_path, spy, monkeypatch):

    src = tmp_path / "src"
    for i in range(3):
        write(src, f"im{i}.png", 32, 32, seed=i)
    j = list(plan(src).values())
    r = Restorer(device="cpu")
    r.device_name = "a GPU"  # what "auto" looks at; the fits still run on the CPU
    assert r.pack_limit == packing.AUTO_PACK_CAP and r.info()["pack_limit"] == packing.AUTO_PACK_CAP
    p = preset_for("denoise", preset="fast", iterations=2, channels=16)  # the plan's settings
    two = dipcore.estimate_peak_bytes(p, 32, 32, fits=2) + 2**30  # with the 1 GiB dipcore keeps free
    monkeypatch.setattr(dipcore.memory, "device_budget", lambda device: cuda_budget(two, 10 * two))  # the card's
    outcomes = r.run_batch(j, pack="auto")
    assert spy == [2] and [o.row["status"] for o in outcomes] == ["ok"] * 3  # two stacked, the third alone
