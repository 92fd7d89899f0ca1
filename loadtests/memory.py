"""Memory with 1 and N loaded half_plus_two models, and new-version latency."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pydantic import BaseModel

from loadtests.models import BenchModel
from loadtests.servers import Client, LocalServer, models_config


class MemoryResult(BaseModel):
    models: int
    rss_1_mib: float
    rss_n_mib: float
    new_version_s: list[float]  # folder rename → first successful Predict of it

    @property
    def worst_new_version_s(self) -> float:
        return max(self.new_version_s)


def model_dirs(root: Path, count: int) -> dict[str, Path]:
    """Base paths of `count` half_plus_two models, without versions a past run added."""
    out = {}
    for i in range(count):
        base = root / f"hp2_{i:02d}"
        base.mkdir(parents=True, exist_ok=True)
        for extra in base.iterdir():
            if extra.name != "1":
                shutil.rmtree(extra)
        out[base.name] = base
    return out


def fill(template: Path, models: dict[str, Path]) -> None:
    """Version 1 of each model: a copy of `template`, renamed into place whole."""
    for base in models.values():
        if not (base / "1" / "saved_model.pb").exists():
            shutil.rmtree(base / "1", ignore_errors=True)
            staging = base / ".staging-1"
            shutil.copytree(template, staging)
            staging.rename(base / "1")


def start(root: Path, models: dict[str, Path], log_dir: Path) -> LocalServer:
    config = root / "one.config"
    first = dict(list(models.items())[:1])
    config.write_text(models_config(first))
    return LocalServer(
        "memory", [f"--model_config_file={config}", "--file_system_poll_wait_seconds=1"], log_dir
    )


def measure(
    server: LocalServer, models: dict[str, Path], model: BenchModel, trials: int
) -> MemoryResult:
    """RSS with the first model, reload to all, RSS again; then time new versions."""
    client = Client(server.grpc_target)
    try:
        names = list(models)
        client.wait_available(names[:1], 120, server.check_alive)
        time.sleep(0.5)
        rss_1 = server.rss_bytes()
        client.reload_config(models_config(models))
        client.wait_available(names, 300, server.check_alive)
        time.sleep(0.5)
        rss_n = server.rss_bytes()
        latencies = [
            new_version_latency(client, models[names[0]], names[0], model, version)
            for version in range(2, 2 + trials)
        ]
    finally:
        client.close()
    return MemoryResult(
        models=len(models),
        rss_1_mib=rss_1 / 2**20,
        rss_n_mib=rss_n / 2**20,
        new_version_s=latencies,
    )


def new_version_latency(
    client: Client, base: Path, name: str, model: BenchModel, version: int, timeout=30.0
) -> float:
    """Rename a complete version folder into place; poll Predict on it every 10 ms."""
    import grpc

    staging = base.parent / f".{base.name}-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(base / "1", staging)
    start = time.monotonic()
    staging.rename(base / str(version))
    while True:
        try:
            _, out = client.predict(model, version=version, name=name, timeout=5)
        except grpc.RpcError:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{name} v{version} not served after {timeout}s") from None
            time.sleep(0.01)
            continue
        if not model.expected(out):
            raise AssertionError(f"{name} v{version}: wrong output {out}")
        return time.monotonic() - start
