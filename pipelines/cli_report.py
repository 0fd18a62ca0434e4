"""What the CLI prints of results: a finished run's summary (`restore`, `evaluate`, `demo`: a table or JSON, and
what was not restored, kept less or failed) and the `report` command (the reports under output folders as a table,
JSON, markdown, the results document or an HTML report)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipelines.cli_options import storage_options
from pipelines.errors import CLIError, UsageError

EXIT_FAILED_IMAGES = 3  # the run finished but some images failed


def finish(summary: dict[str, Any], args: argparse.Namespace) -> int:
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
    so = storage_options(args.storage_option)
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
