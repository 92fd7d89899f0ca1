"""`python -m loadtests`: write models, measure the floor, load the server, report.

Local by default (starts its own servers on loopback ports); with
--grpc-target / --rest-url it loads a remote server instead (see README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny models and durations: checks the bench works (make test)",
    )
    p.add_argument("--duration", type=float, help="seconds per load run (default 4; quick 0.5)")
    p.add_argument(
        "--concurrency",
        default=None,
        help="comma-separated outstanding requests (default 1,8,64; quick 4)",
    )
    p.add_argument("--models-count", type=int, help="models for the RSS check (default 50)")
    p.add_argument("--version-trials", type=int, help="new-version latency trials (default 3)")
    p.add_argument("--grpc-target", help="host:port of a running server to load instead")
    p.add_argument("--rest-url", help="http://host:port of a running server's REST API")
    p.add_argument(
        "--remote-label",
        default="remote",
        help="what to call the remote configuration in the table (e.g. 'on')",
    )
    p.add_argument(
        "--batching-parameters",
        type=Path,
        help="BatchingParameters text proto for the batching-on server",
    )
    p.add_argument(
        "--pin-client", metavar="CPUS", help="run wrk/h2load under `taskset -c CPUS` (e.g. 1)"
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=HERE / ".work",
        help="models, request bodies and server logs",
    )
    p.add_argument(
        "--out", type=Path, default=HERE / "results", help="where latest.json and latest.png go"
    )
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk/h2load")
    p.add_argument(
        "--write-models",
        type=Path,
        metavar="DIR",
        help="only write the benchmark models under DIR (to deploy remotely)",
    )
    args = p.parse_args(argv)
    args.duration = args.duration or (0.5 if args.quick else 4.0)
    conc = args.concurrency or ("4" if args.quick else "1,8,64")
    args.concurrency = [int(c) for c in conc.split(",")]
    args.models_count = args.models_count or (3 if args.quick else 50)
    args.version_trials = args.version_trials or (1 if args.quick else 3)
    args.remote = bool(args.grpc_target or args.rest_url)
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    from loadtests import models

    shape = models.QUICK_CNN if args.quick else models.CnnShape()
    if args.write_models:
        paths = models.write_models(args.write_models.resolve(), shape)
        print("wrote", ", ".join(str(p) for p in paths.values()))
        return 0
    from loadtests.generators import ToolMissing, ensure_tools

    try:
        ensure_tools(install=not args.no_install)
    except ToolMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from loadtests.bench import Bench

    started = time.monotonic()
    report = Bench(args, shape).run()
    print(f"\nbench finished in {time.monotonic() - started:.0f} s")
    errors = sum(r.result.errors for r in report.runs if r.result)
    return 1 if errors else 0
