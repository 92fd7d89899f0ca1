"""The bench's table, its target checks, latest.json and the plot."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel

from loadtests.ceilings import Ceilings
from loadtests.floor import Floor
from loadtests.generators import LoadResult
from loadtests.memory import MemoryResult
from loadtests.models import CNN, HALF_PLUS_TWO


class Run(BaseModel):
    model: str
    protocol: str  # grpc | rest
    batching: str  # off | on | remote
    concurrency: int
    result: LoadResult | None = None
    skipped: str = ""  # why there is no result
    cpu_ms_per_1k: float | None = None  # server process CPU per 1,000 requests (local only)


class Target(BaseModel):
    name: str
    measured: str
    required: str
    met: bool | None  # None: not measured in this run


class Report(BaseModel):
    meta: dict
    floors: dict[str, Floor]
    runs: list[Run]
    memory: MemoryResult | None
    ceilings: Ceilings | None = None
    targets: list[Target] = []


def find(runs: list[Run], model: str, protocol: str, batching: str, conc: int) -> LoadResult | None:
    for run in runs:
        key = (run.model, run.protocol, run.batching, run.concurrency)
        if key == (model, protocol, batching, conc) and run.result and not run.result.errors:
            return run.result
    return None


def targets(report: Report) -> list[Target]:
    """The server's performance targets; call-time ones checked against both floors."""
    out: list[Target] = []
    runs = report.runs
    top = max((r.concurrency for r in runs), default=64)
    hp2 = report.floors.get(HALF_PLUS_TWO)
    floors = []
    if hp2:
        floors = [("server call path", hp2.server_path), ("public API", hp2.public_api)]

    def add(name: str, measured: str, required: str, met: bool | None) -> None:
        out.append(Target(name=name, measured=measured, required=required, met=met))

    c1 = next(
        (r for b in ("off", "remote", "on") if (r := find(runs, HALF_PLUS_TWO, "grpc", b, 1))),
        None,
    )
    for label, floor in floors:
        add(
            f"gRPC half_plus_two c1 mean ≤ in-process ({label}) + 300 µs",
            f"{c1.mean_ms * 1e3:.0f} µs" if c1 else "n/a",
            f"≤ {floor.mean_us + 300:.0f} µs",
            c1.mean_ms * 1e3 <= floor.mean_us + 300 if c1 else None,
        )
    on = find(runs, HALF_PLUS_TWO, "grpc", "on", top)
    off = find(runs, HALF_PLUS_TWO, "grpc", "off", top)
    for label, floor in floors:
        add(
            f"gRPC half_plus_two c{top} batching on ≥ 70% of in-process rate ({label})",
            f"{on.rps:.0f} req/s = {on.rps / floor.rate:.0%}" if on else "n/a",
            f"≥ {0.7 * floor.rate:.0f} req/s",
            on.rps >= 0.7 * floor.rate if on else None,
        )
    add(
        f"gRPC half_plus_two c{top}: batching on ≥ 2x off",
        f"{on.rps / off.rps:.2f}x" if on and off else "n/a",
        "≥ 2x",
        on.rps >= 2 * off.rps if on and off else None,
    )
    out.extend(stack_targets(report, top))
    cnn = report.floors.get(CNN)
    cnn_on = find(runs, CNN, "grpc", "on", top)
    if cnn:
        best = cnn.best_batch
        add(
            f"cnn c{top} batching on ≥ 85% of in-process best batch (gRPC)",
            f"{cnn_on.rps:.0f} req/s = {cnn_on.rps / best.rows_per_s:.0%}" if cnn_on else "n/a",
            f"≥ {0.85 * best.rows_per_s:.0f} rows/s (batch {best.batch})",
            cnn_on.rps >= 0.85 * best.rows_per_s if cnn_on else None,
        )
    for model in (HALF_PLUS_TWO, CNN):
        for batching in ("off", "on", "remote"):
            grpc_r = find(runs, model, "grpc", batching, top)
            rest_r = find(runs, model, "rest", batching, top)
            if not (grpc_r or rest_r):
                continue
            add(
                f"REST c{top} ≥ 50% of gRPC ({model}, batching {batching})",
                f"{rest_r.rps / grpc_r.rps:.0%}" if grpc_r and rest_r else "n/a",
                "≥ 50%",
                rest_r.rps >= 0.5 * grpc_r.rps if grpc_r and rest_r else None,
            )
    mem = report.memory
    if mem:
        add(
            f"{mem.models} half_plus_two models: RSS < 1 GiB",
            f"{mem.rss_n_mib:.0f} MiB (1 model: {mem.rss_1_mib:.0f} MiB)",
            "< 1024 MiB",
            mem.rss_n_mib < 1024,
        )
        add(
            "new version served within 2 s of its folder appearing (poll 1 s)",
            f"worst {mem.worst_new_version_s:.2f} s of {len(mem.new_version_s)}",
            "≤ 2 s",
            mem.worst_new_version_s <= 2.0,
        )
    return out


def _ceiling(runs: list, conc: int) -> LoadResult | None:
    return next(
        (
            e.result
            for e in runs
            if e.concurrency == conc and e.result.requests and not e.result.errors
        ),
        None,
    )


def stack_targets(report: Report, top: int) -> list[Target]:
    """The server against its own protocol stacks and a hand-written peer, same run."""
    c = report.ceilings
    if c is None:
        return []
    out: list[Target] = []
    runs = report.runs

    def ratio(name: str, ours: LoadResult | None, base: LoadResult | None, need: float) -> None:
        out.append(
            Target(
                name=name,
                measured=f"{ours.rps:.0f} / {base.rps:.0f} req/s = {ours.rps / base.rps:.2f}x"
                if ours and base and base.rps
                else "n/a",
                required=f"≥ {need:g}x",
                met=ours.rps >= need * base.rps if ours and base and base.rps else None,
            )
        )

    echo = _ceiling(c.grpc_echo, top)
    on = find(runs, HALF_PLUS_TWO, "grpc", "on", top)
    off = find(runs, HALF_PLUS_TWO, "grpc", "off", top)
    bare = "the bare grpc.aio ceiling"
    ratio(f"gRPC half_plus_two c{top} batching on ≥ 0.6x {bare}", on, echo, 0.6)
    ratio(f"gRPC half_plus_two c{top} batching off ≥ 0.5x {bare}", off, echo, 0.5)
    ratio(
        f"gRPC half_plus_two c{top} batching on ≥ 1.3x the naive batch-queue server",
        on,
        _ceiling(c.naive, top),
        1.3,
    )
    echo1 = _ceiling(c.grpc_echo, 1)
    for label in ("on", "off"):
        r = find(runs, HALF_PLUS_TWO, "grpc", label, 1)
        out.append(
            Target(
                name=f"gRPC half_plus_two c1 mean, batching {label} ≤ the ceiling's + 120 µs",
                measured=f"{r.mean_ms * 1e3:.0f} µs" if r else "n/a",
                required=f"≤ {echo1.mean_ms * 1e3 + 120:.0f} µs" if echo1 else "n/a",
                met=r.mean_ms <= echo1.mean_ms + 0.12 if r and echo1 else None,
            )
        )
    for label in ("off", "on"):
        if find(runs, HALF_PLUS_TWO, "rest", label, top) or label == "off":
            ratio(
                f"REST predict c{top} batching {label} ≥ 0.35x a fixed-body handler "
                "on the same HTTP server",
                find(runs, HALF_PLUS_TWO, "rest", label, top),
                _ceiling(c.rest_fixed, top),
                0.35,
            )
    return out


def _cpu_per_request(report: Report, model: str, protocol: str, batching: str, conc: int):
    for run in report.runs:
        if (run.model, run.protocol, run.batching, run.concurrency) == (
            model,
            protocol,
            batching,
            conc,
        ):
            return run.cpu_ms_per_1k  # ms per 1,000 requests = µs per request
    return None


def stack_costs(report: Report) -> list[str]:
    """Server CPU per request over its protocol stack alone, and what the machine allows
    the CNN: the ratios' causes, from the same run."""
    c = report.ceilings
    if c is None:
        return []
    top = max((r.concurrency for r in report.runs), default=64)
    lines = ["Server CPU per request over the stack alone (µs, same run):"]
    for protocol, stack, conc in (
        ("grpc", c.grpc_echo, 1),
        ("grpc", c.grpc_echo, top),
        ("rest", c.rest_fixed, top),
    ):
        base = next((e.cpu_ms_per_1k for e in stack if e.concurrency == conc), None)
        if base is None:
            continue
        parts = []
        for batching in ("off", "on"):
            ours = _cpu_per_request(report, HALF_PLUS_TWO, protocol, batching, conc)
            if ours is not None:
                parts.append(f"batching {batching} {ours:.0f} (+{ours - base:.0f})")
        if parts:
            lines.append(
                f"  half_plus_two {protocol} c{conc}: stack alone {base:.0f}; " + ", ".join(parts)
            )
    cnn = report.floors.get(CNN)
    echo = next((e.cpu_ms_per_1k for e in c.grpc_echo if e.concurrency == top), None)
    cores = report.meta.get("cpus")
    if cnn and echo and cores and cnn.best_batch.cpu_us_per_row:
        best = cnn.best_batch
        row = best.cpu_us_per_row
        bound = cores * 1e6 / (row + echo)
        lines.append(
            f"  cnn: the best batch costs {row:.0f} µs of CPU per row and the gRPC stack alone"
            f" {echo:.0f} per request, so {cores} cores serve at most {bound:.0f} req/s"
            f" = {bound / best.rows_per_s:.0%} of the best batch, before the load generator's"
            " and the request path's own share"
        )
    return lines


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def render(report: Report) -> str:
    lines = ["In-process floor (one thread, batch of one; best batch via the server call path):"]
    lines.append(
        f"  {'model':<14}{'loader':<17}{'public API µs':>14}{'server path µs':>16}"
        f"{'best batch rows/s':>19}"
    )
    for f in report.floors.values():
        best = f.best_batch
        lines.append(
            f"  {f.model:<14}{f.loader:<17}{f.public_api.mean_us:>14.0f}"
            f"{f.server_path.mean_us:>16.0f}{best.rows_per_s:>13.0f} @{best.batch:<4}"
        )
    if report.ceilings:
        c = report.ceilings
        lines.append("")
        lines.append(f"Ceilings ({c.model}):")
        for r in c.runner:
            lines.append(
                f"  in-process through the Runner, c{r.concurrency}, batching {r.batching}:"
                f" {r.rps:.0f} req/s"
            )
        for title, peer in (
            ("gRPC stack alone (bare grpc.aio, fixed PredictResponse)", c.grpc_echo),
            ("naive batch-queue server (peer)", c.naive),
            ("HTTP stack alone (REST server's fixed-body handler)", c.rest_fixed),
        ):
            for e in peer:
                lines.append(
                    f"  {title}, c{e.concurrency}: {e.result.rps:.0f} req/s,"
                    f" mean {_fmt(e.result.mean_ms * 1e3, 0)} µs, p99 {_fmt(e.result.p99_ms)} ms,"
                    f" CPU {_fmt(e.cpu_ms_per_1k, 0)} ms/1k req, errors {e.result.errors}"
                )
    lines.append("")
    lines.append(
        f"  {'model':<14}{'proto':<6}{'batch':<7}{'conc':>5}{'req/s':>10}{'p50 ms':>9}"
        f"{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'errors':>8}{'CPU ms/1k':>11}"
    )
    for run in report.runs:
        head = f"  {run.model:<14}{run.protocol:<6}{run.batching:<7}{run.concurrency:>5}"
        r = run.result
        if r is None:
            lines.append(f"{head}  skipped: {run.skipped}")
            continue
        lines.append(
            f"{head}{r.rps:>10.0f}{_fmt(r.p50_ms):>9}{_fmt(r.p90_ms):>9}{_fmt(r.p99_ms):>9}"
            f"{_fmt(r.mean_ms):>9}{r.errors:>8}{_fmt(run.cpu_ms_per_1k, 0):>11}"
        )
    costs = stack_costs(report)
    if costs:
        lines.append("")
        lines.extend(costs)
    if report.memory:
        m = report.memory
        lines.append("")
        lines.append(
            f"Memory: RSS {m.rss_1_mib:.0f} MiB with 1 half_plus_two, {m.rss_n_mib:.0f} MiB with "
            f"{m.models}; new version served after "
            + ", ".join(f"{s:.2f}" for s in m.new_version_s)
            + " s"
        )
    lines.append("")
    lines.append("Targets:")
    for t in report.targets:
        verdict = {True: "MET    ", False: "NOT MET", None: "n/a    "}[t.met]
        lines.append(f"  {verdict} {t.name}: {t.measured} (needs {t.required})")
    return "\n".join(lines)


def plot(report: Report, path: Path) -> None:
    """Throughput against p99 latency, one line per (protocol, batching), per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    models = [m for m in (HALF_PLUS_TWO, CNN) if any(r.model == m for r in report.runs)]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 6), squeeze=False)
    styles = {"grpc": "-", "rest": "--"}
    colors = {"off": "tab:blue", "on": "tab:orange", "remote": "tab:green"}
    for ax, model in zip(axes[0], models, strict=True):
        series: dict[tuple[str, str], list[Run]] = {}
        for run in report.runs:
            if run.model == model and run.result and run.result.requests:
                series.setdefault((run.protocol, run.batching), []).append(run)
        for (protocol, batching), runs in sorted(series.items()):
            runs.sort(key=lambda r: r.concurrency)
            xs = [r.result.rps for r in runs]
            ys = [r.result.p99_ms for r in runs]
            ax.plot(
                xs,
                ys,
                styles.get(protocol, ":"),
                marker="o" if protocol == "grpc" else "s",
                color=colors.get(batching, "gray"),
                label=f"{protocol}, batching {batching}",
            )
            for r, x, y in zip(runs, xs, ys, strict=True):
                ax.annotate(
                    f"c{r.concurrency}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
        data_x = [x for runs in series.values() for r in runs if (x := r.result.rps) > 0]
        lo, hi = min(data_x, default=1.0) / 1.6, max(data_x, default=10.0) * 1.6
        floor = report.floors.get(model)
        if floor:
            lines = [
                (floor.public_api.rate, "gray", ":", "in-process, public API"),
                (floor.server_path.rate, "black", ":", "in-process, server path"),
            ]
            if model == CNN:
                best = floor.best_batch
                lines.append((best.rows_per_s, "red", "-.", f"in-process, best batch {best.batch}"))
            # Show a floor line when it is within 4x of the data; else name it only.
            hi = max([hi, *(x * 1.2 for x, *_ in lines if x < hi * 4)])
            for x, color, ls, label in lines:
                text = f"{label}: {x:,.0f}/s" + ("" if x <= hi else " (off scale)")
                ax.axvline(x if x <= hi else float("nan"), color=color, ls=ls, label=text)
        ax.set_xlim(lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("throughput (requests/s, log); solid o = gRPC, dashed s = REST")
        ax.set_ylabel("p99 latency (ms, log)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    meta = report.meta
    fig.suptitle(
        f"model-server bench ({meta.get('mode')}, {meta.get('when')}, "
        f"{meta.get('cpus')} CPUs, commit {meta.get('commit', '?')[:10]})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
