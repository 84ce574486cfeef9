"""Samplers and data loaders: a resumable distributed sampler for training, an exact sharded one
for evaluation, and a collate function that carries which samples stand in for unreadable images
(:class:`Skips`) and which files those were."""

from __future__ import annotations

import itertools
import os
from typing import Iterable, Iterator, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

__all__ = ["ResumableSampler", "ShardSampler", "Skips", "collate", "drop_standins", "make_loader", "auto_workers",
           "unreadable_report", "MAX_LISTED_FILES"]

MAX_LISTED_FILES = 100  # names of unreadable files listed in summaries and eval outputs (the count is exact)


class ResumableSampler(Sampler[int]):
    """The :class:`DistributedSampler` order of an epoch (a permutation seeded by seed + epoch, cut
    into one shard per rank), optionally starting part-way: ``set_epoch(e, start=k)`` skips the
    first k indices of this rank's shard, so a run resumed mid-epoch sees the images it had not
    seen yet, in the same order.

    ``set_epoch(e, start, until=E, per_epoch=n)``: one pass runs on through epochs e .. E-1, the
    first ``n`` indices of each epoch's order (the ones the training loop consumes) one after the
    other. A loader iterator over it crosses the epoch boundaries without stopping, so its workers
    keep prefetching (the next epoch's first batches are ready when the last one ends) and the
    images, their order and the random streams are those of one iterator per epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        self.base = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                                       drop_last=drop_last)
        self.epoch, self.start, self.until, self.per_epoch = 0, 0, 1, None

    def set_epoch(self, epoch: int, start: int = 0, until: int | None = None, per_epoch: int | None = None) -> None:
        self.base.set_epoch(epoch)
        self.epoch, self.start = epoch, start
        self.until = epoch + 1 if until is None else max(until, epoch + 1)
        self.per_epoch = per_epoch

    def _count(self, skip: int) -> int:
        n = len(self.base) if self.per_epoch is None else min(self.per_epoch, len(self.base))
        return max(0, n - skip)

    def __iter__(self) -> Iterator[int]:
        for e in range(self.epoch, self.until):
            skip = self.start if e == self.epoch else 0
            self.base.set_epoch(e)  # DistributedSampler draws its permutation when iterated
            yield from itertools.islice(iter(self.base), skip, skip + self._count(skip))

    def __len__(self) -> int:
        return self._count(self.start) + (self.until - self.epoch - 1) * self._count(0)


class ShardSampler(Sampler[int]):
    """Rank r of w takes indices r, r + w, r + 2w, ...: every sample exactly once over all ranks
    (no padding, unlike DistributedSampler), so summed metrics are exact."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0):
        self.n, self.num_replicas, self.rank = len(dataset), num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


class Skips(NamedTuple):
    """The unreadable images behind one batch of b samples (the third item of a collated batch).

    ``standin``: (b,) bool, True where the sample stands in for an unreadable file (the dataset put the next
    readable image, with its label, in its place): training uses it, evaluation leaves it out.
    ``files``: the unreadable files passed over to make the batch, one entry per skip event (a file read
    again in a later epoch, or passed over for two samples, appears again); ``len(files)`` is the events.
    ``names``: each sample's own file, for batches whose images can still fail on the device
    (``data.decode: gpu``, see :class:`armvision.data.gpu.GpuBatchTransform`); else None.
    """

    standin: Tensor
    files: list[str]
    names: list[str] | None = None

    @property
    def events(self) -> int:
        return len(self.files)


def _skipped_names(sample) -> tuple[str, ...]:
    skipped = sample[2] if len(sample) > 2 else ()
    return tuple(skipped) if isinstance(skipped, (tuple, list)) else ()


def collate(batch):
    """Stack samples ``(image, label[, skipped files])`` into ``(images (b, c, h, w), labels (b,), Skips)``."""
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    skipped = [_skipped_names(b) for b in batch]
    standin = torch.tensor([len(s) > 0 for s in skipped], dtype=torch.bool)
    return images, labels, Skips(standin, [n for s in skipped for n in s])


def drop_standins(images, labels: Tensor, skips, unreadable: set[str]):
    """A batch ``(images, labels)`` without its stand-ins for unreadable files, whose names go into
    ``unreadable``: what evaluation and frozen-feature extraction score. ``skips``: the batch's :class:`Skips`
    (None, or anything else, leaves the batch as it is). The mask is a host tensor from the loader, so this
    costs no device synchronisation."""
    if skips is None or not hasattr(skips, "standin"):
        return images, labels
    unreadable.update(skips.files)
    if skips.standin.any():
        keep = ~skips.standin
        images, labels = images[keep], labels[keep]
    return images, labels


def unreadable_report(names: Iterable[str], limit: int = MAX_LISTED_FILES) -> dict:
    """``{"unreadable_files": count of distinct files, "unreadable_file_names": the first ``limit``, sorted}``."""
    distinct = sorted(set(names))
    return {"unreadable_files": len(distinct), "unreadable_file_names": distinct[:limit]}


MAX_AUTO_WORKERS = 32  # past this, more processes mostly cost memory (each holds a copy of the dataset object)


def auto_workers(local_processes: int | None = None) -> int:
    """Loader workers for ``data.workers: auto``: the CPU cores this process may run on (its affinity, e.g. a
    Slurm allocation), shared among the training processes of this node (``local_processes``, default
    torchrun's LOCAL_WORLD_SIZE or 1), minus one for the training process itself; at least 1, at most
    MAX_AUTO_WORKERS. One H200 with 16 cores: 15."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(MAX_AUTO_WORKERS, cores // max(1, local) - 1))


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int = 0, pin_memory: bool = False,
                persistent_workers: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                collate_fn=collate):
    """A DataLoader over ``dataset`` and its sampler (None for streaming datasets).

    Training: shuffled, sharded over ranks, whole batches only (mixup needs even batches).
    Evaluation: every sample once over all ranks, in order. ``collate_fn``: :func:`collate` (or the
    encoded images' ``collate_encoded`` of ``data.decode: gpu``).
    """
    sampler = None
    if isinstance(dataset, IterableDataset):
        if hasattr(dataset, "set_loader_cfg"):
            dataset.set_loader_cfg(num_workers=workers)
    elif train:
        sampler = ResumableSampler(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True)
    else:
        sampler = ShardSampler(dataset, world_size, rank)
    generator = torch.Generator().manual_seed(seed * 1000 + rank)  # worker seeds: reproducible per run and rank
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
        pin_memory=pin_memory, drop_last=train, persistent_workers=persistent_workers and workers > 0,
        generator=generator,
    )
    return loader, sampler
