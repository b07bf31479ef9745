"""Issue 24, the runtime's part: host memory on CPU, a diverged run stops, special
files as train.data, a full disk. Each bad input is one line, refused before
anything starts, and nothing a run wrote is lost."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.runs import write_plan

import sandbox
from runtime.data import loader as data
from runtime.launch import _Log, check_memory, cpu_rank_memory_gb, host_memory_gb
from runtime.loss_scale import DynamicLossScale
from runtime.rundir import save_error, writing
from runtime.step import Divergence, StepResult
from sandbox.errors import SandboxError
from sandbox.memory import memory_per_gpu

ON_GPU = torch.cuda.is_available()


def big_cpu_plan() -> sandbox.Plan:
    """gpt3-1.3b as 8 CPU ranks (dp 8 on localhost): about 150 GB in fp32 (a
    bf16 plan: CPU ranks train in fp32 all the same)."""
    return sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "localhost", "gpus_per_node": 8},
                         "parallel": {"dp": 8}, "train": {"precision": "bf16"}})


def one_line(r: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command (after a run's progress lines)."""
    from runtime.observe.train_log import is_step_line

    lines = [ln for ln in r.stderr.strip().splitlines() if not is_step_line(ln)]
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


# ------------------------------------------------------------------ host memory
def test_cpu_ranks_are_summed_in_fp32_against_host_memory():
    plan = big_cpu_plan()
    ranks = cpu_rank_memory_gb(plan)
    fp32 = memory_per_gpu(plan.replace(**{"train.precision": "fp32"}))["total"]
    assert len(ranks) == 8 and ranks == [pytest.approx(fp32)] * 8
    assert fp32 > memory_per_gpu(plan)["total"]  # bf16 would underestimate a CPU rank
    with pytest.raises(SandboxError) as e:
        check_memory(plan, kind="cpu", available_gb=100.0)
    msg = str(e.value)
    assert msg.startswith("the plan does not fit in memory on CPU: 8 ranks x ")
    assert f"= {sum(ranks):.3g} GB (fp32) > 100 GB of host memory available" in msg
    check_memory(plan, kind="cpu", available_gb=sum(ranks) + 1)  # fits: no error
    # on GPUs each rank is checked against its GPU's memory instead
    with pytest.raises(SandboxError, match=r"GB per device > 9.5 GB \(10 GB cpu less the 5% "):
        check_memory(plan.replace(**{"cluster.gpu.hbm_gb": 10.0}), kind="cuda")
    check_memory(plan.replace(**{"cluster.gpu.hbm_gb": 80.0}), kind="cuda")


def test_uneven_stages_say_up_to():
    plan = sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "localhost", "gpus_per_node": 2},
                         "parallel": {"pp": 2, "schedule": "1f1b", "global_batch": 8}})
    ranks = cpu_rank_memory_gb(plan)
    assert len(ranks) == 2 and ranks[0] != ranks[1]
    with pytest.raises(SandboxError, match=r"2 ranks \(up to [\d.]+ GB each\) = "):
        check_memory(plan, kind="cpu", available_gb=1.0)


def test_host_memory_is_what_the_machine_has():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    assert 0 < host_memory_gb() <= total * 1.01


@pytest.mark.skipif(ON_GPU, reason="the ranks run on GPUs here")
@pytest.mark.parametrize("command", ["run", "compare"])
def test_run_and_compare_refuse_a_plan_too_big_for_host_memory(cli, tmp_path, command):
    plan = big_cpu_plan()
    if sum(cpu_rank_memory_gb(plan)) < host_memory_gb():
        pytest.skip("this machine has the memory for 8 gpt3-1.3b ranks")
    (tmp_path / "plan.toml").write_text(plan.to_toml())
    r = cli(command, str(tmp_path / "plan.toml"), "--out", str(tmp_path / "out"), timeout=120)
    line = one_line(r)
    assert "does not fit in memory on CPU: 8 ranks x" in line
    assert "GB of host memory available" in line
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


@pytest.mark.skipif(ON_GPU, reason="the ranks run on GPUs here")
def test_a_gpu_plan_on_cpu_is_checked_against_host_memory(cli, tmp_path):
    plan = sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 1},
                         "parallel": {"tp": 2, "global_batch": 16}})
    assert memory_per_gpu(plan)["total"] < plan.cluster.gpu.hbm_gb  # fits an A100
    if sum(cpu_rank_memory_gb(plan)) < host_memory_gb():
        pytest.skip("this machine has the memory for 8 gpt3-1.3b ranks")
    (tmp_path / "plan.toml").write_text(plan.to_toml())
    line = one_line(cli("run", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "out"),
                        timeout=120))
    assert "on CPU: 8 ranks x" in line and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ divergence
def result(loss: float, updated: bool = True, scale: float = 1.0) -> StepResult:
    return StepResult(loss=loss, grad_norm=1.0, lr=1e-3, loss_scale=scale, updated=updated)


def test_divergence_rule(tmp_path):
    plain = Divergence(tmp_path, None)
    assert plain.why(result(2.5)) is None
    assert plain.why(result(float("nan"))) == "loss is nan"
    assert plain.why(result(float("inf"))) == "loss is inf"
    fp16 = Divergence(tmp_path, DynamicLossScale())
    # an overflow skips the step and halves the scale: normal, until the scale is at its floor
    assert fp16.why(result(float("inf"), updated=False, scale=2.0**16)) is None
    assert fp16.why(result(float("nan"), updated=False, scale=2.0)) is None
    why = fp16.why(result(float("inf"), updated=False, scale=1.0))
    assert why.startswith("fp16 gradients not finite even at the minimum loss scale (1; "
                          "3 steps in a row skipped")
    assert fp16.why(result(3.0)) is None and fp16.skipped_in_a_row == 0
    assert fp16.why(result(float("nan"), updated=True)) == "loss is nan"  # stepped on NaN
    msg = str(plain.error(7, "loss is nan"))
    assert msg.startswith("step 7: loss is nan; stopping (no checkpoint saved yet; ")


def test_norm_eps_and_rope_theta_must_be_positive():
    for field, value in (("norm_eps", -1.0), ("norm_eps", 0.0), ("rope_theta", -5.0)):
        with pytest.raises(SandboxError, match=f"model.{field}: must be positive"):
            sandbox.load({"model": {"preset": "tiny", field: value}})


def test_a_diverging_run_stops_at_the_step_and_keeps_its_checkpoints(cli, tmp_path):
    """lr 100 with plain SGD and no clipping: the loss grows to inf/NaN in a few steps."""
    plan = write_plan(tmp_path / "plan.toml", extra='optimizer = "sgd"\ngrad_clip = 0.0')
    plan.write_text(plan.read_text().replace("lr = 1e-3", "lr = 100.0")
                    .replace("checkpoint_every = 3", "checkpoint_every = 2"))
    out = tmp_path / "out"
    line = one_line(cli("run", str(plan), "--out", str(out), "--steps", "12", timeout=300))
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    bad = rows[-1]
    assert not torch.isfinite(torch.tensor(bad["loss"]))  # logged, and the last one
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows[:-1])
    step = bad["step"]
    assert step < 12 and f"step {step}: loss is {bad['loss']}".lower() in line.lower()
    kept = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert kept == list(range(2, step, 2)) and "checkpoints kept: step" in line
    assert not (out / "summary.json").exists()
    assert f"step {step}: loss is" in (out / "train.log").read_text()


# ------------------------------------------------------------------ special files
@pytest.mark.parametrize("kind", ["fifo", "devzero", "fifo in dir", "too big"])
def test_special_files_are_refused_without_reading(tmp_path, monkeypatch, kind):
    path = tmp_path / "d.txt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo in dir":
        (tmp_path / "a.txt").write_text("x" * 1000)
        os.mkfifo(tmp_path / "b.txt")
        path = tmp_path
    else:
        path.write_text("x" * 5000)
        monkeypatch.setattr(data, "DATA_LIMIT", 4096)
    with pytest.raises(SandboxError) as e:
        data.check_data(str(path), seq_len=64, vocab=256)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert ("4,096" in msg) if kind == "too big" else ("not a regular file" in msg)


def test_a_lone_surrogate_in_jsonl_is_one_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "\\ud800 alone"}\n')
    with pytest.raises(SandboxError, match=f"{path}:2: text is not valid Unicode"):
        data.check_data(str(path), seq_len=4, vocab=256)


def test_run_refuses_a_fifo_as_data_before_starting(cli, tmp_path):
    os.mkfifo(tmp_path / "corpus.txt")
    plan = write_plan(tmp_path / "plan.toml", extra=f'data = "{tmp_path / "corpus.txt"}"')
    line = one_line(cli("run", str(plan), "--out", str(tmp_path / "out"), timeout=60))
    assert "corpus.txt: not a regular file" in line and not (tmp_path / "out").exists()


def test_tokens_stay_uint8_and_the_launcher_check_loads_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("some text " * 500)
    data.byte_tokens.cache_clear()
    assert data.check_data(str(tmp_path / "a.txt"), 64, 256) == 5000
    assert data.byte_tokens.cache_info().currsize == 0  # stat-ed, not read
    toks = data.byte_tokens("builtin")
    assert toks.dtype == torch.uint8
    # batches are int64 and the same as cutting the int64 stream (losses unchanged)
    plan = sandbox.load({"model": {"preset": "tiny"}, "parallel": {"global_batch": 8},
                         "train": {"seed": 3}})
    x, y = data.global_batch(plan, 5)
    ref = data.load_tokens("builtin")[:data.split_point(len(toks), 64)]
    gen = torch.Generator().manual_seed(3 * 1_000_003 + 5)
    starts = torch.randint(0, len(ref) - 64, (8,), generator=gen)
    assert x.dtype == torch.int64
    assert torch.equal(x, torch.stack([ref[s:s + 64] for s in starts]))
    assert torch.equal(y, torch.stack([ref[s + 1:s + 65] for s in starts]))


# ------------------------------------------------------------------ full disk
def test_write_errors_name_the_path(tmp_path):
    target = tmp_path / "metrics.jsonl"
    with pytest.raises(SandboxError) as e, writing(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(e.value) == (f"{target}: cannot write (No space left on device; free some "
                            "space or choose another --out)")
    # DCP wraps each rank's error; torch.save reports a full disk without errno
    from torch.distributed.checkpoint.api import CheckpointException

    wrapped = CheckpointException("write", {0: (OSError(errno.ENOSPC, "No space left on "
                                                        "device"), [])})
    assert "No space left on device" in str(save_error(tmp_path / "ck", wrapped))
    opaque = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")
    assert str(save_error(tmp_path / "ck", opaque)).startswith(f"{tmp_path / 'ck'}: cannot "
                                                               "write (")


def test_train_log_keeps_lines_it_could_not_write(tmp_path, monkeypatch):
    log = _Log(tmp_path / "train.log")
    real_write, fail = os.write, [True]

    def write(fd, data):
        if fail[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data[:7])  # short writes too

    monkeypatch.setattr(os, "write", write)
    log.write("first line\n")
    assert "train.log: cannot write (No space left on device" in log.problem
    fail[0] = False
    log.write("second line\n")
    log.close()
    assert log.problem == ""
    assert (tmp_path / "train.log").read_text() == "first line\nsecond line\n"


@pytest.fixture
def small_disk(tmp_path):
    """A 8 MiB tmpfs at tmp_path/disk (needs root; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("mount") or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> None:
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("what", ["checkpoint", "metrics"])
def test_a_full_disk_is_one_line_naming_the_path(cli, tmp_path, small_disk, what):
    """checkpoint: 4.9 MB checkpoints, room for one; metrics: room for train.log's
    reserve and a few metrics lines."""
    plan = write_plan(tmp_path / "plan.toml")
    out = small_disk / "run"
    if what == "checkpoint":
        fill(small_disk, 7 * 2**20)
        args = ["--steps", "6"]
    else:
        text = plan.read_text().replace("checkpoint_every = 3", "checkpoint_every = 0")
        plan.write_text(text.replace("eval_every = 6", "eval_every = 0"))
        out.mkdir()
        fill(small_disk, 2**20 + 24 * 1024)  # the lock, plan.toml, 1 MiB of log, a few pages
        args = ["--steps", "400"]
    line = one_line(cli("run", str(plan), "--out", str(out), *args, timeout=300))
    name = ".tmp_step_00000006" if what == "checkpoint" else "metrics.jsonl"
    assert f"{out}/" in line and name in line and "No space left on device" in line, line
    log = (out / "train.log").read_text()
    assert f"@@error {out}" in log and "No space left on device" in log  # the worker's error
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) >= 3
    if what == "checkpoint":
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000003"]
