"""`model-server inspect`: saved_model_cli's view of a model, plus versions and handles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorflow.python.tools import saved_model_cli

from serving import inspect
from tests.conftest import TESTDATA
from tests.harness import REPO
from tests.hub_server import hub_server, tar_dir


def normalized(text: str) -> list[str]:
    """Lines, with the ops set (printed in hash order by saved_model_cli) sorted."""
    lines = []
    for line in text.splitlines():
        head, sep, ops = line.partition(" contains the following ops: ")
        if sep:
            line = head + sep + str(sorted(ops.strip("{}").split(", ")))
        lines.append(line)
    return lines


def ours(capsys, *argv: str) -> tuple[int, str, str]:
    code = inspect.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def without_header(out: str) -> str:
    """The saved_model_cli part: everything after the 'Default signature' line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Default signature: "))
    return "\n".join(lines[start + 1 :]) + "\n"


@pytest.fixture(scope="module")
def models(model_store: Path, tmp_path_factory) -> dict[str, Path]:
    found = {
        "tf1": model_store / "hp2_a",
        "hub_module": model_store / "hub_text",
        "tf2_keras": model_store / "keras",
    }
    shared = TESTDATA
    if (shared / "tf_hub/half_plus_two_v1/1").is_dir():
        found["tfhub_half_plus_two"] = shared / "tf_hub/half_plus_two_v1/1"
        found["tf_serving_cpu"] = shared / "tf_serving/saved_model_half_plus_two_cpu/00000123"
    return found


@pytest.mark.parametrize(
    "kind", ["tf1", "hub_module", "tf2_keras", "tfhub_half_plus_two", "tf_serving_cpu"]
)
def test_show_all_matches_saved_model_cli(capsys, models: dict[str, Path], kind: str) -> None:
    if kind not in models:
        pytest.skip("shared test data not found")
    path = str(models[kind])
    saved_model_cli._show_all(path)
    theirs = capsys.readouterr().out.split("\nConcrete Functions:")[0]
    code, out, _ = ours(capsys, path)
    assert code == 0
    assert normalized(without_header(out)) == normalized(theirs.rstrip("\n") + "\n")


def test_tag_set_and_signature_match_saved_model_cli(capsys, models: dict[str, Path]) -> None:
    path = str(models["tf1"])
    saved_model_cli._show_signature_def_map_keys(path, "serve")
    theirs = capsys.readouterr().out
    assert without_header(ours(capsys, path, "--tag_set=serve")[1]) == theirs
    saved_model_cli._show_inputs_outputs(path, "serve", "regress_x_to_y")
    theirs = capsys.readouterr().out
    out = ours(capsys, path, "--tag_set", "serve", "--signature_def", "regress_x_to_y")[1]
    assert without_header(out) == theirs


def test_hub_module_text(capsys, models: dict[str, Path]) -> None:
    code, out, _ = ours(capsys, str(models["hub_module"]), "--signature_def=tokens")
    assert code == 0
    assert "Format: TF1 Hub module (tfhub_module.pb): served with the empty tag-set" in out
    assert "Default signature: default" in out
    assert "  outputs['token_count'] tensor_info:\n      dtype: DT_" in out


def test_base_path_versions_and_the_served_one(capsys, models: dict[str, Path], tmp_path) -> None:
    base = tmp_path / "m"
    shutil.copytree(models["tf1"], base / "1")
    shutil.copytree(models["hub_module"], base / "00000007")
    (base / "tmp.9").mkdir()
    code, out, _ = ours(capsys, str(base))
    assert code == 0
    assert out.splitlines()[:4] == [
        f"Path: {base} (base path)",
        "Versions: 1, 7",
        "The server would load: version 7 (default version policy: the latest)",
        f"Inspecting version 7: {base / '00000007'}",
    ]
    assert "MetaGraphDef with tag-set: '' contains" in out
    code, out, _ = ours(capsys, str(base), "--version=1", "--json")
    report = json.loads(out)
    assert report["versions"] == [1, 7] and report["served_version"] == 7
    assert report["inspected_version"] == 1 and report["format"] == "saved_model"
    assert [g["tags"] for g in report["meta_graphs"]] == [["serve"]]


def test_json_of_a_hub_module(capsys, models: dict[str, Path]) -> None:
    code, out, _ = ours(capsys, str(models["hub_module"]), "--json")
    report = json.loads(out)
    assert code == 0 and report["kind"] == "SavedModel folder"
    assert report["format"] == "tf1_hub_module"
    assert report["default_tag_set"] == [] and report["default_signature"] == "default"
    (graph,) = [g for g in report["meta_graphs"] if g["tags"] == []]
    default = graph["signature_defs"]["default"]
    assert default["inputs"]["default"]["dtype"] == "DT_STRING"
    assert default["outputs"]["default"]["dtype"] == "DT_FLOAT"
    assert default["outputs"]["default"]["shape"] == [-1, 4]
    assert "LookupTableFindV2" in graph["ops"] or "LookupTableFind" in graph["ops"]
    # --signature_def alone picks the tag-set the server loads (empty for a Hub module).
    report = json.loads(
        ours(capsys, str(models["hub_module"]), "--json", "--signature_def=tokens")[1]
    )
    assert list(report["meta_graphs"][0]["signature_defs"]) == ["tokens"]


def test_a_handle_is_fetched_and_shown(capsys, models, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    with hub_server() as hub:
        handle = hub.add("/google/half_plus_two/4", tar_dir(models["tf1"]))
        code, out, err = ours(capsys, handle, "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["kind"] == "handle" and report["versions"] == [4]
        assert report["served_version"] == 4
        assert report["model_dir"].startswith(str(tmp_path / "cache"))
        sig = report["meta_graphs"][0]["signature_defs"]["serving_default"]
        assert sig == {
            "inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1, 1], "name": "x:0"}},
            "outputs": {"y": {"dtype": "DT_FLOAT", "shape": [-1, 1], "name": "y:0"}},
            "method_name": "tensorflow/serving/predict",
        }
        code, out, _ = ours(capsys, handle)
        assert "The server would load: version 4" in out
        assert hub.downloads("/google/half_plus_two/4") == 1  # the second run used the cache


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such/model"], "Could not find base path /no/such/model"),
        (["ftp://host/m"], "File system scheme 'ftp' not implemented"),
        (["http://[::1/m/1"], "malformed model URL"),
        (["{tf1}", "--tag_set=gpu"], "MetaGraphDef associated with tags 'gpu' could not be found"),
        (["{tf1}", "--signature_def=nope"], 'Could not find signature "nope"'),
        (["{tf1}", "--version=3"], "is a SavedModel folder, not a base path"),
    ],
)
def test_errors(capsys, models, argv: list[str], message: str) -> None:
    code, out, err = ours(capsys, *(a.format(tf1=models["tf1"]) for a in argv))
    assert code == 1 and out == ""
    assert err.startswith("model-server inspect: ") and message in err


def test_cli_dispatch(models: dict[str, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving", "inspect", str(models["tf1"]), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["default_signature"] == "serving_default"
