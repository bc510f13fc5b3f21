"""torch.distributed for training runs launched by ``torchrun`` (one process per GPU, or CPU
processes over gloo).  Every helper is a no-op in a single process (world size 1).

    rank, world, local = init_distributed("cuda")   # WORLD_SIZE > 1: nccl on CUDA, gloo otherwise
    cfg = broadcast_object(cfg if rank == 0 else None, world)
    barrier(world)
"""

from __future__ import annotations

import atexit
import os

import torch


class DistError(RuntimeError):
    """torch.distributed asked for but not available."""


def dist_env() -> tuple:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: str) -> tuple:
    """Initialise the default process group once per process when WORLD_SIZE > 1 (nccl for a
    CUDA device, gloo otherwise); returns (rank, world_size, local_rank)."""
    rank, world, local = dist_env()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_available():
            raise DistError("WORLD_SIZE > 1 but this build of torch has no torch.distributed")
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if device.startswith("cuda"):
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend)
            atexit.register(_destroy_process_group)
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world, local


_EXIT_TIMEOUT_S = 60.0


def _destroy_process_group() -> None:
    """Tear the group down together (atexit, every rank).  A rank that destroys its group and
    exits while another is still in a collective, or rank 0 (whose process hosts torchrun's
    TCPStore) exiting before the others are done with the store, has been seen to abort a gloo
    rank at exit ("terminate called without an active exception").  So: a barrier first (gloo:
    monitored, with a timeout, so a dead peer cannot hang the exit), then destroy, then rank 0
    waits until every other rank has checked out through the store."""
    import datetime

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    store = getattr(dist.distributed_c10d, "_get_default_store", lambda: None)()
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=_EXIT_TIMEOUT_S))
        else:
            dist.barrier()
    except Exception:  # a peer already gone: nothing left to wait for
        store = None
    dist.destroy_process_group()
    if store is None:
        return
    try:
        if rank != 0:
            store.add("flopscale/exited", 1)
            return
        import time

        deadline = time.monotonic() + _EXIT_TIMEOUT_S
        while store.add("flopscale/exited", 0) < world - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    except Exception:
        pass


def broadcast_object(obj, world: int):
    """Rank 0's ``obj`` on every rank (a no-op in one process)."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: list, world: int, device: torch.device) -> list:
    """Sum a few float64 scalars over ranks (one collective)."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_ints(values: list, world: int, device: torch.device) -> list:
    """Sum int64 counts over ranks (one collective); on the GPU for nccl."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        t = t.to(device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_mean_grads(grads: list, world: int) -> None:
    """Average gradients over ranks in one flat collective (what DDP's reducer would do)."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    flat = _flatten_dense_tensors(grads)
    flat.div_(world)
    dist.all_reduce(flat)
    for g, r in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(r)


__all__ = ["DistError", "dist_env", "init_distributed", "broadcast_object", "barrier", "all_reduce_sum",
           "all_reduce_ints", "all_reduce_mean_grads"]
