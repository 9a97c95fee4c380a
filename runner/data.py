"""Data loaders of the runner, built on ``datasets.load_splits``.

Training batches come from :class:`ShardSampler`: a permutation fixed by (seed, epoch), split
into one shard per process. Because the order is a function of the epoch alone, an
interrupted epoch can be resumed exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Optional

import torch
from absl import logging
from ml_collections import config_dict
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

import datasets
from runner.distributed import Context
from runner.errors import ConfigError


class ShardSampler(Sampler):
    """Indices of one process's shard of a dataset, shuffled per epoch.

    The shards of all processes have the same length (the permutation is padded by repeating
    its start), so every process runs the same number of steps.

    Args:
        length: size of the dataset.
        shuffle: permute the indices with a generator seeded by ``seed + epoch``.
        seed: base seed of the permutations.
        rank: index of this process.
        world_size: number of processes.
        pad: pad the shards to equal lengths (training); evaluation shards are disjoint.
    """

    def __init__(self, length: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pad: bool = True):
        super().__init__()
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Selects the permutation of ``epoch`` and skips its first ``start`` indices."""
        self.epoch, self.start = epoch, start

    def _shard(self) -> list:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.length:
            total = math.ceil(self.length / self.world_size) * self.world_size
            order = (order * math.ceil(total / self.length))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.start:])

    def __len__(self) -> int:
        return max(0, len(self._shard()) - self.start)


@dataclasses.dataclass
class Loaders:
    """The data of a run.

    Attributes:
        train: shuffled, sharded training batches.
        valid: validation batches of this process's shard.
        test: all test batches (the test runs on the main process only).
        spec: the dataset's DataSpec.
        batch_transform: turns a batch on the device into normalised float inputs.
        train_augment: batch-wise augmentation of training inputs, or None.
    """

    train: DataLoader
    valid: DataLoader
    test: DataLoader
    spec: object
    batch_transform: Callable[[torch.Tensor], torch.Tensor]
    train_augment: Optional[Callable[[torch.Tensor], torch.Tensor]]

    @property
    def train_sampler(self) -> ShardSampler:
        """The sampler of the training loader (to select the epoch's order)."""
        return self.train.sampler


def _limit(dataset: Dataset, max_examples: int) -> Dataset:
    """The first ``max_examples`` examples of ``dataset`` (all when 0)."""
    if max_examples <= 0 or len(dataset) <= max_examples:
        return dataset
    return Subset(dataset, range(max_examples))


def _resized(batch_transform: datasets.BatchTransform, native_size: int,
             image_size: int) -> datasets.BatchTransform:
    """``batch_transform`` preceded by a resize to ``image_size`` (0 or the native size: unchanged)."""
    if image_size in (0, native_size):
        return batch_transform
    return datasets.Compose(datasets.Resize(image_size), batch_transform)


def build_loaders(config: config_dict.ConfigDict, context: Context, image_size: int = 0) -> Loaders:
    """Loads the dataset named in ``config`` and wraps its splits in data loaders.

    With ``image_size`` different from the dataset's own side, the batch transform resizes the
    images to it before normalising them.

    Every record of every split is checked first (:func:`datasets.check_records`), so a bad
    label or image stops the run before training, naming the file.

    Raises:
        ConfigError: unknown dataset name, a valid_size that does not fit the data,
            augmentation asked for where the dataset has none, or an empty split (the validation
            split only when training).
        datasets.DatasetNotFoundError, datasets.ChecksumError: missing or damaged files.
        datasets.CorruptFileError: labels out of range, unreadable or wrong-size images.
    """
    try:
        splits = datasets.load_splits(config.dataset, config.data_root,
                                      validation=config.validation, download=config.download,
                                      seed=config.seed, valid_size=config.valid_size)
    except ValueError as error:  # an unknown name, a valid_size that does not fit the data found
        raise ConfigError(f"Cannot use {config.dataset}: {error}") from error
    train, valid, test = (_limit(split, config.max_examples)
                          for split in (splits.train, splits.valid, splits.test))
    if config.augment and splits.train_augment is None:
        raise ConfigError(
            f"--config.augment=True, but {config.dataset} defines no training augmentation; "
            "use --config.augment=False.")
    for name, split, needed in (("training", train, config.train), ("validation", valid, config.train),
                                ("test", test, config.test)):
        if needed and len(split) == 0:
            raise ConfigError(
                f"The {name} split of {config.dataset} under {config.data_root} is empty: the run "
                f"could not {'test' if name == 'test' else 'train and select'} a model. Check the dataset's "
                "files (and --config.valid_size / --config.max_examples).")

    for name, split in (("training", train), ("validation", valid), ("test", test)):
        datasets.check_records(split, splits.spec, f"the {name} split of {config.dataset}")
    absent = datasets.missing_classes(train, splits.spec.num_classes) if config.train else []
    if absent:
        logging.warning("The training split of %s has no image of class(es) %s: the model cannot learn them.",
                        config.dataset, absent)

    def loader(dataset: Dataset, sampler: Sampler) -> DataLoader:
        # A generator of its own: creating an iterator draws the workers' base seed from it,
        # which would otherwise advance torch's global generator (and shift dropout) whenever
        # a resumed run creates its iterators at another moment than the uninterrupted run.
        return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                          num_workers=config.num_workers,
                          pin_memory=context.device.type == "cuda",
                          persistent_workers=config.num_workers > 0,
                          generator=torch.Generator().manual_seed(config.seed))

    shard = dict(rank=context.rank, world_size=context.world_size)
    return Loaders(
        train=loader(train, ShardSampler(len(train), shuffle=True, seed=config.seed, **shard)),
        valid=loader(valid, ShardSampler(len(valid), shuffle=False, pad=False, **shard)),
        test=loader(test, ShardSampler(len(test), shuffle=False, pad=False)),
        spec=splits.spec,
        batch_transform=_resized(splits.batch_transform, splits.spec.image_size, image_size),
        train_augment=splits.train_augment if config.augment else None,
    )
