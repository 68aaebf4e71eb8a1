"""Deterministic, resumable, shardable data order for training.

The order is a pure function of (seed, epoch): epoch e visits the dataset in the
permutation ``epoch_order(n, seed, e)``; global batch k of the run is positions
[j * B, (j + 1) * B) of epoch k // (n // B), j = k % (n // B) (the incomplete tail of
each epoch is dropped). In a distributed run rank r loads positions
[r * b, (r + 1) * b) of each global batch (b = B / world size), so the union over the
ranks is exactly the one-process batch. A run resumes by starting the sampler at the
number of global batches already consumed.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

# Keys that separate the random streams derived from the run seed.
STREAM_DATA, STREAM_STEP, STREAM_MEMORY, STREAM_SAMPLES, STREAM_INIT = 1, 2, 3, 4, 5
STREAM_LOADER = 6  # the DataLoader's worker base seed, per resume position (trainer._loader)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from (seed, *keys), stable across platforms and versions."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *[int(k) for k in keys]])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded with derive_seed(seed, *keys)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of range(n) that epoch ``epoch`` visits."""
    return torch.randperm(n, generator=generator(seed, STREAM_DATA, epoch))


class IndexedDataset(Dataset):
    """Wraps a (image, labels) dataset to yield (image, labels, index)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, labels = self.dataset[index][:2]
        return image, labels, torch.tensor(index, dtype=torch.long)


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batch sampler over global batches ``start, start + 1, ...`` (see module doc);
    yields this rank's slice of each global batch."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(
                f"the global batch ({global_batch}) must be a positive multiple of the number "
                f"of processes ({world_size})"
            )
        if n < global_batch:
            raise ValueError(f"the dataset has {n} items, fewer than one batch ({global_batch})")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.local_batch = global_batch // world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def position(self, k: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of global batch k."""
        return divmod(k, self.batches_per_epoch)

    def global_batch_indices(self, k: int) -> torch.Tensor:
        epoch, j = self.position(k)
        return epoch_order(self.n, self.seed, epoch)[j * self.global_batch:(j + 1) * self.global_batch]

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        epoch, order = None, None
        lo = self.rank * self.local_batch
        while True:
            e, j = self.position(k)
            if e != epoch:
                epoch, order = e, epoch_order(self.n, self.seed, e)
            base = j * self.global_batch + lo
            yield order[base:base + self.local_batch].tolist()
            k += 1
