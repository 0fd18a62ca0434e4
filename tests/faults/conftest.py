"""The fault suite's fixtures: ``faulty://`` registered, and the ledger that every case writes its outcome to.

With ``DIPFLOW_RELIABILITY_LEDGER=<file>`` set (``make reliability``), the session's outcomes are written there as
JSON lines at its end; `reliability_page.py` turns them into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime

import pytest
from faulty_fs import register

register()

_OUTCOMES: list[dict] = []


@pytest.fixture
def ledger():
    """``ledger(outcome)``: keeps a case's `invariants.Outcome` for the reliability page and asserts that it passed,
    naming every broken invariant."""

    def record(outcome) -> None:
        _OUTCOMES.append(outcome.as_dict())
        assert outcome.passed, f"{outcome.case} ({outcome.backend}): " + "; ".join(outcome.notes)

    return record


def _meta() -> dict:
    """When, at which commit and on what the ledger was made (its first line)."""
    import platform
    from importlib.metadata import version

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=os.path.dirname(__file__)
    ).stdout.strip()
    cpu = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    packages = ", ".join(f"{name} {version(name)}" for name in ("ray", "prefect", "fsspec", "s3fs"))
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": commit or "?",
        "machine": f"{os.cpu_count()} × {cpu}, Python {platform.python_version()}, {packages}",
    }


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("DIPFLOW_RELIABILITY_LEDGER")
    if target and _OUTCOMES:
        with open(target, "w", encoding="utf-8") as f:
            f.write(json.dumps({"meta": _meta()}, ensure_ascii=False) + "\n")
            for outcome in sorted(_OUTCOMES, key=lambda o: (o["group"], o["case"], o["backend"])):
                f.write(json.dumps(outcome, ensure_ascii=False, sort_keys=True) + "\n")
