"""docs/reliability.md is what the committed ledger renders, and the ledger holds every case the suite defines (so a
case added to the suite cannot be missing from the page; `make reliability` refreshes both)."""

from __future__ import annotations

from pathlib import Path

from bad_files import BAD_FILES, HOSTILE_NAMES, SYMLINKS
from image_modes import modes
from reliability_page import read_ledger, render
from test_crash_points import CASES as CRASH_CASES
from test_lease_faults import CONTENDERS
from test_processes import SIGNALS
from test_storage_faults import FAULTS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_page_is_what_the_ledger_renders():
    meta, outcomes = read_ledger(DOCS / "reliability-ledger.jsonl")
    notes = (DOCS / "reliability-notes.md").read_text(encoding="utf-8")
    assert (DOCS / "reliability.md").read_text(encoding="utf-8") == render(meta, outcomes, notes), (
        "docs/reliability.md is stale: run `make reliability`"
    )


def test_the_ledger_holds_every_case_of_the_suite_and_each_passed():
    _, outcomes = read_ledger(DOCS / "reliability-ledger.jsonl")
    recorded = {(o["case"], o["backend"]) for o in outcomes}
    expected = {(b.case, backend) for b in BAD_FILES for backend in ("local", "s3")}
    expected |= {(f"name: {n[:40]}", backend) for n, _ in HOSTILE_NAMES for backend in ("local", "s3")}
    expected |= {(case, "local") for case, *_ in SYMLINKS}
    expected |= {(f.case, f"{backend} + faulty://") for f in FAULTS for backend in ("local", "s3")}
    expected |= {(f"driver {name}", "local + Ray + Prefect") for name in SIGNALS}
    expected |= {("actor killed mid-fit", "local + Ray")}
    expected |= {(f"lease raced by {CONTENDERS} runs", backend) for backend in ("local", "s3")}
    expected |= {("lease taken over mid-run", backend) for backend in ("memory:// + Prefect", "local + Ray + Prefect")}
    expected |= {(f"mode: {m.key}", "local") for m in modes()}
    expected |= {(case, "local + Prefect") for case in CRASH_CASES}
    expected |= {("dipflow restore SIGKILLed inside its commit", "local + Ray + Prefect")}
    assert not expected - recorded, f"not in the ledger (run `make reliability`): {sorted(expected - recorded)}"
    assert all(o["passed"] for o in outcomes), [o["case"] for o in outcomes if not o["passed"]]
