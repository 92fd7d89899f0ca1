"""Device placement in-process: config rules, and where sessions really run.

The host has no GPU; TensorFlow splits its CPU into logical devices
(`ConfigProto.device_count`), so /CPU:0 and /CPU:1 stand in for two GPUs.
Placement is proven from the run's step stats (the devices that executed
each node), not from what we asked for.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from serving.devices import (
    DeviceConfigError,
    HostDevices,
    PlacementPlan,
    ReplicatedServable,
)
from serving.devices.config import parse_device_config
from serving.flags import parse_flags
from serving.servables.loader import load_placed
from serving.servables.session_bundle import SessionOptions
from serving.server import session_options

X = {"x": np.array([[1.0], [3.0]], np.float32)}
CPU_HOST = HostDevices(gpus=0)

# The docs' example for a 4-GPU node (docs/devices.md); kept in sync by hand.
FOUR_GPU_EXAMPLE = """
default { devices: "/GPU:0" memory_limit_mb: 4000 }
models { name: "resnet"  devices: "/GPU:1" devices: "/GPU:2" memory_limit_mb: 12000 }
models { name: "bert"    devices: "/GPU:3" memory_limit_mb: 9000 }
models { name: "ranker"  devices: "/GPU:3" memory_limit_mb: 5000 }
models { name: "tokenizer" devices: "/CPU:0" }
"""


def plan_for(text: str | None, host: HostDevices = CPU_HOST, **base) -> PlacementPlan:
    config = parse_device_config(text) if text is not None else None
    return PlacementPlan.build(config, host, SessionOptions(**base))


# ------------------------------------------------------------------ config


def test_config_canonicalises_device_names() -> None:
    config = parse_device_config(
        'cpu_devices: 2 models { name: "a" devices: "/device:cpu:1" devices: "CPU:0" }'
    )
    assert config.models["a"].devices == ("/CPU:1", "/CPU:0")
    assert config.cpu_devices == 2 and config.default is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('models { name: "a" devices: "/TPU:0" }', "invalid device name '/TPU:0'"),
        ('models { name: "a" devices: "GPU0" }', "invalid device name 'GPU0'"),
        ('models { name: "a" }', "devices"),
        ('models { name: "a" devices: "/CPU:0" memory_limit_mb: 10 }', "GPUs only"),
        ('models { name: "a" devices: "/GPU:0" devices: "/gpu:0" }', "listed twice"),
        (
            'models { name: "a" devices: "/CPU:0" } models { name: "a" devices: "/CPU:0" }',
            "'a' is listed twice",
        ),
        ('models { devices: "/CPU:0" }', "has no name"),
        (
            'models { name: "a" devices: "/GPU:0" allow_growth: true } '
            'models { name: "b" devices: "/GPU:1" allow_growth: false }',
            "process",
        ),
        ("models { nme: 1 }", "not a valid DeviceConfig text proto"),
    ],
)
def test_config_rejects(text: str, message: str) -> None:
    with pytest.raises(DeviceConfigError) as info:
        parse_device_config(text, "devices.pbtxt")
    assert message in str(info.value)
    assert str(info.value).startswith("devices.pbtxt: ")


def test_unknown_devices_are_named() -> None:
    with pytest.raises(DeviceConfigError) as info:
        plan_for('models { name: "resnet" devices: "/GPU:3" }')
    text = str(info.value)
    assert "device /GPU:3 assigned to model 'resnet' does not exist on this host" in text
    assert "devices here: /CPU:0" in text
    with pytest.raises(DeviceConfigError, match=r"/CPU:2 assigned to the default .*cpu_devices"):
        plan_for('cpu_devices: 2 default { devices: "/CPU:2" }')
    with pytest.raises(DeviceConfigError, match="/GPU:4"):
        plan_for(FOUR_GPU_EXAMPLE.replace("/GPU:3", "/GPU:4"), HostDevices(gpus=4))


def test_default_placement() -> None:
    # No device config: TF Serving's behaviour, the export's own pins kept.
    plain = plan_for(None)
    assert plain.default.devices == ("/CPU:0",) and plain.default.keep_export_devices
    assert plan_for(None, HostDevices(gpus=2)).default.devices == ("/GPU:0",)
    # A config without `default`: first GPU if any, else /CPU:0, whole graph moved.
    listed = plan_for('models { name: "a" devices: "/CPU:0" }')
    assert listed.default.devices == ("/CPU:0",) and not listed.default.keep_export_devices
    [options] = listed.session_options("unlisted")
    assert options.device == "/CPU:0" and options.clear_devices


def test_memory_caps_become_virtual_gpus() -> None:
    plan = plan_for(FOUR_GPU_EXAMPLE, HostDevices(gpus=4), allow_growth=None)
    # GPU:3 holds two capped models: two virtual GPUs, numbered after the others.
    assert plan.gpu_layout == ((4000,), (12000,), (12000,), (9000, 5000))
    virtual = plan.base_config().gpu_options.experimental.virtual_devices
    assert [list(v.memory_limit_mb) for v in virtual] == [[4000], [12000], [12000], [9000, 5000]]
    resnet = plan.session_options("resnet")
    assert [(o.device, o.device_label) for o in resnet] == [
        ("/device:GPU:1", "/GPU:1"),
        ("/device:GPU:2", "/GPU:2"),
    ]
    assert plan.session_options("ranker")[0].device == "/device:GPU:4"
    assert plan.session_options("anything")[0].device == "/device:GPU:0"
    assert plan.session_options("tokenizer")[0].device == "/CPU:0"
    # Every session gets the same process-wide GPU options.
    configs = {
        plan.session_options(m)[0].config_proto().gpu_options.SerializeToString()
        for m in ("resnet", "bert", "tokenizer", "other")
    }
    assert len(configs) == 1


def test_memory_cap_conflicts() -> None:
    with pytest.raises(DeviceConfigError, match="/GPU:0: models a set memory_limit_mb but b "):
        plan_for(
            'models { name: "a" devices: "/GPU:0" memory_limit_mb: 100 } '
            'models { name: "b" devices: "/GPU:0" } default { devices: "/GPU:1" }',
            HostDevices(gpus=2),
        )
    with pytest.raises(DeviceConfigError, match="per_process_gpu_memory_fraction cannot be"):
        plan_for(FOUR_GPU_EXAMPLE, HostDevices(gpus=4), gpu_memory_fraction=0.5)


def test_growth_reaches_every_session() -> None:
    plan = plan_for(
        'models { name: "a" devices: "/GPU:0" allow_growth: true } '
        'models { name: "b" devices: "/CPU:0" }',
        HostDevices(gpus=1),
    )
    for model in ("a", "b", "other"):
        assert plan.session_config(model).gpu_options.allow_growth


# ------------------------------------------------------------ real sessions


def hp2(model_store: Path) -> str:
    return str(model_store / "hp2_a")  # y = 0.5 x + 2


def test_flags_reach_the_session_config(model_store: Path) -> None:
    flags = parse_flags(
        [
            "--model_base_path=/m",
            "--tensorflow_intra_op_parallelism=3",
            "--tensorflow_inter_op_parallelism=5",
            "--per_process_gpu_memory_fraction=0.4",
        ]
    )
    plan = PlacementPlan.build(
        parse_device_config('cpu_devices: 2 default { devices: "/CPU:1" }'),
        CPU_HOST,
        session_options(flags),
    )
    servable = load_placed("m", 1, hp2(model_store), plan.session_options("m"))
    try:
        config = servable.config
        assert config.intra_op_parallelism_threads == 3
        assert config.inter_op_parallelism_threads == 5
        assert config.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.4)
        assert dict(config.device_count) == {"CPU": 2}
        assert config.allow_soft_placement
        assert servable.device == "/CPU:1"
    finally:
        servable.close()


@pytest.fixture(scope="module")
def two_cpu_plan() -> PlacementPlan:
    return plan_for(
        """
        cpu_devices: 2
        models { name: "on0" devices: "/CPU:0" }
        models { name: "on1" devices: "/CPU:1" }
        models { name: "both" devices: "/CPU:0" devices: "/CPU:1" }
        """
    )


def executed_on(servable, signature: str = "serving_default") -> set[str]:
    outputs, nodes = servable.trace(servable.signatures[signature], X)
    np.testing.assert_allclose(outputs["y"].ravel(), [2.5, 3.5])
    return {device for device, names in nodes.items() if names}


def test_each_model_runs_on_its_cpu(model_store: Path, two_cpu_plan: PlacementPlan) -> None:
    on0 = load_placed("on0", 1, hp2(model_store), two_cpu_plan.session_options("on0"))
    on1 = load_placed("on1", 1, hp2(model_store), two_cpu_plan.session_options("on1"))
    try:
        assert (on0.device, on1.device) == ("/CPU:0", "/CPU:1")
        assert executed_on(on0) == {"/CPU:0"}
        assert executed_on(on1) == {"/CPU:1"}
    finally:
        on0.close()
        on1.close()


def test_gpu_pinned_export_loads_with_a_warning(
    testdata: Path, two_cpu_plan: PlacementPlan, caplog
) -> None:
    path = str(testdata / "tf_serving/saved_model_half_plus_two_gpu/00000123")
    caplog.set_level(logging.WARNING, logger="serving.servables.session_bundle")
    moved = load_placed("on1", 1, path, two_cpu_plan.session_options("on1"))
    kept = load_placed("kept", 1, path, plan_for(None).session_options("kept"))
    try:
        assert executed_on(moved) == {"/CPU:1"}
        # Export pins kept (no device config): soft placement picks the CPU.
        assert executed_on(kept) == {"/CPU:0"}
        assert "/device:GPU:0" in {op.device for op in kept._graph.get_operations()}
    finally:
        moved.close()
        kept.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "pins ops to /device:GPU:0, not present here; placing the whole graph on /CPU:1" in m
        for m in messages
    )
    assert any("not present here; soft placement moves them" in m for m in messages)


def test_replicas_each_run_on_their_device(model_store: Path, two_cpu_plan) -> None:
    servable = load_placed("both", 1, hp2(model_store), two_cpu_plan.session_options("both"))
    try:
        assert isinstance(servable, ReplicatedServable)
        assert servable.device == "/CPU:0,/CPU:1"
        assert [executed_on(r) for r in servable.replicas] == [{"/CPU:0"}, {"/CPU:1"}]
        signature = servable.signatures["serving_default"]
        for _ in range(10):  # one caller alternates
            out = servable.run(signature, X, ["y"])
            np.testing.assert_allclose(out["y"].ravel(), [2.5, 3.5])
        assert servable.runs == [5, 5]

        def hammer() -> None:
            for _ in range(50):
                servable.run(signature, X, ["y"])

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(servable.runs) == 310
        # Calls take ~20 us (ops run in the calling thread), so in-flight
        # overlap is rare and the split follows the GIL's scheduling; what
        # matters is that concurrent load reaches both devices.
        assert min(servable.runs) > 310 // 10, servable.runs
    finally:
        servable.close()
