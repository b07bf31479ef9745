"""`sandbox calibrate`: measure this machine for the simulator's profile.

run.py (`calibrate`: the jobs and their orchestration), kernels.py (GEMM,
memory and attention micro-benchmarks), layer.py (one transformer block),
collectives.py (gloo/NCCL collectives), concurrent.py (jobs side by side),
profile.py (the measured profile TOML and its agreement with the simulator),
step_profile.py (one training step split by torch.profiler, for compare).
"""
