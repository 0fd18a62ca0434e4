"""What a scheduled run costs at dataset scale: what is new, not what was ever done (issue 12; figures, not a test).

1. End to end: the ``restore_dataset`` flow (Prefect's ephemeral mode; ``--executor inline`` by default: the fits run
   in the flow's own process, ``ray``: on a private local Ray started by the run) over tiny 16×16 PNGs — the denoise
   task, preset "fast", 1 iteration, an 8-channel net, so that a fit costs almost nothing and the data plane shows —
   on local files at each of ``--images`` and on a moto S3 server on 127.0.0.1 at each of ``--s3-images``. For each:
   a first run, a run with nothing new, and a run after 1 % new images were added (spread evenly over the folders).
   Each run is its own process: Prefect's temporary server is started there first (a flow that does nothing, then a
   2-image run to import and warm up torch and dipcore), and only then the timed flow call. Per run: wall time of the
   call; the first job's dispatch from the runs table (``seconds_to_first_dispatch``, from the run's start) and from
   the call (with Prefect's overhead: the first ``Restorer.run_batch`` with ``inline``, the runs table's start +
   dispatch with ``ray``); the listing's end; images restored and found done; time spent in the workers'
   ``run_batch`` (read, decode, fit, encode, write) and the rest; files and bytes the run wrote under the output root
   (new or changed files, from ``fs.find`` before and after); the driver's RSS before the call and its peak during it
   (its high-water mark reset just before the call; with ``inline`` the fits are in that process, with ``ray`` they
   are not; Prefect's server is a process of its own, not counted).
2. Planning and resume alone, no fits, at each of ``--objects`` listed objects: a local tree of empty ``.png`` files,
   ``--per-folder`` a folder, and a done-state written through ``state.StateWriter`` with the fingerprints the listing
   gives, as earlier runs would have left it — one merged file of every key, the same keys as 10 runs' files not yet
   merged, and one merged file missing 1 % of the keys (every 100th). For each, in a process of its own: the whole
   ``storage.iter_listing``, ``state.DoneState.load``, ``jobs.plan_stream`` consumed to its end (listing included:
   nothing to yield when all is done, the missing 1 % otherwise), the time from the load's start to the first job
   yielded, and the process's peak RSS (torch is imported: ``jobs.restore_config`` resolves the preset).

Each table carries its targets (issue 12) as pass/fail columns. Scratch data lives in a temporary folder
(``--workdir``), removed at the end unless ``--keep``.

Run (the full measurement; takes long, see benchmarks/RESULTS.md):
``PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py --images 1000,10000 --s3-images 10000
--objects 100000,1000000 --json benchmarks/results/<date>-scale.json``; a quick check:
``… --images 200 --s3-images 200 --objects 20000 --per-folder 50``. ``--sections e2e`` or ``plan`` runs one part.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 16
SETTINGS = {"preset": "fast", "iterations": 1, "channels": 8}
DATASET = "bench"  # the planning section's dataset name (the flow's is its source URL)
NEW_SHARE = 100  # 1 % new: one image in NEW_SHARE
RESULT = "BENCH-RESULT "  # how a child process hands its figures back, on one stdout line
STATE_FLUSH = 100_000  # rows per state file while preparing the done-state

# Targets of issue 12.
NOTHING_NEW_SECONDS, NOTHING_NEW_FILES, NOTHING_NEW_BYTES = 30.0, 5, 1_000_000
FIRST_JOB_SECONDS = 10.0
NEW_OVERHEAD_FACTOR = 2.0  # a 1 %-new run's time beyond its fits, against the nothing-new run's
PEAK_RSS_MB = 1024.0
FLAT_RSS = 1.10  # peak RSS with 10 runs' state files at most this much above the merged state's


# ------------------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def rss_now_mb() -> float | None:
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ≥ 4.0: ``5`` to ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(reset: bool) -> float:
    """The peak RSS since `reset_peak_rss` (VmHWM) when it worked, else since the process started (ru_maxrss)."""
    hwm = _status_mb("VmHWM") if reset else None
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------------ images


def png(rng: np.random.Generator) -> bytes:
    """A distinct 16×16 RGB PNG (random pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "RGB").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def image_keys(n: int, per_folder: int) -> list[str]:
    return [f"d{i // per_folder:04d}/img{i:07d}.png" for i in range(n)]


def new_keys(n: int, per_folder: int) -> list[str]:
    """1 % of `n` (at least one) new images, spread evenly over the folders of `image_keys(n)`."""
    folders, k = -(-n // per_folder), max(1, n // NEW_SHARE)
    return [f"d{j * folders // k:04d}/new{j:07d}.png" for j in range(k)]


class Store:
    """Where a scenario's files go: a local folder, or a prefix on the moto S3 server."""

    def __init__(self, root: str, storage_options: dict | None) -> None:
        self.root, self.so = root.rstrip("/"), storage_options

    @property
    def s3(self) -> bool:
        return self.root.startswith("s3://")

    def url(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def fs(self) -> Any:
        """A fresh filesystem (no listing cache carried over from an earlier snapshot)."""
        if self.s3:
            import s3fs

            return s3fs.S3FileSystem(skip_instance_cache=True, **self.so)
        import fsspec

        return fsspec.filesystem("file")

    def write(self, folder: str, keys: list[str], seed: int) -> None:
        rng = np.random.default_rng(seed)
        files = {self.url(folder, key): png(rng) for key in keys}
        if self.s3:
            self.fs().pipe({u.removeprefix("s3://"): data for u, data in files.items()})
            return
        for uri, data in files.items():
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            Path(uri).write_bytes(data)

    def snapshot(self, folder: str) -> dict[str, tuple]:
        """name → what says the file changed (size and ETag or mtime and inode) of every file under `folder`."""
        fs, path = self.fs(), self.url(folder).removeprefix("s3://")
        if not fs.exists(path):
            return {}
        found = fs.find(path, detail=True)
        keys = ("ETag",) if self.s3 else ("mtime", "ino")
        return {name: (info.get("size"), *(info.get(k) for k in keys)) for name, info in found.items()}


def written(before: dict[str, tuple], after: dict[str, tuple]) -> tuple[int, int]:
    """(files, bytes) new or changed from `before` to `after`."""
    changed = [name for name, sig in after.items() if before.get(name) != sig]
    return len(changed), sum(int(after[name][0] or 0) for name in changed)


# ------------------------------------------------------------------------------------------------ child processes


def run_child(kind: str, spec: dict[str, Any], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `kind`'s child function on `spec` in a fresh interpreter; its figures (its output goes to `log`)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    with open(log, "a") as out:
        out.write(f"\n$ {kind} {json.dumps(spec)}\n")
        out.flush()
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=out, text=True, env=env, check=False)
        out.write(done.stdout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{kind} child failed (exit {done.returncode}); last lines of {log}:\n{tail}")
    return json.loads(lines[-1][len(RESULT) :])


@contextlib.contextmanager
def _credentials(so: dict | None) -> Iterator[None]:
    from pipelines import flows

    with flows.storage_credentials(so) if so else contextlib.nullcontext():
        yield


def child_flow_run(spec: dict[str, Any]) -> dict[str, Any]:
    """One timed ``restore_dataset`` call, after Prefect's start and a warm-up run (see the module)."""
    from prefect import flow

    from pipelines import flows
    from pipelines.execution import restorer, workers
    from pipelines.reporting import reports, runs

    so, execution = spec["storage_options"], {"executor": spec["executor"]}
    settings = {"task": "denoise", **SETTINGS}

    @flow(name="bench-noop")
    def noop() -> None:
        return None

    t = time.monotonic()
    noop()  # the first flow call starts Prefect's temporary server
    prefect_start = time.monotonic() - t
    t = time.monotonic()
    with _credentials(so):
        flows.restore_dataset(spec["warm_source"], spec["warm_output"], settings, execution=execution)
    warm_up = time.monotonic() - t

    batches = {"first": None, "seconds": 0.0}
    original_run_batch = restorer.Restorer.run_batch

    def run_batch(self: Any, jobs: list, pack: Any = "auto") -> list:
        started = time.monotonic()
        batches["first"] = batches["first"] or started
        try:
            return original_run_batch(self, jobs, pack)
        finally:
            batches["seconds"] += time.monotonic() - started

    actors: list[int] = []
    original_for_cluster = workers.WorkerPool.for_cluster.__func__

    def for_cluster(cls: Any, *args: Any, **kwargs: Any) -> Any:
        pool = original_for_cluster(cls, *args, **kwargs)
        actors.append(len(pool.slots))
        return pool

    restorer.Restorer.run_batch = run_batch  # in this process: the inline executor's fits
    workers.WorkerPool.for_cluster = classmethod(for_cluster)  # the Ray path's actor count

    rss_before, reset = rss_now_mb(), reset_peak_rss()
    called_at = datetime.now(UTC)
    t = time.monotonic()
    with _credentials(so):
        summary = flows.restore_dataset(spec["source"], spec["output"], settings, execution=execution)
    wall = time.monotonic() - t
    peak = peak_rss_mb(reset)

    run_id = summary["run_id"]
    row = runs.read_runs(spec["output"], so, run_id=run_id).to_pylist()[0]
    start_offset = (row["started_at"] - called_at).total_seconds()  # the call's own start-up before the run's clock
    first_dispatch = row["seconds_to_first_dispatch"]
    if batches["first"] is not None:
        first_from_call = batches["first"] - t
    elif first_dispatch is not None:
        first_from_call = start_offset + first_dispatch
    else:
        first_from_call = None
    rows = reports.read_report(spec["output"], so, run_id=run_id, columns=["status", "wall_seconds"])
    rows_seconds = float(sum(s or 0.0 for s in rows.column("wall_seconds").to_pylist()))
    if spec["executor"] == "inline":
        worker_seconds = batches["seconds"]  # serial, in this process: the exact time of the fits' calls
    else:
        worker_seconds = rows_seconds / max(1, actors[0] if actors else 1)  # as if the actors ran perfectly parallel
    return {
        "run_id": run_id,
        "prefect_start_s": prefect_start,
        "warm_up_s": warm_up,
        "wall_s": wall,
        "run_seconds": row["seconds"],
        "start_offset_s": start_offset,
        "first_dispatch_s": first_dispatch,
        "first_from_call_s": first_from_call,
        "listing_s": row["seconds_listing"],
        "listed": row["listed"],
        "ok": row["ok"],
        "errors": row["errors"],
        "done_earlier": row["done_earlier"],
        "report_rows": rows.num_rows,
        "rows_wall_s": rows_seconds,
        "actors": actors[0] if actors else None,
        "worker_s": worker_seconds,
        "beyond_s": wall - worker_seconds,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "peak_rss_since": "call" if reset else "process start",
    }


def child_planning(spec: dict[str, Any]) -> dict[str, Any]:
    """Listing, state load and planning of one prepared tree and done-state, no fits (see the module)."""
    from pipelines import jobs, storage
    from pipelines.reporting import state
    from pipelines.settings import RestoreSettings

    config = jobs.restore_config(RestoreSettings(task="denoise", **SETTINGS))
    # VmHWM, not ru_maxrss: Linux carries a spawning parent's peak into the child's ru_maxrss across exec (the first
    # run at 10⁶ objects read the parent's 1.6 GB, the state writer's, as this process's import peak).
    rss_base, import_peak = (
        rss_now_mb(),
        _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    source, output = spec["source"], spec["output"]
    peaks = {}  # step → its peak RSS

    reset = reset_peak_rss()
    t = time.monotonic()
    listed = sum(len(chunk.images) for chunk in storage.iter_listing(source))
    listing = time.monotonic() - t
    peaks["listing"] = peak_rss_mb(reset)

    reset = reset_peak_rss()
    t = time.monotonic()
    done = state.DoneState.load(output, None, [(DATASET, config.config_hash)])
    load = time.monotonic() - t
    peaks["load"] = peak_rss_mb(reset)
    reset = reset_peak_rss()

    plan = jobs.Plan(dataset=DATASET, config=config, output=output)
    rejected: list[dict] = []
    first, count, t_plan = None, 0, time.monotonic()
    for _job in jobs.plan_stream(
        storage.iter_listing(source), plan, run_id="bench", done=done, record=rejected.append, adopt=rejected.append
    ):
        first = first or time.monotonic()
        count += 1
    planning = time.monotonic() - t_plan
    peaks["plan"] = peak_rss_mb(reset)
    assert not rejected, rejected[:3]
    return {
        "listed": listed,
        "listing_s": listing,
        "state_files": done.files_read,
        "state_rows": len(done),
        "load_s": load,
        "plan_s": planning,
        "jobs": count,
        "done_earlier": plan.done_earlier,
        "first_job_s": load + (first - t_plan) if first is not None else None,  # from the load's start
        "rss_base_mb": rss_base,
        "import_peak_rss_mb": import_peak,
        "work_peak_rss_mb": max(peaks.values()),  # listing, load and planning
        "peak_rss_mb": max(import_peak, *peaks.values()),  # the process's, imports included
        "peak_rss_by_step_mb": peaks,
    }


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"flow": child_flow_run, "plan": child_planning}


# ------------------------------------------------------------------------------------------------ end to end


def e2e_scenario(store: Store, n: int, args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    """First run, nothing new, 1 % new: `n` images under `store`, one process per run."""
    label = "s3 (moto)" if store.s3 else "local"
    base = f"e2e-{n}"
    store.write(f"{base}/src", image_keys(n, args.per_folder), seed=n)
    source, output = store.url(base, "src"), store.url(base, "out")
    results = []
    for name in ("first run", "nothing new", "1 % new"):
        added = 0
        if name == "1 % new":
            keys = new_keys(n, args.per_folder)
            store.write(f"{base}/src", keys, seed=n + 1)
            added = len(keys)
        spec = {
            "source": source,
            "output": output,
            "warm_source": store.url("warm", "src"),
            "warm_output": store.url("warm", f"out-{uuid.uuid4().hex[:8]}"),
            "storage_options": store.so,
            "executor": args.executor,
        }
        before = store.snapshot(f"{base}/out")
        r = run_child("flow", spec, args.log, env)
        files, nbytes = written(before, store.snapshot(f"{base}/out"))
        r.update(storage=label, images=n, run=name, added=added, files_written=files, bytes_written=nbytes)
        results.append(r)
        print(f"  {label} {n:,} images, {name}: {r['wall_s']:.1f} s", file=sys.stderr, flush=True)
    return results


def e2e_checks(results: list[dict[str, Any]]) -> None:
    """Add the targets' pass/fail to each run's figures (`check_*` keys)."""
    nothing = {(r["storage"], r["images"]): r for r in results if r["run"] == "nothing new"}
    for r in results:
        if r["run"] != "nothing new" and r["first_from_call_s"] is not None:
            r["check_first_job"] = r["first_from_call_s"] <= FIRST_JOB_SECONDS
        if r["run"] == "nothing new":
            r["check_nothing_new"] = (
                r["ok"] == 0
                and r["done_earlier"] == r["images"]
                and r["wall_s"] <= NOTHING_NEW_SECONDS
                and r["files_written"] <= NOTHING_NEW_FILES
                and r["bytes_written"] <= NOTHING_NEW_BYTES
            )
        if r["run"] == "1 % new" and (base := nothing.get((r["storage"], r["images"]))) is not None:
            r["check_only_new"] = r["ok"] == r["added"] and r["done_earlier"] == r["images"]
            r["check_new_overhead"] = r["beyond_s"] <= NEW_OVERHEAD_FACTOR * base["wall_s"]


def e2e_table(results: list[dict[str, Any]]) -> str:
    def f(x: Any, fmt: str = ".1f") -> str:
        return "–" if x is None else format(x, fmt)

    def ok(r: dict, *names: str) -> str:
        found = [r[n] for n in names if n in r]
        return "–" if not found else ("pass" if all(found) else "FAIL")

    lines = [
        "| storage | images | run | wall s | Prefect start s | first job s (runs table) | first job s (from call) "
        "| listing ended s | restored | done earlier | in workers s | beyond s | files | MB written | RSS before MB "
        "| peak RSS MB | first job ≤ 10 s | nothing new ≤ 30 s, ≤ 5 files, ≤ 1 MB | only the new ones, ≤ 2× |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['storage']} | {r['images']:,} | {r['run']} | {f(r['wall_s'])} | {f(r['prefect_start_s'])} "
            f"| {f(r['first_dispatch_s'], '.2f')} | {f(r['first_from_call_s'], '.2f')} | {f(r['listing_s'], '.2f')} "
            f"| {r['ok']:,} | {r['done_earlier']:,} | {f(r['worker_s'])} | {f(r['beyond_s'])} "
            f"| {r['files_written']:,} | {r['bytes_written'] / 1e6:.3f} | {f(r['rss_before_mb'], '.0f')} "
            f"| {f(r['peak_rss_mb'], '.0f')} | {ok(r, 'check_first_job')} | {ok(r, 'check_nothing_new')} "
            f"| {ok(r, 'check_only_new', 'check_new_overhead')} |"
        )
    return "\n".join(lines)


def e2e_section(args: argparse.Namespace, work: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    if args.images:
        local = Store(str(work / "local"), None)
        local.write("warm/src", ["a.png", "b.png"], seed=0)
        for n in args.images:
            results += e2e_scenario(local, n, args, env)
    if args.s3_images:
        with moto_server(env) as so:
            s3 = Store("s3://dipflow-bench", so)
            s3.write("warm/src", ["a.png", "b.png"], seed=0)
            for n in args.s3_images:
                results += e2e_scenario(s3, n, args, env)
    e2e_checks(results)
    return results


@contextlib.contextmanager
def moto_server(env: dict[str, str]) -> Iterator[dict]:
    """A moto S3 server on 127.0.0.1 with a bucket ``dipflow-bench``, as tests/conftest.py's ``s3_server``: fake
    credentials in `env` (and this process's environment, for the snapshots); its s3fs storage options."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request on stderr
    fake = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    for target in (env, os.environ):
        target.update(fake)
        for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
            target.pop(name, None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        so = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}, "key": "testing", "secret": "testing"}
        Store("s3://dipflow-bench", so).fs().mkdir("dipflow-bench")
        yield so
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------- planning and resume


def make_tree(root: Path, n: int, per_folder: int) -> None:
    """`n` empty ``.png`` files, `per_folder` a folder: planning never reads them."""
    for i, key in enumerate(image_keys(n, per_folder)):
        if i % per_folder == 0:
            (root / key).parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(root / key, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))


def write_states(source: str, n: int, states: dict[str, str]) -> None:
    """The done-states an earlier run would have left for the `n` images under `source`, with the listing's
    fingerprints, through the project's own writer: ``merged`` (every key, one file), ``ten_runs`` (every key, in 10
    runs' files, not merged) and ``missing`` (every key but each 100th, one file)."""
    from pipelines import jobs, storage
    from pipelines.reporting import state
    from pipelines.settings import RestoreSettings

    config_hash = jobs.restore_config(RestoreSettings(task="denoise", **SETTINGS)).config_hash
    entries = (e for chunk in storage.iter_listing(source) for e in chunk.images)
    merged = state.StateWriter(states["merged"], "prep-merged", None, merge_at=0)
    missing = state.StateWriter(states["missing"], "prep-missing", None, merge_at=0)
    ten = [state.StateWriter(states["ten_runs"], f"prep-run{r}", None) for r in range(10)]
    i = -1
    for i, e in enumerate(entries):
        row = {
            "dataset": DATASET,
            "config_hash": config_hash,
            "image_key": e.key,
            "input_fingerprint": e.fingerprint,
            "input_sha256": f"{i:064x}",
            "output_uri": storage.output_uri(states["merged"], e.key),
        }
        writers = [merged, ten[i * 10 // n]]
        if i % NEW_SHARE != NEW_SHARE // 2:
            writers.append(missing)
        for w in writers:
            w.add(row)
            if len(w.buffer) >= STATE_FLUSH:
                w.flush()
    merged.close()
    missing.close()
    for w in ten:
        w.flush()  # not closed: closing would merge them
    assert i == n - 1, (i, n)


def planning_scenario(n: int, args: argparse.Namespace, work: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    root = work / f"plan-{n}"
    t = time.monotonic()
    make_tree(root / "src", n, args.per_folder)
    states = {name: str(root / name) for name in ("merged", "ten_runs", "missing")}
    write_states(str(root / "src"), n, states)
    print(f"  {n:,} objects: tree and states in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    results = []
    variants = (("merged", "all done, merged"), ("ten_runs", "all done, 10 runs' files"), ("missing", "1 % new"))
    for name, label in variants:
        r = run_child("plan", {"source": str(root / "src"), "output": states[name]}, args.log, env)
        r.update(objects=n, state=label)
        results.append(r)
        print(f"  {n:,} objects, {label}: plan {r['plan_s']:.1f} s", file=sys.stderr, flush=True)
    if not args.keep:
        shutil.rmtree(root)
    return results


def planning_checks(results: list[dict[str, Any]]) -> None:
    merged = {r["objects"]: r for r in results if r["state"] == "all done, merged"}
    for r in results:
        r["check_rss"] = r["peak_rss_mb"] <= PEAK_RSS_MB
        if r["state"] == "1 % new":
            r["check_first_job"] = r["first_job_s"] is not None and r["first_job_s"] <= FIRST_JOB_SECONDS
            r["check_yields_new"] = r["jobs"] == r["objects"] - r["done_earlier"] and r["jobs"] > 0
        elif r["state"] == "all done, 10 runs' files" and (base := merged.get(r["objects"])) is not None:
            r["check_flat"] = r["work_peak_rss_mb"] <= FLAT_RSS * base["work_peak_rss_mb"]
        else:
            r["check_yields_new"] = r["jobs"] == 0


def planning_table(results: list[dict[str, Any]]) -> str:
    def ok(r: dict, name: str) -> str:
        return "–" if name not in r else ("pass" if r[name] else "FAIL")

    lines = [
        "| objects | done-state | state files | iter_listing s | DoneState.load s | plan_stream s (listing incl.) "
        "| jobs yielded | first job s | RSS after imports MB | peak RSS: listing, load, plan MB "
        "| peak RSS, imports incl. MB | first job ≤ 10 s | peak ≤ 1 GB | flat in runs (≤ +10 %) | only the new |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in results:
        first = "–" if r["first_job_s"] is None else f"{r['first_job_s']:.2f}"
        lines.append(
            f"| {r['objects']:,} | {r['state']} | {r['state_files']} | {r['listing_s']:.2f} | {r['load_s']:.2f} "
            f"| {r['plan_s']:.2f} | {r['jobs']:,} | {first} | {r['rss_base_mb']:.0f} "
            f"| {r['work_peak_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {ok(r, 'check_first_job')} "
            f"| {ok(r, 'check_rss')} | {ok(r, 'check_flat')} | {ok(r, 'check_yields_new')} |"
        )
    return "\n".join(lines)


def planning_section(args: argparse.Namespace, work: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    results = []
    for n in args.objects:
        results += planning_scenario(n, args, work, env)
    planning_checks(results)
    return results


# ------------------------------------------------------------------------------------------------------ main


def sizes(text: str) -> list[int]:
    """``"1000,10000"`` → [1000, 10000]; ``""`` → none."""
    values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return values


def child_env(work: Path) -> dict[str, str]:
    """The children's environment: this worktree first on the path, Prefect's home in `work` (its ephemeral
    server's database), no analytics or usage reports."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, [env.get("PYTHONPATH")])])
    env.update(
        PREFECT_HOME=str(work / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RAY_USAGE_STATS_ENABLED="0",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    env.pop("PREFECT_API_URL", None)  # ephemeral mode: each run's process starts its own temporary server
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=sizes, default=sizes("1000,10000"), help="local end-to-end sizes")
    parser.add_argument("--s3-images", type=sizes, default=sizes("10000"), help="S3 (moto) end-to-end sizes")
    parser.add_argument("--objects", type=sizes, default=sizes("100000,1000000"), help="planning-alone sizes")
    parser.add_argument("--per-folder", type=int, default=1000, help="files per folder of every dataset")
    parser.add_argument("--executor", choices=["inline", "ray"], default="inline", help="the end-to-end runs'")
    parser.add_argument("--sections", default="e2e,plan", help="e2e, plan or both (default)")
    parser.add_argument("--workdir", help="where the scratch folder goes (default: the system's temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child
        print(RESULT + json.dumps(CHILDREN[kind](json.loads(spec)), default=str), flush=True)
        return

    sections = {s.strip() for s in args.sections.split(",")}
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    args.log = work / "children.log"
    env = child_env(work)
    command = "PYTHONPATH=. python " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    meta = {
        "command": command,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_start": os.getloadavg()[0],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "executor": args.executor,
        "settings": SETTINGS,
        "image_size": SIZE,
        "per_folder": args.per_folder,
    }
    print(f"{command}\n{meta['cpu']}, {meta['cores']} core(s); load average {meta['load_average_start']:.1f}")
    print(f"(scratch in {work}; each child's output in {args.log})", file=sys.stderr)
    out: dict[str, Any] = {"meta": meta}
    try:
        if "e2e" in sections:
            out["e2e"] = e2e_section(args, work, env)
        if "plan" in sections:
            out["planning"] = planning_section(args, work, env)
    finally:
        meta["load_average_end"] = os.getloadavg()[0]
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if "e2e" in out:
        print(
            f"\n## End to end: restore_dataset, executor {args.executor}, {SIZE}×{SIZE} PNGs, denoise "
            f"{json.dumps(SETTINGS)}; one process per run"
        )
        print(e2e_table(out["e2e"]))
    if "planning" in out:
        print(f"\n## Planning and resume alone (no fits): local tree, {args.per_folder} files a folder")
        print(planning_table(out["planning"]))
    print(f"\nload average at the end {meta['load_average_end']:.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
