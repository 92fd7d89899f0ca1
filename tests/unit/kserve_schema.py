"""Check Kubernetes manifests against the `kserve` SDK's generated API models; runs in .venv-kserve.

The kserve wheel ships no CRD files, but its OpenAPI-generated models
(V1alpha1ServingRuntime, V1beta1InferenceService, ...) are KServe's schema in
code. Each document is deserialized by the SDK's ApiClient with client-side
validation on (required fields, allowed values), then serialized back: a field
the schema does not know is dropped on the way, and a value of the wrong type
comes back changed, so any difference from the original document is an error.
Kubernetes' own kinds (ConfigMap, ...) go the same way through the kubernetes
client's models.

    .venv-kserve/bin/python tests/unit/kserve_schema.py deploy/kserve/*.yaml

Prints one JSON object per document, one list: file, kind, name and `errors`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import kserve.models
import kubernetes.client
import yaml
from kserve.api_client import ApiClient as KserveApiClient

# kind → the SDK's model class name, by API group
KSERVE_KINDS = {
    "ServingRuntime": "V1alpha1ServingRuntime",
    "ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
    "InferenceService": "V1beta1InferenceService",
}


class _KserveClient(KserveApiClient):
    """The SDK's ApiClient, which looks model names up in kserve.models only,
    handing the Kubernetes models KServe's refer to (V1ObjectMeta, V1Container,
    ...) to the kubernetes client, whose models are of another generator."""

    kubernetes = kubernetes.client.ApiClient()

    def _ApiClient__deserialize(self, data: Any, klass: Any) -> Any:  # the parent's private hook
        if (
            isinstance(klass, str)
            and not klass.startswith(("list[", "dict("))
            and klass not in self.NATIVE_TYPES_MAPPING
            and not hasattr(kserve.models, klass)
        ):
            return self.kubernetes.deserialize(json.dumps(data), klass, "application/json")
        return KserveApiClient._ApiClient__deserialize(self, data, klass)

    def sanitize_for_serialization(self, obj: Any) -> Any:
        if type(obj).__module__.startswith("kubernetes."):
            return self.kubernetes.sanitize_for_serialization(obj)
        return super().sanitize_for_serialization(obj)


class _Response:
    def __init__(self, document: dict[str, Any]) -> None:
        self.data = json.dumps(document)


def _differences(original: Any, back: Any, path: str) -> list[str]:
    if isinstance(original, dict) and isinstance(back, dict):
        errors = []
        for key, value in original.items():
            where = f"{path}.{key}"
            if key not in back:
                errors.append(f"{where}: unknown field")
            else:
                errors += _differences(value, back[key], where)
        return errors
    if isinstance(original, list) and isinstance(back, list) and len(original) == len(back):
        errors = []
        for index, (a, b) in enumerate(zip(original, back, strict=True)):
            errors += _differences(a, b, f"{path}[{index}]")
        return errors
    if type(original) is not type(back) or original != back:
        return [f"{path}: {original!r} does not match the schema (reads back as {back!r})"]
    return []


def check(document: dict[str, Any]) -> list[str]:
    kind = document.get("kind", "")
    group = str(document.get("apiVersion", "")).split("/")[0]
    if group == "serving.kserve.io":
        if kind not in KSERVE_KINDS:
            return [f"kind {kind!r}: not a KServe kind this check knows"]
        client: Any = _KserveClient()
        klass = KSERVE_KINDS[kind]
        expected_version = klass[: -len(kind)].lower()  # V1alpha1ServingRuntime: v1alpha1
        if document["apiVersion"] != f"serving.kserve.io/{expected_version}":
            return [
                f"apiVersion {document['apiVersion']!r}: KServe serves {kind} as {expected_version}"
            ]
    else:
        client = kubernetes.client.ApiClient()
        version = str(document.get("apiVersion", ""))
        prefix = "V1" if "/" not in version else version.split("/")[1].capitalize()
        klass = prefix + kind
        if not hasattr(kubernetes.client.models, klass):
            return [f"kind {kind!r} ({version}): no model {klass} in the kubernetes client"]
    try:
        if isinstance(client, KserveApiClient):
            model = client.deserialize(_Response(document), klass)
        else:
            model = client.deserialize(json.dumps(document), klass, "application/json")
    except Exception as exc:  # the schema's verdict, reported
        return [f"{type(exc).__name__}: {exc}"]
    back = client.sanitize_for_serialization(model)
    return _differences(document, back, kind)


def main(paths: list[str]) -> list[dict[str, Any]]:
    results = []
    for path in paths:
        for document in yaml.safe_load_all(Path(path).read_text()):
            if document is None:
                continue
            results.append(
                {
                    "file": path,
                    "kind": document.get("kind"),
                    "name": (document.get("metadata") or {}).get("name"),
                    "errors": check(document),
                }
            )
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
