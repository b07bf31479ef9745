"""One training process's setup: its device, process group, seeds and compiled blocks.

`runtime.train` calls these once per process (torchrun starts one per
device): `setup_device` picks CUDA (NCCL) or CPU (gloo, threads split among
the node's processes), `init_process_group` joins the job from torchrun's
environment (a fresh store prefix after an elastic restart).
"""

from __future__ import annotations

import os
import random

import torch
import torch.distributed as dist


def setup_device() -> tuple[torch.device, str]:
    """This process's device and the process-group backend for it."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    if "OMP_NUM_THREADS" not in os.environ:  # else torch already follows it
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return torch.device("cpu"), "gloo"


def init_process_group(backend: str, device: torch.device) -> None:
    """The default process group from torchrun's environment. After an elastic
    restart its store gets a per-attempt prefix: torchrun's store outlives the
    attempt, and groups created later (`new_group`) would otherwise find the
    dead attempt's keys under the same names and wait for it forever."""
    from datetime import timedelta

    device_id = device if device.type == "cuda" else None
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if restart == 0 or "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend, device_id=device_id)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size=world, is_master=rank == 0 and not agent_store,
                          timeout=timedelta(minutes=10), multi_tenant=not agent_store)
    dist.init_process_group(backend, store=dist.PrefixStore(f"restart_{restart}", store),
                            rank=rank, world_size=world, device_id=device_id)


def seed_everything(seed: int) -> None:
    """Seed Python, torch and (when installed) numpy."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def compile_blocks(parts: list[torch.nn.Module]) -> None:
    """torch.compile each transformer block in place (GPU only)."""
    for part in parts:
        model = getattr(part, "module", part)  # DDP wraps the GPT
        for block in model.layers.values():
            block.compile()
