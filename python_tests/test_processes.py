"""The device each process takes, alone or as a rank of torchrun (GPUs counted by stand-ins)."""
import pytest
import torch

from mdm_ext.processes import process_device


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def ranks(monkeypatch, local_rank: int, local_world_size: int) -> None:
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world_size))


def test_auto_takes_this_rank_gpu(monkeypatch, one_gpu):
    ranks(monkeypatch, 0, 1)
    assert process_device("auto") == torch.device("cuda", 0)
    assert process_device("cuda") == torch.device("cuda", 0)


def test_auto_is_the_cpu_for_every_rank_when_gpus_are_fewer(monkeypatch, one_gpu):
    for rank in (0, 1):
        ranks(monkeypatch, rank, 2)
        assert process_device("auto") == torch.device("cpu")


def test_a_missing_gpu_is_named(monkeypatch, one_gpu):
    ranks(monkeypatch, 1, 2)
    with pytest.raises(ValueError, match=r"cuda:1 does not exist"):
        process_device("cuda")
    with pytest.raises(ValueError, match=r"cuda:3 does not exist"):
        process_device("cuda:3")


def test_cpu_stays_cpu(monkeypatch, one_gpu):
    ranks(monkeypatch, 1, 2)
    assert process_device("cpu") == torch.device("cpu")
