"""`make bench` in quick mode: the same code, tiny models and durations, so it never rots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtests.generators import ToolMissing, ensure_tools
from tests.harness import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    try:
        ensure_tools(install=False)
    except ToolMissing as exc:  # `make test` installs them (target loadtools)
        pytest.fail(str(exc))
    root = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests", "--quick", "--no-install",
         f"--work-dir={root / 'work'}", f"--out={root / 'out'}"],
        cwd=REPO, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root / "out", json.loads((root / "out" / "latest.json").read_text()), proc.stdout


def test_floor_measures_both_call_paths_on_the_session_loader(quick_bench):
    _, report, _ = quick_bench
    assert set(report["floors"]) == {"half_plus_two", "cnn"}
    for floor in report["floors"].values():
        assert floor["loader"] == "SessionServable"  # not the slow TF2 fallback
        assert floor["public_api"]["calls"] > 0 and floor["server_path"]["calls"] > 0
        assert {p["batch"] for p in floor["batches"]} >= {1, 64}
        assert all(p["cpu_us_per_row"] > 0 for p in floor["batches"])
    assert not any("object-graph" in n for n in report["meta"]["notes"])


def test_every_grpc_configuration_ran_without_errors(quick_bench):
    _, report, _ = quick_bench
    grpc_runs = [r for r in report["runs"] if r["protocol"] == "grpc"]
    assert {(r["model"], r["batching"]) for r in grpc_runs} == {
        (m, b) for m in ("half_plus_two", "cnn") for b in ("off", "on")
    }
    for run in grpc_runs:
        result = run["result"]
        assert result["tool"] == "h2load" and result["requests"] > 0, run
        assert result["errors"] == 0, run
        assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"], run
    assert report["meta"]["grpc_error_detection"].startswith("verified")


def test_rest_runs_use_wrk_when_the_server_has_rest(quick_bench):
    _, report, _ = quick_bench
    rest_runs = [r for r in report["runs"] if r["protocol"] == "rest"]
    assert len(rest_runs) == 4
    has_rest = (REPO / "serving" / "api" / "rest").is_dir()
    for run in rest_runs:
        if not has_rest:
            assert run["result"] is None and "no REST" in run["skipped"]
            continue
        assert run["result"]["tool"] == "wrk" and run["result"]["requests"] > 0, run
        assert run["result"]["errors"] == 0, run


def test_memory_and_new_version_latency(quick_bench):
    _, report, _ = quick_bench
    memory = report["memory"]
    assert memory["models"] == 3
    assert 0 < memory["rss_1_mib"] <= memory["rss_n_mib"] * 1.2
    assert len(memory["new_version_s"]) == 1 and 0 < memory["new_version_s"][0] < 10


def test_ceilings_runner_and_grpc_stack_alone(quick_bench):
    _, report, stdout = quick_bench
    ceilings = report["ceilings"]
    assert ceilings["model"] == "half_plus_two"
    assert {r["batching"] for r in ceilings["runner"]} == {"off", "on"}
    assert all(r["rps"] > 0 for r in ceilings["runner"])
    assert [e["concurrency"] for e in ceilings["grpc_echo"]] == report["meta"]["concurrency"]
    for echo in ceilings["grpc_echo"]:
        assert echo["result"]["requests"] > 0 and echo["result"]["errors"] == 0, echo
    assert "gRPC stack alone" in stdout
    assert not any("batching" in n for n in report["meta"]["notes"])
    # The naive batch-queue peer and the HTTP stack's fixed-body handler, same run.
    for peer in ("naive", "rest_fixed"):
        runs = ceilings[peer]
        assert [r["concurrency"] for r in runs] == report["meta"]["concurrency"], peer
        for run in runs:
            assert run["result"]["requests"] > 0 and run["result"]["errors"] == 0, run
            assert run["cpu_ms_per_1k"] > 0, run


def test_ratios_against_the_stacks_and_the_peer_and_cpu_per_request(quick_bench):
    _, report, stdout = quick_bench
    targets = {t["name"]: t for t in report["targets"]}
    wanted = ("bare grpc.aio ceiling", "naive batch-queue server", "fixed-body handler")
    for words in wanted:
        found = [t for name, t in targets.items() if words in name]
        assert found and all(t["met"] is not None for t in found), words
    for run in report["runs"]:
        assert run["cpu_ms_per_1k"] > 0, run  # from /proc, every local run
    assert "CPU ms/1k" in stdout
    # Where the ratios come from: CPU per request over each stack, the CNN's bound.
    costs = stdout.split("over the stack alone", 1)[1]
    top = max(report["meta"]["concurrency"])
    assert f"half_plus_two grpc c{top}: stack alone" in costs
    assert f"half_plus_two rest c{top}: stack alone" in costs and "batching off" in costs
    assert "cnn: the best batch costs" in costs and "of the best batch" in costs


def test_report_table_targets_and_plot(quick_bench):
    out, report, stdout = quick_bench
    names = [t["name"] for t in report["targets"]]
    assert any("RSS < 1 GiB" in n for n in names)
    assert any("batching on" in n for n in names)
    assert "Targets:" in stdout and "half_plus_two grpc" in stdout
    png = (out / "latest.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
