"""The probe set of `python -m experiments.fuzz_cli`: every entry point fed bad
input as a tester would. One module per area, each with `cases()`:

- `plans`: bad numbers (NaN, inf, huge sizes) and plan files that are not plans;
- `rundirs`: planted pickles, corrupt checkpoints, launches into finished or busy
  folders, bad generation arguments, concurrent searches;
- `training`: plans too big for host memory on CPU, runs that diverge, special
  files and large corpora as train.data.

`case.Case` is the data of one probe; `fuzz_cli` runs and classes them.
"""

from __future__ import annotations

from experiments.fuzz import plans, rundirs, training
from experiments.fuzz.case import Case

AREAS = (plans, rundirs, training)


def all_cases() -> list[Case]:
    """Every case of every area, in order."""
    return [case for area in AREAS for case in area.cases()]
