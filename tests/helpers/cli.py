"""In-process CLI calls for tests: the exit code and the one stderr line of a refusal."""

from __future__ import annotations

PLAN = '[model]\npreset = "tiny"\n[cluster]\npreset = "localhost"\n[train]\nsteps = 2\n'


def one_line(capsys, code: int, *words: str) -> str:
    """The single stderr line of a refused command (exit 1); it holds every word."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, (code, err)
    assert ": error: " in err[0] and "Traceback" not in err[0]
    for w in words:
        assert w in err[0], err[0]
    return err[0]
