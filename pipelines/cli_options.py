"""The command line's shared parts: the parser (usage errors on one line), the argparse types that check a value as
it is parsed, the option groups several commands share, and the checks of parsed options that commands repeat.
Light: the standard library at module level (storage, pydantic and dipcore inside the functions), so that building
the parser imports no engine and ``--help`` stays instant."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pipelines.errors import UsageError

# dipcore.TASKS, spelled out so that building the parser does not import torch (a test keeps them equal).
TASKS = ("denoise", "jpeg", "sr", "inpaint", "flash_noflash", "preimage", "reconstruct")


class Parser(argparse.ArgumentParser):
    """argparse's parser with its usage errors on one line, ``dipflow: error: …`` and where to read more; exit 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{usage_line(message, self.prog)}\n")


def usage_line(message: str, prog: str = "dipflow") -> str:
    from pipelines import storage

    return f"dipflow: error: {storage.redact(message)} (see '{prog} --help')"


def whole_number(minimum: int, what: str) -> Callable[[str], int]:
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


positive_int = whole_number(1, "a positive integer")
non_negative_int = whole_number(0, "a whole number ≥ 0")


def positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def url(text: str) -> str:
    """A path or fsspec URL whose protocol is known and installed (nothing is read)."""
    from pipelines import storage

    try:
        storage.check_url(text)
    except storage.StorageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def glob(text: str) -> str:
    from pipelines import storage

    try:
        storage.check_glob(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def suffix(text: str) -> str:
    if not text or "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"must be a non-empty file-name suffix such as _flash, got {text!r}")
    return text


def run_id(text: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(f"not a run id (e.g. 20250101T000000Z-abc123): {text!r}")
    return text


def storage_option(text: str) -> str:
    from pipelines import storage

    try:
        storage.parse_storage_options([text])
    except storage.StorageOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("restoration")
    g.add_argument(
        "--preset",
        choices=("paper", "fast"),
        default="paper",
        help="published settings (default), or a narrow net and a short run for CPUs",
    )
    g.add_argument("--iterations", type=positive_int, help="optimisation steps (default: the preset's)")
    g.add_argument("--channels", type=positive_int, help="channels at every scale of the net (default: preset's)")
    g.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the net's initialisation and input (default 0)"
    )


# restore's --stopping -> dipcore's early_stopping: the task's default, self-validation, the running-variance rule,
# or the preset's fixed count (the paper's loop).
STOPPING = {"default": None, "selfval": "selfval", "variance": True, "off": False}


def add_stopping_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stopping",
        choices=tuple(STOPPING),
        default="default",
        help="when a fit stops without ground truth: the task's default (denoise: selfval; else the preset's fixed "
        "count), selfval (find the count on held-out pixels, then refit), variance (the running-variance rule), "
        "off (the preset's fixed count: the paper's loop)",
    )


def add_execution_options(g: Any, only: tuple[str, ...] | None = None) -> None:
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


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    add_execution_options(g)
    g.add_argument("--no-resume", action="store_true", help="restore every image, even those done by earlier runs")
    g.add_argument("--limit", type=positive_int, metavar="N", help="only the first N images (by key) of each dataset")
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
        type=positive_float,
        metavar="SECONDS",
        help="a lease without heartbeat for this long is taken over (default 600)",
    )
    add_storage_option(g)
    add_output_options(p)


def add_storage_option(g: Any) -> None:
    g.add_argument(
        "--storage-option",
        action="append",
        default=[],
        type=storage_option,
        metavar="KEY=VALUE",
        help="fsspec storage option, repeatable; dotted keys nest (client_kwargs.endpoint_url=…). "
        "Secret-looking ones (key, secret, token …) never become Prefect parameters",
    )


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="show Prefect's and Ray's INFO logs")


def subcommand(subs: Any, name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
    p = subs.add_parser(  # the parser class is the top parser's: Parser
        name,
        help=help_,
        description=help_,
        epilog="examples:\n" + epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(command_prog=p.prog)  # where a UsageError found later points for help
    return p


def storage_options(pairs: list[str]) -> dict:
    """The --storage-option pairs as fsspec's nested options; pairs that do not nest together are a usage error."""
    from pipelines import storage

    try:
        return storage.parse_storage_options(pairs)
    except storage.StorageOptionError as exc:  # options that do not nest together (a.b=1 and a=2)
        raise UsageError(str(exc)) from None


def check_settings(make_config: Callable[[], Any]) -> None:
    """The run's settings resolved as the flow will resolve them (task, scale, variant, preset, overrides …), here,
    before Ray or Prefect starts: a bad combination is a usage error. Imports torch (dipcore), not the engines."""
    from dipcore import ConfigError

    try:
        make_config()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """The preset overrides the model options ask for (None: none)."""
    return {"channels": args.channels} if args.channels else None


def restore_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of a command with the restore options (`restore`, `restore-image`), as the keywords
    `jobs.run_config` and `dipcore.restore` share; the preset overrides apart (`overrides`)."""
    return {
        "task": args.task,
        "scale": args.scale,
        "variant": args.variant,
        "preset": args.preset,
        "iterations": args.iterations,
        "early_stopping": STOPPING[args.stopping],
        "seed": args.seed,
    }


def check_run_settings(args: argparse.Namespace) -> None:
    """`check_settings` of a command with the restore options, resolved by `jobs.run_config` as a run resolves them."""
    from pipelines import jobs

    check_settings(lambda: jobs.run_config(**restore_settings(args), overrides=overrides(args)))
