"""``dipflow restore-image``: one image restored with dipcore in this process (no Ray, no Prefect), a progress bar
on stderr, the output encoded like its input. torch and rich are imported inside the functions: ``--help`` stays
instant."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from pipelines import cli_options as opts
from pipelines.errors import UsageError

if TYPE_CHECKING:
    import dipcore


def cmd_restore_image(args: argparse.Namespace) -> int:
    import dipcore
    from pipelines import storage

    out_format, config = _check(args)

    def read(uri: str) -> Any:
        return dipcore.decode_image(storage.read_bytes(uri), name=uri)

    decoded = dipcore.decode_with_info(storage.read_bytes(args.input), name=args.input)
    side = {"mask": read(args.mask) if args.mask else None, "guide": read(args.guide) if args.guide else None}
    res = _restore(args, config, decoded.image, side)
    encoded = dipcore.encode_like(res.image, decoded.info, format=out_format)  # like the input: depth, alpha, ICC
    storage.write_bytes_atomic(args.output, encoded.data)
    if encoded.notes:  # what the output could not keep of the input, on one line
        print(f"dipflow: note: {storage.redact(args.output)}: {'; '.join(encoded.notes)}", file=sys.stderr)
    _print_result(args, res, encoded)
    return 0


def _check(args: argparse.Namespace) -> tuple[str, Any]:
    """The command's usage errors, before any image is read: the output's format, the settings, the device, and an
    output that is one of the inputs. Returns the format's name and the settings resolved (`jobs.RunConfig`)."""
    import dipcore
    from pipelines import storage
    from pipelines.settings import RestoreSettings

    try:
        out_format = dipcore.format_for_path(args.output)
    except dipcore.ConfigError as exc:
        raise UsageError(f"argument -o/--output: {exc}") from None
    config = opts.check_run_settings(opts.from_args(RestoreSettings, args))
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
    return out_format, config


def _restore(args: argparse.Namespace, config: Any, image: Any, side: dict[str, Any]) -> dipcore.Restoration:
    """The fit, with a progress bar on stderr (none with --quiet) relabelled per phase of a self-validated fit."""
    import dipcore

    # What the bar says in each phase of a self-validated fit (dipcore.selfvalidation); one fit has none.
    held = f"{100 * dipcore.selfvalidation.SELFVAL_HOLDOUT:g} %"
    phases = {"search": f"finding when to stop ({held} of pixels held out)", "refit": "restoring (every pixel)"}
    with _progress_bar(quiet=args.quiet) as bar:
        step = bar.add_task("restoring", total=None, loss="–")

        def on_step(rec: dipcore.StepRecord) -> None:
            what = phases.get(rec.phase, "restoring")
            bar.update(step, description=what, completed=rec.iteration, total=rec.iterations, loss=f"{rec.loss:.5f}")

        return dipcore.restore(
            image,
            task=config.task,
            preset=config.preset,
            seed=config.seed,
            device=args.device,
            callback=on_step,
            **side,
        )


def _progress_bar(*, quiet: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=quiet,
    )


def _print_result(args: argparse.Namespace, res: dipcore.Restoration, encoded: Any) -> None:
    """What was written and how the fit went: one line, or JSON with --json."""
    from pipelines import storage

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
