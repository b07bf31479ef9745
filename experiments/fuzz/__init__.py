"""The probe set of `python -m experiments.fuzz_cli`: every entry point fed bad
input as a tester would. One module per area, each with `cases()`:

- `plans`: bad numbers (NaN, inf, huge sizes) and plan files that are not plans;
- `limits`: values every field allows that ask for unbounded work (a huge world,
  a search or scaling sweep over it, millions of failures), with RSS limits;
- `rundirs`: planted pickles, corrupt checkpoints, launches into finished or busy
  folders, bad generation arguments, concurrent searches;
- `cli`: output paths (missing, a folder for a file and back, read-only, bad
  extension, empty, a full disk), input paths (too long, NUL, nested TOML) and
  numeric flags (negative, zero, NaN, inf) of every subcommand.
- `training`: plans too big for host memory on CPU, runs that diverge, special
  files and large corpora as train.data.

`case.Case` is the data of one probe; `fuzz_cli` runs and classes them.
"""

from __future__ import annotations

from experiments.fuzz import cli, limits, plans, rundirs, training
from experiments.fuzz.case import Case

AREAS = (plans, limits, cli, training, rundirs)


def all_cases() -> list[Case]:
    """Every case of every area, in order."""
    return [case for area in AREAS for case in area.cases()]
