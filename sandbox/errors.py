"""Errors that reach the user as one readable line (no traceback)."""


class SandboxError(Exception):
    """A problem with the user's input: the CLI prints it and exits non-zero.

    The message may hold several lines, one per problem found.
    """


class PlanError(SandboxError, ValueError):
    """A plan that is malformed or cannot run; each line names the field."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
