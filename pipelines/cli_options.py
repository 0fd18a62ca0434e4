"""The command line's shared parts: the parser (usage errors on one line), the argparse types that check a value as
it is parsed, the option groups several commands share, and the checks of parsed options that commands repeat.
Light: the standard library at module level (storage, pydantic and dipcore inside the functions), so that building
the parser imports no engine and ``--help`` stays instant."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pipelines.errors import UsageError


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


def add_flags(p: argparse.ArgumentParser, model: Any, only: tuple[str, ...] | None = None, **groups: Any) -> None:
    """One option per field of the pydantic `model` that carries a `pipelines.fields.Flag` (`only` those named),
    listed under its Flag's group (one argparse group per name, made on first use or taken from `groups`): its type
    and bounds parse the text, its description is the help. A field without a default is a required option; a
    switch flips the field's default. Left out, a field keeps the model's default (`from_args` leaves it out)."""
    from pipelines import fields

    for name, flag, help_ in fields.flags(model):
        if only is not None and name not in only:
            continue
        if flag.group is not None and flag.group not in groups:
            groups[flag.group] = p.add_argument_group(flag.group)
        g = groups[flag.group] if flag.group is not None else p
        field = model.model_fields[name]
        if field.annotation is bool:
            g.add_argument(flag.name(name), dest=name, action="store_const", const=not field.default, help=help_)
            continue
        choices = _choices(field.annotation)
        g.add_argument(
            flag.name(name),
            dest=name,
            type=None if choices else _field_parser(model, name, flag.check),  # argparse names a wrong choice
            choices=choices,
            metavar=None if choices else flag.metavar,
            required=field.is_required(),
            help=help_,
        )


def _choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a Literal annotation (or of an optional one), which argparse lists in the usage; else None."""
    import typing

    if typing.get_origin(annotation) is not typing.Literal:  # an optional Literal: X | None
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else None
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def from_args(model: Any, args: argparse.Namespace, **given: Any) -> Any:
    """`model` from the options `add_flags` made (those given; the rest keep the model's defaults) and `given`."""
    values = {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}
    return model(**{**values, **given})


# Flag.check -> the argparse type run before the model's validation
_CHECKS: dict[str, Callable[[str], str]] = {"url": url, "glob": glob, "suffix": suffix}


def _field_parser(model: Any, name: str, check: str | None) -> Callable[[str], Any]:
    """argparse's `type` for field `name`: the Flag's check, then the model's own validation, its reasons as the
    usage error."""

    def parse(text: str) -> Any:
        from pydantic import ValidationError

        from pipelines import fields

        if check is not None:
            text = _CHECKS[check](text)
        try:
            return fields.parse_field(model, name, text)
        except ValidationError as exc:
            reasons = "; ".join(dict.fromkeys(e["msg"] for e in exc.errors()))
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {reasons}") from None

    return parse


def add_output_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, type=url, metavar="DST", help="where outputs and the report go")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of a command that runs the flows: where and how jobs run (`Execution`), what a run does with
    its output root (`RunOptions`), storage options and the output's form."""
    from pipelines.execution.options import Execution
    from pipelines.settings import RunOptions

    g = p.add_argument_group("execution")
    add_flags(p, Execution, execution=g)
    add_flags(p, RunOptions, execution=g)
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


def check_settings(make_config: Callable[[], Any]) -> Any:
    """The run's settings resolved as the flow will resolve them (task, scale, variant, preset, overrides …), here,
    before Ray or Prefect starts: a bad combination is a usage error. Imports torch (dipcore), not the engines."""
    from dipcore import ConfigError

    try:
        return make_config()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def check_run_settings(settings: Any) -> Any:
    """`check_settings` of a `RestoreSettings`, resolved by `jobs.restore_config` as a run resolves them: the
    `jobs.RunConfig`."""
    from pipelines import jobs

    return check_settings(lambda: jobs.restore_config(settings))
