"""Multi-process runs: joining ``torchrun``'s process group (``multi_gpu_train.json``); in inference
(``multi_gpu_inference.json``) each rank enhances its share of the studies and writes its own summary under
``<output_dir>/ranks/<rank>/``; rank 0 merges them into ``<output_dir>/summary.json``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist

from scripts.enhance import SUMMARY_NAME, StudiesFailedError
from scripts.io.writers import write_json

logger = logging.getLogger(__name__)

RANKS_DIR = "ranks"


def start_process_group(device: torch.device | str | None = None, backend: str | None = None) -> int:
    """Join ``torchrun``'s process group (NCCL on GPUs, gloo on CPU), put this rank on its GPU; returns the rank.

    ``idist.sync()`` lets ignite set up its process group on every rank before rank-0-only handlers ask for the rank.
    """
    import ignite.distributed as idist

    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    idist.sync()
    if torch.cuda.is_available() and device is not None:
        torch.cuda.set_device(device)
    return dist.get_rank()


def merge_rank_summaries(output_dir: str | os.PathLike, raise_on_failure: bool = True) -> dict | None:
    """After a barrier, rank 0 merges every rank's summary into ``<output_dir>/summary.json``.

    ``DistributedSampler(shuffle=False)`` gives rank ``r`` the studies ``r, r + N, r + 2N ...``, so taking the ranks'
    records in turn restores the datalist's order.

    Args:
        output_dir: the run's results folder (shared by all ranks; on several nodes, a shared file system).
        raise_on_failure: on rank 0, raise :class:`StudiesFailedError` after writing the summary if a study failed.

    Returns:
        the merged summary on rank 0, ``None`` on the other ranks.

    Raises:
        FileNotFoundError: when a rank left no summary (it crashed before finishing).
    """
    dist.barrier()
    if dist.get_rank() != 0:
        return None
    parts = []
    for rank in range(dist.get_world_size()):
        path = Path(output_dir) / RANKS_DIR / str(rank) / SUMMARY_NAME
        if not path.is_file():
            raise FileNotFoundError(f"rank {rank} left no summary {path}: it stopped before finishing its studies")
        parts.append(json.loads(path.read_text()))
    longest = max(len(part["studies"]) for part in parts)
    studies = [part["studies"][i] for i in range(longest) for part in parts if i < len(part["studies"])]
    failed = [s for s in studies if s["status"] != "ok"]
    merged = {
        "complete": all(part["complete"] for part in parts),
        "ok": len(studies) - len(failed),
        "failed": len(failed),
        "settings": {**parts[0]["settings"], "processes": len(parts)},
        "studies": studies,
    }
    path = write_json(merged, Path(output_dir) / SUMMARY_NAME)
    logger.info(f"{merged['ok']} of {len(studies)} studies enhanced by {len(parts)} processes; summary: {path}")
    if failed and raise_on_failure:
        lines = "\n".join(f"  - {s['message']}" for s in failed)
        raise StudiesFailedError(f"{len(failed)} of {len(studies)} studies failed (see {path}):\n{lines}")
    return merged
