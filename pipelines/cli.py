"""The ``dipflow`` command: restore a dataset, evaluate on benchmarks, read a report, restore one image, run a demo.

Exit codes: 0 done; 1 an error (one message on stderr; ``DIPFLOW_DEBUG=1`` shows the traceback); 2 a usage error
(one line, before anything is read or any engine starts; or local paths on a Ray cluster of several nodes, said
once Ray is joined, before any worker starts); 3 the run finished but some images failed (they are
listed); 4 the run stopped because another run took over its output's lease (one line names it; the output is
that run's now); 130 interrupted by Ctrl-C (SIGINT), 143 by SIGTERM (run the same command to resume).
torch, Ray and Prefect are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import traceback
from typing import TYPE_CHECKING, Any

from pipelines import cli_options as opts
from pipelines import signals
from pipelines.cli_report import EXIT_FAILED_IMAGES, cmd_report, finish
from pipelines.cli_restore_image import cmd_restore_image
from pipelines.errors import CLIError, PipelineError, UsageError

if TYPE_CHECKING:
    from pipelines.execution.options import Execution

__all__ = ["EXIT_FAILED_IMAGES", "CLIError", "UsageError", "build_parser", "main"]

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 128 + signal.SIGTERM


def build_parser() -> argparse.ArgumentParser:
    from pipelines.evaluation import benchmarks  # the standard library only: --help stays instant
    from pipelines.execution.options import Execution  # pydantic only
    from pipelines.settings import EvaluationSettings, RestoreSettings, Selection

    parser = opts.Parser(
        prog="dipflow",
        description="Dataset-scale image restoration with the Deep Image Prior.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subs = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = opts.subcommand(
        subs,
        "restore",
        "restore every image of a dataset (any fsspec URL) on Ray workers",
        "  dipflow restore photos/ -o restored/ --task denoise --preset fast\n"
        "  dipflow restore s3://bucket/lr -o s3://bucket/sr --task sr --scale 4 --ray-address auto\n"
        "  dipflow restore scans/ -o out/ --task inpaint --glob '**/*.png'   # masks: <name>_mask.png\n",
    )
    p.add_argument("source", metavar="SRC", type=opts.url, help="folder or URL of the images (recursive)")
    opts.add_output_root(p)
    opts.add_flags(p, RestoreSettings)
    opts.add_flags(p, Selection)
    opts.add_run_options(p)
    p.set_defaults(func=cmd_restore)

    p = opts.subcommand(
        subs,
        "evaluate",
        "score restoration on benchmarks with the paper's protocol",
        "  dipflow evaluate set5 set14 --data-root ../shared/data -o eval/            # SR x4, Y-PSNR\n"
        "  dipflow evaluate cbm3d9 heide11 --data-root s3://bench -o s3://bench/eval\n"
        "  dipflow evaluate set5 --data-root data -o smoke/ --preset fast --iterations 50 --crop 64\n",
    )
    p.add_argument(
        "benchmarks",
        nargs="+",
        metavar="BENCHMARK",
        help=f"{benchmarks.describe()}, or a folder URL".replace("%", "%%"),  # argparse formats help with %
    )
    p.add_argument(
        "--data-root",
        default=os.environ.get("DIPFLOW_DATA_ROOT"),
        type=opts.url,
        metavar="URL",
        help="folder holding the benchmark folders (default: $DIPFLOW_DATA_ROOT)",
    )
    opts.add_output_root(p)
    opts.add_flags(p, EvaluationSettings)
    opts.add_run_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = opts.subcommand(
        subs,
        "report",
        "summarise the Parquet reports under output folders, or write the results document",
        "  dipflow report restored/\n  dipflow report eval/ --run-id 20250101T000000Z-abc123 --json\n"
        "  dipflow report eval-a/ eval-b/ --markdown --notes docs/results-notes.md -o docs/results.md\n"
        "  dipflow report s3://bucket/sr --summary-markdown > summary.md\n"
        "  dipflow report eval/ --html eval/html/index.html\n",
    )
    p.add_argument(
        "roots", nargs="+", type=opts.url, metavar="DST", help="output folders or URLs of earlier runs, read together"
    )
    p.add_argument(
        "--run-id", type=opts.run_id, help="one run (default: the latest result of every image over all runs)"
    )
    form = p.add_mutually_exclusive_group()
    form.add_argument(
        "--markdown",
        action="store_true",
        help="print the results document: each benchmark beside the paper, with protocol, settings, "
        "hardware, time per image and the gap (docs/results.md is made this way)",
    )
    form.add_argument(
        "--summary-markdown",
        action="store_true",
        help="print only the summary table as markdown (what a flow run's artifact shows)",
    )
    form.add_argument(
        "--json",
        action="store_true",
        help="print runs, summary, failures and runs_table (each run's counts per dataset) as JSON",
    )
    p.add_argument(
        "-o", "--output", type=opts.url, metavar="PATH", help="with --markdown: write the document to PATH/URL"
    )
    p.add_argument(
        "--notes",
        type=opts.url,
        metavar="FILE",
        help="with --markdown: hand-written markdown appended verbatim (it survives regeneration)",
    )
    p.add_argument(
        "--stopping-study",
        type=opts.url,
        nargs="+",
        metavar="JSONL",
        help="with --markdown: add the stopping study's section from its lines (benchmarks/study_stopping.py --out, "
        "gzipped or not)",
    )
    p.add_argument(
        "--html",
        type=opts.url,
        metavar="PATH",
        help="also write a static HTML report (thumbnails beside it) to PATH/URL",
    )
    opts.add_storage_option(p)
    p.set_defaults(func=cmd_report)

    p = opts.subcommand(
        subs,
        "restore-image",
        "restore one image with dipcore in this process (no Ray, no Prefect)",
        "  dipflow restore-image noisy.png -o clean.png --task denoise --preset fast\n"
        "  dipflow restore-image lr.png -o sr.png --task sr --scale 4 --device cuda\n"
        "  dipflow restore-image kate.png -o out.png --task inpaint --variant text --mask kate_mask.png\n",
    )
    p.add_argument("input", metavar="IN", type=opts.url, help="image file or URL")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=opts.url,
        metavar="OUT",
        help="where the restored image goes; its extension picks the format: .png, .tif/.tiff, .jpg/.jpeg, .webp",
    )
    opts.add_flags(p, RestoreSettings)
    p.add_argument("--mask", type=opts.url, metavar="M", help="inpainting mask (white = known pixel)")
    p.add_argument("--guide", type=opts.url, metavar="G", help="guide image (the flash image for flash_noflash)")
    p.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA when present)")
    opts.add_output_options(p)
    p.set_defaults(func=cmd_restore_image)

    p = opts.subcommand(
        subs,
        "demo",
        "denoise three sample photos through the evaluate flow (local Ray, CPU, ~2 min)",
        "  dipflow demo\n  dipflow demo -o /tmp/demo --iterations 100\n",
    )
    p.add_argument(
        "-o", "--output", default="demo-output", type=opts.url, metavar="DIR", help="folder for it all (./demo-output)"
    )
    p.add_argument("--iterations", type=opts.positive_int, default=500, help="steps per image (default 500)")
    p.add_argument("--size", type=opts.positive_int, default=96, help="side of the sample photos in pixels (96)")
    opts.add_flags(p, Execution, only=("num_workers",))
    p.add_argument("--no-resume", action="store_true", help="redo images a previous demo finished")
    opts.add_output_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    late = _AfterMain() if argv is None else None  # the command line: the process's end is a moment of it too
    code = _main(argv, late)
    if late is not None:
        late.code = code
    return code


def _main(argv: list[str] | None, late: _AfterMain | None) -> int:
    with signals.sigterm_as_interrupt(sigint=True, forward=False) as got:  # before anything else: start-up is one
        try:
            parser = build_parser()  # imports: a signal may land here too (seen at 0.2 s)
            args = parser.parse_args(argv)
            if not hasattr(args, "func"):
                parser.print_help(sys.stderr)
                return 2
            code = args.func(args)
        except UsageError as exc:  # found by a command's checks before it reads or runs anything: as argparse's own
            code = opts.usage_line(str(exc), args.command_prog), 2
        except BaseException as exc:  # one clear message; tracebacks only on request
            if got.first is None and not isinstance(exc, Exception):
                raise
            if got.first is None:
                if os.environ.get("DIPFLOW_DEBUG"):
                    traceback.print_exc()
                code = f"dipflow: error: {_message(exc)}", exc.exit_code if isinstance(exc, PipelineError) else 1
        # Whatever a library made of a signal (Prefect's TerminationSignal, Ray's KeyboardInterrupt, a swallowed
        # one), the signal decides the exit.
        if got.first is not None:
            if late is not None:
                late.said = True
            return _stopped(got.first)
    if isinstance(code, tuple):
        print(code[0], file=sys.stderr)
        return code[1]
    return code


def _stopped(signum: int) -> int:
    """The one line and the exit code of a command stopped by `signum`."""
    how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    print(f"dipflow: {how}; run the same command again to resume", file=sys.stderr)
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


class _AfterMain:
    """After `main` returns, the interpreter still stops Prefect's server and Ray (their atexit hooks: seconds) and
    then tears itself down, resetting signal handlers to the default (death by SIGTERM, no line). A SIGTERM or
    SIGINT after `main` is recorded (the handlers set here are the ones `main`'s own give back), and the last atexit
    hook — registered first, run last — ends the process there: 143 or 130 with the one line (unless `main` said
    it already), else `main`'s own code."""

    def __init__(self) -> None:
        import atexit

        self.received, self.said, self.code = signals.Received(), False, None
        with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda signum, frame: self.received.signals.append(signum))
        atexit.register(self.finish)

    def finish(self) -> None:
        code = self.code
        if self.received.first is not None and not self.said:
            code = _stopped(self.received.first)
        if code is None:  # main did not return (an exception's traceback): the interpreter ends as usual
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


Terminated = signals.Terminated  # SIGTERM as a KeyboardInterrupt (pipelines.signals)


def _message(exc: BaseException) -> str:
    """Errors that say what to do are shown as they are; anything else with its type and where to see more."""
    from pipelines import storage

    known = (PipelineError, ValueError, OSError, *_prefect_parameter_errors())
    name = type(exc).__name__
    if name.islower():  # re.error, socket.timeout …: "error: error: …" says nothing
        name = f"{type(exc).__module__}.{name}"
    text = str(exc).strip() or name
    if isinstance(exc, known):
        return storage.redact(text)
    return storage.redact(f"{name}: {text} (DIPFLOW_DEBUG=1 shows the traceback)")


def _prefect_parameter_errors() -> tuple[type[BaseException], ...]:
    """Prefect's rejection of a flow's parameters (it names each bad one), when Prefect is loaded: unloaded, it cannot
    have raised it, and importing it only to check would cost a second."""
    errors = sys.modules.get("prefect.exceptions")
    return (errors.ParameterTypeError,) if errors is not None else ()


# --------------------------------------------------------------------------------------------------- commands


def _engine_env(args: argparse.Namespace) -> None:
    """Before Prefect is imported: nothing phones home — the ephemeral server that Prefect starts for dipflow sends
    no usage data, and neither does Prefect's client (DO_NOT_TRACK, read when Prefect is imported: without it a
    terminal shows Prefect's telemetry notice and the client reports its first use); a user's own server keeps its
    settings, which the client's environment does not reach. Time for the ephemeral server to start on a busy laptop
    (its default, 20 s, is short for a first start that creates the database); and Prefect's console logs only with
    --verbose — they would tear the progress bar, and a failed flow logs a traceback where the CLI prints one
    message. The logs still reach the Prefect API (and UI) in full. Values set by the user win."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


_URL_PARAMETERS = ("source", "output", "mask_dir", "data_root", "benchmarks", "dataset")


def _run_flow(name: str, args: argparse.Namespace, **params: Any) -> dict[str, Any]:
    """Run a flow of pipelines.flows with a progress bar, keeping secrets out of its parameters (Prefect stores
    them): secret storage options, and credentials inside URLs, which the parameters hold redacted — the real URLs
    and options reach the flow through `flows.storage_credentials`, which Prefect never sees."""
    from pipelines import storage, watchdog

    plain, secret = storage.split_secret_options(opts.storage_options(getattr(args, "storage_option", [])))
    flat = _flat(params)
    given = [flat.get(k) for k in _URL_PARAMETERS]
    given = [u for v in given for u in (v if isinstance(v, list) else [v]) if isinstance(u, str)]
    try:
        urls = storage.url_secrets(given)
    except storage.StorageOptionError as exc:
        raise UsageError(str(exc)) from None
    _check_cluster(params.get("execution"), given, flat)
    watchdog.guard()  # before Prefect's server and Ray start: nothing they start outlives this command
    _engine_env(args)
    from pipelines import flows, progress  # Prefect: only once the command line is known to be good

    sink = progress.RichProgress(enabled=not args.quiet)
    with flows.storage_credentials(secret, urls), progress.reporting(sink):
        return getattr(flows, name)(storage_options=plain or None, **_redacted(params))


def _flat(params: dict[str, Any]) -> dict[str, Any]:
    """The flow's parameters with the selection's fields (mask folder, dataset name) beside the others."""
    selection = params.get("selection")
    return {**params, **(selection.model_dump() if selection is not None else {})}


def _redacted(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with every URL (and dataset name, which may be one) redacted, the selection's too."""
    from pipelines import storage

    def redact(value: Any) -> Any:
        if isinstance(value, list):
            return [storage.redact(v) for v in value]
        return storage.redact(value) if isinstance(value, str) else value

    out = {k: redact(v) if k in _URL_PARAMETERS else v for k, v in params.items()}
    if (selection := params.get("selection")) is not None:
        fields = {k: redact(v) for k, v in selection.model_dump().items() if k in _URL_PARAMETERS}
        out["selection"] = selection.model_copy(update=fields)
    return out


def _paths(params: dict[str, Any]) -> list[str]:
    """The run's source, output, mask and data folders as given (benchmark and dataset names are not paths)."""
    return [u for k in ("source", "output", "mask_dir", "data_root") for u in [params.get(k)] if isinstance(u, str)]


def _check_cluster(execution: Execution | None, urls: list[str], params: dict[str, Any]) -> None:
    """The flow's checks that the Ray cluster answers and can reach the run's local paths, here, before Prefect's
    server starts (tens of seconds): a wrong --ray-address costs its timeout and nothing else. Ray is imported only
    when a cluster is named (memory:// runs in the flow's process: no cluster to ask)."""
    if execution is None or not execution.joins_cluster() or any(u.startswith("memory://") for u in urls):
        return
    from pipelines.execution import workers

    workers.check_run_cluster(execution, _paths(params))


def _run_models(args: argparse.Namespace) -> dict[str, Any]:
    """The flow parameters `restore` and `evaluate` share, from their options: `execution` and `options`."""
    from pipelines.execution.options import Execution
    from pipelines.settings import RunOptions

    return {"execution": opts.from_args(Execution, args), "options": opts.from_args(RunOptions, args)}


def _check_output(output: str, source: str, args: argparse.Namespace, side_inputs: tuple = ()) -> None:
    """The flow's refusal of an output that would overwrite its inputs (`storage.check_output_root`), here, before
    Prefect or Ray starts: a usage error."""
    from pipelines import storage

    try:
        storage.check_output_root(output, source, opts.storage_options(args.storage_option), side_inputs=side_inputs)
    except storage.OutputOverlapError as exc:
        raise UsageError(str(exc)) from None


def _absolute(url: str | None) -> str | None:
    """A local path made absolute here, where the command runs (`storage.absolute`, which the flows apply too):
    Prefect records it so, and Ray workers in other working directories write where the user asked."""
    from pipelines import storage

    if url is None:
        return None
    absolute = storage.absolute(url)
    if absolute != url and _in_job_working_dir() and not url.removeprefix("file://").startswith("~"):
        raise UsageError(
            f"{url} is a relative path, but this Ray job runs in a temporary copy of its --working-dir "
            f"({os.getcwd()}), which Ray deletes: give an absolute path or object storage (s3://…), or submit "
            "without --working-dir to run in the head's working directory"
        )
    return absolute


def _in_job_working_dir() -> bool:
    """Whether this command is a Ray job's entrypoint submitted with ``--working-dir``: Ray runs it in a copy of
    that folder under the head's Ray session and deletes the copy, so relative paths would read and write there."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return bool((job.get("runtime_env") or {}).get("working_dir"))


def cmd_restore(args: argparse.Namespace) -> int:
    from pipelines.settings import RestoreSettings, Selection

    dataset = args.dataset or args.source  # the source as given names the dataset, as the flow's default does
    args.source, args.output, args.mask_dir = _absolute(args.source), _absolute(args.output), _absolute(args.mask_dir)
    settings = opts.from_args(RestoreSettings, args)
    opts.check_run_settings(settings)
    _check_output(args.output, args.source, args, side_inputs=(args.mask_dir,))
    summary = _run_flow(
        "restore_dataset",
        args,
        source=args.source,
        output=args.output,
        settings=settings,
        selection=opts.from_args(Selection, args, dataset=dataset),
        **_run_models(args),
    )
    return finish(summary, args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines import storage
    from pipelines.evaluation.benchmarks import BENCHMARKS
    from pipelines.evaluation.protocols import evaluation_config
    from pipelines.settings import EvaluationSettings

    if not args.data_root and any(b in BENCHMARKS for b in args.benchmarks):
        raise UsageError("where are the benchmarks? pass --data-root URL (or set DIPFLOW_DATA_ROOT)")
    # Folders named as benchmarks stay as given: their last name is the dataset's (the flow makes them absolute).
    args.data_root, args.output = _absolute(args.data_root), _absolute(args.output)
    settings = opts.from_args(EvaluationSettings, args)
    for name in args.benchmarks:
        if name not in BENCHMARKS:
            try:
                opts.url(name)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"argument BENCHMARK: {exc}") from None
        opts.check_settings(lambda name=name: evaluation_config(name, settings))
        _check_output(args.output, storage.join(args.data_root, name) if name in BENCHMARKS else name, args)
    summary = _run_flow(
        "evaluate",
        args,
        benchmarks=args.benchmarks,
        data_root=args.data_root or ".",
        output=args.output,
        settings=settings,
        **_run_models(args),
    )
    return finish(summary, args)


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines import samples
    from pipelines.execution.options import Execution
    from pipelines.settings import EvaluationSettings, RunOptions

    root = Path(args.output).resolve()
    clean = root / "clean"
    samples.write_samples(str(clean), size=args.size)
    summary = _run_flow(
        "evaluate",
        args,
        benchmarks=[str(clean)],
        data_root=str(root),
        output=str(root / "results"),
        settings=EvaluationSettings(task="denoise", preset="fast", iterations=args.iterations),
        execution=opts.from_args(Execution, args),
        options=RunOptions(resume=not args.no_resume),
    )
    code = finish(summary, args)
    if not args.json:
        print(
            f"\nclean samples:    {clean}\nrestored images:  {root / 'results' / 'clean'}\n"
            f"Parquet report:   {summary['report'] or 'none (nothing new)'}\n"
            f"HTML report:      {root / 'results' / 'html' / ('run_id=' + summary['run_id']) / 'index.html'}\n"
            f"see it again:     dipflow report {root / 'results'}"
        )
    return code


if __name__ == "__main__":  # python -m pipelines.cli
    sys.exit(main())
