"""deploy/kserve/: the ServingRuntime and example InferenceServices.

KServe's resources are CRDs, which kubernetes-validate has no schema for. So
every document is read by the kserve SDK's own generated API models
(kserve_schema.py, in .venv-kserve: the kserve package cannot be installed
beside TensorFlow's protobuf), which know every field and type of
ServingRuntime v1alpha1 and InferenceService v1beta1; the values KServe
accepts (protocol versions) are checked structurally here; the Kubernetes parts
inside them (containers, volumes) are validated as a Pod against the real
Kubernetes schemas; and the container's flags are parsed by the server's own
flag parser.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from serving.flags import parse_flags
from tests.harness import REPO, kserve_python
from tests.unit.test_deploy import K8S_VERSIONS, METRICS_PATH, _load_yaml_docs, _need_module

KSERVE = REPO / "deploy" / "kserve"
KSERVE_SCHEMA = Path(__file__).with_name("kserve_schema.py")
PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]  # KServe's protocol version names

# The parts of KServe's CRD schemas these manifests touch; unknown fields fail.
_MODEL_FORMAT = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "autoSelect": {"type": "boolean"},
        "priority": {"type": "integer", "minimum": 1},
    },
}
SERVING_RUNTIME = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
        "kind": {"enum": ["ServingRuntime", "ClusterServingRuntime"]},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "additionalProperties": False,
            "properties": {
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "supportedModelFormats": {"type": "array", "items": _MODEL_FORMAT},
                "protocolVersions": {"type": "array", "items": {"enum": PROTOCOLS}},
                "multiModel": {"type": "boolean"},
                "disabled": {"type": "boolean"},
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "required": ["name"]},
                },
                "volumes": {"type": "array"},
                "nodeSelector": {"type": "object"},
                "tolerations": {"type": "array"},
                "affinity": {"type": "object"},
                "imagePullSecrets": {"type": "array"},
            },
        },
    },
}
INFERENCE_SERVICE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "properties": {
                "predictor": {
                    "type": "object",
                    "properties": {
                        "model": {
                            "type": "object",
                            "required": ["modelFormat"],
                            "additionalProperties": False,
                            "properties": {
                                "modelFormat": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "name": {"type": "string"},
                                        "version": {"type": "string"},
                                    },
                                },
                                "runtime": {"type": "string"},
                                "protocolVersion": {"enum": PROTOCOLS},
                                "storageUri": {"type": "string", "pattern": "^[a-z0-9]+://"},
                                "ports": {"type": "array"},
                                "args": {"type": "array", "items": {"type": "string"}},
                                "env": {"type": "array"},
                                "resources": {"type": "object"},
                            },
                        }
                    },
                }
            },
        },
    },
}


def _docs(name: str) -> list[dict[str, Any]]:
    return _load_yaml_docs(KSERVE / name)


def _runtime() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = _docs("servingruntime.yaml")
    (runtime,) = [d for d in docs if d["kind"] == "ServingRuntime"]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return runtime, config_map


def _as_pod(runtime: dict[str, Any]) -> dict[str, Any]:
    spec = runtime["spec"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": runtime["metadata"]["name"]},
        "spec": {"containers": spec["containers"], "volumes": spec.get("volumes", [])},
    }


def test_crd_structure() -> None:
    jsonschema = _need_module("jsonschema", "jsonschema")
    runtime, _ = _runtime()
    jsonschema.validate(runtime, SERVING_RUNTIME)
    services = _docs("inferenceservice.yaml")
    assert len(services) == 2
    for service in services:
        jsonschema.validate(service, INFERENCE_SERVICE)
    # The checks have teeth.
    bad = copy.deepcopy(runtime)
    bad["spec"]["protocolVersions"].append("v3")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SERVING_RUNTIME)
    bad = copy.deepcopy(services[0])
    bad["spec"]["predictor"]["model"]["modelformat"] = {"name": "tensorflow"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, INFERENCE_SERVICE)


def _mutated(doc: dict[str, Any], change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


def test_manifests_match_the_kserve_sdk_models(tmp_path: Path) -> None:
    runtime, _ = _runtime()
    rest, grpc_service = _docs("inferenceservice.yaml")
    # Each broken copy must fail, for the reason given: the check has teeth.
    broken = {
        "typo in a KServe field": (
            _mutated(rest, lambda d: d["spec"]["predictor"]["model"].update(modelformat={})),
            "spec.predictor.model.modelformat: unknown field",
        ),
        "typo in a container field": (
            _mutated(runtime, lambda d: d["spec"]["containers"][0].update(imagee="x")),
            "spec.containers[0].imagee: unknown field",
        ),
        "string for an integer": (
            _mutated(runtime, lambda d: d["spec"]["supportedModelFormats"][0].update(priority="3")),
            "supportedModelFormats[0].priority: '3' does not match",
        ),
        "missing required field": (
            _mutated(rest, lambda d: d["spec"]["predictor"]["model"].pop("modelFormat")),
            "model_format",
        ),
        "wrong type in a Kubernetes part": (
            _mutated(
                grpc_service,
                lambda d: d["spec"]["predictor"]["model"]["ports"][0].update(containerPort="9000"),
            ),
            "containerPort",
        ),
        "wrong API version": (
            _mutated(runtime, lambda d: d.update(apiVersion="serving.kserve.io/v1beta1")),
            "KServe serves ServingRuntime as v1alpha1",
        ),
    }
    paths = sorted(str(p) for p in KSERVE.glob("*.yaml"))
    for index, (doc, _) in enumerate(broken.values()):
        path = tmp_path / f"broken{index}.yaml"
        path.write_text(json.dumps(doc))  # JSON is YAML
        paths.append(str(path))
    done = subprocess.run(
        [str(kserve_python()), str(KSERVE_SCHEMA), *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    good = [r for r in results if r["file"].startswith(str(KSERVE))]
    assert {(r["kind"], r["name"]) for r in good} == {
        ("ConfigMap", "model-server-kserve"),
        ("ServingRuntime", "model-server"),
        ("InferenceService", "half-plus-two"),
        ("InferenceService", "half-plus-two-grpc"),
    }
    for result in good:
        assert result["errors"] == [], result
    bad = [r for r in results if not r["file"].startswith(str(KSERVE))]
    for result, (what, (_, message)) in zip(bad, broken.items(), strict=True):
        assert result["errors"], what
        assert any(message in e for e in result["errors"]), (what, result["errors"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_runtime_pod_parts_validate_against_kubernetes_schemas(version: str) -> None:
    kv = _need_module("kubernetes_validate", "kubernetes-validate")
    runtime, config_map = _runtime()
    kv.validate(_as_pod(runtime), version, strict=True)
    kv.validate(config_map, version, strict=True)


def test_runtime_serves_tensorflow_over_both_protocols() -> None:
    runtime, config_map = _runtime()
    spec = runtime["spec"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == {"tensorflow"}
    assert set(spec["protocolVersions"]) == set(PROTOCOLS)
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # the name KServe merges predictor fields into
    args = [a.replace("{{.Name}}", "half-plus-two") for a in container["args"]]
    options = parse_flags(args)  # every flag is one the server knows
    assert options.model_base_path == "/mnt/models"  # where KServe's storage initializer writes
    assert options.model_name == "half-plus-two"
    assert (options.rest_api_port, options.port) == (8080, 9000)
    assert not options.model_config_file  # so the V2 repository extension stays writable
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        http = container[probe]["httpGet"]
        assert http["port"] == options.rest_api_port
        assert http["path"] in ("/v2/health/ready", "/v2/health/live")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Prometheus: the annotated port/path is the page the monitoring config enables.
    annotations = spec["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(options.rest_api_port)
    assert annotations["prometheus.kserve.io/path"] == METRICS_PATH
    (mount,) = container["volumeMounts"]
    assert options.monitoring_config_file.startswith(mount["mountPath"] + "/")
    (volume,) = spec["volumes"]
    assert volume["name"] == mount["name"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    monitoring = config_map["data"][options.monitoring_config_file.rsplit("/", 1)[1]]
    assert "enable: true" in monitoring and f'path: "{METRICS_PATH}"' in monitoring


def test_inference_services_use_the_runtime() -> None:
    runtime, _ = _runtime()
    rest, grpc_service = _docs("inferenceservice.yaml")
    for service in (rest, grpc_service):
        model = service["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] == "tensorflow"
        assert model["storageUri"]
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (port,) = grpc_service["spec"]["predictor"]["model"]["ports"]
    assert port["name"] == "h2c" and port["containerPort"] == 9000  # KServe's gRPC port name
    assert "ports" not in rest["spec"]["predictor"]["model"]
