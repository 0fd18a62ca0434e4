"""The paper's benchmarks through the evaluate flow at CPU scale: downscaled crops, a narrow net, a few hundred
iterations. The protocol is the real one; what is checked is the ordering a working prior must give."""

from pathlib import Path

import pytest

from pipelines import reports

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")
def test_dip_beats_the_degraded_input_on_denoising_and_inpainting_benchmarks(ray_local, tmp_path):
    from pipelines import flows

    summary = flows.evaluate(
        ["cbm3d9", "heide11"], str(DATA), str(tmp_path / "eval"), crop=64, limit=2, executor="inline",
        preset="fast", iterations=400, overrides={"channels": 16},
    )  # fmt: skip
    assert (summary["ok"], summary["error"]) == (4, 0), summary["failures"]
    rows = reports.read_report(str(tmp_path / "eval")).to_pylist()
    for row in rows:
        gain = row["psnr"] - row["psnr_baseline"]
        if row["dataset"] == "cbm3d9":  # σ = 25: the noisy input is ~20 dB; DIP must be far above it
            assert gain > 4.0, row
        else:  # 50 % of pixels missing: the masked input is far below anything that fills the holes
            assert gain > 10.0, row
