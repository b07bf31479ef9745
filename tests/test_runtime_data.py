"""runtime.data.loader and runtime.lr: layout-free batches, user data, schedules (in-process)."""

import json
import math

import pytest
import torch

import sandbox
from runtime.data import loader as data
from runtime.lr import build_scheduler, lr_at
from sandbox.errors import SandboxError


def plan(**parallel):
    return sandbox.load({"model": {"preset": "tiny"}, "cluster": {"preset": "localhost"},
                         "parallel": {"global_batch": 8, **parallel},
                         "train": {"seed": 3}})


def test_global_batch_is_independent_of_layout_and_slices_concatenate():
    layouts = [plan(), plan(dp=2), plan(dp=4, micro_batch=2), plan(dp=2, tp=2),
               plan(pp=2, schedule="gpipe")]
    for step in (0, 1, 7):
        ref_x, ref_y = data.global_batch(layouts[0], step)
        assert ref_x.shape == (8, 64) and ref_x.dtype == torch.int64
        assert torch.equal(ref_x[:, 1:], ref_y[:, :-1])  # targets are the next tokens
        for p in layouts[1:]:
            x, y = data.global_batch(p, step)
            assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
            dp = p.parallel.dp
            parts = [data.dp_slice(x, r, dp) for r in range(dp)]
            assert all(len(s) == 8 // dp for s in parts)
            assert torch.equal(torch.cat(parts), x)
    a, _ = data.global_batch(layouts[0], 0)
    b, _ = data.global_batch(layouts[0], 1)
    assert not torch.equal(a, b)
    other_seed = plan().replace(seed=4)
    assert not torch.equal(data.global_batch(other_seed, 0)[0], a)


def test_builtin_corpus_is_text_and_heldout_is_separate():
    toks = data.load_tokens("builtin")
    assert 1_000_000 <= len(toks) <= data.BUILTIN_BYTES
    assert int(toks.max()) < 256
    assert "def " in data.decode(toks[:20000])
    train, held = data.token_split("train"), data.token_split("heldout")
    assert len(train) + len(held) == len(toks)
    assert abs(len(held) / len(toks) - data.HELDOUT_FRACTION) < 0.01
    loader = data.DataLoader.from_plan(plan())
    batches = loader.eval_batches(2)
    assert len(batches) == 2 and batches[0][0].shape == (8, 64)
    assert torch.equal(batches[0][0], loader.eval_batches(2)[0][0])  # fixed
    # every evaluation window lies inside the held-out part
    window = batches[1][0][-1]
    assert any(torch.equal(held[i:i + 64], window) for i in range(len(held) - 64, -1, -1))


def test_user_txt_jsonl_and_directories(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    lines = [json.dumps({"text": f"line {i} " * 20}) for i in range(10)]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    txt = data.load_tokens(str(tmp_path / "a.txt"))
    assert data.decode(txt).startswith("hello world")
    js = data.load_tokens(str(tmp_path / "b.jsonl"))
    assert data.decode(js).startswith("line 0 line 0") and "{" not in data.decode(js)
    both = data.load_tokens(str(tmp_path))
    assert len(both) == len(txt) + len(js) + 1  # sorted files joined by a newline
    assert data.check_data(str(tmp_path), seq_len=64, vocab=256) == len(both)


@pytest.mark.parametrize("case", ["missing", "empty", "short", "badjson", "nofield", "emptydir",
                                  "suffix", "vocab"])
def test_bad_data_is_one_line_naming_the_path(tmp_path, case):
    path = tmp_path / "d.txt"
    vocab = 256
    if case == "empty":
        path.write_text("")
    elif case == "short":
        path.write_text("x" * 100)
    elif case == "badjson":
        path = tmp_path / "d.jsonl"
        path.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    elif case == "nofield":
        path = tmp_path / "d.jsonl"
        path.write_text(json.dumps({"body": "x"}) + "\n")
    elif case == "emptydir":
        path = tmp_path / "dir"
        path.mkdir()
    elif case == "suffix":
        path = tmp_path / "d.csv"
        path.write_text("a,b\n" * 1000)
    elif case == "vocab":
        path.write_text("y" * 10000)
        vocab = 100
    with pytest.raises(SandboxError) as e:
        data.check_data(str(path), seq_len=64, vocab=vocab)
    msg = str(e.value)
    assert "\n" not in msg
    assert (str(path) in msg) if case != "vocab" else "model.vocab" in msg


def test_cosine_schedule_values():
    t = plan().replace(lr=1e-3, lr_schedule="cosine", warmup_steps=4, min_lr_ratio=0.1,
                       steps=20).train
    lrs = [lr_at(s, t) for s in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    after = lrs[4:]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    # halfway through the decay: the mean of lr and min lr
    assert lr_at(4 + 8, t) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_at(20, t) == pytest.approx(1e-4)  # ends at lr * min_lr_ratio
    # the torch scheduler follows lr_at
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    sched = build_scheduler(opt, t)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(lrs)


def test_constant_schedule():
    t = plan().replace(lr=3e-4, lr_schedule="constant", warmup_steps=5).train
    assert {lr_at(s, t) for s in range(50)} == {3e-4}
