"""Errors that reach the user as one readable line (no traceback), and the
"did you mean" hint those lines carry."""

from __future__ import annotations

import difflib
from typing import Any


class SandboxError(Exception):
    """A problem with the user's input: the CLI prints it and exits non-zero.

    The message may hold several lines, one per problem found.
    """


class PlanError(SandboxError, ValueError):
    """A plan that is malformed or cannot run; each line names the field."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def did_you_mean(word: str, options: Any) -> str:
    """" (did you mean 'X'?)" for the option closest to `word`, or ""."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
