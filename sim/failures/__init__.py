"""A whole training run with failures: what a failure costs as pure functions
(`checkpoint_cost`) and a Monte Carlo of checkpoints, restarts and lost work
(`report`: `failure_report(plan, step_time_s) -> FailureReport`)."""

from sim.failures.report import FailureReport, check_failure_inputs, failure_report

__all__ = ["FailureReport", "check_failure_inputs", "failure_report"]
