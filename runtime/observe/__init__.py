"""What a run reports about itself while it trains and after.

train_log.py (per-step lines, the progress bar's text, TensorBoard),
step_trace.py (`--profile-step`: one step's torch.profiler trace and its
breakdown, seconds), summary.py (peak memory, MFU's peak, summary.json) and
measure.py (a measured run and profiled step for `sandbox compare`).
"""
