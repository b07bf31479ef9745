"""Display units (`sandbox.units`) and the memory reserve of "fits" (issue 22)."""

from __future__ import annotations

import pytest

import sandbox
from sandbox import memory
from sandbox import units as u
from sandbox.cli import main
from sandbox.commands.simulate import format_result
from sandbox.errors import PlanError
from tests.helpers.cli import one_line


def test_percent_formatting():
    assert u.percent(0.4744) == "47.4%"
    assert u.percent(0.5) == "50.0%"
    assert u.percent(1e-15) == "0.0%"
    assert u.share(0.05) == "5%" and u.share(0.121) == "12%" and u.share(0.038) == "3.8%"


@pytest.mark.parametrize("s,text", [(15.7, "15.7 s"), (0.312, "312 ms"), (4.1e-6, "4.10 us"),
                                    (0.9997, "1.00 s"), (0.0, "0 s"), (3600.0, "3,600 s")])
def test_seconds_are_si_scaled(s, text):
    assert u.seconds(s) == text


def test_tiny_part_of_a_step_is_zero():
    # rounding noise of `other = step - sum(parts)` is not a time
    assert u.seconds(4.619e-14, of=15.7) == "0 s"
    assert u.seconds(2e-6, of=15.7) == "2.00 us"  # a real microsecond stays


@pytest.mark.parametrize("n,text", [(124e6, "124 M"), (1.3e9, "1.30 B"), (175e9, "175 B"),
                                    (4200, "4.20 k"), (999.9e6, "1.00 B"), (1.01e12, "1.01 T"),
                                    (512, "512")])
def test_parameter_counts_have_si_prefixes(n, text):
    assert u.params(n) == text


def test_memory_is_shown_in_gib_of_the_nominal_capacity():
    assert u.gib(85.9) == "80.0 GiB"  # an H100 / A100 80 GB: hbm_gb = 85.9 (1e9 bytes)
    assert u.gib(42.9) == "40.0 GiB"
    assert u.gib(0.3) == "286 MiB"  # small plans are not "0.0 GiB"
    assert u.to_gib(85.9) == pytest.approx(80.0, abs=0.01)


def test_flop_rates_have_si_prefixes():
    assert u.flops_rate(3.1e9) == "3.10 GFLOP/s"
    assert u.flops_rate(3.12e14) == "312 TFLOP/s"
    assert u.rate(45_200) == "45.2 k tokens/s"


def test_tiny_model_simulate_output_has_no_zero_units():
    out = format_result(sandbox.simulate(sandbox.load({"model": {"preset": "tiny"}}),
                                         timeline=False).to_dict())
    assert "0.000 B" not in out and "0.0 / 0.0" not in out
    assert "e-1" not in out  # no 4.619e-14 style times
    assert "FLOP/s / " in out and "k" in out.splitlines()[0]  # 221 k parameters
    mfu = next(line for line in out.splitlines() if line.startswith("MFU"))
    assert mfu.count("%") == 2
    assert "GiB" in out and " GB" not in out


def _between(reserve: float | None = None) -> sandbox.specs.Plan:
    """The tiny plan on a GPU it fills to 97%: inside a 5% reserve."""
    base = sandbox.load({"model": {"preset": "tiny"}})
    need = memory.memory_per_gpu(base)["total"]
    extra = {} if reserve is None else {"cluster.memory_reserve": reserve}
    return base.replace(**{"cluster.gpu.hbm_gb": need / 0.97, **extra})


def test_fits_keeps_the_default_reserve_free():
    from sim import memory_fields
    from sim.search.space import screen

    tight = _between()
    assert tight.cluster.memory_reserve == 0.05
    assert not memory.fits(tight) and not sandbox.info(tight)["fits"]
    assert memory_fields(tight)[1] is False
    feasible, rejected = screen(tight, [tight.parallel])
    assert not feasible and "reserve" in rejected[0][2]
    text = str(sandbox.info(tight))
    assert "NO, tight" in text and "within the 5% reserve" in text
    # without a reserve the same plan fits, and says how much is left
    loose = _between(0.0)
    assert memory.fits(loose) and sandbox.info(loose)["fits"] and memory_fields(loose)[1]
    assert "yes (" in str(sandbox.info(loose)) and "3% free; 0% reserved" in str(
        sandbox.info(loose))


def test_fits_line_wording():
    assert u.memory_fit(75.5, 85.9, 0.05, True) == "yes (70.3 of 80.0 GiB, 12% free; 5% reserved)"
    assert u.memory_fit(82.66, 85.9, 0.05, False).startswith("NO, tight (does not fit: 77.0 of "
                                                             "80.0 GiB leaves 3.8% free")
    assert u.memory_fit(90.0, 85.9, 0.05, False).startswith("NO (does not fit: 83.8 GiB needed")


@pytest.mark.parametrize("value", [0.5, -0.01, 0.9])
def test_bad_memory_reserve_is_one_line(tmp_path, capsys, value):
    path = tmp_path / "p.toml"
    path.write_text(f'[model]\npreset = "tiny"\n[cluster]\npreset = "localhost"\n'
                    f"memory_reserve = {value}\n")
    one_line(capsys, main(["info", str(path)]), "cluster.memory_reserve", "[0, 0.5)", str(value))
    with pytest.raises(PlanError, match="memory_reserve"):
        sandbox.load(str(path))
