"""How plain data-parallel replicas synchronise besides DDP's all-reduce.

variants.py (`apply_sync`: the `parallel.dp_mode` / `grad_compression`
switch), grad_compression.py (DDP communication hooks), parameter_server.py
(a sharded server on collectives), traffic.py (bytes sent, from the ring
formulas).
"""
