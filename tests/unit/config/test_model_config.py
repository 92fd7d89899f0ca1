"""ModelServerConfig text protos, as TF Serving's files are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config.model_config import ConfigError, load_file, parse_text
from serving.config.version_policy import AllPolicy, LatestPolicy, SpecificPolicy


def test_tf_serving_good_config(testdata: Path, tmp_path: Path) -> None:
    text = (testdata / "tf_serving/good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", "/m/two").replace(
        "${TEST_HALF_PLUS_THREE_DIR}", "/m/three"
    )
    (tmp_path / "models.config").write_text(text)
    models = load_file(str(tmp_path / "models.config")).by_name()
    assert models["half_plus_two"].base_path == "/m/two"
    assert models["half_plus_three"].platform == "tensorflow"
    assert models["half_plus_two"].version_policy == LatestPolicy(num_versions=1)


def test_tf_serving_bad_config_names_file_and_error(testdata: Path) -> None:
    path = testdata / "tf_serving/bad_model_config.txt"
    with pytest.raises(ConfigError) as err:
        load_file(str(path))
    assert str(path) in str(err.value)
    assert "improperly" in str(err.value)
    assert str(err.value).startswith(
        "Error parsing text-format tensorflow.serving.ModelServerConfig: "
    )


def test_policies_and_labels() -> None:
    models = parse_text(
        """
        model_config_list {
          config { name: "a" base_path: "/a"
                   model_version_policy { all {} } }
          config { name: "b" base_path: "/b"
                   model_version_policy { specific { versions: 1 versions: 3 } }
                   version_labels { key: "stable" value: 1 }
                   version_labels { key: "canary" value: 3 } }
          config { name: "c" base_path: "/c"
                   model_version_policy { latest { num_versions: 2 } } }
          config { name: "d" base_path: "/d"
                   model_version_policy { latest { } } }
        }
        """
    ).by_name()
    assert models["a"].version_policy == AllPolicy()
    assert models["b"].version_policy == SpecificPolicy(versions=frozenset({1, 3}))
    assert models["b"].version_labels == {"stable": 1, "canary": 3}
    assert models["c"].version_policy == LatestPolicy(num_versions=2)
    assert models["d"].version_policy == LatestPolicy(num_versions=1)  # 0 means 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'model_config_list { config { name: "a" base_path: "/a" } '
            'config { name: "a" base_path: "/b" } }',
            "duplicate model name 'a'",
        ),
        ('model_config_list { config { name: "a" } }', "base_path"),
        ('model_config_list { config { base_path: "/a" } }', "name"),
        (
            'model_config_list { config { name: "a" base_path: "/a" model_platform: "onnx" } }',
            "unsupported model_platform 'onnx'",
        ),
        (
            "model_config_list { config { name: ",
            "Error parsing text-format tensorflow.serving.ModelServerConfig: x.config: ",
        ),
    ],
)
def test_invalid_configs(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_text(text, "x.config")
