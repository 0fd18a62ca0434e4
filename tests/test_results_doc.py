"""pipelines.reporting.results_doc and pipelines.evaluation.paper: the results document from synthetic report rows of
schema v1 and v2, the paper's image names against the real heide11 files, `dipflow report --markdown`, and the
committed docs/results.md against what its own command writes."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines import cli, jobs
from pipelines.evaluation import benchmarks, paper, protocols
from pipelines.reporting import reports, results_doc

REPO = Path(__file__).resolve().parents[1]
HEIDE11 = Path(__file__).resolve().parents[2] / "shared" / "data" / "heide11"

_NET = {
    "channels_down": [128] * 5,
    "channels_up": [128] * 5,
    "channels_skip": [4] * 5,
    "pad": "reflection",
    "upsample": "bilinear",
}
CONFIGS = {
    "sr": {
        "net": "skip",
        "net_options": _NET,
        "input": "noise",
        "input_depth": 32,
        "lr": 0.01,
        "iterations": 2000,
        "reg_noise_std": 0.03,
        "output": "final",
        "restarts": 1,
        "seed": 0,
        "synthesis": {"task": "sr", "scale": 4, "crop_multiple": 32, "crop_size": None},
    },
    "denoise": {
        "net": "skip",
        "net_options": _NET,
        "input": "noise",
        "input_depth": 32,
        "lr": 0.01,
        "iterations": 1800,
        "ema": 0.99,
        "output": "average",
        "backtrack": True,
        "seed": 0,
        "synthesis": {"task": "denoise", "sigma": 25.0, "crop_size": None},
    },
    "inpaint": {
        "net": "skip",
        "net_options": _NET,
        "input": "noise",
        "input_depth": 32,
        "lr": 0.001,
        "iterations": 11000,
        "output": "final",
        "seed": 0,
        "synthesis": {"task": "inpaint", "drop": 0.5, "variant": "random", "crop_size": None},
    },
}
V2_COLUMNS = {
    "iteration_best": pa.int32(),
    "psnr_auto": pa.float64(),
    "iteration_auto": pa.int32(),
    "es_stop_iteration": pa.int32(),
    "psnr_two_runs": pa.float64(),
    "classical_name": pa.string(),
    "psnr_classical": pa.float64(),
    "torch_version": pa.string(),
    "engine_json": pa.string(),
}


def row(
    dataset: str,
    key: str,
    psnr: float | None,
    *,
    task: str = "sr",
    baseline: float | None = 28.0,
    config: dict | None = None,
    **extra,
) -> dict:
    """One report row of an evaluation image, as the evaluate flow writes it."""
    config = config or CONFIGS[task]
    sr = task == "sr"
    return {
        "run_id": "run-1",
        "dataset": dataset,
        "image_key": key,
        "input_sha256": key,
        "task": task,
        "scale": 4 if sr else None,
        "config_hash": jobs.config_hash(config),
        "config_json": jobs.canonical_json(config),
        "seed": 0,
        "iterations_run": config["iterations"],
        "iteration_returned": config["iterations"],
        "stop_reason": "iterations",
        "psnr": psnr,
        "psnr_final": psnr,
        "psnr_channel": "y" if sr else "rgb",
        "psnr_shave": 4 if sr else 0,
        "psnr_crop": "center32" if sr else None,
        "baseline_name": "bicubic" if sr else "input",
        "psnr_baseline": baseline,
        "wall_seconds": 10.0,
        "device": "NVIDIA H100",
        "status": "ok" if psnr is not None else "error",
        "finished_at": datetime(2026, 11, 27, 12, tzinfo=UTC),
        **extra,
    }


def v1(rows: list[dict]) -> pa.Table:
    return reports.to_table(rows)


def v2(rows: list[dict]) -> pa.Table:
    """Rows of report schema v2: the v1 columns, then the columns v2 adds (built here, not from reports.py)."""
    table = reports.to_table([{k: v for k, v in r.items() if k not in V2_COLUMNS} for r in rows])
    for name, type_ in V2_COLUMNS.items():
        table = table.append_column(pa.field(name, type_), pa.array([r.get(name) for r in rows], type_))
    return table


def section_text(doc: str, title: str) -> str:
    return doc.split(f"## {title}\n")[1].split("\n## ")[0]


SET5 = ["baby.png", "bird.png", "butterfly.png", "head.png", "woman.png"]


# ------------------------------------------------------------------------------------------------ schema v1


def test_v1_full_set_states_protocol_hardware_time_and_a_positive_gap():
    rows = [
        row("set5", k, p, baseline=b)
        for k, p, b in zip(SET5, [30, 31, 29, 30.5, 29.5], [28, 29, 27, 28.5, 27.5], strict=True)
    ]
    doc = results_doc.render(v1(rows))
    sr = section_text(doc, "SR ×4 on Set5")
    assert "- **Coverage:** 5 of 5 images." in sr
    assert (
        "PSNR on Y (BT.601, 16–235), 4 pixels shaved from each border, after a centre crop of the clean image "
        "to a multiple of 32" in sr
    )
    assert "skip net with 128 channels at 5 scales, 4 skip channels" in sr and "2000 iterations" in sr
    assert "NVIDIA H100; torch not recorded in these reports; engine not recorded in these reports" in sr
    assert "10.0 s on average" in sr and "2026-11-27 (UTC)" in sr and "`run-1`" in sr
    assert "| DIP, returned output | 30.00 | 29.90 | +0.10 |" in sr  # dipflow above the paper: a + gap
    assert "| bicubic (Pillow BICUBIC ×4, measured here) | 28.00 | 28.43 | −0.43 |" in sr
    assert "| SRResNet (trained) | not measured | 32.10 | – |" in sr
    assert "| DIP's margin over bicubic | +2.00 | +1.47 | +0.53 |" in sr
    assert "dipflow reaches or passes each of the paper's figures" in sr and "Short of the paper" not in sr
    assert "| butterfly.png | 29.00 | 27.00 | +2.00 |" in sr  # per image
    assert "Early stopping" not in doc  # v1 rows do not carry the study
    missing = section_text(doc, "Not measured in these reports")
    assert "SR ×4 on Set14" in missing and "29.22" in missing and "33.48" in missing and "Set5" not in missing


def test_a_shortfall_is_negative_and_said_in_words():
    doc = results_doc.render(v1([row("set5", k, 29.5) for k in SET5]))
    assert "| DIP, returned output | 29.50 | 29.90 | −0.40 |" in doc
    assert "- **Short of the paper:** DIP, returned output, 0.40 dB below the paper's 29.90" in doc
    head = results_doc.comparisons(results_doc.sections(v1([row("set5", k, 29.5) for k in SET5]))[0])[0]
    assert head.gap == pytest.approx(-0.40)


def test_partial_coverage_and_failures_are_stated():
    rows = [
        row("set14", "baboon.png", 24.0),
        row("set14", "barbara.png", 26.0),
        row("set14", "zebra.png", None, error="CUDA out of memory"),
    ]
    doc = results_doc.render(v1(rows))
    s14 = section_text(doc, "SR ×4 on Set14")
    assert "2 of 14 images (partial): baboon.png, barbara.png; 1 failed: zebra.png (CUDA out of memory)" in s14
    assert "not directly: 2 of the set's 14 images" in s14
    assert "| zebra.png | failed |" in s14
    assert "| SR ×4 on Set14 | NVIDIA H100 | 2 of 14 | 25.00 | 27.00 | −2.00 | 10.0 |" in doc


def test_a_smoke_run_is_not_compared_as_if_it_were_the_paper_setting():
    config = {**CONFIGS["sr"], "iterations": 50, "synthesis": {**CONFIGS["sr"]["synthesis"], "crop_size": 64}}
    rows = [row("set5", k, 22.0, config=config, psnr_crop="64x64+center32") for k in SET5]
    sr = section_text(results_doc.render(v1(rows)), "SR ×4 on Set5")
    assert (
        "after a 64×64 centre crop of the clean image, then a centre crop of the clean image to a multiple of 32" in sr
    )
    assert "not directly: each image centre-cropped to 64×64 first (a smoke run); 50 iterations (the paper: 2000)" in sr
    # no gap and no shortfall against the paper's full-image figure, and the benchmark still counts as not measured
    assert "| DIP, returned output | 22.00 | 29.90 | – (cropped images) |" in sr and "Short of the paper" not in sr
    doc = results_doc.render(v1(rows))
    assert "| SR ×4 on Set5 | NVIDIA H100 | 5 of 5 | 22.00 | 29.90 | – (cropped images) |" in doc
    assert "- **SR ×4 on Set5** (5 images" in section_text(doc, "Not measured in these reports")


def test_settings_that_differ_make_separate_labelled_sections():
    short = {**CONFIGS["sr"], "iterations": 500}
    rows = [row("set5", k, 30.0) for k in SET5] + [row("set5", k, 28.0, config=short) for k in SET5[:2]]
    doc = results_doc.render(v1(rows))
    assert "## SR ×4 on Set5 (iterations 2000)\n" in doc and "## SR ×4 on Set5 (iterations 500)\n" in doc
    assert "2 of 5 images (partial): baby.png, bird.png" in section_text(doc, "SR ×4 on Set5 (iterations 500)")


def test_a_dataset_the_paper_does_not_have_gets_its_own_section():
    rows = [row("photos", "a.png", 25.0, task="denoise", baseline=20.0, psnr_average=26.0)]
    doc = results_doc.render(v1(rows))
    own = section_text(doc, "Denoising σ = 25 on `photos`")
    assert "1 of 1 images in the report" in own and "The paper:** has no figure" in own
    assert "| DIP, raw output (last iterate) | 25.00 | – | – |" in own


def test_v1_denoising_says_what_was_not_measured():
    doc = results_doc.render(v1([row("cbm3d9", "House.png", 29.0, task="denoise", baseline=20.2, psnr_average=30.0)]))
    d = section_text(doc, "Denoising σ = 25 on the 9 colour images")
    assert "| DIP, raw output (last iterate) | 29.00 | 29.22 | −0.22 |" in d
    assert "| DIP, EMA of outputs | 30.00 | 30.43 | −0.43 |" in d
    assert "| DIP, averaged over 2 runs | not measured | 31.00 | – |" in d
    assert "| the degraded input itself | 20.20 | – | – |" in d
    assert "| CBM3D | not measured | 31.42 | – |" in d and "| NLM | not measured | 30.26 | – |" in d


# ------------------------------------------------------------------------------------------------ schema v2


def test_v2_denoising_beside_the_papers_three_figures_and_the_classical_baseline():
    engine = '{"cuda_graphs":false,"tf32":true}'
    rows = [
        row(
            "cbm3d9",
            k,
            p,
            task="denoise",
            baseline=20.0,
            psnr_average=p + 1,
            psnr_two_runs=p + 1.5,
            classical_name="bm3d",
            psnr_classical=31.0,
            torch_version="2.13.0+cu130",
            engine_json=engine,
        )
        for k, p in [("House.png", 29.0), ("F16.png", 30.0)]
    ]
    d = section_text(results_doc.render(v2(rows)), "Denoising σ = 25 on the 9 colour images")
    assert "| DIP, raw output (last iterate) | 29.50 | 29.22 | +0.28 |" in d
    assert "| DIP, EMA of outputs | 30.50 | 30.43 | +0.07 |" in d
    assert "| DIP, averaged over 2 runs | 31.00 | 31.00 | 0.00 |" in d
    assert "| bm3d (classical, measured here) | 31.00 | 31.42 | −0.42 |" in d  # bm3d is the paper's CBM3D …
    assert "| NLM | not measured | 30.26 | – |" in d and "| CBM3D |" not in d  # … so only NLM is left unmeasured
    assert "torch 2.13.0+cu130; engine cuda_graphs off, tf32 on." in d
    assert "| F16.png | 30.00 | 30.00 | 31.00 | 31.50 | 20.00 | +10.00 | 31.00 |" in d
    assert "2 of 9 images (partial)" in d


def test_v2_early_stopping_study_compares_fixed_auto_and_oracle():
    rows = [
        row(
            "set5",
            "baby.png",
            31.0,
            psnr_auto=30.8,
            iteration_auto=1500,
            psnr_best=31.1,
            iteration_best=1700,
            es_stop_iteration=1600,
        ),
        row(
            "set5",
            "bird.png",
            30.0,
            psnr_auto=29.0,
            iteration_auto=900,
            psnr_best=30.2,
            iteration_best=1900,
            es_stop_iteration=None,
        ),
    ]
    sr = section_text(results_doc.render(v2(rows)), "SR ×4 on Set5")
    study = sr.split("### Early stopping without ground truth")[1]
    assert "| baby.png | 2000 | 31.00 | 30.80 | 1500 | 31.10 | 1700 | −0.30 | −0.20 | 1600 | 400 |" in study
    assert "| bird.png | 2000 | 30.00 | 29.00 | 900 | 30.20 | 1900 | −1.20 | −1.00 | did not stop | 0 |" in study
    assert "| **mean** | 2000 | 30.50 | 29.90 | 1200 | 30.65 | 1800 | −0.75 | −0.60 | 1600 | 200 |" in study
    assert "within 0.5 dB of the oracle on 1 of 2 images (the goal: all); the worst is −1.20 dB (bird.png)" in study
    assert "saves 200 iterations per image on average, 10 % of those run" in study


def test_v2_columns_that_are_all_null_read_like_v1():
    """A v2 reader gives v1 parts typed nulls in the new columns: the document is the same as from v1 rows."""
    rows = [row("set5", k, 30.0) for k in SET5]
    assert results_doc.render(v2(rows)) == results_doc.render(v1(rows))


# ------------------------------------------------------------------------------------------------ heide11


def test_inpainting_per_image_beside_table_1_with_the_images_not_run():
    rows = [
        row("heide11", "barbara_GT.png", 31.22, task="inpaint", baseline=8.0),
        row("heide11", "Cameraman256_GT.png", 30.8, task="inpaint", baseline=8.0),
    ]
    d = section_text(results_doc.render(v1(rows)), "Inpainting, 50 % of pixels dropped, on the 11 grey images")
    assert "2 of 11 images (partial)" in d
    assert "| Barbara (barbara_GT.png) | 31.22 | 8.00 | +23.22 | 32.22 | −1.00 | 28.14 |" in d
    assert "| C.man (Cameraman256_GT.png) | 30.80 | 8.00 | +22.80 | 29.80 | +1.00 | 27.90 |" in d
    assert "| Boat | not run | – | – | 33.06 | – | 31.44 |" in d  # the paper's images not run are listed
    table = d.split("### Per image")[1]
    names = [line.split(" | ")[0].lstrip("| ").split(" (")[0] for line in table.splitlines() if line.startswith("| ")]
    assert names[1:] == list(paper.HEIDE11.per_image)  # the paper's order, after the header
    # the paper's mean over the same two images, beside the full-set mean
    assert "| DIP, mean over the 2 image(s) run | 31.01 | 31.01 | 0.00 |" in d
    assert "| DIP, returned output | 31.01 | 33.48 | −2.47 |" in d


@pytest.mark.skipif(not HEIDE11.is_dir(), reason="../shared/data is not here")
def test_every_heide11_file_names_one_image_of_table_1():
    b = paper.HEIDE11
    names = {p.name: paper.match_image(b, p.name) for p in HEIDE11.glob("*.png")}
    assert len(names) == 11 and sorted(names.values()) == sorted(b.per_image)  # each of the 11 exactly once
    assert names["Cameraman256_GT.png"] == "C.man" and names["man_GT.png"] == "Man"
    assert names["fingerprint_GT.png"] == "Finger" and names["Lena512_GT.png"] == "Lena"


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("sub/dir/peppers256_GT.png", "Peppers"),
        ("C.man.png", "C.man"),
        ("HILL.tif", "Hill"),
        ("manhattan.png", None),
        ("boats.png", None),
        ("lena_color.png", None),
    ],
)
def test_image_names_match_whole_words_only(key, name):
    assert paper.match_image(paper.HEIDE11, key) == name


def test_paper_means_and_lookup():
    b = paper.HEIDE11
    assert round(b.psnr, 2) == 33.48 and round(b.baselines[0].psnr, 2) == 31.19  # the paper's means of Table 1
    assert benchmarks.benchmark_for("Set5", "sr", 4).paper.psnr == 29.90
    assert benchmarks.benchmark_for("set5", "sr", 8) is None
    assert benchmarks.benchmark_for("set5", "denoise", None) is None


def test_one_registry_names_each_benchmark_with_its_protocol_and_figures():
    assert list(benchmarks.BENCHMARKS) == ["set5", "set14", "cbm3d9", "heide11"]  # the paper's order
    figures = [b.paper for b in benchmarks.BENCHMARKS.values()]
    assert all(a is b for a, b in zip(figures, [paper.SET5, paper.SET14, paper.CBM3D9, paper.HEIDE11], strict=True))
    assert benchmarks.describe() == "set5, set14 (SR x4), cbm3d9 (denoise σ=25), heide11 (inpaint 50%)"
    assert protocols.benchmark_synthesis("cbm3d9").sigma == 25.0 and protocols.benchmark_synthesis("set14").scale == 4
    assert protocols.benchmark_synthesis("heide11") == jobs.Synthesis("inpaint", drop=0.5, variant="random")
    assert protocols.benchmark_synthesis("my-folder").task == "sr"  # a folder that is not a benchmark: SR ×4


# ------------------------------------------------------------------------------------------------ document


def test_header_names_the_command_and_notes_come_verbatim():
    notes = "## Notes\n\nWhy the gap: *chaos*.\n"
    doc = results_doc.render(
        v1([row("set5", "baby.png", 30.0)]),
        command="dipflow report eval --markdown",
        sources=["eval"],
        notes=notes,
        notes_source="notes.md",
    )
    first = doc.splitlines()[0]
    assert first.startswith("<!-- Generated by `dipflow report eval --markdown`") and "notes.md" in first
    assert doc.endswith(notes) and "in `eval`" in doc


def test_no_rows_is_an_error():
    with pytest.raises(ValueError, match="no report rows"):
        results_doc.render(reports.REPORT_SCHEMA.empty_table())


def _write_root(root: Path, rows: list[dict]) -> None:
    with reports.ReportWriter(str(root), "run-1") as writer:
        for r in rows:
            writer.append(r)


def test_cli_writes_the_document_from_several_roots(tmp_path, capsys, monkeypatch):
    _write_root(tmp_path / "a", [row("set5", k, 30.0) for k in SET5])
    _write_root(tmp_path / "b", [row("set14", "baboon.png", 24.0)])
    (tmp_path / "notes.md").write_text("## Notes\n\nhand-written\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "a", "b", "--markdown", "--notes", "notes.md", "-o", "out/results.md"]) == 0
    doc = (tmp_path / "out" / "results.md").read_text()
    assert doc.startswith("<!-- Generated by `dipflow report a b --markdown --notes notes.md --output out/results.md`")
    assert "## SR ×4 on Set5\n" in doc and "## SR ×4 on Set14\n" in doc and doc.endswith("hand-written\n")
    assert capsys.readouterr().out == ""  # with --output, stdout stays empty

    assert cli.main(["report", "a", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("<!-- Generated by `dipflow report a --markdown`")
    assert cli.main(["report", "a", "b", "--summary-markdown"]) == 0
    assert capsys.readouterr().out.startswith("| dataset | task |")
    assert cli.main(["report", "a", "b", "--json"]) == 0
    assert '"runs": [\n    "run-1"\n  ]' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [  # options that do not go together are usage errors (2), found before anything is read; no rows is an error (1)
        (["report", "a", "--notes", "n.md"], 2, "go with --markdown"),
        (["report", "a", "--stopping-study", "s.jsonl"], 2, "go with --markdown"),
        (["report", "a", "a", "--html", "x.html"], 2, "--html writes the report of one output folder"),
        (["report", "a", "missing", "--markdown"], 1, "no report rows under missing/report"),
    ],
)
def test_cli_refuses_options_that_do_not_fit(argv, code, message, tmp_path, capsys, monkeypatch):
    _write_root(tmp_path / "a", [row("set5", "baby.png", 30.0)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIPFLOW_DEBUG", raising=False)
    assert cli.main(argv) == code
    assert message in capsys.readouterr().err


def test_cli_output_forms_exclude_each_other():
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "a", "--markdown", "--json"])
    assert exit_.value.code == 2


def test_committed_results_doc_is_what_its_command_writes(tmp_path, monkeypatch):
    """docs/results.md cannot go stale: the command in its first line, run on the committed reports and notes, writes
    exactly the committed file; `make results` (docs/reports.md and docs/testing.md name it) gives the same command."""
    committed = (REPO / "docs" / "results.md").read_text()
    command = re.match(r"<!-- Generated by `([^`]+)`", committed)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["dipflow", "report"] and "--markdown" in argv
    output = argv[argv.index("--output") + 1]
    for arg in argv[2:]:  # the reports and notes it reads, at the same relative paths
        if arg != output and (REPO / arg).exists():
            (tmp_path / arg).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / arg).symlink_to(REPO / arg)
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv[1:]) == 0
    assert (tmp_path / output).read_text() == committed
    assert "make results" in (REPO / "docs" / "reports.md").read_text()
    assert command.removeprefix("dipflow ") in (REPO / "Makefile").read_text()
