"""A run directory handed to us cannot run code, and no launch loses another's data.

Planted pickles (a `__reduce__` that creates a marker folder) in `rng_rank*.pt`
and DCP's `.metadata`; `torchrun -m runtime.train` without `--resume` into a
finished run; two `sandbox run` into one fresh folder; the run lock's rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.fuzz.case import RUN_PLAN, planted_pickle
from runtime import checkpoint as ckpt
from runtime.rundir import LOCK, RunLock, holds_run, refuse_existing_run
from sandbox.errors import SandboxError

ROOT = Path(__file__).resolve().parents[1]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def sandbox_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sandbox", *args]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 4-step tiny run with checkpoints after steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "plan.toml").write_text(RUN_PLAN)
    subprocess.run(sandbox_cmd("run", str(tmp / "plan.toml"), "--out", str(tmp / "run")),
                   check=True, capture_output=True, cwd=ROOT)
    return tmp / "run"


def copy_of(run: Path, tmp: Path) -> Path:
    out = tmp / "run"
    shutil.copytree(run, out)
    return out


def test_planted_rng_pickle_runs_nothing_on_resume(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    marker = tmp_path / "PWNED"
    (ckpt.latest_complete(run) / "rng_rank0.pt").write_bytes(planted_pickle(marker))
    p = subprocess.run(sandbox_cmd("run", str(run / "plan.toml"), "--out", str(run),
                                   "--resume", "--steps", "6"),
                       capture_output=True, text=True, cwd=ROOT)
    assert not marker.exists(), "the planted pickle ran"
    assert p.returncode == 0, p.stderr  # step 4 is refused, step 2 verifies
    assert "resuming from step_00000002" in p.stderr and "rng_rank0.pt" in p.stderr
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


@pytest.mark.parametrize("entry", ["export", "resume"])
def test_planted_metadata_pickle_runs_nothing(finished, tmp_path, entry):
    run = copy_of(finished, tmp_path)
    marker = tmp_path / "PWNED"
    for ck in ckpt.complete_checkpoints(run):
        (ck / ".metadata").write_bytes(planted_pickle(marker))
    before = tree_hashes(run)
    args = (("export", str(run), "--out", str(tmp_path / "m.onnx")) if entry == "export"
            else ("run", str(run / "plan.toml"), "--out", str(run), "--resume"))
    p = subprocess.run(sandbox_cmd(*args), capture_output=True, text=True, cwd=ROOT)
    assert not marker.exists(), "the planted pickle ran"
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "unreadable .metadata: UnpicklingError" in err[0], p.stderr
    assert tree_hashes(run) == before
    assert not (tmp_path / "m.onnx").exists()


def test_the_safe_reader_reads_what_dcp_writes(finished):
    md = ckpt.SafeReader(str(ckpt.latest_complete(finished))).read_metadata()
    assert any(k.startswith("model.") for k in md.state_dict_metadata)


def test_torchrun_without_resume_into_a_finished_run_changes_nothing(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    before = tree_hashes(run)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "1", "-m", "runtime.train", "--plan",
                        str(run / "plan.toml"), "--out", str(run)],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode != 0
    assert "already holds a run" in p.stdout + p.stderr
    assert tree_hashes(run) == before


def test_two_launches_into_one_folder_one_runs_one_refuses(tmp_path):
    (tmp_path / "plan.toml").write_text(RUN_PLAN)
    out = tmp_path / "run"
    cmd = sandbox_cmd("run", str(tmp_path / "plan.toml"), "--out", str(out))
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    refusal = next(err for code, err in results if code != 0).strip().splitlines()
    assert len(refusal) == 1 and ("in use by a run" in refusal[0]
                                  or "already holds a run" in refusal[0]), refusal
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert not (out / LOCK).exists()


def test_run_lock_rules(tmp_path):
    lock = RunLock.acquire(tmp_path)
    with pytest.raises(SandboxError, match="in use by a run"):  # this process is alive
        RunLock.acquire(tmp_path)
    lock.release()
    assert not (tmp_path / LOCK).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    with RunLock.acquire(tmp_path) as taken:  # stale: taken over
        assert json.loads((tmp_path / LOCK).read_text())["token"] == taken.token
    (tmp_path / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(SandboxError, match="pid 1 on elsewhere"):
        RunLock.acquire(tmp_path)
    RunLock(tmp_path, "not-ours").release()  # never removes another owner's lock
    assert (tmp_path / LOCK).exists()


def test_what_counts_as_a_run(tmp_path):
    assert holds_run(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    assert holds_run(tmp_path) is None  # an empty checkpoints folder holds nothing
    (tmp_path / "summary.json").write_text("{}")
    assert holds_run(tmp_path) == "summary.json"
    with pytest.raises(SandboxError, match="already holds a run"):
        refuse_existing_run(tmp_path)
