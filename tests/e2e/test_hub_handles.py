"""Models served from TF Hub-style handles, URLs and archives.

A real HTTP server on loopback plays tfhub.dev (answering
`?tf-hub-format=compressed`); hostile and broken archives must fail only their
own model, with a clear error in its status and in the logs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from loadtests.servers import models_config
from serving import examples
from tests.harness import END, output, wait_for
from tests.hub_server import hub_server, link, tar_dir, tar_members

X = np.array([[1.0], [4.0]], np.float32)


def test_handles_serve_and_bad_archives_fail_alone(
    start_server, model_store: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "tfhub_cache"
    local = tmp_path / "local_model"
    (local / "1").parent.mkdir()
    os.symlink(model_store / "hp2_c", local / "1")
    archive = tmp_path / "archives" / "half_plus_three.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(tar_dir(model_store / "hp2_b"))
    model = [("saved_model.pb", b"not really")]
    truncated = tar_dir(model_store / "hp2_a")
    with hub_server() as hub:
        handles = {
            "hp2": hub.add("/google/half_plus_two/2", tar_dir(model_store / "hp2_a")),
            "embed": hub.add("/hub/text_embedding.tar.gz", tar_dir(model_store / "hub_text")),
            "hp3": str(archive),
            "local": str(local),
            "dotdot": hub.add("/bad/dotdot/1", tar_members(*model, ("../../evil.txt", b"x"))),
            "symlink": hub.add("/bad/symlink/1", tar_members(*model, link("v", "/etc"))),
            "truncated": hub.add("/bad/truncated/1", truncated[: len(truncated) // 2]),
            "not_model": hub.add("/bad/readme/4", tar_members(("README.md", b"hello"))),
            "missing": hub.url + "/bad/missing/1",
            "malformed": "http://[::1/model/1",
            "unknown_scheme": "ftp://127.0.0.1/models/m",
        }
        config = tmp_path / "models.config"
        config.write_text(models_config(handles))
        before = {p for p in tmp_path.rglob("*") if cache not in p.parents and p != cache}
        server = start_server(
            f"--model_config_file={config}",
            "--max_num_load_retries=0",
            env={"TFHUB_CACHE_DIR": str(cache)},
        )
        with server.running("hp2", "embed", "hp3", "local"):
            # The served version is the handle's trailing number, else 1.
            assert server.versions("hp2") == {2}
            assert server.versions("embed") == {1}
            np.testing.assert_allclose(output(server.predict("hp2", {"x": X}), "y"), [[2.5], [4.0]])
            np.testing.assert_allclose(output(server.predict("hp3", {"x": X}), "y"), [[3.5], [5.0]])
            sentences = np.array([b"the cat sat", b"a dog"])
            got = output(server.predict("embed", {"default": sentences}), "default")
            np.testing.assert_allclose(got[0], examples.reference_embedding("the cat sat"), 1e-5)
            rest = requests.post(
                f"{server.rest_url}/v1/models/hp2/versions/2:predict",
                json={"instances": [[1.0]]},
                timeout=10,
            )
            assert rest.json() == {"predictions": [[2.5]]}
            assert hub.requests.count("/google/half_plus_two/2?tf-hub-format=compressed") == 1
            sha = hashlib.sha1(handles["hp2"].encode()).hexdigest()
            assert (cache / sha / "saved_model.pb").is_file()
            assert (cache / f"{sha}.descriptor.txt").is_file()

            expected = {
                "dotdot": (1, "'..' path component"),
                "symlink": (1, "is a link to an absolute path"),
                "truncated": (1, "truncated or corrupt"),
                "not_model": (4, "is not a model: no saved_model.pb or tfhub_module.pb"),
                "missing": (1, "HTTP 404"),
                "malformed": (1, "malformed model URL"),
            }
            for name, (version, message) in expected.items():

                def failed(name: str = name, version: int = version) -> bool:
                    statuses = server.status(name).model_version_status
                    return [(s.version, s.state) for s in statuses] == [(version, END)]

                wait_for(failed, 60, f"{name} to fail\n{server.logs}")
                status = server.status(name).model_version_status[0].status
                assert message in status.error_message, (name, status.error_message)
                assert status.error_code != 0
                assert message in server.logs
            # An unknown scheme is a base path with no versions, as in TF Serving.
            wait_for(lambda: "File system scheme 'ftp' not implemented" in server.logs, 20, "log")
            with pytest.raises(grpc.RpcError) as err:
                server.status("unknown_scheme")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            # Nothing written outside the cache; no lock or temporary folder left in it.
            after = {p for p in tmp_path.rglob("*") if cache not in p.parents and p != cache}
            assert after - before == {p for p in after - before if p.name.startswith("server-")}
            assert not [p for p in cache.iterdir() if p.name.endswith((".lock", ".tmp"))]
            # Everything that loaded still serves.
            np.testing.assert_allclose(
                output(server.predict("local", {"x": X}), "y"), [[4.5], [6.0]]
            )
            np.testing.assert_allclose(output(server.predict("hp2", {"x": X}), "y"), [[2.5], [4.0]])


def test_cache_shared_with_tensorflow_hub(
    start_server, model_store: Path, tmp_path: Path, monkeypatch
) -> None:
    """hub.resolve() fills the cache the server then uses, and the other way round."""
    hub_lib = pytest.importorskip("tensorflow_hub")
    cache = tmp_path / "tfhub_cache"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    with hub_server() as hub:
        theirs = hub.add("/google/half_plus_two/3", tar_dir(model_store / "hp2_a"))
        ours = hub.add("/google/half_plus_three/5", tar_dir(model_store / "hp2_b"))
        resolved = hub_lib.resolve(theirs)  # the library downloads first
        assert resolved == str(cache / hashlib.sha1(theirs.encode()).hexdigest())
        assert len(hub.requests) == 1
        server = start_server(
            f"--model_config_file={write(tmp_path, {'theirs': theirs, 'ours': ours})}",
            env={"TFHUB_CACHE_DIR": str(cache)},
        )
        with server.running("theirs", "ours"):
            assert server.versions("theirs") == {3} and server.versions("ours") == {5}
            np.testing.assert_allclose(
                output(server.predict("ours", {"x": X}), "y"), [[3.5], [5.0]]
            )
            # The server fetched only the handle the library had not.
            assert [r.split("?")[0] for r in hub.requests] == [
                "/google/half_plus_two/3",
                "/google/half_plus_three/5",
            ]
        # The library reuses what the server downloaded, and loads it.
        assert hub_lib.resolve(ours) == str(cache / hashlib.sha1(ours.encode()).hexdigest())
        assert len(hub.requests) == 2
        loaded = hub_lib.load(ours, tags=["serve"])
        y = loaded.signatures["serving_default"](x=X)["y"].numpy()
        np.testing.assert_allclose(y, [[3.5], [5.0]])


def write(tmp_path: Path, models: dict[str, str]) -> Path:
    path = tmp_path / "models.config"
    path.write_text(models_config(models))
    return path
