"""Load failures keep TensorFlow's cause in one line of the version's status."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import examples
from serving.errors import LoadError
from serving.servables.loader import load_placed
from serving.servables.session_bundle import SessionOptions, tf_error_summary
from serving.servables.tflite import TfLiteOptions

GRAPH_ERROR = (
    "Graph execution error:\n\n"
    "Detected at node 'save/RestoreV2' defined at (most recent call last):\n"
    "Node: 'save/RestoreV2'\n"
    "Read less bytes than requested\n"
    "\t [[{{node save/RestoreV2}}]]"
)


def test_a_graph_error_keeps_its_cause_and_node() -> None:
    assert tf_error_summary(GRAPH_ERROR) == (
        "Graph execution error: Read less bytes than requested (node save/RestoreV2)"
    )
    assert tf_error_summary("Op type not registered 'Foo'\nmore") == "Op type not registered 'Foo'"
    assert tf_error_summary("") == ""


def test_a_truncated_variables_file_names_the_short_read(tmp_path: Path) -> None:
    export = examples.write_half_plus_two(tmp_path / "m" / "1")
    data = next((Path(export) / "variables").glob("variables.data*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(LoadError) as err:
        load_placed("m", 1, str(export), [SessionOptions()], TfLiteOptions())
    assert "Read less bytes than requested" in str(err.value)
