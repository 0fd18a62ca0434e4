"""Every command in README.md and in the pages it links for detail (docs/cli.md, api.md, reports.md, stopping.md,
performance.md, testing.md) is run by a test, so what a newcomer types works:

- README's `dipflow` commands and Python block, reports.md's commands (DuckDB's SQL through its Python module) and
  api.md's Python blocks run here as written, on tiny images, with speed settings appended (2 iterations, a narrow
  net, small samples): the words are the docs', only the counts change;
- `make demo` is the Makefile's `dipflow demo`, run here; `make test` is this suite;
- the Prefect commands are docs/deploy.md section 1's, which tests/test_deploy_laptop.py types verbatim;
- every other `dipflow` command (S3 buckets, a cluster, the paper's data) goes through the CLI's own parser, so a
  renamed command, option or choice fails here.

A command in a bash block that none of these covers fails `test_every_command_is_covered`.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *(f"docs/{name}.md" for name in ("cli", "api", "reports", "stopping", "performance", "testing"))]
# appended to a command that fits: its count and size, never what it does
SPEED = {
    "restore": ["--iterations", "2", "--channels", "8", "--quiet"],
    "restore-image": ["--iterations", "2", "--channels", "8", "--quiet"],
    "demo": ["--iterations", "2", "--size", "16", "--quiet"],
}


def _blocks(page: str, lang: str) -> list[str]:
    """The page's fenced blocks of `lang`, indented ones (inside a list item) too, dedented."""
    text = (ROOT / page).read_text()
    return [textwrap.dedent(b) for b in re.findall(rf"^[ \t]*```{lang}\n(.*?)^[ \t]*```", text, re.M | re.S)]


def _commands(page: str) -> list[list[str]]:
    """The page's shell commands as argv lists: backslash-continued lines joined, comments dropped."""
    found = []
    for block in _blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if argv := shlex.split(line, comments=True):
                found.append(argv)
    return found


def _deploy_laptop_commands() -> list[list[str]]:
    """docs/deploy.md section 1, every block: what tests/test_deploy_laptop.py types into its shell."""
    section = (ROOT / "docs" / "deploy.md").read_text().split("## 1. Laptop", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [shlex.split(line, comments=True) for b in blocks for line in b.replace("\\\n", " ").splitlines()]


def _make_targets() -> dict[str, list[str]]:
    """The Makefile's targets and their recipe lines."""
    targets, current = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if m := re.match(r"^([\w-]+):", line):
            current = targets.setdefault(m[1], [])
        elif line.startswith("\t") and current is not None:
            current.append(line.strip())
    return targets


def _how(page: str, argv: list[str]) -> str:
    """Which test runs `argv` of `page`, or why none does."""
    if argv[0] == "dipflow":
        return "run here" if page in ("README.md", "docs/reports.md") else "parsed here"
    if argv[0] == "make" and argv[1:] == ["demo"]:
        return "run here" if "$(VENV)/bin/dipflow demo" in _make_targets()["demo"] else "demo's recipe changed"
    if argv[0] == "make" and argv[1:] == ["test"]:
        return "this suite"
    if argv[0] == "prefect":
        return "test_deploy_laptop" if argv in _deploy_laptop_commands() else "not in docs/deploy.md section 1"
    if argv[0] == "duckdb" and page == "docs/reports.md":
        return "run here"
    return "no test runs it"


COVERED = {"run here", "parsed here", "this suite", "test_deploy_laptop"}


def test_every_command_is_covered():
    seen = {(page, shlex.join(argv)): _how(page, argv) for page in PAGES for argv in _commands(page)}
    assert {c for c, how in seen.items() if how not in COVERED} == set(), "document's commands no test runs"
    assert sum(page == "README.md" for page, _ in seen) >= 6  # the two commands and one per entry point


def test_every_dipflow_command_parses():
    parser = cli.build_parser()
    for page in PAGES:
        for argv in _commands(page):
            if argv[0] == "dipflow":
                args = parser.parse_args(argv[1:])  # a usage error exits 2 (SystemExit) and fails the test
                assert hasattr(args, "func"), f"{page}: {shlex.join(argv)} names no command"


def _write_png(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([np.sin(3 * xx + seed), np.cos(2 * yy), xx * yy], -1) * 0.4 + 0.5
    noisy = smooth + np.random.default_rng(seed).normal(0, 0.1, smooth.shape)
    Image.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.fixture
def few_iterations(monkeypatch):
    """`dipcore.restore` as the docs call it, with 2 iterations of a narrow net whatever the call asks."""
    import dipcore

    real = dipcore.restore
    monkeypatch.setattr(dipcore, "restore", lambda *a, **k: real(*a, **{**k, "iterations": 2, "channels": 8}))


def test_api_pages_python_blocks_run(tmp_path, monkeypatch, few_iterations):
    """README's Python block, then docs/api.md's, in one namespace with the names they take as given (an image file,
    a blurred array, a blur module)."""
    import torch

    monkeypatch.chdir(tmp_path)
    _write_png(tmp_path / "noisy.png", 0)
    _write_png(tmp_path / "butterfly.png", 1)

    class MyGaussianBlur(torch.nn.Module):  # api.md's caller-defined operator
        def __init__(self, sigma: float):
            super().__init__()
            self.sigma = sigma

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    blurred = np.asarray(Image.open(tmp_path / "noisy.png"), np.float32) / 255
    namespace = {"MyGaussianBlur": MyGaussianBlur, "blurred": blurred}
    blocks = [("README.md", b) for b in _blocks("README.md", "python")]
    blocks += [("docs/api.md", b) for b in _blocks("docs/api.md", "python")]
    assert len(blocks) >= 4
    for page, block in blocks:
        exec(compile(block, page, "exec"), namespace)
        if page == "README.md":
            assert Image.open(tmp_path / "clean.png").size == (32, 32)
    assert namespace["res"].config["iterations"] == 2 and (tmp_path / "out.png").is_file()


def test_readme_commands_run(ray_local, prefect_harness, tmp_path, monkeypatch, capsys):
    """README's `dipflow` commands and `make demo`'s, then docs/reports.md's on what they wrote, in one folder as a
    user would type them."""
    monkeypatch.chdir(tmp_path)
    _write_png(tmp_path / "noisy.png", 0)
    for i, name in enumerate(["a.png", "b.png"]):
        _write_png(tmp_path / "photos" / name, i + 1)

    readme = [argv for argv in _commands("README.md") if _how("README.md", argv) == "run here"]
    assert ["make", "demo"] in readme
    for argv in readme:
        argv = ["dipflow", "demo"] if argv == ["make", "demo"] else argv
        assert cli.main(argv[1:] + SPEED.get(argv[1], [])) == 0, shlex.join(argv)
    assert Image.open("clean.png").size == (32, 32)
    assert sorted(p.name for p in Path("restored").glob("*.png")) == ["a.png", "b.png"]
    assert Path("restored/html/index.html").is_file()
    assert len(list(Path("demo-output/results/clean").glob("*.png"))) == 3

    # reports.md names ./eval, ./eval-a, ./eval-b and out/: README's output and the demo's
    for name, target in [("eval", "restored"), ("eval-a", "restored"), ("eval-b", "demo-output/results")]:
        Path(name).symlink_to(target)
    Path("out").symlink_to("restored")
    capsys.readouterr()
    for argv in _commands("docs/reports.md"):
        if argv[0] == "duckdb":
            import duckdb

            (sql,) = [a for i, a in enumerate(argv) if argv[i - 1] == "-c"]
            assert dict(duckdb.sql(sql).fetchall()) == {"ok": 2}
        else:
            assert cli.main(argv[1:]) == 0, shlex.join(argv)
    assert Path("eval/html/index.html").is_file() and "dipflow" in Path("results.md").read_text()
