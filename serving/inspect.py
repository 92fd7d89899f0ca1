"""`model-server inspect PATH_OR_URL`: what a model holds, and what the server would serve.

Prints what `saved_model_cli show` prints (tag-sets, SignatureDefs, inputs and
outputs with dtype, shape and tensor name, method names, ops) for SavedModels
and TF1 Hub modules alike, reading only the `saved_model.pb` (no variables are
loaded, so TF2 concrete functions are not listed). Before that, for a base
path, it lists the versions found and the one the server would load under the
default policy (the latest); for a handle or archive, the version its name
gives. `--json` prints the same facts for machines.

Any base path works through one `ModelStorage` (versions, then a local folder
for a version): local folders and TF Hub handles/archives here, object storage
wherever the storage layer resolves base paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.storage import ModelStorage, StorageError, default_cache_dir, open_storage, scheme_of
from serving.storage.hub import HubStorage, is_hub_handle

HUB_MODULE_FILE = "tfhub_module.pb"


class InspectError(Exception):
    """The path cannot be inspected; the message says why."""


def storage_for(path: str) -> ModelStorage:
    """The storage behind a base path: the server's own dispatch (local, object storage,
    handles), so inspect sees exactly what the server would."""
    try:
        return open_storage(path, default_cache_dir())
    except StorageError as exc:
        raise InspectError(str(exc)) from None


# --------------------------------------------------------------------- facts


@dataclass
class Report:
    path: str
    kind: str  # "base path", "handle", "SavedModel folder"
    versions: list[int] = field(default_factory=list)
    served_version: int | None = None
    inspected_version: int | None = None
    model_dir: str = ""
    hub_module: bool = False
    meta_graphs: list[Any] = field(default_factory=list)  # MetaGraphDef protos


def is_model_dir(path: str) -> bool:
    return any(
        os.path.isfile(os.path.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt")
    )


def gather(path: str, version: int | None = None) -> Report:
    """Resolve `path` (fetching a handle into the cache) and read its SavedModel."""
    if not scheme_of(path) and not is_hub_handle(path) and is_model_dir(path):
        report = Report(path, "SavedModel folder", model_dir=path)
        if version is not None:
            raise InspectError(f"{path} is a SavedModel folder, not a base path with versions")
    else:
        storage = storage_for(path)
        try:
            found = storage.versions()
        except StorageError as exc:
            raise InspectError(str(exc)) from None
        kind = "handle" if isinstance(storage, HubStorage) else "base path"
        report = Report(path, kind, versions=sorted(found))
        if not found:
            raise InspectError(f"No versions of the model found under base path {path}")
        report.served_version = max(found)  # the default policy: the latest version
        chosen = report.served_version if version is None else version
        if chosen not in found:
            listed = ", ".join(map(str, report.versions))
            raise InspectError(f"no version {chosen} under {path} (versions: {listed})")
        report.inspected_version = chosen
        try:
            report.model_dir = storage.local_path(chosen)
        except StorageError as exc:
            raise InspectError(str(exc)) from None
        if not is_model_dir(report.model_dir):
            raise InspectError(
                f"version {chosen} ({report.model_dir}) holds no saved_model.pb "
                "or saved_model.pbtxt"
            )
    report.hub_module = os.path.isfile(os.path.join(report.model_dir, HUB_MODULE_FILE))
    report.meta_graphs = read_meta_graphs(report.model_dir)
    return report


def read_meta_graphs(model_dir: str) -> list[Any]:
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    pb = os.path.join(model_dir, "saved_model.pb")
    try:
        if os.path.isfile(pb):
            with open(pb, "rb") as f:
                saved_model.ParseFromString(f.read())
        else:
            with open(os.path.join(model_dir, "saved_model.pbtxt")) as f:
                text_format.Parse(f.read(), saved_model)
    except (OSError, message.DecodeError, text_format.ParseError) as exc:
        raise InspectError(f"cannot read the SavedModel in {model_dir}: {exc}") from None
    return sorted(saved_model.meta_graphs, key=lambda m: list(m.meta_info_def.tags))


def pick_meta_graph(report: Report, tag_set: str) -> Any:
    wanted = sorted(t for t in tag_set.split(",") if t.strip()) if tag_set else []
    for meta_graph in report.meta_graphs:
        if sorted(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    available = [list(m.meta_info_def.tags) for m in report.meta_graphs]
    # TensorFlow's wording (saved_model_cli prints the same).
    raise InspectError(
        f"MetaGraphDef associated with tags {tag_set!r} could not be found in SavedModel, "
        f"with available tags '{available}'"
    )


def default_tag_set(report: Report) -> str:
    """The tag-set the server loads: empty for a Hub module, else `serve`."""
    return "" if report.hub_module else "serve"


def default_signature(report: Report) -> str:
    return "default" if report.hub_module else "serving_default"


def _ops(meta_graph: Any) -> list[str]:
    from tensorflow.python.framework import meta_graph as meta_graph_lib

    return sorted(meta_graph_lib.ops_used_by_graph_def(meta_graph.graph_def))


# ------------------------------------------------------------------- output


def _dtype_name(dtype: int) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype)


def _shape(tensor_info: Any) -> list[int] | None:
    if tensor_info.tensor_shape.unknown_rank:
        return None
    return [d.size for d in tensor_info.tensor_shape.dim]


def _shape_text(tensor_info: Any) -> str:
    shape = _shape(tensor_info)
    return "unknown_rank" if shape is None else "(" + ", ".join(map(str, shape)) + ")"


def _tensor_lines(tensor_info: Any, indent: str) -> list[str]:
    return [
        f"{indent}    dtype: {_dtype_name(tensor_info.dtype)}",
        f"{indent}    shape: {_shape_text(tensor_info)}",
        f"{indent}    name: {tensor_info.name}",
    ]


def signature_lines(meta_graph: Any, key: str, indent: str = "") -> list[str]:
    if key not in meta_graph.signature_def:
        raise InspectError(
            f'Could not find signature "{key}". Please choose from: '
            f"{', '.join(meta_graph.signature_def.keys())}"
        )
    signature = meta_graph.signature_def[key]
    lines = [f"{indent}The given SavedModel SignatureDef contains the following input(s):"]
    for name, info in sorted(signature.inputs.items()):
        lines.append(f"{indent}  inputs['{name}'] tensor_info:")
        lines += _tensor_lines(info, indent + "  ")
    lines.append(f"{indent}The given SavedModel SignatureDef contains the following output(s):")
    for name, info in sorted(signature.outputs.items()):
        lines.append(f"{indent}  outputs['{name}'] tensor_info:")
        lines += _tensor_lines(info, indent + "  ")
    lines.append(f"{indent}Method name is: {signature.method_name}")
    return lines


def header_lines(report: Report) -> list[str]:
    lines = [f"Path: {report.path} ({report.kind})"]
    if report.kind == "SavedModel folder":
        lines.append(
            "Not a base path: the server serves it from a numbered version folder "
            f"(e.g. {os.path.join('<base path>', '1')})"
        )
    else:
        lines.append(f"Versions: {', '.join(map(str, report.versions))}")
        lines.append(
            f"The server would load: version {report.served_version} "
            "(default version policy: the latest)"
        )
        lines.append(f"Inspecting version {report.inspected_version}: {report.model_dir}")
    if report.hub_module:
        lines.append("Format: TF1 Hub module (tfhub_module.pb): served with the empty tag-set")
    else:
        lines.append("Format: SavedModel")
    lines.append(f"Default signature: {default_signature(report)}")
    return lines


def show_all_lines(report: Report) -> list[str]:
    """`saved_model_cli show --all`, without the concrete functions (they need a load)."""
    lines: list[str] = []
    for meta_graph in report.meta_graphs:
        tags = list(meta_graph.meta_info_def.tags)
        lines += [
            "",
            f"MetaGraphDef with tag-set: '{', '.join(tags)}' contains the following SignatureDefs:",
        ]
        for key in sorted(meta_graph.signature_def):
            lines += ["", f"signature_def['{key}']:"]
            lines += signature_lines(meta_graph, key, indent="  ")
        ops = "{" + ", ".join(repr(op) for op in _ops(meta_graph)) + "}"
        lines.append(f"The MetaGraph with tag set {tags} contains the following ops: {ops}")
    return lines


def text(report: Report, tag_set: str | None, signature_def: str | None) -> str:
    lines = header_lines(report)
    if tag_set is None and signature_def is None:
        lines += show_all_lines(report)
    elif signature_def is None:
        meta_graph = pick_meta_graph(report, tag_set or "")
        lines.append(
            "The given SavedModel MetaGraphDef contains SignatureDefs with the following keys:"
        )
        lines += [f'SignatureDef key: "{key}"' for key in sorted(meta_graph.signature_def)]
    else:
        meta_graph = pick_meta_graph(
            report, default_tag_set(report) if tag_set is None else tag_set
        )
        lines += signature_lines(meta_graph, signature_def)
    return "\n".join(lines) + "\n"


def _signature_json(meta_graph: Any, key: str) -> dict[str, Any]:
    signature = meta_graph.signature_def[key]

    def tensors(infos: Any) -> dict[str, Any]:
        return {
            name: {"dtype": _dtype_name(i.dtype), "shape": _shape(i), "name": i.name}
            for name, i in sorted(infos.items())
        }

    return {
        "inputs": tensors(signature.inputs),
        "outputs": tensors(signature.outputs),
        "method_name": signature.method_name,
    }


def as_json(report: Report, tag_set: str | None, signature_def: str | None) -> dict[str, Any]:
    meta_graphs = report.meta_graphs
    if tag_set is not None or signature_def is not None:
        chosen = default_tag_set(report) if tag_set is None else tag_set
        meta_graphs = [pick_meta_graph(report, chosen)]
    graphs = []
    for meta_graph in meta_graphs:
        keys = sorted(meta_graph.signature_def)
        if signature_def is not None:
            signature_lines(meta_graph, signature_def)  # raises if it is not there
            keys = [signature_def]
        graphs.append(
            {
                "tags": list(meta_graph.meta_info_def.tags),
                "signature_defs": {k: _signature_json(meta_graph, k) for k in keys},
                "ops": _ops(meta_graph),
            }
        )
    return {
        "path": report.path,
        "kind": report.kind,
        "versions": report.versions,
        "served_version": report.served_version,
        "inspected_version": report.inspected_version,
        "model_dir": report.model_dir,
        "format": "tf1_hub_module" if report.hub_module else "saved_model",
        "default_tag_set": [] if report.hub_module else ["serve"],
        "default_signature": default_signature(report),
        "meta_graphs": graphs,
    }


# ---------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-server inspect",
        description="Show a model's tag-sets and signatures (as saved_model_cli show does), "
        "the versions of a base path and the one the server would load.",
    )
    parser.add_argument("path", help="SavedModel folder, base path, TF Hub handle/URL or archive")
    parser.add_argument("--tag_set", help="comma-separated tags of one MetaGraphDef ('' = empty)")
    parser.add_argument("--signature_def", help="one SignatureDef key (with its tag-set)")
    parser.add_argument("--version", type=int, help="inspect this version, not the served one")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(list(argv))
    try:
        report = gather(args.path, args.version)
        if args.json:
            out = json.dumps(as_json(report, args.tag_set, args.signature_def), indent=2) + "\n"
        else:
            out = text(report, args.tag_set, args.signature_def)
    except InspectError as exc:
        print(f"model-server inspect: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0
