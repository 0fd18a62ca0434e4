"""Static checks of everything under deploy/ and of prefect.yaml: what can be checked without a cluster.

Kinds and required fields, GPU requests on workers and none on heads, one set of version pins
(deploy/versions.env) agreeing with pyproject.toml, the installed engines, the Dockerfile, the image tags and
`rayVersion`, a non-root image, Ray token authentication on everywhere, no literal credentials, valid cron strings,
and entrypoints that name real flows in pipelines/flows.py (read with `ast`, so a flows module that does not import
yet still gets checked).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
FLOWS = ROOT / "pipelines" / "flows.py"
ENGINES = ("ray", "prefect", "torch")  # pinned in deploy/versions.env, nowhere else


# ------------------------------------------------------------------------------------------------ loading helpers


def _versions() -> dict[str, str]:
    out = {}
    for n, line in enumerate((DEPLOY / "versions.env").read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*=[^\s'\"]+", line), (
            f"versions.env:{n}: not a plain KEY=value line: {line!r}"
        )
        key, value = line.split("=", 1)
        out[key] = value
    return out


VERSIONS = _versions()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements() -> dict[str, Requirement]:
    """pyproject's dependencies and optional dependencies, by normalised name (the first entry wins)."""
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for group in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in group]
    out: dict[str, Requirement] = {}
    for r in reqs:
        out.setdefault(r.name.lower(), r)
    return out


REQUIREMENTS = _requirements()


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))


def _kuberay_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted((DEPLOY / "kuberay").glob("*.yaml")) for d in _yaml_docs(p)]


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(label, RayClusterSpec) of every RayCluster and every RayJob's embedded cluster."""
    out = []
    for path, obj in _kuberay_objects():
        name = obj["metadata"].get("name") or obj["metadata"].get("generateName")
        if obj["kind"] == "RayCluster":
            out.append((f"{path.name}:{name}", obj["spec"]))
        elif obj["kind"] == "RayJob" and "rayClusterSpec" in obj["spec"]:
            out.append((f"{path.name}:{name}", obj["spec"]["rayClusterSpec"]))
    return out


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _installed(name: str) -> Version | None:
    try:
        return Version(Version(metadata.version(name)).public)  # 2.13.0+cpu -> 2.13.0
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------------ version pins


def test_versions_env_has_every_pin():
    for key in (
        "DIPFLOW_VERSION",
        "PYTHON_VERSION",
        "RAY_VERSION",
        "PREFECT_VERSION",
        "TORCH_VERSION",
        "CUDA_BASE_IMAGE",
        "UV_IMAGE",
        "KUBERAY_VERSION",
        "DIPFLOW_IMAGE",
    ):
        assert VERSIONS.get(key), f"deploy/versions.env lacks {key}"
    assert VERSIONS["DIPFLOW_VERSION"] == PYPROJECT["project"]["version"]


@pytest.mark.parametrize("name", ENGINES)
def test_engine_pins_satisfy_pyproject_and_equal_what_ci_installs(name):
    pin = Version(VERSIONS[f"{name.upper()}_VERSION"])
    req = REQUIREMENTS[name]
    assert req.specifier.contains(pin, prereleases=True), f"{name}=={pin} is outside pyproject's {req}"
    installed = _installed(name)
    assert installed is not None, f"{name} is not installed: the pins are checked against the tested versions"
    # Ray refuses a driver of another version, and the e2e test proves these exact versions work together.
    assert installed == pin, f"CI runs {name} {installed} but deploy/versions.env pins {pin}: bump one of them"


def test_python_pin_satisfies_requires_python_and_equals_ci():
    from packaging.specifiers import SpecifierSet

    pin = VERSIONS["PYTHON_VERSION"]
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(pin + ".0")
    assert pin == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_constraints_pin_the_other_direct_dependencies_within_pyproject():
    lines = [ln.strip() for ln in (DEPLOY / "docker" / "constraints.txt").read_text().splitlines()]
    pins = {}
    for line in lines:
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = list(req.specifier)
        assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        pins[req.name.lower()] = Version(spec.version)
    for name, version in pins.items():
        assert name not in ENGINES, f"{name} is pinned in deploy/versions.env; do not pin it twice"
        assert name in REQUIREMENTS, f"constraints.txt pins {name}, which pyproject.toml does not name"
        assert REQUIREMENTS[name].specifier.contains(version), f"{name}=={version} is outside {REQUIREMENTS[name]}"
    required = {Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"]} - set(ENGINES)
    assert required <= set(pins), f"unpinned direct dependencies in the image: {sorted(required - set(pins))}"


def test_pyproject_installs_every_package():
    """The image installs a wheel, not an editable checkout: every folder with an ``__init__.py`` under dipcore/ and
    pipelines/ must be a package that pyproject's find configuration puts into it."""
    from setuptools import find_namespace_packages, find_packages

    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    finder = find_namespace_packages if find.get("namespaces", True) else find_packages
    packaged = set(finder(where=str(ROOT), include=find["include"], exclude=find.get("exclude", ())))
    on_disk = {
        init.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for top in ("dipcore", "pipelines")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert {"pipelines.execution", "pipelines.evaluation", "pipelines.reporting"} <= on_disk
    assert on_disk <= packaged, f"not installed by pyproject.toml: {sorted(on_disk - packaged)}"


def test_pyproject_installs_every_data_file():
    """A file beside the modules that is not Python (the HTML report's template) goes into the wheel only where
    ``[tool.setuptools.package-data]`` names it: each one under dipcore/ and pipelines/ must be matched there."""
    from fnmatch import fnmatch

    data = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    found = []
    for top in ("dipcore", "pipelines"):
        for path in (ROOT / top).rglob("*"):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            package = next(p for p in path.parents if (p / "__init__.py").is_file())
            name = package.relative_to(ROOT).as_posix().replace("/", ".")
            rel = path.relative_to(package).as_posix()
            assert any(fnmatch(rel, g) for g in data.get(name, [])), f"{path.relative_to(ROOT)} is not installed"
            found.append(rel)
    assert "templates/report.html.j2" in found


def _cuda_tag(image: str) -> str:
    major, minor = re.search(r":(\d+)\.(\d+)", image).groups()
    return f"cu{major}{minor}"


def test_image_tag_spells_the_pins():
    image = VERSIONS["DIPFLOW_IMAGE"]
    repo, tag = image.rsplit(":", 1)
    assert "/" in repo and tag != "latest"
    assert tag == (
        f"{VERSIONS['DIPFLOW_VERSION']}-ray{VERSIONS['RAY_VERSION']}"
        f"-py{VERSIONS['PYTHON_VERSION']}-{_cuda_tag(VERSIONS['CUDA_BASE_IMAGE'])}"
    )


# ------------------------------------------------------------------------------------------------ Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    out, buf = [], ""
    for line in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            op, _, rest = buf.strip().partition(" ")
            out.append((op.upper(), rest.strip()))
        buf = ""
    return out


DOCKERFILE = _dockerfile()


def test_dockerfile_base_images_are_the_pinned_ones():
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for op, a in DOCKERFILE if op == "ARG" and "=" in a)
    assert args["CUDA_BASE_IMAGE"] == VERSIONS["CUDA_BASE_IMAGE"]
    assert args["UV_IMAGE"] == VERSIONS["UV_IMAGE"]
    froms = [a for op, a in DOCKERFILE if op == "FROM"]
    assert froms[-1] == "${CUDA_BASE_IMAGE}", "the final stage must be the CUDA image"
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", VERSIONS["CUDA_BASE_IMAGE"])
    assert _cuda_tag(VERSIONS["CUDA_BASE_IMAGE"]) == "cu130", "torch 2.13's PyPI wheels carry CUDA 13.0 libraries"


def test_dockerfile_installs_the_engines_from_versions_env():
    runs = " ".join(a for op, a in DOCKERFILE if op == "RUN")
    assert ". /opt/dipflow/deploy/versions.env" in runs
    for spec in (
        '"torch==${TORCH_VERSION}"',
        '"ray[default]==${RAY_VERSION}"',
        '"prefect==${PREFECT_VERSION}"',
        '"${PYTHON_VERSION}"',
        "constraints.txt",
    ):
        assert spec in runs, f"the Dockerfile does not install {spec}"
    for version in (VERSIONS["RAY_VERSION"], VERSIONS["PREFECT_VERSION"], VERSIONS["TORCH_VERSION"]):
        assert version not in runs, f"{version} is written into the Dockerfile; read it from versions.env"


def test_dockerfile_runs_as_a_non_root_user():
    users = [a for op, a in DOCKERFILE if op == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"final USER is {users[-1]}"
    # Kubernetes can only verify runAsNonRoot for a numeric user.
    assert user.isdigit(), "use a numeric USER so that runAsNonRoot can be enforced"
    run = " ".join(a for op, a in DOCKERFILE if op == "RUN")
    assert f"--uid {user}" in run, "the USER's uid is not created"
    # The cluster launcher places ~/ file_mounts under the image's HOME, /root when the image does not set one.
    homes = [a for op, a in DOCKERFILE if op == "ENV" and a.startswith("HOME=")]
    assert homes and homes[-1] != "HOME=/root"


def _dockerignore_included(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""

    def rx(p: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(p):
            if p.startswith("**", i):
                out += ".*"
                i += 2
            elif p[i] == "*":
                out += "[^/]*"
                i += 1
            elif p[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(p[i])
                i += 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern[1:] if negate else pattern
        if any(rx(p).fullmatch(prefix) for prefix in prefixes):
            included = negate
    return included


def test_dockerfile_copies_exist_and_pass_its_dockerignore():
    ignore = DEPLOY / "docker" / "Dockerfile.dockerignore"
    patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    copies = [a for op, a in DOCKERFILE if op == "COPY" and "--from=" not in a]
    assert copies
    for args in copies:
        sources = [s for s in shlex.split(args)[:-1] if not s.startswith("--")]
        for source in sources:
            matches = list(ROOT.glob(source))
            if "[" in source:  # an optional file (README.m[d])
                continue
            assert matches, f"COPY {source}: no such file in the build context"
            for m in matches:
                files = [m] if m.is_file() else list(m.rglob("*.py"))
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    assert _dockerignore_included(rel, patterns), f"{rel} is copied but excluded by {ignore.name}"
    for secretish in (
        ".venv/bin/python",
        ".git/config",
        ".env",
        "tests/conftest.py",
        "benchmarks/results/x.parquet",
        "deploy/ray/aws-gpu.yaml",
        "home/.ray/auth_token",
    ):
        assert not _dockerignore_included(secretish, patterns), f"{secretish} would enter the build context"


def test_dockerfile_entrypoint_and_driver_script():
    assert any(op == "ENTRYPOINT" and "tini" in a for op, a in DOCKERFILE)
    assert any(op == "CMD" and "dipflow" in a for op, a in DOCKERFILE)
    for script in ("dipflow-ray-driver.sh", "build.sh"):
        path = DEPLOY / "docker" / script
        assert path.stat().st_mode & 0o111, f"{script} is not executable"
        subprocess.run(["bash", "-n", str(path)], check=True)


# ------------------------------------------------------------------------------------------------ KubeRay


def test_kuberay_objects_have_kinds_and_required_fields():
    kinds = {}
    for path, obj in _kuberay_objects():
        assert obj["apiVersion"] == "ray.io/v1", path
        assert obj["kind"] in ("RayCluster", "RayJob"), path
        assert obj["metadata"].get("name") or obj["metadata"].get("generateName"), path
        kinds[obj["kind"]] = obj
        if obj["kind"] == "RayCluster":
            assert {"headGroupSpec", "workerGroupSpecs", "rayVersion"} <= set(obj["spec"]), path
        else:
            assert {"entrypoint", "rayClusterSpec"} <= set(obj["spec"]), path
    assert set(kinds) == {"RayCluster", "RayJob"}


@pytest.mark.parametrize("label,spec", _cluster_specs(), ids=[label for label, _ in _cluster_specs()])
def test_cluster_spec(label, spec):
    assert spec["rayVersion"] == VERSIONS["RAY_VERSION"]
    assert spec.get("authOptions", {}).get("mode") == "token", "Ray token authentication must stay on"
    assert spec["authOptions"].get("secretName"), "the token Secret must be named, so that drivers can mount it"
    assert spec.get("enableInTreeAutoscaling") is True

    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    assert head["rayStartParams"].get("num-gpus") == "0"
    for c in _containers(head["template"]):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            assert not any("gpu" in k for k in res.get(kind, {})), f"{label}: the head requests a GPU"
        assert {"cpu", "memory"} <= set(res.get("requests", {})), f"{label}: head needs CPU/memory requests"

    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        lo, hi, n = g["minReplicas"], g["maxReplicas"], g.get("replicas", g["minReplicas"])
        assert 0 <= lo <= n <= hi and hi > lo, f"{label}/{g['groupName']}: not an autoscaling range"
        (worker,) = g["template"]["spec"]["containers"]
        res = worker["resources"]
        gpus = int(res["limits"]["nvidia.com/gpu"])
        assert gpus >= 1, f"{label}/{g['groupName']}: no GPU limit"
        assert int(res["requests"].get("nvidia.com/gpu", gpus)) == gpus, "GPU requests must equal limits"
        assert any(t.get("key") == "nvidia.com/gpu" for t in g["template"]["spec"].get("tolerations", []))

    for group in [head, *groups]:
        pod = group["template"]["spec"]
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True
        for c in _containers(group["template"]):
            assert c["image"] == VERSIONS["DIPFLOW_IMAGE"], f"{label}: {c['name']} runs {c['image']}"


def test_rayjob_runs_the_dipflow_evaluation():
    (job,) = [o for _, o in _kuberay_objects() if o["kind"] == "RayJob"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["dipflow", "evaluate", "set5", "set14"]
    assert "--data-root" in argv and ("-o" in argv or "--output" in argv)
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    from pipelines import cli  # light: building the parser imports no engine

    # The options and their values must be ones dipflow evaluate accepts (some are built from the Execution model).
    args = cli.build_parser().parse_args(argv[1:])  # a usage error exits 2 and fails the test
    assert args.func is cli.cmd_evaluate


# ------------------------------------------------------------------------------------------------ Ray cluster launcher


def test_cluster_launcher_config_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    (config,) = _yaml_docs(DEPLOY / "ray" / "aws-gpu.yaml")
    jsonschema.validate(config, schema)

    assert config["provider"]["type"] == "aws"
    assert config["docker"]["image"] == VERSIONS["DIPFLOW_IMAGE"]
    assert "--env=RAY_AUTH_MODE=token" in config["docker"]["run_options"], "token auth must be on"
    # The token is copied from the user's machine, never from the repository.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert all(local.startswith("~/") for local in config["file_mounts"].values())

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not re.match(r"(g|p)\d", head["node_config"]["InstanceType"]), "the head needs no GPU instance"
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers
    for t in workers:
        assert re.match(r"(g|p)\d", t["node_config"]["InstanceType"]), "workers are GPU instances"
        assert t["min_workers"] < t["max_workers"] <= config["max_workers"]
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=disabled" not in commands


def test_cluster_nodes_install_nothing_at_start_and_the_image_has_what_they_need():
    """The image runs as uid 1000 over a root-owned /opt/venv: a `pip install` in the launcher's setup commands is
    refused there. What a node needs (Ray's dashboard and Jobs, boto3 for the AWS autoscaler) is the `cluster`
    extra, which the image installs: the pip path and the image are the same software."""
    (config,) = _yaml_docs(DEPLOY / "ray" / "aws-gpu.yaml")
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        for command in config.get(key) or ():
            assert "pip install" not in command and "uv pip" not in command, f"{key}: {command}"
    cluster = {
        Requirement(r).name.lower(): Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["cluster"]
    }
    assert "default" in cluster["ray"].extras and "boto3" in cluster
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for op, a in DOCKERFILE if op == "ARG" and "=" in a)
    assert "cluster" in args["EXTRAS"].split(","), "the image must install dipflow[cluster]"


# ------------------------------------------------------------------------------------------------ Prefect work pools


def _template(name: str) -> dict[str, Any]:
    return json.loads((DEPLOY / "prefect" / f"{name}-base-job-template.json").read_text())


def _render(template: dict[str, Any], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job configuration a worker would build from the template's defaults (no server needed)."""
    from prefect.utilities.templating import apply_values

    props = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    return apply_values(template["job_configuration"], {**defaults, **(values or {})})


@pytest.mark.parametrize("name", ["process", "kubernetes"])
def test_work_pool_template_placeholders_have_variables(name):
    import jsonschema

    template = _template(name)
    jsonschema.Draft7Validator.check_schema(template["variables"])
    text = json.dumps(template["job_configuration"])
    placeholders = set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", text))
    assert placeholders <= set(template["variables"]["properties"]), placeholders - set(
        template["variables"]["properties"]
    )


def test_process_template_keeps_prefects_shape_and_token_mode():
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

    template = _template("process")
    default = ProcessWorker.get_default_base_job_template()
    assert template["job_configuration"] == default["job_configuration"]
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])
    config = ProcessJobConfiguration(**_render(template))
    assert config.env["RAY_AUTH_MODE"] == "token"


def test_kubernetes_template_runs_the_flow_as_a_ray_driver_in_the_cluster():
    job = _render(_template("kubernetes"))["job_manifest"]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == VERSIONS["DIPFLOW_IMAGE"]
    assert c["command"][-1] == "/usr/local/bin/dipflow-ray-driver" and "tini" in c["command"][0]
    # Prefect's own command becomes the args of the driver script (the worker fills it in when it is unset).
    raw = _template("kubernetes")["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert raw["args"] == "{{ command }}"
    env = {e["name"]: e for e in c["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_HEAD_ADDRESS"]["value"].endswith("-head-svc:6379")
    assert "value" not in env["RAY_AUTH_TOKEN"] and env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert not any("gpu" in k for part in c.get("resources", {}).values() for k in part), "the driver needs no GPU"
    # The head Service the driver joins is the one KubeRay creates for the RayCluster.
    (cluster,) = [o for _, o in _kuberay_objects() if o["kind"] == "RayCluster"]
    assert env["RAY_HEAD_ADDRESS"]["value"] == f"{cluster['metadata']['name']}-head-svc:6379"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == cluster["spec"]["authOptions"]["secretName"]


# ------------------------------------------------------------------------------------------------ prefect.yaml


PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())


def _flow_functions() -> dict[str, set[str]]:
    """Functions of pipelines/flows.py decorated with Prefect's @flow, with their parameter names."""
    assert FLOWS.exists(), "pipelines/flows.py does not exist: prefect.yaml's entrypoints point into it"
    tree = ast.parse(FLOWS.read_text())
    out = {}
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            if name == "flow":
                args = node.args
                out[node.name] = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    return out


def _entrypoint_function(entrypoint: str) -> str:
    module, _, func = entrypoint.rpartition(":")
    path = module if module.endswith(".py") else module.replace(".", "/") + ".py"
    assert (ROOT / path).resolve() == FLOWS.resolve(), f"{entrypoint}: dipflow's flows live in pipelines/flows.py"
    return func


def test_prefect_yaml_parses_as_prefects_own_model():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(PREFECT_YAML)
    assert PREFECT_YAML["prefect-version"] == VERSIONS["PREFECT_VERSION"]
    assert {d.name for d in model.deployments} == {"nightly-restoration", "weekly-sr-x4-set5-set14"}
    (step,) = PREFECT_YAML["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $DIPFLOW_HOME }}"


@pytest.mark.parametrize("deployment", PREFECT_YAML["deployments"], ids=lambda d: d["name"])
def test_deployment_entrypoint_and_parameters_match_a_flow(deployment):
    flows = _flow_functions()
    func = _entrypoint_function(deployment["entrypoint"])
    assert func in flows, f"{deployment['entrypoint']}: no @flow function {func!r} in pipelines/flows.py"
    unknown = set(deployment.get("parameters", {})) - flows[func]
    assert not unknown, f"{deployment['name']}: {func}() has no parameters {sorted(unknown)}"
    assert deployment["work_pool"]["name"] == "dipflow-gpu"
    assert deployment.get("description")


@pytest.mark.parametrize("deployment", PREFECT_YAML["deployments"], ids=lambda d: d["name"])
def test_deployment_schedules_are_valid_crons(deployment):
    from prefect.client.schemas.schedules import CronSchedule

    (schedule,) = deployment["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on a bad cron or zone
    assert cron.timezone == "UTC"
    _minute, _hour, dom, month, dow = schedule["cron"].split()
    if deployment["name"] == "nightly-restoration":
        assert (dom, month, dow) == ("*", "*", "*"), "nightly = every day"
    else:
        assert dom == "*" and month == "*" and dow not in ("*",), "weekly = one day of the week"


def test_a_bad_cron_is_rejected_by_the_schedule_model():
    from prefect.client.schemas.schedules import CronSchedule

    with pytest.raises(ValueError):
        CronSchedule(cron="61 25 * * *")


def test_weekly_evaluation_is_set5_set14_x4_and_nightly_takes_the_documented_parameters():
    deps = {d["name"]: d for d in PREFECT_YAML["deployments"]}
    weekly = deps["weekly-sr-x4-set5-set14"]["parameters"]
    assert weekly["benchmarks"] == ["set5", "set14"] and weekly["settings"]["scale"] == 4
    nightly = deps["nightly-restoration"]["parameters"]
    assert {"source", "output", "settings", "execution"} <= set(nightly) and nightly["settings"]["task"] == "denoise"
    assert nightly["execution"]["ray_address"] == "auto" and weekly["execution"]["ray_address"] == "auto"


@pytest.mark.parametrize("deployment", PREFECT_YAML["deployments"], ids=lambda d: d["name"])
def test_deployment_parameters_validate_against_the_flow(deployment):
    """As the flow run will validate them, nested fields included (a misspelt `execution` field is refused); the
    `ast` check above covers a flows module that does not import."""
    from pipelines import flows

    flow = getattr(flows, _entrypoint_function(deployment["entrypoint"]))
    validated = flow.validate_parameters(deployment["parameters"])
    assert validated["execution"].ray_address == "auto" and validated["settings"].preset == "paper"
    with pytest.raises(Exception, match="ray_adress"):
        flow.validate_parameters({**deployment["parameters"], "execution": {"ray_adress": "auto"}})
    with pytest.raises(Exception, match="presets"):
        flow.validate_parameters({**deployment["parameters"], "settings": {"task": "sr", "presets": "fast"}})


# ------------------------------------------------------------------------------------------------ secrets


_SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "Prefect API key": re.compile(r"\bpnu_[A-Za-z0-9]{20,}\b"),
    "long hex token": re.compile(r"\b[0-9a-f]{32,}\b"),
    "assigned secret": re.compile(
        # a key that *ends* in a secret word (auth_token: …, PASSWORD=…), not secretName/secretKeyRef
        r"(?i)\b[\w-]*(secret|token|password|api[_-]?key|access[_-]?key)['\"]?\s*[:=]\s*['\"]?[A-Za-z0-9/+_\-]{16,}"
    ),
}


def _deploy_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [*files, ROOT / "prefect.yaml"]


@pytest.mark.parametrize("path", _deploy_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_literal_credentials(path):
    text = path.read_text()
    for what, pattern in _SECRET_PATTERNS.items():
        m = pattern.search(text)
        assert m is None, f"{path.relative_to(ROOT)}: looks like a {what}: {m.group(0)[:24]}…"
    if path.suffix in (".yaml", ".yml"):
        for doc in _yaml_docs(path):
            assert doc.get("kind") != "Secret", f"{path.name}: create Secrets from the environment, not from files"


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_secret_env_vars_come_from_secrets(path):
    docs = [json.loads(path.read_text())] if path.suffix == ".json" else _yaml_docs(path)
    for doc in docs:
        for node in _walk(doc):
            env = isinstance(node, dict) and "name" in node and ("value" in node or "valueFrom" in node)
            if env and re.search(r"(?i)token|secret|password|key", str(node["name"])):
                assert "value" not in node, f"{path.name}: env {node['name']} has a literal value"
