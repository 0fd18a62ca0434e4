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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipelines import signals
from pipelines.errors import CLIError, PipelineError, UsageError

if TYPE_CHECKING:
    from pipelines.execution.options import Execution

__all__ = ["CLIError", "UsageError", "build_parser", "main"]

# dipcore.TASKS, spelled out so that building the parser does not import torch (a test keeps them equal).
TASKS = ("denoise", "jpeg", "sr", "inpaint", "flash_noflash", "preimage", "reconstruct")
EXIT_FAILED_IMAGES, EXIT_INTERRUPTED, EXIT_TERMINATED = 3, 130, 128 + signal.SIGTERM


# ------------------------------------------------------------------------------------------- shared options


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its usage errors on one line, ``dipflow: error: …`` and where to read more; exit 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{_usage_line(message, self.prog)}\n")


def _usage_line(message: str, prog: str = "dipflow") -> str:
    from pipelines import storage

    return f"dipflow: error: {storage.redact(message)} (see '{prog} --help')"


def _whole_number(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`; the message says `what` it must be."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


_positive_int = _whole_number(1, "a positive integer")
_non_negative_int = _whole_number(0, "a whole number ≥ 0")


def _positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _url(text: str) -> str:
    """A path or fsspec URL whose protocol is known and installed (nothing is read)."""
    from pipelines import storage

    try:
        storage.check_url(text)
    except storage.StorageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _glob(text: str) -> str:
    from pipelines import storage

    try:
        storage.check_glob(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _suffix(text: str) -> str:
    if not text or "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"must be a non-empty file-name suffix such as _flash, got {text!r}")
    return text


def _run_id(text: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(f"not a run id (e.g. 20250101T000000Z-abc123): {text!r}")
    return text


def _storage_option(text: str) -> str:
    from pipelines import storage

    try:
        storage.parse_storage_options([text])
    except storage.StorageOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("restoration")
    g.add_argument(
        "--preset",
        choices=("paper", "fast"),
        default="paper",
        help="published settings (default), or a narrow net and a short run for CPUs",
    )
    g.add_argument("--iterations", type=_positive_int, help="optimisation steps (default: the preset's)")
    g.add_argument("--channels", type=_positive_int, help="channels at every scale of the net (default: preset's)")
    g.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of the net's initialisation and input (default 0)"
    )


# restore's --stopping -> dipcore's early_stopping: the task's default, self-validation, the running-variance rule,
# or the preset's fixed count (the paper's loop).
STOPPING = {"default": None, "selfval": "selfval", "variance": True, "off": False}


def _add_stopping_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stopping",
        choices=tuple(STOPPING),
        default="default",
        help="when a fit stops without ground truth: the task's default (denoise: selfval; else the preset's fixed "
        "count), selfval (find the count on held-out pixels, then refit), variance (the running-variance rule), "
        "off (the preset's fixed count: the paper's loop)",
    )


def _add_execution_options(g: Any, only: tuple[str, ...] | None = None) -> None:
    """One option per field of `pipelines.execution.options.Execution` (`only` those named): its type and bounds
    parse the text, its description is the help. Left out, a field keeps the model's default."""
    from pipelines.execution import options

    for name, flag, help_ in options.flags():
        if only is not None and name not in only:
            continue
        if options.Execution.model_fields[name].annotation is bool:  # a switch; left out, the model's default
            g.add_argument(flag.name(name), dest=name, action="store_true", default=None, help=help_)
        else:
            g.add_argument(flag.name(name), dest=name, type=_field_parser(name), metavar=flag.metavar, help=help_)


def _field_parser(name: str) -> Callable[[str], Any]:
    """argparse's `type` for field `name`: the model's own validation, its reasons as the usage error."""

    def parse(text: str) -> Any:
        from pydantic import ValidationError

        from pipelines.execution import options

        try:
            return options.parse_field(name, text)
        except ValidationError as exc:
            reasons = "; ".join(dict.fromkeys(e["msg"] for e in exc.errors()))
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {reasons}") from None

    return parse


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    _add_execution_options(g)
    g.add_argument("--no-resume", action="store_true", help="restore every image, even those done by earlier runs")
    g.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N images (by key) of each dataset")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files at the outputs' places that no run into this output wrote (by default they are kept "
        "and their images get error rows)",
    )
    g.add_argument(
        "--break-lease",
        action="store_true",
        help="take over the output's lease from a run known to be dead (one run writes to an output at a time)",
    )
    g.add_argument(
        "--lease-stale-after",
        type=_positive_float,
        metavar="SECONDS",
        help="a lease without heartbeat for this long is taken over (default 600)",
    )
    _add_storage_option(g)
    _add_output_options(p)


def _add_storage_option(g: Any) -> None:
    g.add_argument(
        "--storage-option",
        action="append",
        default=[],
        type=_storage_option,
        metavar="KEY=VALUE",
        help="fsspec storage option, repeatable; dotted keys nest (client_kwargs.endpoint_url=…). "
        "Secret-looking ones (key, secret, token …) never become Prefect parameters",
    )


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="show Prefect's and Ray's INFO logs")


def _sub(subs: Any, name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
    p = subs.add_parser(  # the parser class is the top parser's: _Parser
        name,
        help=help_,
        description=help_,
        epilog="examples:\n" + epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(command_prog=p.prog)  # where a UsageError found later points for help
    return p


def build_parser() -> argparse.ArgumentParser:
    from pipelines.evaluation import benchmarks  # the standard library only: --help stays instant

    parser = _Parser(
        prog="dipflow",
        description="Dataset-scale image restoration with the Deep Image Prior.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subs = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = _sub(
        subs,
        "restore",
        "restore every image of a dataset (any fsspec URL) on Ray workers",
        "  dipflow restore photos/ -o restored/ --task denoise --preset fast\n"
        "  dipflow restore s3://bucket/lr -o s3://bucket/sr --task sr --scale 4 --ray-address auto\n"
        "  dipflow restore scans/ -o out/ --task inpaint --glob '**/*.png'   # masks: <name>_mask.png\n",
    )
    p.add_argument("source", metavar="SRC", type=_url, help="folder or URL of the images (recursive)")
    p.add_argument("-o", "--output", required=True, type=_url, metavar="DST", help="where outputs and the report go")
    p.add_argument("--task", required=True, choices=TASKS, help="what to undo")
    p.add_argument("--scale", type=_positive_int, help="super-resolution factor (sr; default 4)")
    p.add_argument("--variant", help="task variant (inpaint: random|text|large|region; denoise: sigma25|sigma50)")
    p.add_argument("--glob", type=_glob, help="only keys matching this pattern, relative to SRC (e.g. '**/*.jpg')")
    p.add_argument("--mask-dir", type=_url, metavar="URL", help="folder of inpainting masks named like the images")
    p.add_argument(
        "--guide-suffix", type=_suffix, metavar="SUFFIX", help="flash/no-flash: <name><SUFFIX>.png is the guide"
    )
    p.add_argument("--dataset", help="name of the dataset in the report (default: SRC)")
    _add_model_options(p)
    _add_stopping_option(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_restore)

    p = _sub(
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
        type=_url,
        metavar="URL",
        help="folder holding the benchmark folders (default: $DIPFLOW_DATA_ROOT)",
    )
    p.add_argument("-o", "--output", required=True, type=_url, metavar="DST", help="where outputs and the report go")
    p.add_argument("--task", choices=TASKS, help="task for every benchmark (default: each benchmark's own)")
    p.add_argument("--scale", type=_positive_int, help="SR factor (default 4)")
    p.add_argument("--sigma", type=_positive_float, help="denoising noise level in 0-255 units (default 25)")
    p.add_argument("--crop", type=_positive_int, metavar="SIZE", help="centre-crop clean images to SIZE² (smoke runs)")
    g = p.add_argument_group("protocol")
    g.add_argument(
        "--early-stopping",
        choices=("observe", "stop", "off"),
        default="observe",
        help="observe (default): run the full count and record where the no-ground-truth rule would "
        "stop and its PSNR; stop: act on it; off: no rule",
    )
    g.add_argument(
        "--runs",
        type=_positive_int,
        metavar="N",
        help="independent runs averaged per image (default: "
        + "; ".join(f"{b.runs} for {b.name}" for b in benchmarks.BENCHMARKS.values() if b.runs > 1)
        + ", as in the paper; 1 elsewhere)",
    )
    g.add_argument(
        "--no-classical",
        action="store_true",
        help="skip the classical baselines (CBM3D or NLM for denoising, biharmonic for inpainting)",
    )
    _add_model_options(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = _sub(
        subs,
        "report",
        "summarise the Parquet reports under output folders, or write the results document",
        "  dipflow report restored/\n  dipflow report eval/ --run-id 20250101T000000Z-abc123 --json\n"
        "  dipflow report eval-a/ eval-b/ --markdown --notes docs/results-notes.md -o docs/results.md\n"
        "  dipflow report s3://bucket/sr --summary-markdown > summary.md\n"
        "  dipflow report eval/ --html eval/html/index.html\n",
    )
    p.add_argument(
        "roots", nargs="+", type=_url, metavar="DST", help="output folders or URLs of earlier runs, read together"
    )
    p.add_argument("--run-id", type=_run_id, help="one run (default: the latest result of every image over all runs)")
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
    p.add_argument("-o", "--output", type=_url, metavar="PATH", help="with --markdown: write the document to PATH/URL")
    p.add_argument(
        "--notes",
        type=_url,
        metavar="FILE",
        help="with --markdown: hand-written markdown appended verbatim (it survives regeneration)",
    )
    p.add_argument(
        "--stopping-study",
        type=_url,
        nargs="+",
        metavar="JSONL",
        help="with --markdown: add the stopping study's section from its lines (benchmarks/study_stopping.py --out, "
        "gzipped or not)",
    )
    p.add_argument(
        "--html", type=_url, metavar="PATH", help="also write a static HTML report (thumbnails beside it) to PATH/URL"
    )
    _add_storage_option(p)
    p.set_defaults(func=cmd_report)

    p = _sub(
        subs,
        "restore-image",
        "restore one image with dipcore in this process (no Ray, no Prefect)",
        "  dipflow restore-image noisy.png -o clean.png --task denoise --preset fast\n"
        "  dipflow restore-image lr.png -o sr.png --task sr --scale 4 --device cuda\n"
        "  dipflow restore-image kate.png -o out.png --task inpaint --variant text --mask kate_mask.png\n",
    )
    p.add_argument("input", metavar="IN", type=_url, help="image file or URL")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=_url,
        metavar="OUT",
        help="where the restored image goes; its extension picks the format: .png, .tif/.tiff, .jpg/.jpeg, .webp",
    )
    p.add_argument("--task", required=True, choices=TASKS, help="what to undo")
    p.add_argument("--scale", type=_positive_int, help="super-resolution factor (sr; default 4)")
    p.add_argument("--variant", help="task variant (see `dipflow restore --help`)")
    p.add_argument("--mask", type=_url, metavar="M", help="inpainting mask (white = known pixel)")
    p.add_argument("--guide", type=_url, metavar="G", help="guide image (the flash image for flash_noflash)")
    p.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA when present)")
    _add_model_options(p)
    _add_stopping_option(p)
    _add_output_options(p)
    p.set_defaults(func=cmd_restore_image)

    p = _sub(
        subs,
        "demo",
        "denoise three sample photos through the evaluate flow (local Ray, CPU, ~2 min)",
        "  dipflow demo\n  dipflow demo -o /tmp/demo --iterations 100\n",
    )
    p.add_argument(
        "-o", "--output", default="demo-output", type=_url, metavar="DIR", help="folder for it all (./demo-output)"
    )
    p.add_argument("--iterations", type=_positive_int, default=500, help="steps per image (default 500)")
    p.add_argument("--size", type=_positive_int, default=96, help="side of the sample photos in pixels (96)")
    _add_execution_options(p, only=("num_workers",))
    p.add_argument("--no-resume", action="store_true", help="redo images a previous demo finished")
    _add_output_options(p)
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
            code = _usage_line(str(exc), args.command_prog), 2
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


def _storage_options(pairs: list[str]) -> dict:
    from pipelines import storage

    try:
        return storage.parse_storage_options(pairs)
    except storage.StorageOptionError as exc:  # options that do not nest together (a.b=1 and a=2)
        raise UsageError(str(exc)) from None


def _check_settings(make_config: Callable[[], Any]) -> None:
    """The run's settings resolved as the flow will resolve them (task, scale, variant, preset, overrides …), here,
    before Ray or Prefect starts: a bad combination is a usage error. Imports torch (dipcore), not the engines."""
    from dipcore import ConfigError

    try:
        make_config()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


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

    plain, secret = storage.split_secret_options(_storage_options(getattr(args, "storage_option", [])))
    given = [params.get(k) for k in _URL_PARAMETERS]
    given = [u for v in given for u in (v if isinstance(v, list) else [v]) if isinstance(u, str)]
    try:
        urls = storage.url_secrets(given)
    except storage.StorageOptionError as exc:
        raise UsageError(str(exc)) from None
    _check_cluster(params.get("execution"), given, params)
    watchdog.guard()  # before Prefect's server and Ray start: nothing they start outlives this command
    _engine_env(args)
    from pipelines import flows, progress  # Prefect: only once the command line is known to be good

    for k in _URL_PARAMETERS:
        if isinstance(params.get(k), str):
            params[k] = storage.redact(params[k])
        elif isinstance(params.get(k), list):
            params[k] = [storage.redact(v) for v in params[k]]
    sink = progress.RichProgress(enabled=not args.quiet)
    with flows.storage_credentials(secret, urls), progress.reporting(sink):
        return getattr(flows, name)(storage_options=plain or None, **params)


def _paths(params: dict[str, Any]) -> list[str]:
    """The run's source, output, mask and data folders as given (benchmark and dataset names are not paths)."""
    return [u for k in ("source", "output", "mask_dir", "data_root") for u in [params.get(k)] if isinstance(u, str)]


def _check_cluster(execution: Execution | None, urls: list[str], params: dict[str, Any]) -> None:
    """The flow's checks that the Ray cluster answers and can reach the run's local paths, here, before Prefect's
    server starts (tens of seconds): a wrong --ray-address costs its timeout and nothing else. Ray is imported only
    when a cluster is named (memory:// runs in the flow's process: no cluster to ask)."""
    if execution is None or execution.ray_address == "local" or any(u.startswith("memory://") for u in urls):
        return
    if execution.ray_address is None and not os.environ.get("RAY_ADDRESS"):
        return
    from pipelines import storage
    from pipelines.execution import reach, workers

    nodes = workers.check_cluster(execution.ray_address, execution.ray_connect_timeout)
    local = [storage.redact(u) for u in dict.fromkeys(_paths(params)) if storage.is_local(u)]
    reach.check_local_paths(local, execution.ray_address, nodes, execution.local_paths_shared)


def _execution(args: argparse.Namespace) -> Execution:
    """The flows' `execution` parameter from the options given (`_add_execution_options`); the rest default."""
    from pipelines.execution.options import Execution

    given = {name: getattr(args, name) for name in Execution.model_fields if getattr(args, name, None) is not None}
    return Execution(**given)


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters `restore` and `evaluate` share: restoration settings, resume, limit, execution, lease."""
    lease = {"break_lease": True} if args.break_lease else {}
    if args.overwrite:
        lease["overwrite"] = True
    if args.lease_stale_after is not None:
        lease["lease_stale_after"] = args.lease_stale_after
    return {
        **lease,
        "resume": not args.no_resume,
        "limit": args.limit,
        "seed": args.seed,
        "preset": args.preset,
        "iterations": args.iterations,
        "overrides": {"channels": args.channels} if args.channels else None,
        "execution": _execution(args),
    }


def _check_output(output: str, source: str, args: argparse.Namespace, side_inputs: tuple = ()) -> None:
    """The flow's refusal of an output that would overwrite its inputs (`storage.check_output_root`), here, before
    Prefect or Ray starts: a usage error."""
    from pipelines import storage

    try:
        storage.check_output_root(output, source, _storage_options(args.storage_option), side_inputs=side_inputs)
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
    from pipelines import jobs

    dataset = args.dataset or args.source  # the source as given names the dataset, as the flow's default does
    args.source, args.output, args.mask_dir = _absolute(args.source), _absolute(args.output), _absolute(args.mask_dir)

    _check_settings(
        lambda: jobs.run_config(
            args.task,
            scale=args.scale,
            variant=args.variant,
            preset=args.preset,
            iterations=args.iterations,
            early_stopping=STOPPING[args.stopping],
            overrides={"channels": args.channels} if args.channels else None,
            seed=args.seed,
        )
    )
    _check_output(args.output, args.source, args, side_inputs=(args.mask_dir,))
    summary = _run_flow(
        "restore_dataset",
        args,
        source=args.source,
        output=args.output,
        task=args.task,
        scale=args.scale,
        variant=args.variant,
        glob=args.glob,
        mask_dir=args.mask_dir,
        guide_suffix=args.guide_suffix,
        dataset=dataset,
        early_stopping=STOPPING[args.stopping],
        **_run_options(args),
    )
    return _finish(summary, args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluation.benchmarks import BENCHMARKS
    from pipelines.evaluation.protocols import evaluation_config

    if not args.data_root and any(b in BENCHMARKS for b in args.benchmarks):
        raise UsageError("where are the benchmarks? pass --data-root URL (or set DIPFLOW_DATA_ROOT)")
    # Folders named as benchmarks stay as given: their last name is the dataset's (the flow makes them absolute).
    args.data_root, args.output = _absolute(args.data_root), _absolute(args.output)
    for name in args.benchmarks:
        if name not in BENCHMARKS:
            try:
                _url(name)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"argument BENCHMARK: {exc}") from None
        _check_settings(
            lambda name=name: evaluation_config(
                name,
                task=args.task,
                scale=args.scale,
                sigma=args.sigma,
                crop=args.crop,
                preset=args.preset,
                iterations=args.iterations,
                overrides={"channels": args.channels} if args.channels else None,
                seed=args.seed,
                early_stopping=args.early_stopping,
                runs=args.runs,
                classical=not args.no_classical,
            )
        )
        from pipelines import storage

        _check_output(args.output, storage.join(args.data_root, name) if name in BENCHMARKS else name, args)
    summary = _run_flow(
        "evaluate",
        args,
        benchmarks=args.benchmarks,
        data_root=args.data_root or ".",
        output=args.output,
        task=args.task,
        scale=args.scale,
        sigma=args.sigma,
        crop=args.crop,
        early_stopping=args.early_stopping,
        runs=args.runs,
        classical=not args.no_classical,
        **_run_options(args),
    )
    return _finish(summary, args)


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines import samples

    root = Path(args.output).resolve()
    clean = root / "clean"
    samples.write_samples(str(clean), size=args.size)
    summary = _run_flow(
        "evaluate",
        args,
        benchmarks=[str(clean)],
        data_root=str(root),
        output=str(root / "results"),
        task="denoise",
        preset="fast",
        iterations=args.iterations,
        resume=not args.no_resume,
        execution=_execution(args),
    )
    code = _finish(summary, args)
    if not args.json:
        print(
            f"\nclean samples:    {clean}\nrestored images:  {root / 'results' / 'clean'}\n"
            f"Parquet report:   {summary['report'] or 'none (nothing new)'}\n"
            f"HTML report:      {root / 'results' / 'html' / ('run_id=' + summary['run_id']) / 'index.html'}\n"
            f"see it again:     dipflow report {root / 'results'}"
        )
    return code


def _finish(summary: dict[str, Any], args: argparse.Namespace) -> int:
    """Print the run's summary (table or JSON) and its failures; exit 3 when any image failed."""
    not_restored = summary.get("not_restored", [])
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_table(summary["summary"], title=f"run {summary['run_id']}")
        earlier = summary["skipped"] - len(not_restored)
        print(
            f"{summary['ok']} ok, {summary['error']} failed, {earlier} done by earlier runs, "
            f"{len(not_restored)} not restored"
            + (f" — report: {summary['report']}" if summary.get("report") else "")
            + (f" — runs table: {summary['runs']}" if not summary.get("report") and summary.get("runs") else "")
        )
    if summary.get("not_images"):  # every file of the source is accounted for, on stderr: stdout stays the result
        shown = summary.get("not_images_shown", [])
        print(f"{summary['not_images']} file(s) were not images:", file=sys.stderr)
        for f in shown:
            print(f"  {f['dataset']}/{f['key']}: {f['reason']}", file=sys.stderr)
        if summary["not_images"] > len(shown):
            print(f"  … and {summary['not_images'] - len(shown)} more (see the flow's log)", file=sys.stderr)
    if summary.get("unlisted_outputs"):  # outputs of deleted or renamed inputs: kept, and said once
        from pipelines.jobs import unlisted_line

        print(unlisted_line(summary["unlisted_outputs"]), file=sys.stderr)
    if not_restored:
        print(f"{len(not_restored)} image(s) not restored (skipped rows in the report):", file=sys.stderr)
        for f in not_restored:
            print(f"  {f['dataset']}/{f['image_key']}: {f['reason']}", file=sys.stderr)
    if summary.get("notes"):  # outputs that could not keep all of their input (the report's notes column)
        print(f"{len(summary['notes'])} output(s) kept less than their input:", file=sys.stderr)
        for f in summary["notes"][:20]:
            print(f"  {f['dataset']}/{f['image_key']}: {f['notes']}", file=sys.stderr)
        if len(summary["notes"]) > 20:
            print(f"  … and {len(summary['notes']) - 20} more (the report's notes column)", file=sys.stderr)
    _print_failures(summary["failures"])
    return EXIT_FAILED_IMAGES if summary["error"] else 0


def _print_failures(failures: list[dict[str, Any]]) -> None:
    if failures:
        print(f"{len(failures)} image(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f['dataset']}/{f['image_key']}: {f['error']}", file=sys.stderr)


def _print_lines(lines: list[str], file: Any) -> None:
    for line in lines:
        print(line, file=file)


def _print_table(records: list[dict[str, Any]], *, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = [
        ("dataset", "dataset", ""),
        ("task", "task", ""),
        ("scale", "scale", ""),
        ("images", "images", ""),
        ("ok", "ok", ""),
        ("errors", "failed", ""),
        ("skipped", "skipped", ""),
        ("psnr", "PSNR dB", ".2f"),
        ("psnr_baseline", "baseline dB", ".2f"),
        ("ssim", "SSIM", ".4f"),
        ("mean_wall_seconds", "s/image", ".1f"),
    ]
    for _, header, _fmt in columns:
        table.add_column(header, justify="left" if header in ("dataset", "task") else "right")
    for r in records:
        table.add_row(*("–" if r.get(k) is None else format(r[k], f) for k, _, f in columns))
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # a pipe gets whole columns


def _read_reports(args: argparse.Namespace, so: dict) -> tuple[Any, list[Any]]:
    """The report rows of every root, read together, and each root's runs table (one run's rows with --run-id). A
    run that found nothing new has runs-table rows only; a root with neither is an error (a mistyped path)."""
    import pyarrow as pa

    from pipelines import storage
    from pipelines.reporting import reports, runs

    tables, summaries = [], []
    for root in args.roots:
        table = reports.read_report(root, so, run_id=args.run_id)
        summary = runs.read_runs(root, so, run_id=args.run_id)  # one small file per run
        if table.num_rows == 0 and summary.num_rows == 0:
            where = storage.redact(storage.join(root, "report"))
            raise CLIError(f"no report rows under {where}" + (f" for run {args.run_id}" if args.run_id else ""))
        tables.append(table)
        summaries.append(summary)
    return pa.concat_tables(tables), summaries


def _regeneration_command(args: argparse.Namespace) -> str:
    """The command line that writes this results document again (storage options left out: they may be secret)."""
    import shlex

    from pipelines import storage

    argv = ["dipflow", "report", *args.roots, "--markdown"]
    for flag, value in (("--run-id", args.run_id), ("--notes", args.notes), ("--output", args.output)):
        argv += [flag, value] if value else []
    argv += ["--stopping-study", *args.stopping_study] if args.stopping_study else []
    command = shlex.join(storage.redact(a) for a in argv)
    return command + (" (plus its --storage-option flags)" if args.storage_option else "")


def _results_document(args: argparse.Namespace, view: Any, so: dict) -> None:
    from pipelines import storage
    from pipelines.reporting import results_doc, stopping_study

    notes = storage.read_bytes(args.notes, so).decode("utf-8") if args.notes else None
    study = [
        row for path in args.stopping_study or () for row in stopping_study.read_lines(storage.read_bytes(path, so))
    ]
    document = results_doc.render(
        view,
        command=_regeneration_command(args),
        sources=[storage.redact(r) for r in args.roots],
        notes=notes,
        notes_source=storage.redact(args.notes) if args.notes else None,
        stopping_study=study,
        stopping_sources=[storage.redact(p) for p in args.stopping_study or ()],
    )
    if args.output:
        storage.write_bytes_atomic(args.output, document.encode("utf-8"), so)
        print(f"results document: {storage.redact(args.output)}", file=sys.stderr)
    else:
        print(document, end="")


def cmd_report(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines.reporting import reports, runs

    if (args.output or args.notes or args.stopping_study) and not args.markdown:
        raise UsageError(
            "--output, --notes and --stopping-study go with --markdown (the results document); add --markdown"
        )
    if args.html and len(args.roots) > 1:
        raise UsageError("--html writes the report of one output folder; pass one DST")
    so = _storage_options(args.storage_option)
    table, summaries = _read_reports(args, so)
    run_rows = pa.concat_tables(summaries)
    run_ids = sorted(set(table.column("run_id").to_pylist()) | set(run_rows.column("run_id").to_pylist()))
    view = table if args.run_id else reports.latest_rows(table)
    failed = view.filter(pc.equal(view.column("status"), "error")).select(["dataset", "image_key", "error"])
    failures = failed.to_pylist()
    # What each run did (the runs table): the run asked for, or the latest of each root — images done by earlier
    # runs are counted there, not rows of the report. Below the table, or on stderr where stdout is a document.
    shown = run_rows if args.run_id else pa.concat_tables([runs.latest_run(t) for t in summaries])
    lines = [f"{'run' if args.run_id else 'last run'} {r['run_id']}, {runs.describe(r)}" for r in shown.to_pylist()]
    if args.json:
        records = {"runs": run_ids, "summary": reports.to_records(reports.summarize(view)), "failures": failures}
        print(json.dumps({**records, "runs_table": reports.to_records(run_rows)}, indent=2))
    elif args.markdown:
        _results_document(args, view, so)
        _print_lines(lines, sys.stderr)
    elif args.summary_markdown:
        print(reports.summary_markdown(view), end="")
        _print_lines(lines, sys.stderr)
    else:
        title = f"run {args.run_id}" if args.run_id else f"latest result of each image over {len(run_ids)} run(s)"
        if view.num_rows:  # a run that found nothing new has no image row: its runs-table lines say what it did
            _print_table(reports.to_records(reports.summarize(view)), title=title)
        _print_lines(lines, sys.stdout)
        _print_failures(failures)
    if args.html:
        from pipelines.reporting import html_report

        written = html_report.write_html_report(args.roots[0], args.html, run_id=args.run_id, storage_options=so)
        print(
            f"HTML report: {written.uri} ({written.rows} images, {written.thumbs_made} new thumbnails)", file=sys.stderr
        )  # stdout stays the table, markdown or JSON
    return 0


def cmd_restore_image(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    import dipcore
    from pipelines import jobs, storage

    try:
        out_format = dipcore.format_for_path(args.output)
    except dipcore.ConfigError as exc:
        raise UsageError(f"argument -o/--output: {exc}") from None
    _check_settings(
        lambda: jobs.run_config(
            args.task,
            scale=args.scale,
            variant=args.variant,
            preset=args.preset,
            iterations=args.iterations,
            early_stopping=STOPPING[args.stopping],
            overrides={"channels": args.channels} if args.channels else None,
            seed=args.seed,
        )
    )
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)
        except RuntimeError as exc:
            raise UsageError(f"argument --device: {exc}") from None
    for what, uri in (("input", args.input), ("mask", args.mask), ("guide", args.guide)):
        if uri is not None and storage.overlap(args.output, uri) == "same":
            raise UsageError(
                f"the output {storage.redact(args.output)} is the {what} itself: the restored image would overwrite "
                "it; write it to another file (-o restored.png)"
            )

    def read(uri: str) -> Any:
        return dipcore.decode_image(storage.read_bytes(uri), name=uri)

    decoded = dipcore.decode_with_info(storage.read_bytes(args.input), name=args.input)
    image = decoded.image
    side = {"mask": read(args.mask) if args.mask else None, "guide": read(args.guide) if args.guide else None}
    overrides = {"channels": args.channels} if args.channels else {}
    # What the bar says in each phase of a self-validated fit (dipcore.selfvalidation); one fit has none.
    held = f"{100 * dipcore.selfvalidation.SELFVAL_HOLDOUT:g} %"
    phases = {"search": f"finding when to stop ({held} of pixels held out)", "refit": "restoring (every pixel)"}
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=args.quiet,
    )
    with bar:
        step = bar.add_task("restoring", total=None, loss="–")

        def on_step(rec: dipcore.StepRecord) -> None:
            what = phases.get(rec.phase, "restoring")
            bar.update(step, description=what, completed=rec.iteration, total=rec.iterations, loss=f"{rec.loss:.5f}")

        res = dipcore.restore(
            image,
            task=args.task,
            scale=args.scale,
            variant=args.variant,
            preset=args.preset,
            iterations=args.iterations,
            seed=args.seed,
            device=args.device,
            early_stopping=STOPPING[args.stopping],
            callback=on_step,
            **side,
            **overrides,
        )
    encoded = dipcore.encode_like(res.image, decoded.info, format=out_format)  # like the input: depth, alpha, ICC
    storage.write_bytes_atomic(args.output, encoded.data)
    if encoded.notes:  # what the output could not keep of the input, on one line
        print(f"dipflow: note: {storage.redact(args.output)}: {'; '.join(encoded.notes)}", file=sys.stderr)
    result = {
        "output": storage.redact(args.output),
        "task": args.task,
        "height": int(res.image.shape[0]),
        "width": int(res.image.shape[1]),
        "iterations_run": res.iterations_run,
        "iteration": res.iteration,
        "stop_reason": res.stop_reason,
        "seconds": round(res.seconds, 3),
        "device": res.device,
        "format": encoded.format,
        "notes": list(encoded.notes),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"wrote {result['output']} ({result['width']}×{result['height']}): {res.iterations_run} iterations "
            f"on {res.device} in {res.seconds:.1f} s (returned iteration {res.iteration}, {res.stop_reason})"
        )
    return 0


if __name__ == "__main__":  # python -m pipelines.cli
    sys.exit(main())
