"""Models using custom ops: TensorFlow Text's, and op libraries named by flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as tf_text

from tests.harness import END, REPO, ServerProcess, output, wait_for

pytestmark = pytest.mark.slow

TEXT_OP = b"TFText>WhitespaceTokenizeWithOffsetsV2"


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory) -> Path:
    """A TF2 SavedModel whose graph holds a TF Text op: whitespace tokenization."""

    class Tokenizer(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokenizer = tf_text.WhitespaceTokenizer()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            tokens = self.tokenizer.tokenize(text)
            return {
                "num_tokens": tokens.row_lengths(),
                "tokens": tokens.to_tensor(default_value=""),
            }

    base = tmp_path_factory.mktemp("tokenizer") / "tok"
    module = Tokenizer()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    assert TEXT_OP in (base / "1" / "saved_model.pb").read_bytes()
    return base


def tokenize(server: ServerProcess, sentences: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    response = server.predict("tok", {"text": np.array(sentences, dtype=object)})
    return output(response, "num_tokens"), output(response, "tokens")


def test_tf_text_model_serves(start_server, tokenizer_model: Path) -> None:
    server = start_server("--model_name=tok", f"--model_base_path={tokenizer_model}")
    server.wait_available("tok")
    counts, tokens = tokenize(server, [b"hello big world", b"hi"])
    assert counts.tolist() == [3, 1]
    assert tokens.tolist() == [[b"hello", b"big", b"world"], [b"hi", b"", b""]]
    assert "TensorFlow Text ops loaded" in server.logs


def hide_tensorflow_text(tmp_path: Path) -> dict[str, str]:
    """An environment where importing tensorflow_text fails as if it were absent."""
    stub = tmp_path / "no_text"
    stub.mkdir(exist_ok=True)
    (stub / "tensorflow_text.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorflow_text'\", name='tensorflow_text')\n"
    )
    return {"PYTHONPATH": f"{stub}:{REPO}"}


def test_op_library_flag_loads_ops(start_server, tokenizer_model: Path, tmp_path: Path) -> None:
    env = hide_tensorflow_text(tmp_path)
    # Without the package nor the flag, the model cannot load; the server stays up.
    without = start_server(
        "--model_name=tok",
        f"--model_base_path={tokenizer_model}",
        "--max_num_load_retries=0",
        env=env,
    )
    wait_for(lambda: without.versions("tok", END), 60, "tok to fail loading")
    status = without.status("tok").model_version_status[0].status
    assert "Op type not registered 'TFText>WhitespaceTokenizeWithOffsetsV2'" in status.error_message
    assert "--custom_op_libraries" in status.error_message  # the hint
    # Naming TF Text's op library by flag registers the op: the model serves.
    library = Path(tf_text.__file__).parent / "python/ops/_whitespace_tokenizer_v2.so"
    server = start_server(
        "--model_name=tok",
        f"--model_base_path={tokenizer_model}",
        f"--custom_op_libraries={library}",
        env=env,
    )
    server.wait_available("tok")
    counts, _ = tokenize(server, [b"a b c d"])
    assert counts.tolist() == [4]
    assert f"custom op library loaded: {library}" in server.logs
    assert "TensorFlow Text ops loaded" not in server.logs


def run_cli(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", "--port=0", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: tmp / "missing.so", "no such file"),
        (
            lambda tmp: _write(tmp / "not_a_library.so", b"not an ELF file" * 100),
            "invalid ELF header",
        ),
    ],
)
def test_bad_op_library_stops_start_up_naming_it(
    tokenizer_model: Path, tmp_path: Path, make, reason: str
) -> None:
    library = make(tmp_path)
    result = run_cli(f"--model_base_path={tokenizer_model}", f"--custom_op_libraries={library}")
    assert result.returncode != 0
    assert f"Failed to start server. Error: custom op library {library}" in result.stderr
    assert reason in result.stderr


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
