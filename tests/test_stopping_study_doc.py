"""pipelines.reporting.stopping_study: the stopping study's lines as the results document's section and as the
study's own summary, from synthetic lines whose every figure is known."""

from __future__ import annotations

import gzip
import json

from dipcore import tasks
from pipelines.reporting import stopping_study as ss

COUNT = 4  # the fixed count of the synthetic runs (6 iterations run)


def choice(curve: list[float], t: int, output: str = "avg", fired_at: int | None = None) -> dict:
    return {"iteration": t, "output": output, "psnr": curve[t - 1], "fired": fired_at is not None, "fired_at": fired_at}


def line(task: str, image: str, variant: str, avg: list[float], picks: dict[str, dict], level=25) -> dict:
    best = max(range(len(avg)), key=avg.__getitem__)
    return {
        "task": task,
        "set": "cbm3d9",
        "image": image,
        "size": 32,
        "level": "sigma" if task == "denoise" else "quality",
        "level_value": level,
        "variant": variant,
        "fit": variant,
        "channels": 8,
        "iterations": len(avg),
        "count": COUNT,
        "seed": 0,
        "psnr_degraded": 20.0,
        "oracle": choice(avg, best + 1),
        "picks": {"fixed": choice(avg, COUNT), **picks},
        "curves": {"raw": [v - 1 for v in avg], "avg": avg},
        "seconds_per_iteration": 0.01,
        "signal_ms_per_iteration": {},
        "outputs_watched": 2,
        "torch": "2.x",
        "threads": 1,
        "device": "cpu",
        "cpu": "test CPU",
    }


BASE = [20.0, 23.0, 25.0, 24.0, 22.0, 21.0]  # oracle 25.00 at iteration 3; fixed count 24.00
HELD = [19.0, 22.0, 23.0, 24.0, 23.0, 22.0]  # the held-out fit's own curve: its rule picks iteration 3, fired at 5
WMV = {"wmv_raw_p1000": {"iteration": 2, "output": "raw", "psnr": 22.0, "fired": True, "fired_at": 6}}


def study(task: str = "denoise") -> list[dict]:
    return [
        line(task, "a.png", "base", BASE, WMV),
        line(task, "a.png", "selfval", HELD, {"selfval_avg_p300": choice(HELD, 3, fired_at=5)}),
    ]


def test_the_refit_is_the_base_run_at_the_held_out_pick_with_its_cost():
    rows = study()
    (refit,) = ss.refit_rows(rows, {"a.png": rows[0]})
    pick = refit["picks"]["selfval_avg_p300"]
    assert (pick["iteration"], pick["psnr"]) == (3, 25.0)  # the base run's average at 3, not the held-out fit's 23
    assert refit["cost"]["selfval_avg_p300"] == (5 + 3) / COUNT  # search to where it fired, then the refit
    assert refit["oracle"] == rows[0]["oracle"]


def table_of(doc: list[str], heading: str) -> list[str]:
    start = next(i for i, x in enumerate(doc) if x.startswith("### ") and heading in x)
    return [x for x in doc[start:] if x.startswith("| ")][:5]  # header, then image and gap rows


def test_the_section_gives_each_images_gap_and_marks_the_default_read_from_dipcore(monkeypatch):
    monkeypatch.setattr(tasks, "DEFAULT_STOPPING", {"denoise": "selfval"})
    doc = ss.section(study("denoise") + study("jpeg"), ["x.jsonl"])
    header, image, mean, worst = table_of(doc, "Denoising, σ = 25")[:4]
    assert "**self-validation + refit (default)**" in header and "fixed count |" in header
    # oracle 25.00 (3); fixed 24.00; ES-WMV 22.00; held-out fit's own pick 23.00; refit 25.00
    assert image == "| a.png | 20.00 | 25.00 (3) | 24.00 (−1.00) | 22.00 (−3.00) | 23.00 (−2.00) | 25.00 (+0.00) |"
    assert mean.split("|")[4:-1] == [" −1.00 ", " −3.00 ", " −2.00 ", " +0.00 "]
    assert worst.split("|")[4:] == mean.split("|")[4:]  # one image: its gap is the worst
    assert "ran 2.00× the fixed count's iterations" in "\n".join(doc)
    # The overview: the default's gaps and the fixed count's, and the goal (mean ≤ 0.5, worst ≤ 1.0, ≥ fixed).
    assert "| Denoising | σ = 25 | 32² | 8 | 1 | self-validation + refit | +0.00 / +0.00 | −1.00 / −1.00 | ✓ |" in doc
    jpeg = "| JPEG restoration | JPEG quality 25 | 32² | 8 | 1 | fixed count | −1.00 / −1.00 | −1.00 / −1.00 | ✗ |"
    assert jpeg in doc
    jpeg_header = table_of(doc, "JPEG restoration, JPEG quality 25")[0]
    assert "**fixed count (default)**" in jpeg_header and "refit (default)" not in jpeg_header

    monkeypatch.setattr(tasks, "DEFAULT_STOPPING", {"jpeg": "selfval"})  # the document follows the code
    doc = ss.section(study("denoise") + study("jpeg"), ["x.jsonl"])
    assert "**self-validation + refit (default)**" in table_of(doc, "JPEG restoration")[0]
    assert "**fixed count (default)**" in table_of(doc, "Denoising")[0]


def test_the_self_validation_columns_follow_dipcores_patience(monkeypatch):
    from dipcore import selfvalidation

    monkeypatch.setattr(tasks, "DEFAULT_STOPPING", {"denoise": "selfval"})
    monkeypatch.setattr(selfvalidation, "SELFVAL_PATIENCE", 500)
    held = {"selfval_avg_p500": choice(HELD, 4, fired_at=6), "selfval_avg_p300": choice(HELD, 3, fired_at=5)}
    rows = [line("denoise", "a.png", "base", BASE, WMV), line("denoise", "a.png", "selfval", HELD, held)]
    header, image = table_of(ss.section(rows, ["x.jsonl"]), "Denoising")[:2]
    assert header.count("self-validation + refit") == 1 and "**self-validation + refit (default)**" in header
    assert image.endswith("| 24.00 (−1.00) | 24.00 (−1.00) |")  # patience 500's pick (4), not 300's (3)


def test_the_summary_ranks_every_row_and_rule_by_its_mean_gap():
    text = "\n".join(ss.summarise(study()))
    ranked = [x.split("|")[1:3] for x in text.splitlines() if x.startswith("| ") and x.count("|") == 13][1:]
    names = [f"{a.strip()}/{b.strip()}" for a, b in ranked]
    assert names[:2] == ["base/oracle", "selfval→refit/selfval_avg_p300"]  # both 0.00 dB below the oracle
    assert names[-1] == "base/wmv_raw_p1000"  # 3.00 dB below
    assert "search + refit cost 2.00×" in text


def test_lines_read_alike_gzipped_or_not():
    raw = "".join(json.dumps(r) + "\n" for r in study()).encode()
    assert ss.read_lines(gzip.compress(raw)) == ss.read_lines(raw) == study()
