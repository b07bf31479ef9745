"""The CLI: contract output, and one readable line on bad input."""

import json

import pytest


def assert_one_line_error(result, *words):
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_info_json_contract(cli, tmp_path):
    plan = tmp_path / "p.toml"
    plan.write_text('[model]\npreset = "gpt3-175b"\n[cluster]\npreset = "dgx-a100-80g"\n'
                    'nodes = 128\n[parallel]\ntp = 8\npp = 16\nglobal_batch = 1536\n')
    r = cli("info", str(plan), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["params"] == 174615846912 and out["world_size"] == 1024
    assert out["fits"] is True and out["memory_gb_per_gpu"]["total"] > 0
    human = cli("info", str(plan))
    assert "parameters" in human.stdout and human.returncode == 0


@pytest.mark.parametrize("text,words", [
    ('[parallel]\ntp = 0\n', ["parallel.tp", "positive"]),
    ('[model]\npreset = "gpt3-157b"\n', ["model.preset", "gpt3-175b"]),
    ('[model]\npreset = "tiny"\nlayerz = 3\n', ["model.layerz", "did you mean 'layers'"]),
    ('[model\npreset = 1\n', ["malformed TOML"]),
])
def test_info_bad_plan_one_line(cli, tmp_path, text, words):
    plan = tmp_path / "bad.toml"
    plan.write_text(text)
    assert_one_line_error(cli("info", str(plan)), *words)


def test_info_missing_file(cli, tmp_path):
    assert_one_line_error(cli("info", str(tmp_path / "nope.toml")), "no such plan file")


def test_presets_lists_everything(cli):
    r = cli("presets")
    for name in ("tiny", "gpt-mini", "llama3-405b", "megatron-1t", "dgx-a100-80g", "dgx-h100",
                 "vtrain-a100", "localhost"):
        assert name in r.stdout
    assert json.loads(cli("presets", "--json").stdout)["models"]["gpt3-175b"]["layers"] == 96


def test_demo_runs(cli, tmp_path):
    r = cli("demo", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    assert "gpt3-175b" in r.stdout
