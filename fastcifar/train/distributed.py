"""Training across processes under torchrun: the process group (NCCL between GPUs, gloo on the CPU), the DDP
wrapper, and the record that proves the ranks split the data and stayed in sync (summary.json `distributed`)."""

from __future__ import annotations

import hashlib
import os
import socket

from fastcifar.runtime import DistInfo


def init_distributed(dist: DistInfo, device) -> None:
    """torchrun: NCCL between GPUs, gloo on CPU."""
    if not dist.enabled:
        return
    import torch
    import torch.distributed as td

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                              device_id=device if device.type == "cuda" else None)


def destroy_distributed(dist: DistInfo) -> None:
    if dist.enabled:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


def wrap_distributed(model, dist: DistInfo, device):
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def distributed_record(model, data, dist: DistInfo) -> dict:
    """Gather each rank's first-epoch shard and a weight digest: proof the ranks split data and stayed in sync; and
    where each rank ran (torchrun's node rank, GROUP_RANK, and the host), which shows a multi-node run was one."""
    import torch.distributed as td

    from fastcifar.data.loader_contract import shard_indices

    opts = data.train_options
    indices = shard_indices(data.n_train, opts, 0)
    digest = hashlib.sha256()
    # Parameters only: BatchNorm running stats are per-rank by design (DDP broadcasts rank 0's buffers at
    # each forward, then every rank updates them from its own shard).
    for tensor in model.parameters():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    gathered = [None] * dist.world_size
    where = (int(os.environ.get("GROUP_RANK", 0)), socket.gethostname())
    td.all_gather_object(gathered, (indices.tolist(), digest.hexdigest(), where))
    shards = [set(g[0]) for g in gathered]
    disjoint = sum(len(s) for s in shards) == len(set().union(*shards))
    return {"world_size": dist.world_size, "backend": td.get_backend(),
            "samples_per_rank": [len(s) for s in shards], "shards_disjoint": disjoint,
            "weights_identical": len({g[1] for g in gathered}) == 1,
            "node_ranks": [g[2][0] for g in gathered], "hosts": [g[2][1] for g in gathered]}
