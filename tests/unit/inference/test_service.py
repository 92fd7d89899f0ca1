"""InferenceService on numpy arrays and example bytes: no protocol involved."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError
from serving.inference.model_ref import ModelRef
from serving.inference.service import InferenceTask
from serving.servables.signature import CLASSIFY_METHOD, REGRESS_METHOD
from tests.unit.small_service import MODEL, RecordingObserver, example, small_service

REF = ModelRef(MODEL)


def _examples(*xs: float) -> np.ndarray:
    out = np.empty(len(xs), dtype=object)
    out[:] = [example(x) for x in xs]
    return out


def test_predict_on_arrays() -> None:
    with small_service() as service:
        result = asyncio.run(service.predict(REF, {"x": np.array([[1.0], [2.0]], np.float32)}))
    assert (result.name, result.version, result.signature_name) == (MODEL, 1, "serving_default")
    assert result.outputs["y"].tolist() == [[2.5], [3.0]]


def test_predict_with_a_decoder_sees_the_signature_inputs_once() -> None:
    seen = []

    def decode(specs):
        seen.append({alias: spec.dtype for alias, spec in specs.items()})
        return {"x": np.array([[4.0]], np.float32)}

    with small_service() as service:
        result = asyncio.run(service.predict(REF, decode))
    assert seen == [{"x": 1}]  # DT_FLOAT
    assert result.outputs["y"].tolist() == [[4.0]]


@pytest.mark.parametrize(
    ("use_decoder", "code", "message"),
    [
        # Typed requests: Predict's own lookup.
        (False, "FAILED_PRECONDITION", 'Serving signature key "nope" not found.'),
        # Requests decoded against the signature: TF Serving's GetInfoMap lookup first.
        (True, "INVALID_ARGUMENT", 'Serving signature name: "nope" not found in signature def'),
    ],
)
def test_unknown_signature_wording_depends_on_who_needs_the_specs(
    use_decoder: bool, code: str, message: str
) -> None:
    x = {"x": np.array([[1.0]], np.float32)}
    inputs = (lambda specs: x) if use_decoder else x
    with small_service() as service, pytest.raises(ServingError) as err:
        asyncio.run(service.predict(ModelRef(MODEL, signature_name="nope"), inputs))
    assert (err.value.code.name, err.value.message) == (code, message)


def test_predict_checks_inputs_and_output_filter() -> None:
    x = np.array([[1.0]], np.float32)
    with small_service() as service:
        with pytest.raises(ServingError) as err:
            asyncio.run(service.predict(REF, {"x": x.astype(np.float64)}))
        assert err.value.message == "Expected input x to be float but get double."
        with pytest.raises(ServingError) as err:
            asyncio.run(service.predict(REF, {"x": x}, ["z"]))
        assert err.value.message.startswith("output tensor alias not found in signature: z")
        with pytest.raises(ServingError) as err:
            asyncio.run(service.predict(ModelRef("other"), {"x": x}))
        assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_classify_regress_and_multi_inference_on_example_bytes() -> None:
    with small_service() as service:
        classify = ModelRef(MODEL, signature_name="classify_x_to_y")
        regress = ModelRef(MODEL, signature_name="regress_x_to_y")
        result = asyncio.run(service.classify(classify, _examples(1.0, 2.0)))
        assert result.classes is None and result.scores.tolist() == [[2.5], [3.0]]
        assert asyncio.run(service.regress(regress, _examples(4.0))).values.tolist() == [4.0]
        both = asyncio.run(
            service.multi_inference(
                [InferenceTask(classify, CLASSIFY_METHOD), InferenceTask(regress, REGRESS_METHOD)],
                _examples(2.0),
            )
        )
        assert [r.signature_name for r in both] == ["classify_x_to_y", "regress_x_to_y"]
        assert both[1].values.tolist() == [3.0]


def test_status_and_metadata_are_protocol_neutral() -> None:
    with small_service() as service:
        (status,) = service.status(REF)
        assert (status.version, status.state.name, status.error) == (1, "AVAILABLE", "")
        metadata = service.metadata(REF)
        assert (metadata.name, metadata.version) == (MODEL, 1)
        assert set(metadata.signature_defs) == {
            "serving_default",
            "classify_x_to_y",
            "regress_x_to_y",
        }


def test_reload_checks_the_config_kind_then_applies_it() -> None:
    applied = []

    async def reload(config) -> None:
        applied.append(config)

    config = model_server_config_pb2.ModelServerConfig()
    with small_service(reload_config=reload) as service:
        with pytest.raises(ServingError) as err:
            asyncio.run(service.reload(config))  # neither list nor custom config set
        assert err.value.message.startswith("ServerModelConfig type not supported")
        config.model_config_list.config.add(name="a", base_path="/a")
        asyncio.run(service.reload(config))
    assert applied == [config]


def test_observe_binds_the_services_observer() -> None:
    observer = RecordingObserver()
    with small_service(observer) as service:

        async def call() -> None:
            async with service.observe("predict", "v2", MODEL):
                await service.predict(REF, {"x": np.array([[1.0]], np.float32)})

        asyncio.run(call())
    assert observer.finished == [("predict", "v2", MODEL, "OK")]
