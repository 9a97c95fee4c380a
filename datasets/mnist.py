"""MNIST from the classic gzipped IDX files.

Files in ``<root>/MNIST/``: ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (each may also be present
decompressed, without ``.gz``). The parsed tensors are cached in ``<root>/MNIST/MNIST.pt``.

Splits (``validation="held_out"``): train = the first 50,000 training images, valid = the
last ``valid_size`` (default 10,000), test = the 10,000 test images. With
``validation="test"`` the model trains on all 60,000 and the valid split is the test set.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from datasets.base import TensorImageDataset, resolve_valid_size, split_tail
from datasets.download import Resource, fetch_resource, cached_train_test
from datasets.errors import CorruptFileError, missing_files_error

FOLDER = "MNIST"
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
RESOURCES = tuple(Resource(name, tuple(mirror + name for mirror in MIRRORS), md5)
                  for name, md5 in MD5.items())
CACHE_FILE = "MNIST.pt"
DEFAULT_VALID_SIZE = 10000
_UBYTE = 0x08


def parse_idx(data: bytes, source: Path) -> np.ndarray:
    """Parses an (uncompressed) IDX file of unsigned bytes into an array of its shape.

    Raises:
        CorruptFileError: wrong magic number, element type or payload size.
    """
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != _UBYTE:
        raise CorruptFileError(source, "not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptFileError(source, "IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise CorruptFileError(
            source, f"IDX shape {shape} needs {expected} bytes of data, found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_file(path: Path) -> bytes:
    """The content of ``path``, gunzipped when its name ends in ``.gz``."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise CorruptFileError(path, f"{type(error).__name__}: {error}") from error


def _locate(folder: Path, download: bool) -> Dict[str, Path]:
    """The path of each raw file (compressed or not), downloading missing ones if allowed."""
    found: Dict[str, Path] = {}
    for resource in RESOURCES:
        compressed = folder / resource.filename
        plain = folder / resource.filename[: -len(".gz")]
        if plain.exists():
            found[resource.filename] = plain
        elif download:
            found[resource.filename] = fetch_resource(resource, folder)
        elif compressed.exists():
            found[resource.filename] = compressed
    if len(found) < len(RESOURCES):
        raise missing_files_error(
            "MNIST", folder, "\n".join(f"  {name}" for name in MD5),
            f"Run with --config.download=True to download them from {MIRRORS[0]}.",
        )
    return found


def _parse(paths: Dict[str, Path]) -> Dict[str, torch.Tensor]:
    """Parses the four raw files into the cached tensors."""
    arrays = {name: parse_idx(_read_file(path), path) for name, path in paths.items()}
    tensors = {}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images = arrays[f"{prefix}-images-idx3-ubyte.gz"]
        labels = arrays[f"{prefix}-labels-idx1-ubyte.gz"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise CorruptFileError(paths[f"{prefix}-images-idx3-ubyte.gz"],
                                   f"images {images.shape} do not match labels {labels.shape}")
        tensors[f"{split}_images"] = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, H, W)
        tensors[f"{split}_labels"] = torch.from_numpy(labels.astype(np.int64))
    return tensors


def load_raw(root: Path, download: bool) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """The 60,000 training and 10,000 test images, parsed once and then cached."""
    folder = Path(root) / FOLDER
    return cached_train_test(folder / CACHE_FILE, lambda: _parse(_locate(folder, download)))


def build_splits(root: Path, *, validation: str, download: bool, seed: int,
                 valid_size: Optional[int]) -> Tuple[TensorImageDataset, ...]:
    """(train, valid, test) as described in the module docstring; ``seed`` is unused."""
    full_train, test = load_raw(root, download)
    if validation == "test":
        return full_train, test, test
    train, valid = split_tail(full_train, resolve_valid_size(valid_size, DEFAULT_VALID_SIZE),
                              "MNIST")
    return train, valid, test
