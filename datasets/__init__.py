"""Datasets of the GSA-Nets and attentive G-CNN experiments.

``load_splits(name, root)`` returns the train, validation and test datasets of one of
:data:`DATASET_NAMES` together with its :class:`~g_selfatt_models.registry.DataSpec` and the batch
transforms the training loop applies::

    splits = load_splits("CIFAR10", "./data", download=True)
    for images, labels in DataLoader(splits.train, batch_size=128, shuffle=True):
        images = images.to(device)
        if augment and splits.train_augment is not None:
            images = splits.train_augment(images, generator)
        logits = model(splits.batch_transform(images))

Datasets yield ``(image, label)`` with ``image`` a (C, H, W) tensor, ``uint8`` in [0, 255] or
float in [0, 1], and ``label`` an ``int``; normalisation happens batch-wise in
``batch_transform``. Files live in ``<root>/<name>/`` (see each module for the layout).

Validation (``validation=``):

* ``"held_out"`` (default): rotMNIST = the last ``valid_size`` (2,000) train+valid rows;
  CIFAR10 = ``valid_size`` (5,000) training images chosen with ``seed``; PCam = its valid
  split; MNIST = the last ``valid_size`` (10,000) training images; rotDigits = its own
  ``valid_size`` (297) images; rotMNIST5k = its own ``valid_size`` (500) images.
* ``"test"``: the valid split is the test set (model selection on the test set, as in the
  original code); the training split is then as in the original code too.
* ``"att_gconvs"``: the input pipeline of the attentive G-CNN experiments, to reproduce one of
  their runs exactly (rotMNIST and CIFAR10 only): selection on the test set, training on *all*
  training rows (rotMNIST's 12,000 train+valid rows, CIFAR10's 50,000 images), and their
  normalisation: rotMNIST standardised with the training set's own mean and standard deviation
  (over all pixels), CIFAR10 with the ImageNet statistics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch.utils.data import Dataset

from datasets import cifar10, mnist, pcam, rot_digits, rot_mnist, rot_mnist5k
from datasets.mnist_rot import MNIST_rot
from datasets.pcam import PCam
from datasets.errors import (
    ChecksumError,
    CorruptFileError,
    DatasetNotFoundError,
    DownloadError,
    RecordError,
)
from datasets.records import check_records, missing_classes
from datasets.transforms import BatchTransform, Compose, Normalize, RandomCropFlip, RandomRotation, Resize, rotate_images
from g_selfatt_models.registry import DATA_SPECS, DataSpec

VALIDATION_MODES = ("held_out", "test", "att_gconvs")
# CIFAR10 normalisation of the att_gconvs experiments (torchvision's ImageNet statistics).
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_ATT_GCONVS_RAW = {"rotMNIST": rot_mnist.load_raw, "CIFAR10": cifar10.load_raw}

SplitBuilder = Callable[..., Tuple[Dataset, Dataset, Dataset]]


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A registered dataset: its spec, normalisation, training augmentation (``None``: it has
    none) and split builder."""

    spec: DataSpec
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augment: Optional[BatchTransform]
    build: SplitBuilder


_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)

_DATASETS: Dict[str, _Entry] = {
    "rotMNIST": _Entry(DATA_SPECS["rotMNIST"], _MNIST_MEAN, _MNIST_STD,
                       None, rot_mnist.build_splits),
    "CIFAR10": _Entry(DATA_SPECS["CIFAR10"], (0.4914, 0.4822, 0.4465),
                      (0.2023, 0.1994, 0.2010), RandomCropFlip(padding=4), cifar10.build_splits),
    "PCam": _Entry(DATA_SPECS["PCam"], (0.701, 0.538, 0.692),
                   (0.235, 0.277, 0.213), None, pcam.build_splits),
    "MNIST": _Entry(DATA_SPECS["MNIST"], _MNIST_MEAN, _MNIST_STD, None,
                    mnist.build_splits),
    "rotDigits": _Entry(DATA_SPECS["rotDigits"], (rot_digits.MEAN,),
                        (rot_digits.STD,), None, rot_digits.build_splits),
    "rotMNIST5k": _Entry(DATA_SPECS["rotMNIST5k"], _MNIST_MEAN, _MNIST_STD,
                         RandomRotation(), rot_mnist5k.build_splits),
}

DATASET_NAMES: Tuple[str, ...] = tuple(_DATASETS)


@dataclasses.dataclass
class Splits:
    """The three splits of a dataset and what the training loop needs to use them.

    Attributes:
        train: training split.
        valid: validation split (the test set when ``validation="test"``).
        test: test split.
        spec: channels, classes, image size and architecture for the models.
        batch_transform: raw batch -> normalised float batch (always applied).
        train_augment: random augmentation of raw training batches, applied before
            ``batch_transform`` when augmentation is on; ``None`` if the dataset has none.
    """

    train: Dataset
    valid: Dataset
    test: Dataset
    spec: DataSpec
    batch_transform: BatchTransform
    train_augment: Optional[BatchTransform]


def _entry(name: str) -> _Entry:
    """The registered dataset ``name``; an unknown name raises ``ValueError`` with the valid ones."""
    if name in _DATASETS:
        return _DATASETS[name]
    hint = next((f" (did you mean {known!r}?)" for known in _DATASETS if known.lower() == name.lower()), "")
    raise ValueError(f"Unknown dataset {name!r}{hint}; expected one of {list(DATASET_NAMES)}.")


def get_data_spec(name: str) -> DataSpec:
    """The :class:`DataSpec` of dataset ``name``, without touching any file."""
    return _entry(name).spec


def get_batch_transform(name: str) -> BatchTransform:
    """The normalisation of dataset ``name`` (what ``Splits.batch_transform`` holds)."""
    entry = _entry(name)
    return Normalize(entry.mean, entry.std)


def load_splits(name: str, root: Union[str, Path], *, validation: str = "held_out",
                download: bool = False, seed: int = 0,
                valid_size: Optional[int] = None) -> Splits:
    """Loads the train, validation and test splits of a dataset.

    Args:
        name: one of :data:`DATASET_NAMES` (case-insensitive).
        root: data folder; the files of dataset ``X`` live in ``root/X/``.
        validation: ``"held_out"`` or ``"test"`` (see the module docstring).
        download: fetch missing raw files (rotMNIST, CIFAR10, MNIST) and verify the MD5 of
            the downloaded or already present archives.
        seed: seed of the CIFAR10 validation split; the other datasets' splits are fixed.
        valid_size: size of the held-out validation split; ``None`` for the dataset's
            default (rotMNIST 2,000, CIFAR10 5,000, MNIST 10,000, rotDigits 297). For
            rotMNIST it also fixes the unused rows when ``validation="test"``. Must be
            ``None`` for PCam, whose splits are fixed. Tiny test data needs a small value.

    Returns:
        The :class:`Splits`.

    Raises:
        ValueError: unknown ``name`` or ``validation``, or a ``valid_size`` that does not fit.
        DatasetNotFoundError: the files are missing (the message says where and how to get
            them).
        ChecksumError: an archive's MD5 differs from the published one.
        CorruptFileError: a raw file or archive is damaged.
        DownloadError: a download failed.
    """
    entry = _entry(name)
    if validation not in VALIDATION_MODES:
        raise ValueError(
            f"Unknown validation {validation!r}; expected one of {list(VALIDATION_MODES)}."
        )
    if validation == "att_gconvs":
        train, test, normalize = _att_gconvs_pipeline(name, Path(root), download)
        return Splits(train, test, test, entry.spec, normalize, entry.augment)
    train, valid, test = entry.build(Path(root), validation=validation, download=download,
                                     seed=seed, valid_size=valid_size)
    return Splits(train, valid, test, entry.spec, Normalize(entry.mean, entry.std), entry.augment)


def _att_gconvs_pipeline(name: str, root: Path, download: bool) -> Tuple[Dataset, Dataset, Normalize]:
    """(all training rows, test set, normalisation) of the att_gconvs experiments (module docstring)."""
    if name not in _ATT_GCONVS_RAW:
        raise ValueError(f"validation='att_gconvs' reproduces the attentive G-CNN experiments' data of "
                         f"{sorted(_ATT_GCONVS_RAW)}; {name!r} has no such pipeline (use 'held_out' or 'test').")
    train, test = _ATT_GCONVS_RAW[name](root, download)
    if name == "CIFAR10":
        return train, test, Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    pixels = train.images.double() / (255.0 if train.images.dtype == torch.uint8 else 1.0)
    mean = float(pixels.mean())
    return train, test, Normalize((mean,), (float((pixels - mean).std(unbiased=False)),))


__all__ = [
    "DATASET_NAMES",
    "VALIDATION_MODES",
    "BatchTransform",
    "ChecksumError",
    "Compose",
    "CorruptFileError",
    "DatasetNotFoundError",
    "DownloadError",
    "MNIST_rot",
    "Normalize",
    "PCam",
    "RandomCropFlip",
    "RandomRotation",
    "RecordError",
    "Resize",
    "Splits",
    "check_records",
    "missing_classes",
    "get_batch_transform",
    "get_data_spec",
    "load_splits",
    "rotate_images",
]
