"""Client mistakes in request JSON: each is a 400 with a clear, short message.

Deep nesting, huge integers, lone surrogates and bytes that are not UTF-8, in
every place a request carries them (the document, `signature_name`, keys,
`instances`, `inputs`, examples, the URL's version), through the real handler
on a small in-process service.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.api.rest import decode
from serving.api.rest.handlers import OFFLOAD_BYTES, RestApi
from serving.api.rest.http import Request, Response
from tests.unit.small_service import RecordingObserver, small_service

PREDICT = "/v1/models/hp2:predict"
REGRESS = "/v1/models/hp2:regress"
NINES = b"9" * 5000


def nested(depth: int, leaf: bytes = b"1.0") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


def nested_object(depth: int) -> bytes:
    return b'{"x":' * depth + b"1" + b"}" * depth


@pytest.fixture(scope="module")
def api():
    with small_service(RecordingObserver()) as service:
        yield RestApi(service, timeout_s=30.0)


def handle(api: RestApi, path: str, body: bytes, method: str = "POST") -> tuple[int, str]:
    response: Response = asyncio.run(api.handle(Request(method, path, "", {}, body)))
    body = response.body if isinstance(response.body, bytes) else b"".join(response.body)
    text = body.decode("utf-8", errors="replace")
    return response.status, json.loads(text)["error"] if response.status != 200 else text


MISTAKES = [
    # (name, path, body, words the message must contain)
    ("instances 65 deep", PREDICT, b'{"instances": ' + nested(65) + b"}", "64"),
    ("instances 900 deep", PREDICT, b'{"instances": ' + nested(900) + b"}", "64"),
    ("inputs 65 deep", PREDICT, b'{"inputs": ' + nested(65) + b"}", "64"),
    ("inputs 1000 deep", PREDICT, b'{"inputs": ' + nested(1000) + b"}", "64"),
    ("keyed instance 200 deep", PREDICT, b'{"instances": [{"x": ' + nested(200) + b"}]}", "64"),
    ("bare document 1000 deep", PREDICT, nested(1000), "Is not object"),
    ("document 2000 deep", PREDICT, nested(2000), "Nesting too deep"),
    ("signature_name 1000 deep", PREDICT, b'{"signature_name": ' + nested(1000) + b"}", "string"),
    ("object in inputs 1000 deep", PREDICT, b'{"inputs": ' + nested_object(1000) + b"}", "float"),
    ("integer in instances", PREDICT, b'{"instances": [' + NINES + b"]}", "Number too big"),
    ("integer as signature_name", PREDICT, b'{"signature_name": ' + NINES + b"}", "Number too big"),
    ("integer in an example", REGRESS, b'{"examples": [{"x": ' + NINES + b"}]}", "Number too big"),
    ("version of 5000 nines", f"/v1/models/m/versions/{'9' * 5000}:predict", b"{}", "version"),
    ("lone surrogate signature", PREDICT, b'{"signature_name": "\\ud800"}', "surrogate"),
    ("lone surrogate key", PREDICT, b'{"instances": [{"\\udfff": 1}]}', "surrogate"),
    ("lone surrogate value", PREDICT, b'{"instances": ["\\ud800"]}', "surrogate"),
    (
        "raw bytes signature",
        PREDICT,
        b'{"signature_name": "\xff\xfe", "instances": [1]}',
        "not found",
    ),
    ("raw bytes key", PREDICT, b'{"instances": [{"\xff\xfe": 1}]}', "does not have named input"),
    ("raw bytes value", PREDICT, b'{"instances": ["\xff\xfe"]}', "float"),
    ("raw bytes in example", REGRESS, b'{"examples": [{"\xff": [[1]]}]}', "unexpected JSON type"),
]


@pytest.mark.parametrize(
    ("path", "body", "words"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_client_mistake_is_a_short_400(api, path: str, body: bytes, words: str) -> None:
    status, message = handle(api, path, body)
    assert status == 400, message
    assert words in message
    assert len(message) < decode.EXCERPT_CHARS + 300


def test_messages_quote_a_short_excerpt_of_a_huge_string(api) -> None:
    huge = b"a" * 5_000_000
    status, message = handle(api, PREDICT, b'{"instances": ["' + huge + b'"]}')
    assert status == 400 and "is not of expected type: float" in message
    assert len(message) < decode.EXCERPT_CHARS + 300 and "..." in message


def test_surrogate_pairs_and_raw_bytes_still_decode() -> None:
    assert decode.parse_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    raw = decode.parse_json(b'{"a": "\xff"}')["a"]
    assert raw.encode("utf-8", errors="surrogateescape") == b"\xff"
    assert decode.parse_json(b'{"a": 1' + b"0" * 30 + b"}") == {"a": 1e30}  # as rapidjson reads it


def test_pretty_is_unchanged_for_small_values() -> None:
    assert decode.pretty({"a": [1, "b"]}) == '{\n    "a": [\n        1,\n        "b"\n    ]\n}'
    assert decode.pretty([]) == "[]" and decode.pretty("x") == '"x"'


def test_large_bodies_take_the_worker_path_with_the_same_answers(api) -> None:
    count = 200_000  # over OFFLOAD_BYTES
    values = [float(i % 100) for i in range(count)]
    body = json.dumps({"instances": values}).encode()
    assert len(body) > OFFLOAD_BYTES
    status, text = handle(api, PREDICT, body)
    assert status == 200
    assert json.loads(text)["predictions"] == [0.5 * v + 2 for v in values]
    examples = json.dumps(
        {"signature_name": "regress_x_to_y", "examples": [{"x": v} for v in values]}
    )
    status, text = handle(api, REGRESS, examples.encode())
    assert status == 200 and json.loads(text)["results"] == [0.5 * v + 2 for v in values]
    status, message = handle(
        api, PREDICT, b'{"instances": ["' + b"a" * (2 * OFFLOAD_BYTES) + b'"]}'
    )
    assert status == 400 and len(message) < decode.EXCERPT_CHARS + 300
