"""The plan's parallelism applied to the model, torchtitan-style `apply_*` steps.

mesh.py (the (pp, dp, tp) DeviceMesh), tensor.py (DTensor TP + SP), data.py
(DDP / FSDP2 ZeRO), pipeline.py (stages and schedules; chunks from
`sandbox.layout`), recompute.py (activation checkpointing), expert.py
(expert parallelism: sharding the MoE blocks, their TP and gradients) with
expert_dispatch.py (the all-to-all dispatch / combine the MoE block runs), and
parallelize.py, which composes them into a `Parallelized`.
"""
