"""Outputs land where the user asked, on every node: local paths are made absolute where the command (or the flow)
starts, and refused on a cluster of several nodes unless declared shared (issue 26)."""

from __future__ import annotations

import json
import os

import pytest

from pipelines import cli, storage
from pipelines.reporting import reports

FAST = ["--preset", "fast", "--iterations", "2", "--channels", "4", "--quiet"]


def test_local_paths_are_made_absolute_in_the_form_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = os.getcwd()
    assert storage.absolute("out/") == f"{here}/out"
    assert storage.absolute("a/../b") == f"{here}/b"
    assert storage.absolute("file://out") == f"file://{here}/out"
    assert storage.absolute("/data/x") == "/data/x"
    for url in ("s3://bucket/out", "memory://out", "https://h/x", "simplecache::s3://b/x"):
        assert storage.absolute(url) == url and not storage.is_local(url)


def test_the_cli_hands_the_flows_absolute_paths_and_the_dataset_name_as_given(tmp_path, monkeypatch):
    seen: dict = {}

    def flow(name, args, **params):
        seen[name] = params
        return {"run_id": "r", "summary": [], "ok": 0, "error": 0, "skipped": 0, "failures": [], "not_images": 0}

    monkeypatch.setattr(cli, "_run_flow", flow)
    monkeypatch.chdir(tmp_path)
    restore = ["restore", "photos", "-o", "out", "--mask-dir", "masks", "--task", "inpaint", "--json", "--quiet"]
    assert cli.main(restore) == 0
    given = seen["restore_dataset"]
    selection = given["selection"]
    assert (given["source"], given["output"], selection.mask_dir) == tuple(str(tmp_path / n) for n in restore[1:6:2])
    assert selection.dataset == "photos"  # the dataset is named as before: resume finds earlier runs' rows
    assert cli.main(["evaluate", "set5", "clean", "--data-root", "data", "-o", "eval", "--json", "--quiet"]) == 0
    given = seen["evaluate"]
    assert (given["data_root"], given["output"]) == (str(tmp_path / "data"), str(tmp_path / "eval"))
    assert given["benchmarks"] == ["set5", "clean"]  # a folder's name is its dataset's; the flow resolves it


def test_a_flow_given_relative_paths_resolves_them_itself(prefect_harness, tmp_path, write_images, monkeypatch):
    """A deployment's parameters reach the flow as written; the flow resolves them against its working directory
    (a Prefect worker's: DIPFLOW_HOME)."""
    from pipelines import flows
    from pipelines.reporting import runs

    write_images(str(tmp_path / "photos"), ["a.png"], size=16)
    monkeypatch.chdir(tmp_path)
    summary = flows.restore_dataset(
        source="photos",
        output="out",
        settings={"task": "denoise", "preset": "fast", "iterations": 2, "channels": 4},
        execution={"executor": "inline"},
    )
    out = tmp_path / "out"
    assert summary["output"] == str(out) and (out / "a.png").is_file()
    row = reports.read_report(str(out)).to_pylist()[0]
    assert (row["output_uri"], row["dataset"]) == (str(out / "a.png"), "photos")
    assert runs.read_runs(str(out)).column("source").to_pylist() == [str(tmp_path / "photos")]


def test_relative_paths_land_under_the_commands_directory_not_the_workers(
    ray_local, prefect_harness, tmp_path, write_images, monkeypatch, capsys
):
    """The shared Ray instance's workers started in another directory: a relative output used to land there."""
    write_images(str(tmp_path / "photos"), ["a.png", "sub/b.png"], size=16)
    monkeypatch.chdir(tmp_path)
    argv = ["restore", "photos", "-o", "out", "--task", "denoise", "--json", *FAST]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    out = tmp_path / "out"
    assert (out / "a.png").is_file() and (out / "sub" / "b.png").is_file()
    assert summary["ok"] == 2 and summary["output"] == str(out)
    rows = reports.read_report(str(out)).to_pylist()
    assert sorted(r["output_uri"] for r in rows) == [str(out / "a.png"), str(out / "sub" / "b.png")]
    assert {r["dataset"] for r in rows} == {"photos"}  # the dataset keeps the name given: resume finds it
    html = (out / "html" / f"run_id={summary['run_id']}" / "index.html").read_text()
    assert "StorageNotFoundError" not in html and html.count('src="thumbs/') == 4  # inputs and outputs read

    assert cli.main(argv) == 0  # again: nothing new
    again = json.loads(capsys.readouterr().out)
    assert (again["ok"], again["skipped"]) == (0, 2)


def test_an_old_report_with_relative_output_uris_still_reads(tmp_path, write_images, monkeypatch, capsys):
    """Reports written before paths were made absolute hold ``out/a.png``: they read, and their page links them."""
    monkeypatch.chdir(tmp_path)
    write_images("out", ["a.png"], size=16)
    row = {
        "run_id": "20240101T000000Z-old000",
        "dataset": "photos",
        "image_key": "a.png",
        "status": "ok",
        "task": "denoise",
        "input_uri": "out/a.png",
        "output_uri": "out/a.png",
    }
    with reports.ReportWriter("out", row["run_id"]) as writer:
        writer.append(row)
    assert cli.main(["report", "out", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == [row["run_id"]]
    assert reports.read_report("out").column("output_uri").to_pylist() == ["out/a.png"]
    assert cli.main(["report", "out", "--html", "page/index.html"]) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert 'href="../out/a.png"' in page and page.count('src="thumbs/') == 2  # read from where it runs


@pytest.mark.slow
def test_local_paths_on_a_cluster_of_two_nodes_are_refused_unless_declared_shared(
    ray_session, prefect_harness, tmp_path, write_images, capsys, test_cluster
):
    """A head and a second node (logical resources only): local paths exit 2 before any worker starts, with one
    line that suggests object storage; --local-paths-shared runs them."""
    ray = ray_session
    ray.shutdown()  # the shared local instance; `ray_local` restarts it for any later test
    store = 80 * 1024 * 1024
    cluster = test_cluster(num_cpus=1, object_store_memory=store)
    try:
        cluster.add_node(num_cpus=1, object_store_memory=store)
        ray.init(address=cluster.address, logging_level=30, log_to_driver=False)
        cluster.wait_for_nodes()
        write_images(str(tmp_path / "src"), ["a.png", "b.png"], size=16)
        out = tmp_path / "out"
        argv = ["restore", str(tmp_path / "src"), "-o", str(out), "--task", "denoise", "--ray-address"]
        argv += [cluster.address, "--workers", "1", "--json", *FAST]

        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("dipflow: error: ")
        assert "has 2 nodes" in err and "s3://" in err and "--local-paths-shared" in err
        assert not out.exists()  # refused before the lease: nothing written
        # the flow itself (a Prefect deployment's run, which no CLI checked first) refuses them as early
        from pipelines import errors, flows
        from pipelines.execution.options import Execution

        with pytest.raises(errors.LocalPathError, match="has 2 nodes"):
            flows.restore_dataset(
                str(tmp_path / "src"), str(out), {"task": "denoise"}, execution=Execution(ray_address=cluster.address)
            )
        assert not out.exists()

        assert cli.main([*argv, "--local-paths-shared"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["ok"] == 2 and sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    finally:
        ray.shutdown()


def test_ray_client_with_a_local_path_is_refused_whatever_its_node_count():
    """Ray Client's driver is not a node of its cluster: its local paths are no worker's (checked without Ray)."""
    from pipelines import errors
    from pipelines.execution.reach import check_local_paths

    with pytest.raises(errors.LocalPathError, match="Ray Client") as exc:
        check_local_paths(["/data/in"], "ray://head:10001", None, shared=False)
    assert exc.value.exit_code == 2 and "/data/in is a local path" in str(exc.value)
    check_local_paths(["/data/in"], "ray://h:10001", None, shared=True)
    check_local_paths([], "ray://head:10001", 4, shared=False)  # object storage only: every node's
    with pytest.raises(errors.LocalPathError, match="has 3 nodes"):
        check_local_paths(["/data/in", "/data/out"], "10.0.0.5:6379", 3, shared=False)
    check_local_paths(["/data/in"], "127.0.0.1:6379", 1, shared=False)  # a head alone
