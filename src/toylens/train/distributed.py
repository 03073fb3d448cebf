"""Where one run trains: a device in this process, or one rank of a torchrun job.

    torchrun --nproc_per_node 4 -m toylens.cli train configs/sort-no-decay.yaml     # 4 GPUs
    python -m torch.distributed.run --nproc_per_node 2 -m toylens.cli train cfg.yaml --device cpu

`process_group(device)` is called inside `train()` (never at import): without `WORLD_SIZE` (or
with 1) it returns a `SingleProcess`; under torchrun a `DistributedGroup` that joins the process
group (NCCL on GPUs, gloo on CPU) and leaves it when training ends.

What the trainer does with it, and why it gives the single-process result:
- `train.batch_size` stays the *global* batch. Every rank draws the same epoch order and takes
  its slice (`shard`) of each global batch, so an epoch sees the same batches in the same order.
- DistributedDataParallel averages gradients over ranks. Each rank's loss is scaled by
  `world * (its target tokens / the batch's target tokens)` (and the L1 penalty by its share of
  sequences), so the average is exactly the gradient of the global batch's mean loss, also when
  the shards hold different numbers of target tokens. Two ranks at batch b/2 each therefore
  follow one process at batch b up to float summation order (see tests/train/test_distributed.py).
- Rank 0 alone evaluates and writes the run directory (`on_main`); if it fails there, every rank
  raises instead of waiting forever at the next collective. Resume needs `--out` on a filesystem
  every rank can read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from toylens.device import resolve_device
from toylens.errors import ToylensError
from toylens.tasks.base import Batch

T = TypeVar("T")


class SingleProcess:
    """One process, one device: every collective is the identity."""

    rank, world, is_main = 0, 1, True

    def __init__(self, device: torch.device):
        self.device = device

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def shard(self, batch: Batch) -> tuple[Batch, float, float]:
        """This rank's part of a global batch, its loss weight and its L1 weight."""
        return batch, 1.0, 1.0

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def on_main(self, fn: Callable[[], T]) -> T | None:
        return fn()

    def broadcast_ints(self, values: list[int]) -> list[int]:
        return values

    def close(self) -> None:
        pass


class DistributedGroup(SingleProcess):
    """One rank of a torchrun job (see the module docstring)."""

    def __init__(self, rank: int, world: int, device: torch.device, owns_group: bool):
        super().__init__(device)
        self.rank, self.world, self.is_main, self.owns_group = rank, world, rank == 0, owns_group

    def wrap(self, model: nn.Module) -> nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, batch: Batch) -> tuple[Batch, float, float]:
        mine = torch.arange(len(batch)).tensor_split(self.world)[self.rank]
        local = Batch(batch.tokens[mine], batch.targets[mine])
        tokens_total = int(batch.mask.sum())
        token_weight = self.world * int(local.mask.sum()) / max(tokens_total, 1)
        return local, token_weight, self.world * len(local) / max(len(batch), 1)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only; if it raises there, every rank raises."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the others
                error = e
        message = self._broadcast_text(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if message is not None:
            raise ToylensError(f"rank {self.rank}: rank 0 stopped ({message})")
        self.barrier()
        return result

    def broadcast_ints(self, values: list[int]) -> list[int]:
        t = torch.tensor(values, dtype=torch.long, device=self.device)
        dist.broadcast(t, 0)
        return t.tolist()

    def barrier(self) -> None:
        dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def _broadcast_text(self, text: str | None) -> str | None:
        """Rank 0's text (or None) on every rank, as a length and bytes (no pickling)."""
        data = (text or "").encode()
        (length,) = self.broadcast_ints([-1 if text is None else len(data)])
        if length <= 0:
            return None if length < 0 else ""
        buf = torch.tensor(list(data) if self.is_main else [0] * length, dtype=torch.uint8, device=self.device)
        dist.broadcast(buf, 0)
        return bytes(buf.cpu().tolist()).decode()


def process_group(device: str | torch.device) -> SingleProcess:
    """The process group this process trains in, from torchrun's environment variables."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SingleProcess(resolve_device(device))
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    dev = resolve_device(device)
    if dev.type == "cuda":  # one GPU per rank on each node
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise ToylensError(f"WORLD_SIZE={world}, RANK={rank} do not match the initialised process group")
    return DistributedGroup(rank, world, dev, owns)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ToylensError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None
