"""The real data path: prepare-data (BPE / byte tokenizer, memory-mapped shards,
meta.json), training on it with the logs people read (train.log lines, stderr
lines when piped, TensorBoard, --profile-step), and export / generate decoding
with the run's tokenizer; the int8 export of the embedding and the tied head.

Tiny corpora and a tiny vocab (512) keep this fast; the gpt-mini vocab-8192
run is recorded in experiments/results/data_path.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from runtime.data import loader as data
from runtime.data.prepare import prepare
from runtime.data.shards import open_prepared
from runtime.data.tokenizer import EOT, Tokenizer, byte_tokenizer
from runtime.observe.train_log import bar_postfix, step_line
from sandbox.cli import main as cli_main
from sandbox.errors import SandboxError

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron "
         "pi rho sigma tau upsilon phi chi psi omega").split()


def _text(n_lines: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(" ".join(rng.choice(WORDS, 8)) + f" {i}\n" for i in range(n_lines))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.txt").write_text(_text(3000, 0))
    (root / "b.jsonl").write_text("".join(json.dumps({"text": _text(3, i)}) + "\n"
                                          for i in range(200)))
    return root


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "bpe"
    prepare([str(corpus)], out, tokenizer="bpe", vocab=512, val_fraction=0.2,
            shard_tokens=7_000)
    return out


def test_prepare_writes_shards_meta_and_a_lossless_tokenizer(prepared, corpus):
    meta = json.loads((prepared / "meta.json").read_text())
    tok = Tokenizer.load(prepared / "tokenizer.json")
    # the corpus has fewer merges than asked for: the vocabulary is what was learned
    assert meta["tokenizer"] == "bpe" and 400 < meta["vocab"] == tok.vocab <= 512
    assert meta["eot"] == tok.eot == 0 and meta["dtype"] == "uint16"
    assert len(meta["shards"]) >= 3  # 7,000 tokens per shard
    assert meta["documents"] == 1 + 200
    for s in meta["sources"]:
        assert s["sha256"] == hashlib.sha256(Path(s["path"]).read_bytes()).hexdigest()
    assert meta["split"]["val"][1] == meta["tokens"]
    assert meta["split"]["val"][1] - meta["split"]["val"][0] == int(meta["tokens"] * 0.2)
    stream = np.concatenate([np.fromfile(prepared / s["file"], np.uint16)
                             for s in meta["shards"]])
    assert len(stream) == meta["tokens"] and stream.max() < meta["vocab"]
    docs = [(corpus / "a.txt").read_text()] + [json.loads(line)["text"] for line in
                                               (corpus / "b.jsonl").read_text().splitlines()]
    assert tok.decode(stream.tolist()) == EOT.join(docs)  # byte-level BPE is lossless
    assert meta["bytes_per_token"] > 2  # merges were learned


def test_byte_prepare_is_the_raw_byte_stream(corpus, tmp_path):
    prepare([str(corpus)], tmp_path / "b", tokenizer="byte")
    d = open_prepared(str(tmp_path / "b"))
    assert d.vocab == 256 and d.meta["dtype"] == "uint16"
    assert torch.equal(torch.from_numpy(d.read(0, d.tokens)), data.load_tokens(str(corpus)))
    tok = byte_tokenizer()
    assert tok.encode("é x\n") == list("é x\n".encode())


def test_batches_depend_on_seed_and_step_and_cross_shards(prepared):
    loader = data.DataLoader(str(prepared), global_batch=8, seq_len=32, seed=3)
    x1, y1 = loader.global_batch_at(5)
    x2, y2 = data.DataLoader(str(prepared), 8, 32, 3).global_batch_at(5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, loader.global_batch_at(6)[0])
    assert torch.equal(x1[:, 1:], y1[:, :-1]) and x1.dtype == torch.int64
    d = open_prepared(str(prepared))
    whole = torch.from_numpy(d.read(0, d.tokens))
    boundary = int(d.offsets[1])
    view = d.split("train")
    rows = view.windows(torch.tensor([boundary - 5, 0]), 12)  # spans shards 0 and 1
    assert torch.equal(rows[0], whole[boundary - 5:boundary + 7])
    held = data.split_view("heldout", str(prepared), 32)
    assert torch.equal(held.read(0, 10), whole[d.meta["split"]["val"][0]:][:10])
    assert len(loader.eval_batches(2)) == 2


def test_vocab_mismatch_and_damaged_data_are_one_line(prepared, tmp_path):
    v = open_prepared(str(prepared)).vocab
    with pytest.raises(SandboxError, match=rf"^model.vocab: 300 < the data's vocabulary of {v}"):
        data.check_data(str(prepared), 32, 300)
    # a model vocabulary larger than the tokenizer's (padded) trains
    assert data.check_data(str(prepared), 32, 512) == open_prepared(str(prepared)).tokens
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in prepared.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    first = bad / "tokens_000000.bin"
    first.write_bytes(first.read_bytes()[:100])
    with pytest.raises(SandboxError, match="tokens_000000.bin: 100 bytes, meta.json says"):
        data.check_data(str(bad), 32, 512)
    (bad / "meta.json").write_text("{not json")
    open_prepared.cache_clear()
    with pytest.raises(SandboxError, match="meta.json: not valid JSON"):
        data.check_data(str(bad), 32, 512)


@pytest.mark.parametrize("args, words", [
    (["builtin", "--vocab", "100"], ["--vocab", "257"]),
    (["builtin", "--tokenizer", "byte", "--vocab", "512"], ["byte tokenizer has 256"]),
    (["nowhere.txt"], ["no such data file"]),
    (["builtin", "--val-fraction", "0.9"], ["--val-fraction"]),
    (["builtin", "--val-fraction", "nan"], ["--val-fraction"]),
])
def test_prepare_data_cli_refuses_bad_input(args, words, tmp_path, capsys):
    code = cli_main(["prepare-data", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and all(w in err[0] for w in words), err
    assert not (tmp_path / "o" / "meta.json").exists()


def test_prepare_data_cli_refuses_a_used_folder(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("")
    assert cli_main(["prepare-data", "builtin", "--out", str(tmp_path / "o")]) == 1
    assert "must be a new or empty folder" in capsys.readouterr().err


def test_step_lines_and_the_bar_use_the_measured_step_time():
    info = {"step": 3, "steps": 10, "loss": 4.25, "lr": 1e-3, "grad_norm": 0.5,
            "step_time_s": 0.2, "tokens_per_s": 2560.0, "mem_gb": 0.41}
    assert step_line(info) == ("step 3/10 loss 4.2500 lr 1.00e-03 grad_norm 0.5 step 0.200 s "
                               "2,560 tokens/s mem 0.41 GB")
    assert bar_postfix(info, [0.2, 0.3, 0.1]) == "loss 4.2500, 0.200 s/step, 1 s left"


PLAN = """
[model]
preset = "tiny"
vocab = 512
[cluster]
preset = "localhost"
[parallel]
dp = 2
global_batch = 8
micro_batch = 4
[train]
lr = 3e-3
steps = 6
eval_every = 3
checkpoint_every = 6
seed = 2
data = "{data}"
"""


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> tuple[Path, object]:
    """`sandbox run` of a 2-process tiny vocab-512 plan on the prepared data,
    output piped (not a terminal), step 2 profiled."""
    tmp = tmp_path_factory.mktemp("run")
    plan = tmp / "plan.toml"
    plan.write_text(PLAN.format(data=prepared))
    r = run_cli("run", str(plan), "--out", str(tmp / "run"), "--profile-step", "2")
    assert r.returncode == 0, r.stderr
    return tmp / "run", r


def test_run_on_prepared_data_logs_lines_tensorboard_and_a_trace(trained, prepared):
    out, r = trained
    lines = [s for s in r.stderr.splitlines() if s.startswith("step ")]
    assert [s.split()[1] for s in lines] == [f"{i}/6" for i in range(1, 7)]
    log = (out / "train.log").read_text().splitlines()
    assert [s for s in log if s.startswith("step ")] == lines
    assert "eval_loss" in lines[2] and "tokens/s" in lines[0]
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (out / "tokenizer.json").read_bytes() == (prepared / "tokenizer.json").read_bytes()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s",
            "perf/mem_gb", "eval/loss"} <= set(acc.Tags()["scalars"])
    tb_loss = [e.value for e in acc.Scalars("train/loss")]
    assert tb_loss == pytest.approx([row["loss"] for row in rows], rel=1e-6)
    for rank in (0, 1):
        trace = json.loads((out / "profile" / f"step_2.rank_{rank}.trace.json").read_text())
        assert any(e.get("name") == "fwd_bwd" for e in trace["traceEvents"])
        b = json.loads((out / "profile" / f"step_2.rank_{rank}.breakdown.json").read_text())
        assert 0 < b["compute"] <= b["step_s"] and b["device"] == "cpu"
    assert list((out / "logs").rglob("attempt_0"))  # torchrun's --log-dir (error files)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> tuple[Path, dict]:
    from runtime.export.pipeline import export

    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    rep = export(trained[0], path, quantize="int8", eval_batches=2, latency_repeats=2,
                 decode_tokens=8).to_dict()
    return path, rep


def test_int8_export_quantizes_the_embedding_and_tied_head(exported):
    import onnx

    path, rep = exported
    assert rep["shape"]["vocab"] == 512
    tables = [(i.data_type, list(i.dims)) for i in onnx.load(str(path)).graph.initializer
              if 512 in i.dims and len(i.dims) == 2]
    assert tables == [(onnx.TensorProto.INT8, [512, 64])]  # one int8 table, no fp32 one
    assert rep["size_ratio"] < 0.35 and rep["top1_agreement"] > 0.9
    assert rep["ppl_onnx"] == pytest.approx(rep["baseline_ppl_onnx"], rel=0.03)
    assert rep["decode_check"]["cache_matches_no_cache"]


def test_generate_decodes_with_the_runs_tokenizer(exported, capsys):
    from runtime.export.generate import Generator

    path, rep = exported
    tok = Tokenizer.load(path.with_suffix(".tokenizer.json"))
    assert tok.to_str() == Tokenizer.load(Path(rep["run_dir"]) / "tokenizer.json").to_str()
    assert cli_main(["generate", str(path), "--prompt", "alpha beta", "--max-new-tokens",
                     "6"]) == 0
    text = capsys.readouterr().out
    ids = tok.encode("alpha beta")
    new = Generator.open(path).generate(ids, 6)[0]
    assert len(new) == 6 and max(new) < 512
    assert text == tok.decode(ids + new) + "\n" and text.startswith("alpha beta")


def test_generate_edge_cases_are_one_line(exported, capsys):
    path, rep = exported
    ctx = rep["shape"]["seq_len"]
    long = " ".join(WORDS * ctx)
    for args, words in ((["--prompt", ""], ["--prompt", "empty"]),
                        (["--prompt", long], ["--prompt", "context"]),
                        (["--prompt", "pi", "--max-new-tokens", str(ctx)], ["context"]),
                        (["--prompt", "pi", "--max-new-tokens", "10000000000"], ["0..65,536"]),
                        (["--prompt", "pi", "--temperature", "nan"], ["--temperature"]),
                        (["--prompt", "pi", "--temperature", "-1"], ["--temperature"])):
        code = cli_main(["generate", str(path), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and all(w in err[0] for w in words), (args, err)


def test_generator_slides_past_the_context_alike_with_and_without_cache(exported):
    from runtime.export.generate import Generator

    path, rep = exported
    gen = Generator.open(path)
    prompt = list(range(1, gen.context - 2))
    with_cache = gen.generate(prompt, 6)[0]
    assert len(with_cache) == 6
    assert with_cache == gen.generate(prompt, 6, use_cache=False)[0]


def test_device_breakdown_from_kernels():
    import sandbox
    from runtime.observe.step_trace import analyse_device

    plan = sandbox.load({"model": {"preset": "tiny"}, "parallel": {"dp": 2}})
    cpu = [{"name": "fwd_bwd", "start_us": 0, "end_us": 50, "device": "cpu"},
           {"name": "optimizer", "start_us": 60, "end_us": 70, "device": "cpu"}]
    k = [{"name": "gemm", "start_us": 10, "end_us": 40, "device": "cuda"},
         {"name": "ncclDevKernel_AllReduce", "start_us": 30, "end_us": 60, "device": "cuda"},
         {"name": "adam", "start_us": 75, "end_us": 100, "device": "cuda"}]
    b = analyse_device(cpu + k, plan)
    assert b["step_s"] == pytest.approx(100e-6)
    assert b["compute"] == pytest.approx(30e-6) and b["optimizer"] == pytest.approx(25e-6)
    assert b["dp_comm"] == pytest.approx(20e-6) and b["dp_comm_in_flight"] == pytest.approx(30e-6)
    assert b["other"] == pytest.approx(25e-6)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def _rss_file() -> int:
    """This process's resident file-backed pages, bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_windows_read_leave_the_resident_set(tmp_path):
    """64 MiB of cached tokens read at 64 random windows: the pages each read
    maps (whole large folios of a cached file) are unmapped again."""
    n = 32 << 20
    np.random.default_rng(0).integers(0, 256, n, dtype=np.uint16).tofile(
        tmp_path / "tokens_000000.bin")
    byte_tokenizer().save(tmp_path / "tokenizer.json")
    (tmp_path / "meta.json").write_text(json.dumps({
        "format": 1, "vocab": 256, "dtype": "uint16", "tokens": n,
        "shards": [{"file": "tokens_000000.bin", "tokens": n}],
        "split": {"train": [0, n - 4096], "val": [n - 4096, n]}}))
    loader = data.DataLoader(str(tmp_path), 64, 64, 0)
    before = _rss_file()
    x, _ = loader.global_batch_at(0)
    assert _rss_file() - before < 4 << 20, (_rss_file() - before) / 2**20
    row = x[0].numpy()  # the first window of step 0 (seed 0), as DataLoader draws it
    gen = torch.Generator().manual_seed(0)
    start = int(torch.randint(0, n - 4096 - 64, (64,), generator=gen)[0])
    ref = np.fromfile(tmp_path / "tokens_000000.bin", np.uint16, count=64, offset=2 * start)
    assert (row == ref).all()


def test_a_long_split_is_windowed_to_its_last_token(tmp_path):
    """5e8 tokens (a sparse 1 GB shard): the evenly spaced evaluation windows,
    computed in float32 (24,999,935 rounds up), stay inside the split."""
    from runtime.data.shards import FORMAT

    n = 500_000_000
    with open(tmp_path / "tokens_000000.bin", "wb") as f:
        f.truncate(2 * n)
    byte_tokenizer().save(tmp_path / "tokenizer.json")
    cut = n - n // 20
    (tmp_path / "meta.json").write_text(json.dumps({
        "format": FORMAT, "vocab": 256, "dtype": "uint16", "tokens": n,
        "shards": [{"file": "tokens_000000.bin", "tokens": n}],
        "split": {"train": [0, cut], "val": [cut, n]}}))
    assert data.check_data(str(tmp_path), 64, 256) == n
    batches = data.DataLoader(str(tmp_path), 8, 64, 0).eval_batches(4)
    assert len(batches) == 4 and batches[-1][0].shape == (8, 64)
    with pytest.raises(ValueError, match="outside the stream"):
        open_prepared(str(tmp_path)).read(n - 2, n + 1)
