"""sandbox simulate PLAN [--json] [--trace FILE] [--plot FILE] [--failures]
[--failures-plot FILE] [--tokens N | --days D] [--set SECTION.KEY=VALUE ...]"""

from __future__ import annotations

import argparse
import json

from sandbox.commands._args import SEED_MAX, add_set, count, integer, number
from sandbox.errors import SandboxError

HELP = "predict a plan's step time, breakdown and memory with the discrete-event simulator"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", help="plan TOML file")
    p.add_argument("--json", action="store_true", help="print the JSON contract")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome-trace JSON (Perfetto)")
    p.add_argument("--plot", metavar="FILE", help="write a Gantt chart PNG of the step")
    p.add_argument("--failures", action="store_true",
                   help="add goodput, expected time to train and the checkpoint interval")
    p.add_argument("--failures-plot", metavar="FILE",
                   help="with --failures implied: write time to train against the "
                        "checkpoint interval as a PNG")
    p.add_argument("--seed", type=integer(0, SEED_MAX), default=0,
                   help="seed of the failure simulation (0 .. 2**32-1)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=count, metavar="N",
                        help="with --failures implied: the run's budget in tokens (15T, 300B, "
                             "2.5e12; default: the plan's train.steps)")
    budget.add_argument("--days", type=number(0.0, 1e6, low_open=True), metavar="D",
                        help="with --failures implied: the run's budget in days of "
                             "failure-free compute")
    add_set(p)


def _budget(args: argparse.Namespace) -> dict:
    """The failure report's budget keywords from --tokens / --days."""
    if args.tokens is not None:
        return {"tokens": args.tokens}
    if args.days is not None:
        return {"work_s": args.days * 86400.0}
    return {}


def _failures(plan, step_time_s: float, seed: int, budget: dict | None = None):
    try:
        from sim.failures import failure_report
    except ImportError:
        raise SandboxError("--failures: the failure model (sim/failures/) is not "
                           "available in this installation") from None
    return failure_report(plan, step_time_s, seed=seed, **(budget or {}))


# Contract fields format_result prints under its own labels; every other
# scalar or short list (failures, synchronisation variants, stragglers,
# balancing) follows under its JSON name.
SHOWN = {"params", "flops_per_step", "hw_flops_per_step", "step_time_s", "tokens_per_s",
         "tflops_per_gpu", "hw_tflops_per_gpu", "mfu", "hfu", "memory_gb_per_gpu", "fits",
         "breakdown_s", "events", "sim_wall_s", "gpu_memory_gb", "memory_reserve"}


def _short(v: object) -> bool:
    return not isinstance(v, dict | list | tuple) or len(v) <= 8 and not any(
        isinstance(x, dict | list | tuple) for x in v)


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def format_result(d: dict) -> str:
    """The contract as aligned text (`sandbox.units`: percent, SI-scaled seconds, GiB)."""
    from sandbox import units as u
    from sandbox.info import fits_line

    bd, mem, step = d["breakdown_s"], d["memory_gb_per_gpu"], d["step_time_s"]
    rows = [("parameters", u.params(d["params"])),
            ("step time", u.seconds(step)),
            ("throughput", u.rate(d["tokens_per_s"])),
            ("FLOP/s per GPU (model / hw)",
             f"{u.flops_rate(d['tflops_per_gpu'] * 1e12)} / "
             f"{u.flops_rate(d['hw_tflops_per_gpu'] * 1e12)}"),
            ("MFU / HFU", f"{u.percent(d['mfu'])} / {u.percent(d['hfu'])}")]
    rows += [(f"  {k}", f"{u.seconds(v, of=step)}  ({u.percent(v / step)})")
             for k, v in bd.items()]
    rows += [("memory per GPU", u.gib(mem["total"])),
             ("fits", fits_line(d)),
             ("events / simulator wall", f"{d['events']:,} / {u.seconds(d['sim_wall_s'])}")]
    rows += [(k, _value(v)) for k, v in d.items() if k not in SHOWN and _short(v)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse a bad --trace, --plot or --failures-plot before simulating."""
    from sandbox.outputs import IMAGE_SUFFIXES, output_file

    if args.trace is not None:
        output_file(args.trace, "--trace", (".json",))
    for flag, path in (("--plot", args.plot), ("--failures-plot", args.failures_plot)):
        if path is not None:
            output_file(path, flag, IMAGE_SUFFIXES)


def main(args: argparse.Namespace) -> int:
    import sandbox
    from sandbox.calibration import warn_uncalibrated
    from sandbox.outputs import save_figure, writing

    check_outputs(args)
    plan = sandbox.load(args.plan, overrides=args.set)
    args.failures = (args.failures or args.failures_plot is not None
                     or args.tokens is not None or args.days is not None)
    if args.failures:  # fail early, before simulating, if the module is missing
        try:
            from sim.failures import check_failure_inputs
        except ImportError:
            _failures(plan, 0.0, args.seed)
        check_failure_inputs(plan, args.seed, **_budget(args))
    result = sandbox.simulate(plan, timeline=args.trace is not None or args.plot is not None)
    d, failures = result.to_dict(), {}
    if args.failures:
        report = _failures(plan, result.step_time_s, args.seed, _budget(args))
        failures = report.to_dict()
        d.update(failures)
        if args.failures_plot is not None:
            from sandbox.failures_view import plot_interval_sweep

            save_figure(plot_interval_sweep(report), args.failures_plot, "--failures-plot",
                        dpi=120)
    if args.trace is not None:
        with writing(args.trace, "--trace"):
            result.chrome_trace(args.trace)
    if args.plot is not None:
        from sandbox.plots import plan_title

        save_figure(result.plot(title=plan_title(plan)), args.plot, "--plot")
    warn_uncalibrated([plan.cluster])
    if args.json:
        print(json.dumps(d, indent=2))
    else:  # the failure report as its own table, not field by field
        print(format_result({k: v for k, v in d.items() if k not in failures}))
        if failures:
            from sandbox.failures_view import format_failures

            print(format_failures(failures))
    wrote(args, [args.trace, args.plot, args.failures_plot])
    return 0


def wrote(args: argparse.Namespace, paths: list) -> None:
    """A "wrote FILE" line per file written: stdout, or stderr under --json
    (which keeps stdout pure JSON)."""
    import sys

    for path in paths:
        if path is not None:
            print(f"wrote {path}", file=sys.stderr if getattr(args, "json", False) else sys.stdout)
