"""This process's device and process group, alone or as one rank of ``torchrun``."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist


def process_device(name: str = "auto") -> torch.device:
    """The device this process works on.

    "auto": this rank's GPU, cuda:LOCAL_RANK, when every process of the node has one, else the
    CPU for all of them (so that ranks never mix NCCL and gloo). "cuda" without an index means
    cuda:LOCAL_RANK. Raises ValueError for another kind of device or a GPU this machine does
    not have.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        name = "cuda" if torch.cuda.is_available() and processes_here <= torch.cuda.device_count() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s); run at most that many processes per node, or on cpu")
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Joins the process group of ``torchrun`` (NCCL on CUDA, gloo on CPU) for the duration,
    when this process is one of several and its caller has not joined one already."""
    owns_group = int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized()
    if owns_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if owns_group:
            dist.destroy_process_group()
