"""sandbox/outputs.py and the CLI's output paths: one line naming the flag and
the path, checked before any work, nothing created or written on a refusal."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers.cli import PLAN, one_line

from sandbox import outputs
from sandbox.cli import main
from sandbox.errors import SandboxError


@pytest.fixture
def plan(tmp_path: Path) -> str:
    (tmp_path / "plan.toml").write_text(PLAN)
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "adir").mkdir()
    return str(tmp_path / "plan.toml")


def test_output_file_refusals(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [("", "empty path"), ("a\0b.json", "NUL byte"),
             (str(tmp_path / ("a" * 300 + ".json")), "too long"),
             (str(tmp_path / "nodir" / "t.json"), "no such directory"),
             (str(tmp_path / "adir"), "is a directory"),
             (str(tmp_path / "adir") + "/", "is a directory"),
             (str(tmp_path / "afile" / "t.json"), "is not a directory"),
             (str(tmp_path / "t.xyz"), ".xyz'; use one of .json"),
             ("/proc/t.json", "cannot write in /proc")]
    for path, words in cases:
        with pytest.raises(SandboxError, match="--trace") as e:
            outputs.output_file(path, "--trace", (".json",))
        assert words in str(e.value), (path, str(e.value))
    assert not (tmp_path / "nodir").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]  # no probe left
    assert outputs.output_file(tmp_path / "ok.json", "--trace", (".json",)).name == "ok.json"
    assert outputs.output_file("/dev/null", "--trace", (".json",)) == Path("/dev/null")


def test_output_file_read_only_location(tmp_path: Path, monkeypatch) -> None:
    def refuse(**kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    with pytest.raises(SandboxError, match="--plot .*read-only file system"):
        outputs.output_file(tmp_path / "x.png", "--plot", outputs.IMAGE_SUFFIXES)


def test_output_dir_refusals(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for path, words in [("", "empty path"), (str(tmp_path / "afile"), "not a directory"),
                        (str(tmp_path / "no" / "run"), "no such directory")]:
        with pytest.raises(SandboxError, match="--out") as e:
            outputs.output_dir(path, "--out")
        assert words in str(e.value)
    assert outputs.output_dir(tmp_path / "run", "--out") == tmp_path / "run"
    assert not (tmp_path / "run").exists()  # checked, not created


def test_full_disk_is_one_line_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"--trace /dev/full: cannot write \(no space"):
        with outputs.writing("/dev/full", "--trace"), open("/dev/full", "w") as f:
            f.write("x" * 100_000)
    import matplotlib.figure

    fig = matplotlib.figure.Figure()
    fig.subplots().plot([0, 1])
    with pytest.raises(SandboxError, match="--plot /dev/full: cannot write"):
        outputs.save_figure(fig, "/dev/full", "--plot")  # savefig alone stays silent
    assert outputs.save_figure(fig, tmp_path / "f.svg", "--plot").read_bytes().startswith(b"<?xml")


def test_simulate_outputs_checked_before_simulating(plan, tmp_path, capsys, monkeypatch) -> None:
    import sim

    def boom(*a, **k):
        raise AssertionError("simulated before checking the outputs")

    monkeypatch.setattr(sim, "simulate", boom)
    d = tmp_path
    for flags, words in [(["--trace", f"{d}/nodir/t.json"], ["--trace", "no such directory"]),
                         (["--trace", f"{d}/adir"], ["--trace", "is a directory"]),
                         (["--plot", f"{d}/x.xyz"], ["--plot", ".png", ".svg"]),
                         (["--failures-plot", f"{d}/adir"], ["--failures-plot", "directory"]),
                         (["--plot", ""], ["--plot", "empty"])]:
        one_line(capsys, main(["simulate", plan, *flags]), *words)
    assert not (d / "adir.png").exists()


def test_simulate_plot_on_a_full_disk(plan, capsys) -> None:
    one_line(capsys, main(["simulate", plan, "--plot", "/dev/full"]), "--plot /dev/full",
             "no space left")


def test_run_and_compare_refuse_before_starting(plan, tmp_path, capsys, monkeypatch) -> None:
    import runtime.launch

    def boom(*a, **k):
        raise AssertionError("started before checking --out")

    monkeypatch.setattr(runtime.launch, "run", boom)
    monkeypatch.chdir(tmp_path / "adir")
    for cmd in ("run", "compare"):
        one_line(capsys, main([cmd, plan, "--out", ""]), "--out", "empty")
        one_line(capsys, main([cmd, plan, "--out", str(tmp_path / "afile")]), "--out",
                 "not a directory")
        one_line(capsys, main([cmd, plan, "--out", str(tmp_path / "no" / "r")]), "--out",
                 "no such directory")
    assert os.listdir(tmp_path / "adir") == []  # nothing trained into the cwd
    assert (tmp_path / "afile").read_text() == "x\n" and not (tmp_path / "no").exists()


def test_report_out(plan, tmp_path, capsys) -> None:
    one_line(capsys, main(["report", plan, "--out", str(tmp_path / "afile")]), "--out",
             "not a directory")
    one_line(capsys, main(["report", plan, "--out", str(tmp_path / "no" / "r")]),
             "no such directory")
    one_line(capsys, main(["report", plan, "--out", str(tmp_path / "r"), "--scaling", "nan"]),
             "--scaling", "finite")
    assert not (tmp_path / "no").exists() and not (tmp_path / "r").exists()


def test_report_on_a_full_disk(plan, tmp_path, capsys, monkeypatch) -> None:
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    code = main(["report", plan, "--out", str(tmp_path / "r"), "--scaling", "none"])
    one_line(capsys, code, "report.html", "no space left on device")


def test_export_and_calibrate_refuse_before_work(tmp_path, capsys, monkeypatch) -> None:
    import runtime.calibrate.run

    def boom(*a, **k):
        raise AssertionError("benchmarked before checking the outputs")

    monkeypatch.setattr(runtime.calibrate.run, "calibrate", boom)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    for out, words in [(tmp_path / "afile" / "m.onnx", "not a directory"),
                       (tmp_path / "adir", "is a directory"), (tmp_path / "m.txt", ".onnx")]:
        one_line(capsys, main(["export", str(tmp_path), "--out", str(out)]), "--out", words)
    one_line(capsys, main(["export", str(tmp_path), "--out", str(tmp_path / "no" / "m.onnx")]),
             "not a run directory")
    assert not (tmp_path / "no").exists()  # a refused export creates no folder
    for flags, words in [(["--out", str(tmp_path / "no" / "p.toml")], ["--out", "no such"]),
                         (["--out", str(tmp_path / "adir")], ["--out", "is a directory"]),
                         (["--out", str(tmp_path / "p.toml"), "--json", str(tmp_path / "adir")],
                          ["--json", "is a directory"]),
                         (["--out", ""], ["--out", "empty"])]:
        one_line(capsys, main(["calibrate", "--quick", *flags]), *words)


def test_demo_out_is_a_file(tmp_path, capsys) -> None:
    (tmp_path / "f").write_text("x")
    one_line(capsys, main(["demo", "--out", str(tmp_path / "f")]), "--out", "not a directory")


def test_environment_errors_are_one_line(plan, capsys, monkeypatch) -> None:
    import sandbox.commands.info as info

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/some/file")

    monkeypatch.setattr(info, "main", full)
    one_line(capsys, main(["info", plan]), "no space left on device", "/some/file")


def test_export_says_it_created_the_folder(tmp_path, capsys, monkeypatch) -> None:
    import sandbox

    class Done:
        def to_dict(self) -> dict:
            return {"files": {"model": "m.onnx"}}

    def export(run_dir, out, **kw):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        return Done()

    monkeypatch.setattr(sandbox, "export", export)
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "a" / "b" / "m.onnx"),
                 "--json"]) == 0
    assert capsys.readouterr().err.strip() == f"created folder {tmp_path / 'a'} for --out"
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    assert capsys.readouterr().err == ""  # an existing folder: nothing to say
