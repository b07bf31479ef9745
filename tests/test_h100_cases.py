"""The public H100 rows (experiments/h100_cases.py) become valid plans: every
torchtitan, Megatron-Core and Llama 3 row is expressed (CP, FP8, 126 layers on
8 stages included), and only hybrid Mamba and LoRA rows are listed with a reason."""

import pytest

import sandbox
from experiments.h100_cases import VALIDATION, all_cases, llama3_cases

# the public CSVs live beside the checkout (../shared/validation/), not in it
needs_csvs = pytest.mark.skipif(not (VALIDATION / "torchtitan_benchmarks.csv").exists(),
                                reason=f"no published tables at {VALIDATION}")


def test_llama3_table4_layouts_load_with_one_block_fewer_at_the_ends():
    from sandbox.layout import chunk_sizes

    cases = llama3_cases()
    assert [c.gpus for c in cases] == [8192, 16384, 16384]
    for c in cases:
        plans = [sandbox.load(v) for v in c.variants]
        assert all(p.world_size == c.gpus for p in plans)
        deep = next(p for p in plans if p.parallel.vpp == 8)
        sizes = chunk_sizes(deep)  # 126 blocks over 128 chunks: embedding / head alone
        assert sizes[0] == sizes[-1] == 0 and set(sizes[1:-1]) == {1}


@needs_csvs
def test_every_dense_pretraining_row_has_a_plan_that_loads():
    cases = all_cases()
    by_source: dict[str, list] = {}
    for c in cases:
        by_source.setdefault(c.source, []).append(c)
    assert len(by_source["Megatron-Core H100 weak scaling"]) == 9
    assert len(by_source["torchtitan"]) == 43
    assert len(by_source["Llama 3 (Dubey 2024) Table 4"]) == 3
    for src in ("Megatron-Core H100 weak scaling", "torchtitan", "Llama 3 (Dubey 2024) Table 4"):
        for c in by_source[src]:
            assert not c.reason, (c.name, c.reason)
            plans = [sandbox.load(v) for v in c.variants]
            assert plans and all(p.world_size == c.gpus for p in plans), c.name
    reasons = [c.reason for c in by_source["NeMo AutoModel"]]
    # the dense Llama 3 70B and the six MoE pretraining rows (experiments.validate_moe)
    assert sum(not r for r in reasons) == 7
    assert all("Mamba" in r or "LoRA" in r for r in reasons if r)


@needs_csvs
def test_rows_carry_their_mechanisms():
    cases = {c.name: c for c in all_cases()}
    cp8 = [c for n, c in cases.items() if "CP" in n and "8B" in n]
    assert {sandbox.load(c.variants[0]).parallel.cp for c in cp8} == {1, 2, 4, 8}
    fp8 = sandbox.load(next(c for n, c in cases.items() if "rowwise" in n).variants[0])
    assert (fp8.train.precision, fp8.train.fp8_recipe) == ("fp8", "rowwise")
    pp8 = sandbox.load(next(c for n, c in cases.items() if "405B 512xH100 3D" in n).variants[0])
    assert pp8.parallel.pp == 8 and not pp8.parallel.stage_layers  # 126 layers, auto split
    meg = sandbox.load(cases["462B"].variants[0])
    assert meg.parallel.tp_comm_overlap and meg.parallel.overlap_param_gather
