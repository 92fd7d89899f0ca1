"""One bench run: servers up, memory, floor, load matrix, report.

Order matters on a small machine: the memory server's 50-model load runs
first and is stopped before anything is timed; the floor is measured while
the load servers sit idle; off/on runs of one configuration run back to
back so their ratio sees the same background load. For the same reason the
stack ceilings and the naive peer are loaded in the same slot as the server
runs they are compared with (half_plus_two: ceiling, off, on, peer for each
protocol and concurrency), not minutes apart: a shared machine's speed
drifts by more than the differences being measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from loadtests import ceilings, floor, generators, memory, models
from loadtests.report import Report, Run, plot, render, targets
from loadtests.servers import OBJECT_GRAPH_LOG, Client, LocalServer, models_config

LIVE_PATH = "/v1/health/live"  # the REST server's fixed-body handler

REPO = Path(__file__).resolve().parent.parent

# The configuration the ratios are specified for: no batch waits for a timeout.
DEFAULT_BATCHING = """\
max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: %d }
"""


def git_meta() -> dict:
    def git(*cmd: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "log": git("log", "--oneline", "-12").splitlines()}


class Bench:
    def __init__(self, args: argparse.Namespace, shape: models.CnnShape) -> None:
        self.args = args
        self.shape = shape
        self.work: Path = args.work_dir.resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.models = models.bench_models(shape)
        self.servers: dict[str, LocalServer] = {}
        self.notes: list[str] = []
        self.naive: ceilings.PeerServer | None = None
        self.echo: ceilings.PeerServer | None = None
        self.echo_frame = self.naive_frame = 0
        # Stack ceilings and the naive peer, loaded beside the server runs.
        self.peer_runs: dict[str, list[ceilings.EchoRun]] = {
            "grpc_echo": [],
            "naive": [],
            "rest_fixed": [],
        }
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {message}", flush=True)

    # ------------------------------------------------------------------ setup

    def write_inputs(self) -> None:
        """Models (servers already watch their folders), request bodies."""
        n = self.shape.parameters
        self.say(f"writing models under {self.work / 'models'} (cnn: {n:,} parameters)")
        paths = models.write_models(self.work / "models", self.shape)
        if self.memory_models:
            memory.fill(paths[models.HALF_PLUS_TWO] / "1", self.memory_models)
        for name, model in self.models.items():
            (self.work / f"{name}.grpc").write_bytes(models.grpc_body(model))
            (self.work / f"{name}.json").write_bytes(models.rest_body(model))
        bad = models.BenchModel("no_such_model", "x", "y", self.models[models.HALF_PLUS_TWO].row)
        (self.work / "bad.grpc").write_bytes(models.grpc_body(bad))

    def start_servers(self) -> None:
        """All local servers at once, before the models exist: their TensorFlow
        imports overlap each other and the model writing; they load the
        versions as they appear (poll 1 s)."""
        config = self.work / "models.config"
        config.write_text(models_config(self.paths))
        params = self.batching_parameters()
        common = [f"--model_config_file={config}", "--file_system_poll_wait_seconds=1"]
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        self.say("starting servers: batching off, batching on, memory")
        self.servers["off"] = LocalServer("off", common, logs)
        self.servers["on"] = LocalServer(
            "on", [*common, "--enable_batching", f"--batching_parameters_file={params}"], logs
        )
        self.servers["memory"] = memory.start(self.work / "memory", self.memory_models, logs)

    def batching_parameters(self) -> Path:
        """The batching-on server's BatchingParameters file (written unless given)."""
        params = self.args.batching_parameters
        if params is None:
            params = self.work / "batching.pbtxt"
            params.write_text(DEFAULT_BATCHING % (os.cpu_count() or 2))
        return params

    # ------------------------------------------------------------------ phases

    def run(self) -> Report:
        args = self.args
        self.paths = models.model_dirs(self.work / "models", self.shape)
        self.memory_models = (
            {} if args.remote else memory.model_dirs(self.work / "memory", args.models_count)
        )
        memory_result = None
        try:
            if not args.remote:
                self.start_servers()
            self.write_inputs()
            if not args.remote:
                # Its TensorFlow import overlaps the memory measurement.
                self.naive = ceilings.naive_server(
                    self.models[models.HALF_PLUS_TWO],
                    self.paths[models.HALF_PLUS_TWO] / "1",
                    self.work,
                )
                self.say("measuring memory and new-version latency ...")
                memory_result = memory.measure(
                    self.servers["memory"],
                    self.memory_models,
                    self.models[models.HALF_PLUS_TWO],
                    args.version_trials,
                )
                self.stop("memory")
                for label in ("off", "on"):
                    server = self.servers[label]
                    client = Client(server.grpc_target)
                    client.wait_available(list(self.models), 180, server.check_alive)
                    client.close()
                    if OBJECT_GRAPH_LOG in server.logs():
                        self.notes.append(
                            f"server {label}: a bench model took the slow TF2 object-graph loader"
                        )
                    # The server's own start-up line says whether it batches.
                    if (label == "on") != (" batching=on" in server.logs()):
                        self.notes.append(f"server {label}: start-up log disagrees on batching")
            self.say("measuring the in-process floor ...")
            seconds = 0.3 if args.quick else 1.5
            sizes = [1, 8, 32, 64, 128, 256]
            floors = {
                name: floor.measure(model, self.paths[name] / "1", seconds, sizes)
                for name, model in self.models.items()
            }
            self.start_echo()
            runs = self.load_matrix()
            self.say("measuring the in-process ceiling (the Runner) ...")
            ceiling = self.measure_ceilings(seconds)
        finally:
            self.stop(*self.servers)
            for peer in (self.naive, self.echo):
                if peer is not None:
                    peer.stop()
        report = Report(
            meta=self.meta(), floors=floors, runs=runs, memory=memory_result, ceilings=ceiling
        )
        report.targets = targets(report)
        self.write(report)
        return report

    def measure_ceilings(self, seconds: float) -> ceilings.Ceilings:
        """half_plus_two through the Runner in-process, with the stack ceilings
        and the peer loaded during the load matrix."""
        model = self.models[models.HALF_PLUS_TWO]
        version_dir = self.paths[models.HALF_PLUS_TWO] / "1"
        top = max(self.args.concurrency)
        runner = [
            ceilings.runner_rate(model, version_dir, seconds, top, params)
            for params in (None, self.batching_parameters())
        ]
        return ceilings.Ceilings(model=model.name, runner=runner, **self.peer_runs)

    def start_echo(self) -> None:
        """The gRPC stack alone, answering what the server answers half_plus_two;
        it starts while the naive peer checks in."""
        target = next((t for t, _rest in self.endpoints().values() if t), None)
        if target:
            client = Client(target)
            try:
                response, _ = client.predict(self.models[models.HALF_PLUS_TWO])
            finally:
                client.close()
            self.echo = ceilings.echo_server(response.SerializeToString(), self.work)
            self.echo.wait()
            self.echo_frame = 5 + response.ByteSize()
        naive = self.naive
        if naive is not None:
            naive.wait()
            client = Client(naive.grpc_target)
            try:
                response, out = client.predict(self.models[models.HALF_PLUS_TWO])
            finally:
                client.close()
            if not self.models[models.HALF_PLUS_TWO].expected(out):
                raise AssertionError(f"naive server: wrong answer {out}")
            self.naive_frame = 5 + response.ByteSize()

    def ceiling_run(self, protocol: str, conc: int) -> None:
        """The stack alone at `conc`, just before the servers' half_plus_two runs."""
        if protocol == "grpc":
            if self.echo is not None:
                self.peer_runs["grpc_echo"].append(self.grpc_run(self.echo, self.echo_frame, conc))
            return
        rest = next((r for _t, r in self.endpoints().values() if r), None)
        if rest:
            pid = self.servers["off"].proc.pid if "off" in self.servers else None
            cpu = ceilings.cpu_seconds(pid) if pid else 0.0
            r = generators.wrk_http(
                f"{rest}{LIVE_PATH}", None, conc, self.args.duration, self.args.pin_client
            )
            used = ceilings.per_1k(ceilings.cpu_seconds(pid) - cpu, r.requests) if pid else None
            self.peer_runs["rest_fixed"].append(
                ceilings.EchoRun(concurrency=conc, result=r, cpu_ms_per_1k=used)
            )

    def grpc_run(self, server: ceilings.PeerServer, frame: int, conc: int) -> ceilings.EchoRun:
        cpu = ceilings.cpu_seconds(server.proc.pid)
        r = generators.h2load_grpc(
            f"http://{server.grpc_target}",
            self.work / f"{models.HALF_PLUS_TWO}.grpc",
            conc,
            self.args.duration,
            frame,
            self.args.pin_client,
        )
        used = ceilings.per_1k(ceilings.cpu_seconds(server.proc.pid) - cpu, r.requests)
        return ceilings.EchoRun(concurrency=conc, result=r, cpu_ms_per_1k=used)

    def endpoints(self) -> dict[str, tuple[str | None, str | None]]:
        """batching label → (gRPC target, REST base URL)."""
        if self.args.remote:
            return {self.args.remote_label: (self.args.grpc_target, self.args.rest_url)}
        return {
            label: (server.grpc_target, server.rest_url)
            for label, server in self.servers.items()
            if label in ("off", "on")
        }

    def load_matrix(self) -> list[Run]:
        args = self.args
        endpoints = self.endpoints()
        frames = self.check_endpoints(endpoints)
        runs: list[Run] = []
        for name in self.models:
            for protocol in ("grpc", "rest"):
                for conc in args.concurrency:
                    compared = name == models.HALF_PLUS_TWO
                    if compared:
                        self.ceiling_run(protocol, conc)
                    for label, (target, rest) in endpoints.items():
                        run = Run(model=name, protocol=protocol, batching=label, concurrency=conc)
                        runs.append(run)
                        server = self.servers.get(label)
                        cpu = ceilings.cpu_seconds(server.proc.pid) if server else 0.0
                        if protocol == "grpc" and not target:
                            run.skipped = "no gRPC target"
                        elif protocol == "rest" and not rest:
                            run.skipped = "no REST endpoint (server has no REST API yet?)"
                        elif protocol == "grpc":
                            run.result = generators.h2load_grpc(
                                f"http://{target}",
                                self.work / f"{name}.grpc",
                                conc,
                                args.duration,
                                frames[(label, name)],
                                args.pin_client,
                            )
                        else:
                            run.result = generators.wrk_http(
                                f"{rest}/v1/models/{name}:predict",
                                self.work / f"{name}.json",
                                conc,
                                args.duration,
                                args.pin_client,
                            )
                        r = run.result
                        if server and r:
                            run.cpu_ms_per_1k = ceilings.per_1k(
                                ceilings.cpu_seconds(server.proc.pid) - cpu, r.requests
                            )
                        self.say(
                            f"  {name:<14}{protocol:<5}{label:<7}c{conc:<4}"
                            + (
                                f"{r.rps:8.0f} req/s  p99 {r.p99_ms:7.2f} ms  errors {r.errors}"
                                if r
                                else run.skipped
                            )
                        )
                    if compared and protocol == "grpc" and self.naive is not None:
                        self.peer_runs["naive"].append(
                            self.grpc_run(self.naive, self.naive_frame, conc)
                        )
        self.check_endpoints(endpoints)  # the server still answers correctly after the load
        return runs

    def check_endpoints(self, endpoints) -> dict[tuple[str, str], int]:
        """Python-client checks: right answers, and h2load sees gRPC errors here.

        Returns each (endpoint, model)'s framed response size for h2load's
        error count.
        """
        frames = {}
        for label, (target, _rest) in endpoints.items():
            if not target:
                continue
            client = Client(target)
            try:
                for name, model in self.models.items():
                    response, out = client.predict(model)
                    if not model.expected(out):
                        raise AssertionError(f"{label}/{name}: wrong answer {out}")
                    frames[(label, name)] = 5 + response.ByteSize()
            finally:
                client.close()
            bad = generators.h2load_count(
                f"http://{target}",
                self.work / "bad.grpc",
                20,
                frames[(label, models.HALF_PLUS_TWO)],
            )
            if bad.errors != bad.requests:
                raise AssertionError(
                    f"h2load error detection failed on {label}: {bad.errors} of {bad.requests} "
                    "requests for an unknown model counted as errors"
                )
        return frames

    # ------------------------------------------------------------------ output

    def meta(self) -> dict:
        args = self.args
        return {
            "mode": "quick" if args.quick else "full",
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "pin_client": args.pin_client,
            "remote": {"grpc": args.grpc_target, "rest": args.rest_url} if args.remote else None,
            "cnn": {**self.shape.__dict__, "parameters": self.shape.parameters},
            "grpc_error_detection": "verified: unknown-model requests all counted as errors",
            "notes": self.notes,
            **git_meta(),
        }

    def write(self, report: Report) -> None:
        out = self.args.out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        (out / "latest.json").write_text(report.model_dump_json(indent=2))
        plot(report, out / "latest.png")
        text = render(report)
        (out / "latest.txt").write_text(text + "\n")
        print("\n" + text, flush=True)
        for note in self.notes:
            self.say(f"note: {note}")
        self.say(f"\nwrote {out / 'latest.json'}, {out / 'latest.png'}")

    def stop(self, *labels: str) -> None:
        """SIGTERM all first, then wait: their shutdowns overlap."""
        servers = [self.servers.pop(label) for label in labels if label in self.servers]
        for server in servers:
            server.terminate()
        for server in servers:
            server.stop()
