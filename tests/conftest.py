"""Fixtures: model repositories built with TensorFlow, and server processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving import examples
from tests.harness import REPO, ServerProcess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTDATA = Path(os.environ.get("MODEL_SERVER_TESTDATA", REPO.parent / "shared" / "testdata"))


@pytest.fixture(scope="session")
def testdata() -> Path:
    """TF Serving's and TF Hub's own artifacts (../shared/testdata by default)."""
    if not (TESTDATA / "tf_serving").is_dir():
        pytest.skip(
            f"shared test data not found at {TESTDATA}; set MODEL_SERVER_TESTDATA to run "
            "the compatibility tests against TF Serving's own models"
        )
    return TESTDATA


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """Models written once per test session; copy them, never modify."""
    root = tmp_path_factory.mktemp("model_store")
    examples.write_half_plus_two(root / "hp2_a", 0.5, 2.0)
    examples.write_half_plus_two(root / "hp2_b", 0.5, 3.0)
    examples.write_half_plus_two(root / "hp2_c", 0.5, 4.0)
    examples.write_keras_classifier(root / "keras")
    examples.write_keras_module_export(root / "keras_module")
    examples.write_text_embedding_hub_module(root / "hub_text")
    return root


def install(store: Path, kind: str, dest: Path) -> Path:
    """Copy a stored model into `dest` atomically (as a deploy tool would)."""
    staging = dest.parent / f".tmp-{dest.name}"
    shutil.copytree(store / kind, staging)
    staging.rename(dest)
    return dest


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    servers: list[ServerProcess] = []

    def start(*flags: str, wait: bool = True, **kwargs) -> ServerProcess:
        server = ServerProcess(*flags, log_dir=tmp_path, **kwargs)
        servers.append(server)
        if wait:
            server.wait_serving()
        return server

    yield start
    for server in servers:
        server.stop()
