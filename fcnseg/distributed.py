"""torch.distributed helpers: launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) or not."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from tqdm import tqdm


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun set up (nccl on GPUs, gloo on CPU). Returns whether distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks, in place. NCCL reduces GPU tensors only: CPU ones (confusion matrices) go via the GPU."""
    if is_distributed():
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            buf = t.cuda()
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            t.copy_(buf.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_float(x: float) -> float:
    """Rank 0's value on every rank (its clock: all ranks then stop at the same iteration with the same lr)."""
    if not is_distributed():
        return x
    t = torch.tensor([x], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return float(t)


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar on rank 0 only (every rank would draw its own)."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not (enabled and is_main()), dynamic_ncols=True,
                leave=False)
