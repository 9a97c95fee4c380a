"""PatchCamelyon (PCam): 96 x 96 RGB patches labelled tumor (1) / no tumor (0).

Two layouts under ``<root>/PCam/`` are understood; the HDF5 files win when both are present:

* the official HDF5 files ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``
  (``x``: (N, 96, 96, 3) ``uint8``, ``y``: (N, 1, 1, 1)); images are read lazily, one per
  item, so the 262,144 training images never have to fit in memory;
* an ImageFolder copy ``{train,valid,test}/{no_tumor,tumor}/*.png`` as used by the original
  GSA-Nets code.

There is no automatic download (the files are about 7 GB). Splits: PCam's own train, valid and
test splits; with ``validation="test"`` the valid split is the test set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.errors import CorruptFileError, DatasetNotFoundError, missing_files_error

FOLDER = "PCam"
SPLITS = ("train", "valid", "test")
CLASSES = ("no_tumor", "tumor")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGE_SIZE = 96
HDF5_PATTERN = "camelyonpatch_level_2_split_{split}_{kind}.h5"
DOWNLOAD_STEPS = (
    "PCam cannot be downloaded automatically. To get the HDF5 files:\n"
    "  1. download camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5.gz from "
    "https://zenodo.org/record/2546921 (listed at https://github.com/basveeling/pcam);\n"
    "  2. decompress them with `gunzip *.h5.gz` into {folder}."
)


class PCamImageFolder(Dataset):
    """One split in the ImageFolder layout: ``<split>/{no_tumor,tumor}/*.png``.

    Images are decoded on access and returned as ``uint8`` tensors (3, H, W).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.samples: List[Tuple[Path, int]] = [
            (path, label)
            for label, name in enumerate(CLASSES)
            for path in sorted((self.directory / name).iterdir())
            if path.suffix.lower() in IMAGE_EXTENSIONS
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))  # (H, W, C)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1), label


class PCam(PCamImageFolder):
    """The original GSA-Nets code's PCam class: ``<root>/PCam/{train,valid,test}/<class>/*.png``.

    Yields ``(PIL image, label)`` through the optional transforms, as its ImageFolder did.

    Raises:
        ValueError: ``valid=True`` with ``train=True`` (the valid split is not a training split).
        DatasetNotFoundError: the split's folder is missing.
    """

    def __init__(self, root: Union[str, Path], train: bool = True, transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, download: bool = False, valid: bool = False):
        if train and valid:
            raise ValueError("PCam 'valid' split available only when train=False.")
        directory = Path(root) / FOLDER / ("train" if train else ("valid" if valid else "test"))
        if not directory.is_dir():
            raise DatasetNotFoundError(f"No PCam split at {directory}; see datasets.pcam for the layout "
                                       "and how to get the files.")
        super().__init__(directory)
        self.transform, self.target_transform = transform, target_transform

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            sample = image.convert("RGB")
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return sample, label


class PCamHDF5(Dataset):
    """One split from the official HDF5 files, read lazily.

    Construction reads only the labels (one byte per image) and the shape of the image array;
    each item reads one image. The file handle is opened on first access in each process, so
    the dataset can be used by DataLoader workers.

    Args:
        images_path: the ``..._x.h5`` file.
        labels_path: the matching ``..._y.h5`` file.
    """

    def __init__(self, images_path: Path, labels_path: Path) -> None:
        self.images_path = Path(images_path)
        self.labels_path = Path(labels_path)
        with _open_h5(self.labels_path) as labels_file:
            labels = np.asarray(_member(labels_file, "y", self.labels_path))
        self.labels = torch.from_numpy(labels.reshape(-1).astype(np.int64))  # (N, 1, 1, 1) -> (N,)
        with _open_h5(self.images_path) as images_file:
            shape = _member(images_file, "x", self.images_path).shape
        if len(shape) != 4 or shape[3] != 3 or shape[0] != len(self.labels):
            raise CorruptFileError(
                self.images_path,
                f"images of shape {shape} do not match the {len(self.labels)} labels in "
                f"{self.labels_path}",
            )
        self._handle: Optional[Any] = None
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.labels)

    def _images(self) -> Any:
        """The ``x`` array of this process's open file handle."""
        if self._handle is None or self._pid != os.getpid():
            self._handle = _open_h5(self.images_path)
            self._pid = os.getpid()
        return _member(self._handle, "x", self.images_path)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = torch.from_numpy(self._images()[index])  # (H, W, C)
        return image.permute(2, 0, 1).contiguous(), int(self.labels[index])

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_pid"] = None
        return state


def _open_h5(path: Path) -> Any:
    """Opens an HDF5 file for reading; unreadable files raise :class:`CorruptFileError`."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise CorruptFileError(path, f"unreadable HDF5 file: {error}") from error


def _member(handle: Any, key: str, path: Path) -> Any:
    """The array ``key`` of an open HDF5 file; a missing key raises :class:`CorruptFileError`."""
    if key not in handle:
        raise CorruptFileError(path, f"no {key!r} array in the HDF5 file")
    return handle[key]


def hdf5_paths(folder: Path) -> Dict[str, Tuple[Path, Path]]:
    """The (images, labels) HDF5 paths of each split in ``folder``."""
    return {split: (folder / HDF5_PATTERN.format(split=split, kind="x"),
                    folder / HDF5_PATTERN.format(split=split, kind="y"))
            for split in SPLITS}


def _has_image_folders(folder: Path) -> bool:
    """Whether every split has both class folders."""
    return all((folder / split / name).is_dir() for split in SPLITS for name in CLASSES)


def load_raw(root: Path) -> Dict[str, Dataset]:
    """PCam's three splits from the HDF5 files or, failing that, the ImageFolder layout."""
    folder = Path(root) / FOLDER
    paths = hdf5_paths(folder)
    if all(path.exists() for pair in paths.values() for path in pair):
        return {split: PCamHDF5(*pair) for split, pair in paths.items()}
    if _has_image_folders(folder):
        return {split: PCamImageFolder(folder / split) for split in SPLITS}
    layout = "\n".join(f"  {path.name}" for pair in paths.values() for path in pair)
    layout += "\nor the ImageFolder layout\n  {train,valid,test}/{no_tumor,tumor}/*.png"
    raise missing_files_error("PCam", folder, layout,
                              DOWNLOAD_STEPS.replace("{folder}", str(folder.resolve())))


def build_splits(root: Path, *, validation: str, download: bool, seed: int,
                 valid_size: Optional[int]) -> Tuple[Dataset, ...]:
    """(train, valid, test) as described in the module docstring.

    ``download`` and ``seed`` are unused; PCam's splits are fixed, so ``valid_size`` must be
    ``None``.
    """
    if valid_size is not None:
        raise ValueError(
            f"PCam has a fixed validation split; valid_size must be None (leave "
            f"--config.valid_size unset), got {valid_size}."
        )
    splits = load_raw(root)
    valid = splits["test"] if validation == "test" else splits["valid"]
    return splits["train"], valid, splits["test"]
