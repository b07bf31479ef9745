"""Fuzz cases of the command line itself: output paths (missing folder, a folder
where a file belongs and back, read-only, unsupported extension, empty, a full
disk), input paths (too long, a NUL byte, TOML nested 100k deep, a broken
profile, a corrupt model.report.json) and numeric flags (negative, zero, NaN,
inf, lone surrogates). Each must be one line and a non-zero exit, before any work."""

from __future__ import annotations

from pathlib import Path

from experiments.fuzz.case import Case, plan_text, unchanged_root

PLAN = plan_text(train="steps = 2")
LONG = "a" * 300  # one name longer than NAME_MAX (255)
DEEP_ARRAY = "[model]\npreset = \"tiny\"\n[train]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n"
DEEP_TABLE = "a = " + "{b = " * 50_000 + "1" + "}" * 50_000 + "\n"


def _setup(d: Path) -> None:
    (d / "afile").write_text("not a folder\n")
    (d / "adir").mkdir()


def _c(name: str, argv: list, **kw) -> Case:
    files = {"plan.toml": PLAN, **kw.pop("files", {})}
    return Case(name, argv, files=files, setup=kw.pop("setup", _setup), timeout_s=15.0, **kw)


def _no_dir_created(d: Path, results: list) -> str:
    return "created the missing folder" if (d / "nodir").exists() else ""


SIM = ["simulate", "{dir}/plan.toml"]


def output_cases() -> list[Case]:
    """Bad output paths of every command that writes."""
    out = [
        _c("simulate --trace in a missing folder", [*SIM, "--trace", "{dir}/nodir/t.json"]),
        _c("simulate --trace at a directory", [*SIM, "--trace", "{dir}/adir"]),
        _c("simulate --trace under a file", [*SIM, "--trace", "{dir}/afile/t.json"]),
        _c("simulate --trace on a read-only file system", [*SIM, "--trace", "/proc/t.json"]),
        _c("simulate --trace on a full disk (/dev/full)", [*SIM, "--trace", "/dev/full"]),
        _c("simulate --trace x.txt", [*SIM, "--trace", "{dir}/t.txt"]),
        _c("simulate --plot x.xyz", [*SIM, "--plot", "{dir}/x.xyz"]),
        _c("simulate --plot in a missing folder", [*SIM, "--plot", "{dir}/nodir/x.png"]),
        _c("simulate --plot on a full disk (/dev/full)", [*SIM, "--plot", "/dev/full"]),
        _c("simulate --plot ''", [*SIM, "--plot", ""]),
        _c("simulate --failures-plot DIR", [*SIM, "--failures-plot", "{dir}/adir"]),
        _c("simulate --failures-plot DIR/", [*SIM, "--failures-plot", "{dir}/adir/"]),
        _c("simulate --plot ok.png", [*SIM, "--plot", "{dir}/ok.png"], expect="ok"),
        _c("run --out ''", ["run", "{dir}/plan.toml", "--out", ""], check=unchanged_root),
        _c("run --out in a missing folder", ["run", "{dir}/plan.toml", "--out", "{dir}/nodir/r"],
           check=_no_dir_created),
        _c("run --out FILE", ["run", "{dir}/plan.toml", "--out", "{dir}/afile"],
           protect=("afile",)),
        _c("run --out on a read-only file system", ["run", "{dir}/plan.toml", "--out", "/proc/r"]),
        _c("report --out FILE", ["report", "{dir}/plan.toml", "--out", "{dir}/afile"],
           protect=("afile",)),
        _c("report --out in a missing folder",
           ["report", "{dir}/plan.toml", "--out", "{dir}/nodir/r"], check=_no_dir_created),
        _c("report --out ''", ["report", "{dir}/plan.toml", "--out", ""], check=unchanged_root),
        _c("report --out on a read-only file system",
           ["report", "{dir}/plan.toml", "--out", "/proc/r"]),
        _c("compare --out FILE", ["compare", "{dir}/plan.toml", "--out", "{dir}/afile"],
           protect=("afile",)),
        _c("compare --out in a missing folder",
           ["compare", "{dir}/plan.toml", "--out", "{dir}/nodir/c"], check=_no_dir_created),
        _c("compare --out ''", ["compare", "{dir}/plan.toml", "--out", ""], check=unchanged_root),
        _c("demo --out FILE", ["demo", "--out", "{dir}/afile"], protect=("afile",)),
        _c("demo --out in a missing folder", ["demo", "--out", "{dir}/nodir/demo"]),
        _c("export --out in a missing folder, bad --quantize: no folder created",
           ["export", "{dir}/adir", "--out", "{dir}/nodir/m.onnx", "--quantize", "int3"],
           check=_no_dir_created),
        _c("export --out in a missing folder, not a run: no folder created",
           ["export", "{dir}/adir", "--out", "{dir}/nodir/m.onnx"], check=_no_dir_created,
           cheap=False),  # imports torch: seconds more than the cheap cases may take
        _c("export --out under a file", ["export", "{dir}/adir", "--out", "{dir}/afile/m.onnx"]),
        _c("export --out at a directory", ["export", "{dir}/adir", "--out", "{dir}/adir"]),
        _c("export --out m.txt", ["export", "{dir}/adir", "--out", "{dir}/m.txt"]),
        _c("export --out ''", ["export", "{dir}/adir", "--out", ""]),
        _c("export --out on a read-only file system",
           ["export", "{dir}/adir", "--out", "/proc/m.onnx"]),
        _c("calibrate --out in a missing folder (before benchmarks)",
           ["calibrate", "--quick", "--out", "{dir}/nodir/p.toml"]),
        _c("calibrate --out at a directory", ["calibrate", "--quick", "--out", "{dir}/adir"]),
        _c("calibrate --out ''", ["calibrate", "--quick", "--out", ""]),
        _c("calibrate --out p.txt", ["calibrate", "--quick", "--out", "{dir}/p.txt"]),
        _c("calibrate --json at a directory (before benchmarks)",
           ["calibrate", "--quick", "--out", "{dir}/p.toml", "--json", "{dir}/adir"]),
        _c("calibrate --out on a read-only file system",
           ["calibrate", "--quick", "--out", "/proc/p.toml"]),
    ]
    return out


def _profile_plan(profile: str) -> str:
    return plan_text(cluster=f'profile = "{profile}"')


def _profile(text: str):
    """A setup writing profile.toml holding `text` and p.toml naming it by absolute path."""

    def setup(d: Path) -> None:
        (d / "profile.toml").write_text(text)
        (d / "p.toml").write_text(_profile_plan(str(d / "profile.toml")))

    return setup


def _data_plan(data: str) -> str:
    return plan_text(train=f'steps = 2\ndata = "{data}"')


def _corrupt_report(d: Path) -> None:
    _setup(d)
    (d / "m.onnx").write_bytes(b"\x08\x07")
    (d / "m.decoder.onnx").write_bytes(b"\x08\x07")
    (d / "m.report.json").write_text('{"shape": {"seq_len": ')


def _exported(d: Path) -> None:
    """A tiny run trained and exported to d/m.onnx (tens of seconds)."""
    from experiments.fuzz.rundirs import _exported as exported

    exported(d)


def _exported_corrupt_report(d: Path) -> None:
    """A real export, then its model.report.json cut short."""
    _exported(d)
    (d / "m.report.json").write_text('{"shape": {"seq_len": ')


def input_cases() -> list[Case]:
    """Bad input paths and files that are too deep to parse."""
    return [
        _c("info plan path too long", ["info", f"{{dir}}/{LONG}.toml"]),
        _c("info plan path 6000 chars", ["info", "{dir}/" + "a/" * 3000 + "p.toml"]),
        _c("simulate plan path too long", ["simulate", f"{{dir}}/{LONG}.toml"]),
        _c("info TOML nested 100k deep (arrays)", ["info", "{dir}/deep.toml"],
           files={"deep.toml": DEEP_ARRAY}),
        _c("info TOML nested 100k deep (inline tables)", ["info", "{dir}/deep.toml"],
           files={"deep.toml": DEEP_TABLE}),
        _c("info profile path with a NUL byte", ["info", "{dir}/p.toml"],
           files={"p.toml": _profile_plan("a\\u0000b")}),
        _c("simulate profile path with a NUL byte", ["simulate", "{dir}/p.toml"],
           files={"p.toml": _profile_plan("a\\u0000b")}),
        _c("info profile path too long", ["info", "{dir}/p.toml"],
           files={"p.toml": _profile_plan("a" * 5000)}),
        _c("info broken cluster.profile", ["info", "{dir}/p.toml"],
           setup=_profile("x = [\n")),
        _c("info cluster.profile not a profile", ["info", "{dir}/p.toml"],
           setup=_profile("[compute]\nmatmul_efficiency = \"high\"\n")),
        _c("info cluster.profile efficiency nan", ["info", "{dir}/p.toml"],
           setup=_profile("matmul_efficiency = nan\n")),
        _c("info cluster.profile nested 100k deep", ["info", "{dir}/p.toml"],
           setup=_profile(DEEP_TABLE)),
        _c("simulate broken cluster.profile", ["simulate", "{dir}/p.toml"],
           setup=_profile("x = [\n")),
        _c("run data path with a NUL byte", ["run", "{dir}/p.toml", "--out", "{dir}/r"],
           files={"p.toml": _data_plan("a\\u0000b")}),
        _c("run data path too long", ["run", "{dir}/p.toml", "--out", "{dir}/r"],
           files={"p.toml": _data_plan("a" * 5000)}),
        _c("generate model path too long", ["generate", f"{{dir}}/{LONG}.onnx", "--prompt", "a"]),
        _c("export run dir path too long", ["export", f"{{dir}}/{LONG}", "--out", "{dir}/m.onnx"]),
        _c("generate corrupt model.report.json", ["generate", "{dir}/m.onnx", "--prompt", "a"],
           setup=_corrupt_report),
        Case("generate corrupt model.report.json of a real export",
             ["generate", "{dir}/m.onnx", "--prompt", "a"], setup=_exported_corrupt_report,
             cheap=False, timeout_s=180),
        Case("generate lone-surrogate prompt, real model",
             ["generate", "{dir}/m.onnx", "--prompt", "a\udc80b"], setup=_exported,
             cheap=False, timeout_s=180),
        Case("generate --seed -5, real model",
             ["generate", "{dir}/m.onnx", "--prompt", "ab", "--seed", "-5",
              "--temperature", "1"], setup=_exported, cheap=False, timeout_s=180),
    ]


SEARCH = ["search", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80g", "--gpus", "8",
          "--global-batch", "16", "--quiet", "--max-simulations", "2"]
REPORT = ["report", "{dir}/plan.toml", "--out", "{dir}/r"]
GEN = ["generate", "{dir}/m.onnx", "--prompt"]
BAD_FLAGS = [
    ("simulate --failures --seed -1", [*SIM, "--failures", "--seed", "-1"]),
    ("simulate --seed 2**40", [*SIM, "--failures", "--seed", str(2**40)]),
    ("simulate --seed x", [*SIM, "--seed", "x"]),
    ("report --scaling nan", [*REPORT, "--scaling", "nan"]),
    ("report --scaling inf", [*REPORT, "--scaling", "1,inf"]),
    ("report --scaling -1", [*REPORT, "--scaling", "-1"]),
    ("report --names not UTF-8", [*REPORT, "--names", "a\udcffb", "--scaling", "none"]),
    ("search --seq-len 0", [*SEARCH, "--seq-len", "0"]),
    ("search --max-memory-gb nan", [*SEARCH, "--max-memory-gb", "nan"]),
    ("search --max-memory-gb inf", [*SEARCH, "--max-memory-gb", "inf"]),
    ("search --max-memory-gb -1", [*SEARCH, "--max-memory-gb", "-1"]),
    ("search --gpus 0", [*SEARCH, "--gpus", "0"]),
    ("search --global-batch -1", [*SEARCH, "--global-batch", "-1"]),
    ("search --top 0", [*SEARCH, "--top", "0"]),
    ("search --workers 0", [*SEARCH, "--workers", "0"]),
    ("search --max-simulations 0", [*SEARCH, "--max-simulations", "0"]),
    ("run --steps 0", ["run", "{dir}/plan.toml", "--out", "{dir}/r", "--steps", "0"]),
    ("run --fail-rank -1", ["run", "{dir}/plan.toml", "--out", "{dir}/r", "--fail-at-step", "1",
                            "--fail-rank", "-1"]),
    ("run --fail-at-step -1", ["run", "{dir}/plan.toml", "--out", "{dir}/r", "--fail-at-step",
                               "-1"]),
    ("run --max-restarts -1", ["run", "{dir}/plan.toml", "--out", "{dir}/r", "--max-restarts",
                               "-1"]),
    ("compare --steps -3", ["compare", "{dir}/plan.toml", "--out", "{dir}/c", "--steps", "-3"]),
    ("export --prune nan", ["export", "{dir}/adir", "--out", "{dir}/m.onnx", "--prune", "nan"]),
    ("export --prune 1", ["export", "{dir}/adir", "--out", "{dir}/m.onnx", "--prune", "1"]),
    ("export --distill-steps -1", ["export", "{dir}/adir", "--out", "{dir}/m.onnx",
                                   "--distill-steps", "-1"]),
    ("demo --max-simulations 0", ["demo", "--out", "{dir}/demo", "--max-simulations", "0"]),
    ("generate --seed -5", [*GEN, "a", "--seed", "-5"]),
    ("generate --temperature inf", [*GEN, "a", "--temperature", "inf"]),
    ("generate --max-new-tokens -1", [*GEN, "a", "--max-new-tokens", "-1"]),
    ("generate lone-surrogate prompt", [*GEN, "a\udc80b"]),
    ("simulate no such flag", [*SIM, "--no-such-flag"]),
    ("simulate --set without '='", [*SIM, "--set", "parallel.tp"]),
    ("simulate --set unknown section", [*SIM, "--set", "nosuch.tp=2"]),
    ("simulate --set unknown key", [*SIM, "--set", "parallel.nosuch=2"]),
    ("simulate --set parallel.tp=nan", [*SIM, "--set", "parallel.tp=nan"]),
    ("info --set not UTF-8", ["info", "{dir}/plan.toml", "--set", "model.name=a\udcffb"]),
    ("search PLAN --set a section", ["search", "{dir}/plan.toml", "--set", "parallel=2"]),
    ("simulate --tokens abc", [*SIM, "--tokens", "abc"]),
    ("simulate --tokens -1", [*SIM, "--tokens", "-1"]),
    ("simulate --days inf", [*SIM, "--days", "inf"]),
    ("simulate --tokens with --days", [*SIM, "--tokens", "1T", "--days", "1"]),
]


def cases() -> list[Case]:
    # a budget far past any Monte Carlo on a cluster that never fails (localhost): priced at
    # once, no failure drawn (the guard's refusal of a failing cluster: tests/test_failures_budget)
    huge = _c("simulate --tokens 1e18 on localhost (nothing fails)", [*SIM, "--tokens", "1e18"],
              expect="ok")
    return [*output_cases(), *input_cases(), *(_c(n, a) for n, a in BAD_FLAGS), huge]

