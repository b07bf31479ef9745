"""The plan's parallelism applied to the model, torchtitan-style `apply_*` steps.

mesh.py (the (pp, dp, tp) DeviceMesh), tensor.py (DTensor TP + SP), data.py
(DDP / FSDP2 ZeRO), pipeline.py (stages and schedules; chunks from
`sandbox.layout`), recompute.py (activation checkpointing), expert.py
(expert parallelism: all-to-all dispatch, the MoE block's TP), and
parallelize.py, which composes them into a `Parallelized`.
"""
