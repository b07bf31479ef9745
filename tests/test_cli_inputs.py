"""Input paths and numeric flags of the CLI: one line naming the flag, field or
path for a negative, zero, NaN or inf number, a lone surrogate, a path too long
or holding a NUL byte, TOML nested 100k deep, a broken profile."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers.cli import PLAN, one_line

from sandbox.cli import main
from sandbox.commands import _args
from sandbox.errors import SandboxError


def test_argument_types() -> None:
    import argparse

    assert _args.integer(1)("3") == 3 and _args.number(0.0)("0.5") == 0.5
    for parse, text, words in [(_args.integer(1), "0", "positive"),
                               (_args.integer(0), "-1", ">= 0"),
                               (_args.integer(0, 9), "10", "in 0..9"),
                               (_args.integer(0), "1.5", "integer"),
                               (_args.number(0.0), "nan", "finite"),
                               (_args.number(0.0), "inf", "finite"),
                               (_args.number(0.0), "-1", ">= 0"),
                               (_args.number(0.0, low_open=True), "0", "> 0"),
                               (_args.number(0.0, 1.0, high_open=True), "1", r"in \[0, 1\)"),
                               (_args.text, "a\udc80", "not valid text")]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            parse(text)


@pytest.mark.parametrize("argv,words", [
    (["simulate", "{plan}", "--failures", "--seed", "-1"], ["--seed", "-1"]),
    (["report", "{plan}", "--out", "{dir}/r", "--scaling", "1,inf"], ["--scaling"]),
    (["search", "--model", "tiny", "--cluster", "localhost", "--gpus", "1",
      "--global-batch", "4", "--seq-len", "0"], ["--seq-len", "positive"]),
    (["search", "--model", "tiny", "--cluster", "localhost", "--gpus", "1",
      "--global-batch", "4", "--max-memory-gb", "nan"], ["max_memory_gb", "nan"]),
    (["search", "--model", "tiny", "--cluster", "localhost", "--gpus", "0",
      "--global-batch", "4"], ["--gpus"]),
    (["run", "{plan}", "--out", "{dir}/r", "--max-restarts", "-1"], ["--max-restarts"]),
    (["export", "{dir}", "--out", "{dir}/m.onnx", "--prune", "nan"], ["--prune"]),
    (["generate", "{dir}/m.onnx", "--prompt", "a", "--seed", "-5"], ["--seed", "-5"]),
    (["generate", "{dir}/m.onnx", "--prompt", "a\udc80"], ["--prompt", "not valid text"]),
    (["generate", "{dir}/m.onnx", "--prompt", "a", "--temperature", "nan"], ["--temperature"]),
    (["demo", "--max-simulations", "0"], ["--max-simulations"]),
    (["compare", "{plan}", "--out", "{dir}/c", "--steps", "0"], ["--steps"]),
])
def test_bad_numbers_are_one_line(argv, words, tmp_path, capsys) -> None:
    (tmp_path / "p.toml").write_text(PLAN)
    args = [a.replace("{plan}", str(tmp_path / "p.toml")).replace("{dir}", str(tmp_path))
            for a in argv]
    one_line(capsys, main(args), *words)
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_search_api_refuses_nan_memory_and_zero_seq_len() -> None:
    from sim.search import run_search

    for kw, words in [({"max_memory_gb": math.nan}, "max_memory_gb"),
                      ({"seq_len": 0}, "seq_len")]:
        with pytest.raises(SandboxError, match=words):
            run_search("tiny", "localhost", 1, 4, progress=False, **kw)


def _profile_plan(tmp_path: Path, text: str) -> str:
    (tmp_path / "prof.toml").write_text(text)
    plan = tmp_path / "p.toml"
    plan.write_text(PLAN.replace('preset = "localhost"',
                                 f'preset = "localhost"\nprofile = "{tmp_path / "prof.toml"}"'))
    return str(plan)


@pytest.mark.parametrize("text,words", [
    ("x = [\n", "cannot read calibration profile"),
    ("matmul_efficiency = nan\n", "finite"),
    ("matmul_efficency = 0.5\n", "did you mean 'matmul_efficiency'"),
    ("a = " + "{b = " * 50_000 + "1" + "}" * 50_000 + "\n", "nested too deeply"),
])
def test_info_refuses_a_broken_profile(text, words, tmp_path, capsys) -> None:
    one_line(capsys, main(["info", _profile_plan(tmp_path, text)]), "prof.toml", words)


def test_deep_and_long_plan_paths(tmp_path, capsys) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("[train]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n")
    one_line(capsys, main(["info", str(deep)]), "deep.toml", "nested too deeply")
    one_line(capsys, main(["info", str(tmp_path / ("a" * 300 + ".toml"))]), "plan file",
             "too long")
    nul = tmp_path / "nul.toml"
    nul.write_text(PLAN.replace('preset = "localhost"',
                                'preset = "localhost"\nprofile = "a\\u0000b"'))
    one_line(capsys, main(["simulate", str(nul)]), "cluster.profile", "NUL byte")
    data = tmp_path / "data.toml"
    data.write_text(PLAN + f'data = "{"d" * 5000}"\n')
    one_line(capsys, main(["run", str(data), "--out", str(tmp_path / "r")]), "train.data",
             "too long")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("report", ['{"shape": {"seq_len": ', '[1, 2]',
                                    '{"shape": {"seq_len": "long", "vocab": 256}}'])
def test_generate_refuses_a_corrupt_model_report(report, tmp_path, capsys) -> None:
    for name in ("m.onnx", "m.decoder.onnx"):
        (tmp_path / name).write_bytes(b"\x08\x07")
    (tmp_path / "m.report.json").write_text(report)
    one_line(capsys, main(["generate", str(tmp_path / "m.onnx"), "--prompt", "a"]),
             "m.report.json")


def test_argparse_errors_are_one_line_exit_1(capsys) -> None:
    one_line(capsys, main(["simulate"]), "sandbox simulate: error: ", "plan", "--help")
    one_line(capsys, main(["simulate", "p.toml", "--no-such-flag"]), "--no-such-flag")
    assert main(["simulate", "--help"]) == 0


def test_the_cli_probe_set_covers_issue_24() -> None:
    from experiments.fuzz import AREAS, cli

    assert cli in AREAS
    names = " ".join(c.name for c in cli.cases())
    for probe in ("--plot x.xyz", "run --out ''", "--failures-plot DIR", "100k deep",
                  "NUL byte", "path too long", "full disk", "read-only", "lone-surrogate",
                  "generate --seed -5", "corrupt model.report.json", "search --seq-len 0",
                  "--max-memory-gb nan", "info broken cluster.profile", "compare --out FILE",
                  "report --scaling nan", "--failures --seed -1", "calibrate --out in a missing",
                  "export --out in a missing folder"):
        assert probe in names, probe
    for cmd in ("simulate", "run", "report", "export", "calibrate", "compare", "demo"):
        assert any(c.name.startswith(f"{cmd} --") and "--out" in " ".join(map(str, c.argv))
                   or c.name.startswith(f"{cmd} --trace") for c in cli.cases()), cmd
