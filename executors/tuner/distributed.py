"""Multi-process training helpers (``torchrun`` + DistributedDataParallel) used by :func:`fit`.

Run a training script with ``torchrun --nproc_per_node=N script.py``; torchrun starts ``N`` copies
and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus ``MASTER_ADDR``/``MASTER_PORT``) in each.
:func:`executors.tuner.trainer.fit` then, in every process:

* :func:`init_distributed`: joins the process group (gloo on CPU, nccl on CUDA, one GPU per process:
  ``cuda:LOCAL_RANK``);
* builds the batch sampler for the *global* batch (``batch_size * world_size``, the same seed on every
  rank) and keeps this rank's contiguous slice of each global batch (:class:`DistributedBatchSampler`);
* trains the model wrapped in ``DistributedDataParallel`` and computes the loss on the global batch
  re-assembled by :func:`gather_batch`, so the negatives of every item come from all processes.

Gradient bookkeeping (why no loss factor is needed): every rank computes the same loss ``L`` of the
global batch. The backward of :func:`gather_batch` sums the gradients that all ranks send to this
rank's rows (an all-reduce), i.e. ``world_size * dL/de_r`` for this rank's embeddings ``e_r``; DDP then
averages the parameter gradients over the ranks (divides by ``world_size``), which leaves
``sum_r dL/de_r * de_r/dtheta = dL/dtheta``: exactly the single-process gradient on the whole global
batch. Parameters of the loss itself (ArcFace's class weights) get ``dL/dW`` on every rank, averaged
by DDP to ``dL/dW`` as well. So ``N`` processes with ``batch_size=b`` take the same steps as one
process with ``batch_size=N*b`` (up to float rounding).

Everything here is a no-op / identity in a single process (no process group or world size 1).
"""
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from executors.errors import InputError


@dataclass(frozen=True)
class TorchrunEnv:
    """What ``torchrun`` tells each process."""

    rank: int
    world_size: int
    local_rank: int


def torchrun_env() -> Optional[TorchrunEnv]:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment, or None outside torchrun."""
    if 'WORLD_SIZE' not in os.environ:
        return None
    try:
        return TorchrunEnv(rank=int(os.environ.get('RANK', 0)), world_size=int(os.environ['WORLD_SIZE']),
                           local_rank=int(os.environ.get('LOCAL_RANK', 0)))
    except ValueError as e:
        raise InputError(f'environment: RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e}); '
                         'start the script with torchrun') from e


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Processes in the job: the process group's size, else torchrun's ``WORLD_SIZE``, else 1."""
    if is_initialized():
        return dist.get_world_size()
    env = torchrun_env()
    return env.world_size if env is not None else 1


def get_rank() -> int:
    """This process's rank: from the process group, else torchrun's ``RANK``, else 0."""
    if is_initialized():
        return dist.get_rank()
    env = torchrun_env()
    return env.rank if env is not None else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single-process run): the process that logs and writes files."""
    return get_rank() == 0


def resolve_distributed(distributed: Union[bool, str] = 'auto') -> bool:
    """``fit(distributed=...)``: ``'auto'`` is True when a process group with more than one process
    exists or torchrun set ``WORLD_SIZE > 1``; ``True`` requires torchrun (or an initialised group);
    ``False`` trains each process on its own."""
    if distributed == 'auto':
        return get_world_size() > 1
    if distributed is True:
        if not is_initialized() and torchrun_env() is None:
            raise InputError('distributed: True needs a multi-process launch; start the script with '
                             '`torchrun --nproc_per_node=N script.py` (or use distributed="auto")')
        return True
    if distributed is False:
        return False
    raise InputError(f"distributed: must be 'auto', True or False, got {distributed!r}")


def init_distributed(device: Union[str, torch.device] = 'cpu') -> torch.device:
    """Join torchrun's process group (if not joined yet) and return the device this process trains on.

    Backend: nccl for a CUDA device, gloo otherwise. On CUDA every process takes the GPU of its
    ``LOCAL_RANK`` (``cuda:LOCAL_RANK``, whatever index ``device`` named) and makes it current.
    A process group created beforehand by the caller is used as it is.
    """
    device = torch.device(device)
    env = torchrun_env()
    if device.type == 'cuda':
        device = torch.device('cuda', env.local_rank if env is not None else (device.index or 0))
        torch.cuda.set_device(device)
    if not is_initialized():
        if env is None:
            raise InputError('distributed: no process group and no torchrun environment (WORLD_SIZE); '
                             'start the script with `torchrun --nproc_per_node=N script.py`')
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return device


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun script); no-op without one."""
    if is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (``device_ids=[index]`` on CUDA, none on CPU). DDP copies
    rank 0's parameters and buffers to every rank here, so all ranks start identical."""
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    if device.type == 'cuda':
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


def _comm_device() -> torch.device:
    """Where tensors for collectives must live: the current GPU for nccl, else the CPU."""
    if dist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def shared_seed(seed: Optional[int]) -> int:
    """``seed`` itself, or (for None) a random seed drawn on rank 0 and sent to every rank, so that all
    ranks build the same global batches."""
    if seed is not None:
        return int(seed)
    value = int(np.random.SeedSequence().entropy % 2**62)
    if not is_initialized() or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def any_process(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (e.g. ``stop_training``, so that all ranks
    stop at the same epoch); ``flag`` itself in a single process."""
    if not is_initialized() or dist.get_world_size() == 1:
        return bool(flag)
    tensor = torch.tensor([int(bool(flag))], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _all_gather_rows(tensor: torch.Tensor, sizes: List[int]) -> torch.Tensor:
    """Concatenation (rank order) of every rank's ``tensor``, whose first dimensions are ``sizes``
    (padded to the largest for the collective, then trimmed)."""
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """All-gather with gradient: backward sums the gradient of the gathered tensor over the ranks
    (all-reduce) and returns this rank's rows, i.e. every rank's loss contributes to this rank's
    embeddings (see the module doc for the resulting factor)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: List[int]) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return _all_gather_rows(tensor.contiguous(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The global batch: ``(embeddings [sum B_r, D], labels [sum B_r])`` of all ranks, concatenated in
    rank order (which, with :class:`DistributedBatchSampler`, is the order of the global batch).

    Embeddings keep their gradient (this rank's rows get the gradient summed over all ranks); labels
    are gathered without. Ranks may hold different numbers of rows. In a single process (no process
    group, or world size 1) the inputs are returned unchanged.
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return embeddings, labels
    if len(embeddings) != len(labels):
        raise InputError(f'labels: {len(labels)} labels for {len(embeddings)} embeddings; pass one label per row')
    size = torch.tensor([len(embeddings)], dtype=torch.int64, device=embeddings.device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    gathered_labels = _all_gather_rows(labels.contiguous(), sizes)
    return _GatherRows.apply(embeddings, sizes), gathered_labels


class DistributedBatchSampler:
    """This rank's share of the batches of ``batch_sampler``, which must yield the *global* batches
    (built with ``batch_size * world_size`` and the same seed on every rank).

    Each global batch of ``n`` items is cut into ``world_size`` contiguous slices,
    ``batch[n * r // W : n * (r + 1) // W]`` for rank ``r`` (equal sizes when ``W`` divides ``n``);
    the slices of all ranks concatenated in rank order give the global batch back. A global batch with
    fewer items than processes (possible only as the short last batch) is skipped on every rank, so no
    rank is left without items. ``set_epoch`` and ``seed`` are those of the wrapped sampler; ``len`` is
    the number of batches of the current epoch (it iterates the wrapped sampler: index lists only).
    """

    def __init__(self, batch_sampler, rank: Optional[int] = None, world_size: Optional[int] = None):
        self.batch_sampler = batch_sampler
        self.world_size = get_world_size() if world_size is None else int(world_size)
        self.rank = get_rank() if rank is None else int(rank)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise InputError(f'rank: must lie in [0, world_size={self.world_size}), got {self.rank}')

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, 'set_epoch'):
            self.batch_sampler.set_epoch(epoch)

    @property
    def seed(self):
        return getattr(self.batch_sampler, 'seed', None)

    @seed.setter
    def seed(self, value) -> None:
        self.batch_sampler.seed = value

    def __iter__(self) -> Iterator[List[int]]:
        world, rank = self.world_size, self.rank
        for batch in self.batch_sampler:
            n = len(batch)
            if n < world:
                continue
            yield list(batch[n * rank // world:n * (rank + 1) // world])

    def __len__(self) -> int:
        return sum(1 for batch in self.batch_sampler if len(batch) >= self.world_size)
