"""deploy/ through the validators a real cluster applies, offline: what `kubectl apply` with strict field validation,
the KubeRay operator and hadolint would refuse fails here first.

- The Kubernetes work pool's Job, rendered as Prefect renders it (`apply_values` on the template's defaults, then the
  worker's own step of splitting a string ``args``), against the Kubernetes OpenAPI schemas of `kubernetes-validate`
  with ``strict=True`` (unknown fields refused, as ``kubectl apply --validate=strict`` does).
- The KubeRay RayCluster and RayJob against the KubeRay 1.7 CRDs (``../shared/kuberay``), strict in the same sense:
  the API server prunes or, with strict field validation, refuses fields a structural schema does not declare.
- The Dockerfile under hadolint (its PyPI wheel ships the binary).

The cluster launcher's YAML is checked against Ray's own schema in test_deploy_manifests.py. What none of these can
check without a cluster (images pulling, GPUs scheduling) is listed in docs/deploy.md.
"""

from __future__ import annotations

import copy
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CRDS = ROOT.parent / "shared" / "kuberay"
K8S_VERSION = "1.33.0"  # a release current clusters run; kubernetes-validate ships its schemas


def _rendered_job(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Job a Prefect Kubernetes worker would submit for a flow run of the dipflow work pool."""
    from prefect.utilities.templating import apply_values

    template = json.loads((DEPLOY / "prefect" / "kubernetes-base-job-template.json").read_text())
    props = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    given = {"name": "dipflow-run", "command": "prefect flow-run execute", "labels": {"team": "imaging"}}
    config = apply_values(template["job_configuration"], {**defaults, **given, **(values or {})})
    job = config["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    if isinstance(container.get("args"), str):  # prefect-kubernetes splits a string command before submitting
        container["args"] = shlex.split(container["args"])
    return job


def test_the_work_pool_job_passes_strict_kubernetes_validation():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    job = _rendered_job()
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)  # raises ValidationError with the path
    # The Job-level fields sit on the Job, not in its pod (where strict validation refused them before).
    assert job["spec"]["completions"] == 1 and job["spec"]["parallelism"] == 1


def test_strict_validation_refuses_a_job_field_in_the_pod_spec():
    """The check above can fail: the mistake issue 26 found (Job fields in the pod spec) is refused."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    job = _rendered_job()
    job["spec"]["template"]["spec"]["completions"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="completions"):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as JSON Schema that refuses undeclared fields: every object with declared
    ``properties`` and no ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields`` gets
    ``additionalProperties: false`` (what a structural schema prunes); ``nullable`` becomes a null type."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _crd_validator(kind: str) -> Any:
    import jsonschema

    crd = yaml.safe_load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def _kuberay_objects() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.name}:{d['kind']}", d)
        for p in sorted((DEPLOY / "kuberay").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


@pytest.mark.skipif(not CRDS.is_dir(), reason="the KubeRay CRDs lie in ../shared/kuberay beside the checkout")
@pytest.mark.parametrize("label,obj", _kuberay_objects(), ids=[label for label, _ in _kuberay_objects()])
def test_kuberay_manifests_validate_against_the_kuberay_crds(label, obj):
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _crd_validator(obj["kind"]).iter_errors(obj)
    ]
    assert not errors, f"{label}:\n" + "\n".join(errors[:10])


@pytest.mark.skipif(not CRDS.is_dir(), reason="the KubeRay CRDs lie in ../shared/kuberay beside the checkout")
def test_the_crd_check_refuses_an_unknown_field():
    _, cluster = next((label, o) for label, o in _kuberay_objects() if o["kind"] == "RayCluster")
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["headGroupSpec"]["rayStartParam"] = {}  # misspelt rayStartParams
    assert any("rayStartParam" in e.message for e in _crd_validator("RayCluster").iter_errors(wrong))


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (the dev extra brings it on x86-64 Linux)")
    # DL3008 (pin apt versions): the CUDA base image's Ubuntu archive moves; the pins that matter are versions.env.
    run = subprocess.run(
        [hadolint, "--ignore", "DL3008", str(DEPLOY / "docker" / "Dockerfile")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
