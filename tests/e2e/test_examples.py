"""The repository `make serve` serves answers the README's example calls."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from serving import examples
from tests.harness import ServerProcess, output


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ServerProcess:
    root = examples.write_all(tmp_path_factory.mktemp("examples") / "models")
    assert examples.write_all(root) == root  # idempotent: a second `make serve` rewrites nothing
    proc = ServerProcess(f"--model_config_file={root / 'models.config'}", log_dir=root)
    with proc.running("keras_classifier", "text_embedding", versions={"half_plus_two": {1, 2}}):
        yield proc


def test_grpc_examples(server: ServerProcess) -> None:
    y = output(server.predict("half_plus_two", {"x": np.array([[1.0], [2.0]], np.float32)}), "y")
    np.testing.assert_allclose(y, [[2.5], [3.0]])
    features = np.ones((1, 4), np.float32)
    probs = output(server.predict("keras_classifier", {"features": features}), "probabilities")
    np.testing.assert_allclose(probs, examples.keras_reference(features), rtol=1e-5)
    response = server.predict(
        "text_embedding", {"default": np.array([b"the cat sat"])}, signature="tokens"
    )
    np.testing.assert_allclose(
        output(response, "embedding")[0], examples.reference_embedding("the cat sat"), rtol=1e-6
    )
    assert (
        server.predict(
            "half_plus_two", {"x": np.array([[1.0]], np.float32)}, label="stable"
        ).model_spec.version.value
        == 1
    )


def test_rest_examples(server: ServerProcess) -> None:
    url = server.rest_url + "/v1/models"
    got = requests.post(f"{url}/half_plus_two:predict", data='{"instances": [1.0, 2.0, 5.0]}')
    assert got.json() == {"predictions": [2.5, 3.0, 4.5]}
    got = requests.post(f"{url}/half_plus_two/versions/1:predict", data='{"instances": [[1.0]]}')
    assert got.json() == {"predictions": [[2.5]]}
    got = requests.post(
        f"{url}/half_plus_two/labels/canary:predict", data='{"inputs": {"x": [[1.0]]}}'
    )
    assert got.json() == {"outputs": [[2.5]]}
    got = requests.post(
        f"{url}/half_plus_two:regress",
        data='{"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 4.0}]}',
    )
    assert got.json() == {"results": [2.5, 4.0]}
    got = requests.post(
        f"{url}/text_embedding:predict",
        data='{"signature_name": "tokens", "instances": ["the cat sat"]}',
    )
    assert got.json()["predictions"][0]["token_count"] == 3
    status = requests.get(f"{url}/half_plus_two").json()
    assert [s["version"] for s in status["model_version_status"]] == ["2", "1"]
    assert requests.get(f"{url}/text_embedding/metadata").status_code == 200
