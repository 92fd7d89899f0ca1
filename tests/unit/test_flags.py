"""Flags parse exactly as tensorflow_model_server spells them."""

from __future__ import annotations

import pytest

from serving.flags import FlagError, ServerOptions, parse_flags, readme_table, usage
from tests.harness import REPO


def test_value_forms_and_booleans() -> None:
    o = parse_flags(
        [
            "--port=9000",
            "--rest_api_port",
            "9001",
            "--enable_batching",
            "--enable_model_warmup=false",
            "--model_name=m",
            "--model_base_path=/m",
        ]
    )
    assert (o.port, o.rest_api_port, o.enable_batching, o.enable_model_warmup) == (
        9000,
        9001,
        True,
        False,
    )
    assert parse_flags(["--enable_batching=true"]).enable_batching is True
    assert parse_flags(["--enable_batching=0"]).enable_batching is False


def test_defaults_match_tf_serving() -> None:
    o = ServerOptions()
    assert o.port == 8500
    assert o.rest_api_port == 0
    assert o.model_name == "default"
    assert o.file_system_poll_wait_seconds == 1
    assert o.max_num_load_retries == 5
    assert o.load_retry_interval_micros == 60_000_000
    assert o.saved_model_tags == "serve"
    assert o.rest_api_timeout_in_ms == 30000
    assert o.tags == frozenset({"serve"})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--no_such_flag=1"], "unknown command line flag 'no_such_flag'"),
        (["--port=abc"], "--port: expected int, got 'abc'"),
        (["--enable_batching=maybe"], "--enable_batching: expected true or false"),
        (["--port"], "--port needs a value"),
        (["positional"], "unexpected argument 'positional'"),
        (["--port=70000"], "port"),
        (["--grpc_channel_arguments=novalue"], "expected key=value"),
    ],
)
def test_bad_flags_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message.replace("(", r"\(")):
        parse_flags(argv)


def test_tflite_flags_parse() -> None:
    o = parse_flags(
        ["--prefer_tflite_model", "--num_tflite_pools=3", "--num_tflite_interpreters_per_pool=2"]
    )
    assert (o.prefer_tflite_model, o.num_tflite_pools, o.num_tflite_interpreters_per_pool) == (
        True,
        3,
        2,
    )


def test_channel_arguments_typed_like_tf_serving() -> None:
    o = parse_flags(["--grpc_channel_arguments=grpc.max_connection_age_ms=2000,lb=round_robin"])
    assert o.channel_arguments == [("grpc.max_connection_age_ms", 2000), ("lb", "round_robin")]


def test_session_parallelism_fills_both_pools() -> None:
    o = parse_flags(["--tensorflow_session_parallelism=3"])
    assert (o.intra_op_threads, o.inter_op_threads) == (3, 3)
    o = parse_flags(["--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=5"])
    assert (o.intra_op_threads, o.inter_op_threads) == (2, 5)


def test_per_model_batching_has_both_spellings() -> None:
    assert parse_flags(["--enable_per_model_batching_parameters"]).per_model_batching is True
    assert parse_flags(["--enable_per_model_batching_params=true"]).per_model_batching is True
    assert parse_flags([]).per_model_batching is False


def test_help_lists_every_field_with_its_default() -> None:
    lines = {line.split("=", 1)[0].strip(): line for line in usage().splitlines()[2:]}
    for name, field in ServerOptions.model_fields.items():
        default = field.default
        text = str(default).lower() if isinstance(default, bool) else repr(default)
        assert f"--{name}={text}\t" in lines[f"--{name}"], name
        assert (field.description or "") in lines[f"--{name}"], name
    assert (
        "--enable_per_model_batching_params=false\t" in lines["--enable_per_model_batching_params"]
    )


@pytest.mark.parametrize(
    "name", ["rest_api_num_threads", "flush_filesystem_caches", "skip_initialize_tpu"]
)
def test_inert_flags_are_accepted_and_marked(name: str) -> None:
    line = next(line for line in usage().splitlines() if line.startswith(f"\t--{name}="))
    assert "no effect" in line
    assert "no effect" not in next(line for line in usage().splitlines() if "--port=" in line)
    parse_flags([f"--{name}=1"])  # accepted


def test_readme_flags_table_is_generated() -> None:
    readme = (REPO / "README.md").read_text()
    assert readme_table() in readme, "run: python -m serving.flags --readme README.md"
