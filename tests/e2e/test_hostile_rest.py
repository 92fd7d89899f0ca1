"""A hostile or careless REST client against the real server: every request
bounded in memory and time, no client able to stall the others.

Slow senders, oversized and abandoned uploads, chunk sizes past any limit,
large valid and invalid bodies, client mistakes that used to be 5xx, odd
methods and half-closed connections. Memory is read from /proc/<pid>/status;
timeouts come from short flags so the slow cases finish in seconds. Idle
connections, the connection cap, a slow header sender and the bind address
are covered in test_rest_transport.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests

from serving import examples
from tests.harness import ServerProcess

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/hp:predict"
READ_TIMEOUT_S = 2.0
LIMIT = 40 << 20  # --rest_api_max_request_bytes
MB = 1 << 20


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    examples.write_half_plus_two(root / "hp" / "1", 0.5, 2.0)
    return root


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        "--model_name=hp",
        f"--model_base_path={model_root / 'hp'}",
        "--rest_api_host=127.0.0.1",
        "--rest_api_idle_timeout_seconds=5",
        f"--rest_api_read_timeout_seconds={READ_TIMEOUT_S}",
        f"--rest_api_max_request_bytes={LIMIT}",
        log_dir=model_root,
    )
    with proc.running("hp"):
        yield proc


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def small_predict(server: ServerProcess, session: requests.Session | None = None) -> float:
    started = time.monotonic()
    response = (session or requests).post(
        server.rest_url + PREDICT, json={"instances": [1.0]}, timeout=60
    )
    assert response.status_code == 200 and response.json() == {"predictions": [2.5]}
    return time.monotonic() - started


@contextmanager
def watched(server: ServerProcess) -> Iterator[dict[str, float]]:
    """Peak RSS of the server and the worst latency of a small predict, meanwhile."""
    pid = server.proc.pid
    seen = {"base": rss(pid), "peak": rss(pid), "worst": 0.0, "probes": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen["peak"] = max(seen["peak"], rss(pid))
            time.sleep(0.005)

    def probe() -> None:
        session = requests.Session()
        while not stop.is_set():
            seen["worst"] = max(seen["worst"], small_predict(server, session))
            seen["probes"] += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=sample), threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    try:
        yield seen
    finally:
        time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(60)


def numeric_body(megabytes: int) -> bytes:
    """`{"instances": [...]}` of float32 values as a client writes them (`json.dumps(a.tolist())`)."""
    count = megabytes * MB // 20  # about 20 bytes per value: "0.6369616985321045, "
    values = np.random.default_rng(0).random(count).astype(np.float32)
    return json.dumps({"instances": values.tolist()}).encode()


# ----------------------------------------------------- time: slow senders


def test_slow_body_is_cut_off_by_the_read_timeout(server) -> None:
    with connect(server) as sock:
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n".encode())
        started = time.monotonic()
        for _ in range(8):  # 64 bytes every 0.5 s: never idle, never done
            try:
                sock.sendall(b" " * 64)
            except OSError:
                break
            time.sleep(0.5)
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data[:100]
    assert time.monotonic() - started < READ_TIMEOUT_S + 3


# ------------------------------------------------------ bytes: body limit


def test_declared_length_over_the_limit_is_413_before_the_upload(server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(
            f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode()
        )
        data = sock.recv(65536)
        assert time.monotonic() - started < 2
    assert data.startswith(b"HTTP/1.1 413 ")
    assert f"exceeds the limit of {LIMIT} bytes (--rest_api_max_request_bytes)".encode() in data


def test_chunked_body_is_cut_off_at_the_limit(server) -> None:
    chunk = b"%x\r\n%s\r\n" % (MB, b"1" * MB)
    before = rss(server.proc.pid)
    for _ in range(3):
        with connect(server) as sock:
            sock.sendall(
                f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
            try:
                for _ in range(LIMIT // MB + 4):  # just past the limit, then no end chunk
                    sock.sendall(chunk)
            except OSError:
                pass
            started = time.monotonic()
            data = read_all(sock)
        assert data.startswith(b"HTTP/1.1 413 "), data[:100]
        assert b"exceeds the limit" in data
        assert time.monotonic() - started < 7  # at most the lingering close's drain
    # What was read (up to the limit) is not kept: three uploads cost no more
    # than about the one limit's worth that malloc may keep mapped for reuse
    # (a kept body would add a limit's worth each time).
    assert rss(server.proc.pid) < before + 1.5 * LIMIT, (before, rss(server.proc.pid))


@pytest.mark.parametrize("size", [b"8000000000000000", b"ffffffffffffffffffff"])
def test_chunk_size_past_the_limit_is_refused_at_once(server, size: bytes) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n" + size + b"\r\n" + b"1" * 1000
        )
        data = read_all(sock, timeout=5)
        assert time.monotonic() - started < 3
    assert data.split(b" ")[1] in (b"400", b"413"), data[:100]
    small_predict(server)


def test_memory_is_returned_after_abandoned_uploads(server) -> None:
    pid = server.proc.pid
    before = rss(pid)
    socks = []
    for _ in range(2):
        sock = connect(server)
        sock.sendall(
            f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nContent-Length: {LIMIT}\r\n\r\n".encode()
        )
        sock.sendall(b"1" * (LIMIT // 2))
        socks.append(sock)
    time.sleep(0.5)
    during = rss(pid)
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 5
    while rss(pid) > before + 16 * MB and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rss(pid) <= before + 16 * MB, (before, during, rss(pid))
    small_predict(server)


# ------------------------------------------------- large valid and invalid


def test_large_predict_bounded_in_memory_and_does_not_stall_others(server) -> None:
    body = numeric_body(16)
    with watched(server) as seen:
        response = requests.post(server.rest_url + PREDICT, data=body, timeout=120)
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == body.count(b",") + 1
    growth = peak_growth("float32", body, seen)
    assert growth <= 6, seen
    assert seen["probes"] > 3 and seen["worst"] < 3.0, seen


def peak_growth(label: str, body: bytes, seen: dict, extra: str = "") -> float:
    """The RSS peak over the base, in bodies; printed with what else was seen."""
    growth = (seen["peak"] - seen["base"]) / len(body)
    print(
        f"{label}: {len(body) / MB:.0f} MB body{extra}, peak +{growth:.1f}x, "
        f"small worst {seen['worst']:.3f}s over {seen['probes']} probes"
    )
    return growth


def post_watched(server: ServerProcess, body: bytes) -> tuple[requests.Response, float, dict]:
    """POST a large predict while `watched`: the response, its seconds, what was seen."""
    with watched(server) as seen:
        started = time.monotonic()
        response = requests.post(server.rest_url + PREDICT, data=body, timeout=120)
        elapsed = time.monotonic() - started
    return response, elapsed, seen


def short_body(layout: str, count: int) -> bytes:
    """Single digits as `json.dumps` writes them: a few bytes per value, the costliest
    case as Python objects (`[1, 2, ...]` or `[[1], [2], ...]`)."""
    digits = np.arange(count) % 10
    values = digits.tolist() if layout == "flat" else digits.reshape(-1, 1).tolist()
    return json.dumps({"instances": values}).encode()


@pytest.mark.parametrize(("layout", "count"), [("flat", 8_000_000), ("rows", 5_000_000)])
def test_large_predict_of_short_numbers_bounded_and_not_stalling(server, layout, count) -> None:
    body = short_body(layout, count)
    assert 20 * MB < len(body) < 30 * MB
    response, elapsed, seen = post_watched(server, body)
    assert response.status_code == 200, response.content[:300]
    predictions = response.json()["predictions"]
    assert len(predictions) == count
    assert predictions[:3] in ([2.0, 2.5, 3.0], [[2.0], [2.5], [3.0]])
    growth = peak_growth(f"short {layout}", body, seen, f", {elapsed:.2f}s")
    assert growth <= 6, seen
    # Parsing everything at once stalled a small request for 1.7 s here; in
    # pieces it waits tens of milliseconds (the bound leaves room for a busy CI).
    assert seen["probes"] > 3 and seen["worst"] < 1.0, seen


def columnar_body(layout: str, count: int) -> bytes:
    """`short_body` in the columnar form: `{"inputs": [1, 2, ...]}` or
    `{"inputs": {"x": [[1], [2], ...]}}`."""
    digits = np.arange(count) % 10
    if layout == "flat":
        return json.dumps({"inputs": digits.tolist()}).encode()
    return json.dumps({"inputs": {"x": digits.reshape(-1, 1).tolist()}}).encode()


@pytest.mark.parametrize(("layout", "count"), [("flat", 8_000_000), ("rows", 5_000_000)])
def test_large_columnar_predict_of_short_numbers_bounded_and_not_stalling(
    start_server, model_root, layout, count
) -> None:
    # A server of its own: memory freed by earlier large requests would hide the peak.
    server = start_server(
        "--model_name=hp",
        f"--model_base_path={model_root / 'hp'}",
        "--rest_api_host=127.0.0.1",
        f"--rest_api_max_request_bytes={LIMIT}",
    )
    server.wait_available("hp")
    small_predict(server)
    body = columnar_body(layout, count)
    assert 20 * MB < len(body) < 30 * MB
    response, elapsed, seen = post_watched(server, body)
    assert response.status_code == 200, response.content[:300]
    # TF Serving's columnar layout: one number per line, each row of [[...]] its
    # own bracketed block, so the answer is several times the body.
    step = b",\n        " if layout == "flat" else b"\n        ],\n        [\n            "
    assert response.content.count(step) == count - 1
    outputs = response.json()["outputs"]
    assert len(outputs) == count
    assert outputs[:3] in ([2.0, 2.5, 3.0], [[2.0], [2.5], [3.0]])
    answer = f", {len(response.content) / MB:.0f} MB answer, {elapsed:.2f}s"
    growth = peak_growth(f"columnar {layout}", body, seen, answer)
    # Formatted in one go, the answer's text and pieces peaked at tens of times
    # the body; kept as the numbers' texts and laid out while sent, the peak is
    # the tensors plus those texts.
    assert growth <= 6, seen
    assert seen["probes"] > 3 and seen["worst"] < 1.0, seen


def test_large_string_instance_gets_a_short_400_quickly(server) -> None:
    body = b'{"instances": ["' + b"a" * (30 * MB) + b'"]}'
    with watched(server) as seen:
        started = time.monotonic()
        response = requests.post(server.rest_url + PREDICT, data=body, timeout=60)
        elapsed = time.monotonic() - started
    assert response.status_code == 400
    assert len(response.content) < 2000
    assert "is not of expected type: float" in response.json()["error"]
    assert elapsed < 10 and seen["worst"] < 3.0, (elapsed, seen)


def test_time_limit_bounds_a_large_request(start_server, model_root) -> None:
    proc = start_server(
        "--model_name=hp",
        f"--model_base_path={model_root / 'hp'}",
        "--rest_api_timeout_in_ms=200",
        f"--rest_api_max_request_bytes={LIMIT}",
    )
    body = numeric_body(30)
    started = time.monotonic()
    response = requests.post(proc.rest_url + PREDICT, data=body, timeout=120)
    assert response.status_code == 504 and response.json() == {"error": "Deadline Exceeded"}
    assert time.monotonic() - started < 10
    small_predict(proc)


def test_max_tensor_elements_bounds_rest_requests(start_server, model_root) -> None:
    proc = start_server(
        "--model_name=hp", f"--model_base_path={model_root / 'hp'}", "--max_tensor_elements=1000"
    )
    response = requests.post(proc.rest_url + PREDICT, json={"instances": [1.0] * 1001}, timeout=30)
    assert response.status_code == 400
    assert response.json() == {
        "error": "tensor parsing error: x (shape [1001] has 1001 elements, more than the "
        "limit of 1000 (--max_tensor_elements))"
    }
    response = requests.post(proc.rest_url + PREDICT, json={"instances": [1.0] * 1000}, timeout=30)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1000


# ----------------------------------------------- client mistakes are 4xx


DEEP = b"[" * 900 + b"1" + b"]" * 900
MISTAKES = [
    (PREDICT, b'{"instances": ' + DEEP + b"}", "64"),
    (PREDICT, b'{"signature_name": ' + DEEP + b"}", "signature_name"),
    (PREDICT, b"[" * 3000 + b"]" * 3000, "Nesting too deep"),
    (PREDICT, b'{"instances": [' + b"9" * 5000 + b"]}", "Number too big"),
    ("/v1/models/hp/versions/" + "9" * 5000 + ":predict", b"{}", "Failed to convert version"),
    (PREDICT, b'{"signature_name": "\\ud800", "instances": [1]}', "surrogate pair"),
    (PREDICT, b'{"signature_name": "\xff\xfe", "instances": [1]}', "not found"),
    (PREDICT, b'{"instances": [{"\xff\xfe": 1}]}', "does not have named input"),
    ("/v1/models/hp:regress", b'{"examples": [{"x": ' + b"9" * 5000 + b"}]}", "Number too big"),
]


@pytest.mark.parametrize(("path", "body", "words"), MISTAKES)
def test_client_mistakes_are_400s_with_short_messages(server, path, body, words) -> None:
    response = requests.post(server.rest_url + path, data=body, timeout=30)
    assert response.status_code == 400, response.content[:300]
    message = json.loads(response.content.decode("utf-8", errors="replace"))["error"]
    assert words in message and len(response.content) < 2000


# ----------------------------------------------------- methods, URL, close


def test_methods(server) -> None:
    url = server.rest_url + "/v1/models/hp"
    put = requests.put(url, timeout=10)
    assert put.status_code == 400 and put.json()["error"] == "Malformed request: PUT /v1/models/hp"
    for method in ("TRACE", "PROPFIND"):
        response = requests.request(method, url, timeout=10)
        assert response.status_code == 405, method
        assert "GET" in response.headers["Allow"]
    preflight = requests.options(url, headers={"Origin": "https://a.example"}, timeout=10)
    assert preflight.status_code == 200
    bare = requests.options(url, timeout=10)
    assert bare.status_code == 400
    assert bare.json()["error"] == "Origin header is missing in CORS preflight"


def test_long_url_gets_414(server) -> None:
    response = requests.get(server.rest_url + "/v1/models/" + "a" * 100_000, timeout=10)
    assert response.status_code == 414


def test_request_then_half_close_is_answered(server) -> None:
    with connect(server) as sock:
        body = b'{"instances": [1.0]}'
        sock.sendall(
            b"POST "
            + PREDICT.encode()
            + b" HTTP/1.1\r\nHost: t\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        sock.shutdown(socket.SHUT_WR)
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200 ") and b"2.5" in data
