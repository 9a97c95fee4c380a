"""Tiny but format-correct dataset files for tests.

Each ``make_*`` function writes the raw files of one dataset into ``<root>/<name>/``, exactly
where :func:`datasets.load_splits` looks for them, and returns a :class:`Fixture` with the
written paths, their MD5s and the images and labels they contain (as the loader should yield
them: ``uint8`` arrays (N, C, H, W)). A parsed ``.pt`` cache left in the folder by earlier
data is deleted, so the loader reads the new files.

Pixel values are random (seeded), so a transposed or channel-swapped reader is detected by
comparing with ``Fixture.images``; labels cycle through the classes.

The held-out validation splits of rotMNIST, CIFAR10 and MNIST need a ``valid_size`` smaller
than the tiny training sets, e.g. ``load_splits("rotMNIST", root, valid_size=2)`` (the
runner's config key ``valid_size``). PCam's splits are the files' own.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import h5py
import numpy as np
from PIL import Image

from datasets import cifar10, mnist, pcam, rot_mnist, rot_mnist5k

PathLike = Union[str, Path]


@dataclasses.dataclass
class Fixture:
    """What a ``make_*`` function wrote.

    Attributes:
        paths: written files by role (e.g. ``"archive"``, ``"train_x"``).
        md5: MD5 of each file in ``paths``, same keys.
        images: per split name, the ``uint8`` images (N, C, H, W) the loader must yield.
        labels: per split name, the ``int64`` labels (N,).
    """

    paths: Dict[str, Path]
    md5: Dict[str, str]
    images: Dict[str, np.ndarray]
    labels: Dict[str, np.ndarray]


def _dataset_folder(root: PathLike, folder: str, cache_file: str) -> Path:
    """Creates ``<root>/<folder>`` and deletes a parsed cache left by earlier fixture data."""
    path = Path(root) / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / cache_file).unlink(missing_ok=True)
    return path


def _md5(path: Path) -> str:
    """MD5 of a file."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fixture(paths: Mapping[str, Path], images: Dict[str, np.ndarray],
             labels: Dict[str, np.ndarray]) -> Fixture:
    """A :class:`Fixture` with the MD5s of ``paths`` filled in."""
    return Fixture(dict(paths), {key: _md5(path) for key, path in paths.items()}, images, labels)


def _random_split(rng: np.random.Generator, count: int, channels: int, size: int,
                  classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Random ``uint8`` images (count, channels, size, size) and cycling labels."""
    images = rng.integers(0, 256, size=(count, channels, size, size), dtype=np.uint8)
    labels = np.arange(count, dtype=np.int64) % classes
    return images, labels


def _amat_text(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Rows of 784 pixel floats (row-major, value / 255) and the label, like the real files."""
    lines = []
    for image, label in zip(images, labels):
        values = [f"{value / 255.0:.10e}" for value in image.reshape(-1)] + [f"{float(label):.10e}"]
        lines.append("  " + "  ".join(values))
    return ("\n".join(lines) + "\n").encode()


def make_rotmnist(root: PathLike, n_train_valid: int = 12, n_test: int = 5, seed: int = 0,
                  *, archive: bool = True) -> Fixture:
    """Writes ``<root>/rotMNIST/mnist_rotation_new.zip`` holding the two ``.amat`` files.

    Args:
        root: data root.
        n_train_valid: rows of the train+valid file (load with ``valid_size < n_train_valid``).
        n_test: rows of the test file.
        seed: seed of the pixel values.
        archive: write the zip (``True``) or the two extracted ``.amat`` files.

    Returns:
        The fixture; splits ``"train_valid"`` and ``"test"``, paths ``"archive"`` or
        ``"train_valid"`` and ``"test"``.
    """
    folder = _dataset_folder(root, rot_mnist.FOLDER, rot_mnist.CACHE_FILE)
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    images["train_valid"], labels["train_valid"] = _random_split(rng, n_train_valid, 1, 28, 10)
    images["test"], labels["test"] = _random_split(rng, n_test, 1, 28, 10)
    texts = {rot_mnist.TRAIN_VALID_FILE: _amat_text(images["train_valid"], labels["train_valid"]),
             rot_mnist.TEST_FILE: _amat_text(images["test"], labels["test"])}
    if archive:
        path = folder / rot_mnist.ARCHIVE.filename
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
            for name, text in texts.items():
                zipped.writestr(name, text)
        return _fixture({"archive": path}, images, labels)
    paths = {}
    for key, name in (("train_valid", rot_mnist.TRAIN_VALID_FILE), ("test", rot_mnist.TEST_FILE)):
        paths[key] = folder / name
        paths[key].write_bytes(texts[name])
    return _fixture(paths, images, labels)


def _cifar_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A pickled batch like the real ones: byte-string keys, ``data`` (N, 3072), ``labels``."""
    batch = {b"batch_label": b"fixture", b"labels": labels.tolist(),
             b"data": images.reshape(len(images), -1),
             b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
    return pickle.dumps(batch, protocol=2)


def make_cifar10(root: PathLike, n_per_batch: int = 4, n_test: int = 6, seed: int = 0) -> Fixture:
    """Writes ``<root>/CIFAR10/cifar-10-python.tar.gz`` with five training batches and a test batch.

    Args:
        root: data root.
        n_per_batch: images per training batch (5 batches; load with
            ``valid_size < 5 * n_per_batch``).
        n_test: test images.
        seed: seed of the pixel values.

    Returns:
        The fixture; splits ``"train"`` (all batches in order) and ``"test"``, path
        ``"archive"``.
    """
    folder = _dataset_folder(root, cifar10.FOLDER, cifar10.CACHE_FILE)
    rng = np.random.default_rng(seed)
    train_images, train_labels = _random_split(rng, 5 * n_per_batch, 3, 32, 10)
    test_images, test_labels = _random_split(rng, n_test, 3, 32, 10)
    members = {
        name: _cifar_batch(train_images[i * n_per_batch:(i + 1) * n_per_batch],
                           train_labels[i * n_per_batch:(i + 1) * n_per_batch])
        for i, name in enumerate(cifar10.TRAIN_BATCHES)
    }
    members[cifar10.TEST_BATCH] = _cifar_batch(test_images, test_labels)
    members["batches.meta"] = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]})
    path = folder / cifar10.ARCHIVE.filename
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(f"{cifar10.EXTRACTED_FOLDER}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return _fixture({"archive": path}, {"train": train_images, "test": test_images},
                    {"train": train_labels, "test": test_labels})


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``array``."""
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return magic + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def make_mnist(root: PathLike, n_train: int = 20, n_test: int = 5, seed: int = 0) -> Fixture:
    """Writes the four gzipped IDX files into ``<root>/MNIST/``.

    Args:
        root: data root.
        n_train: training images (load with ``valid_size < n_train``).
        n_test: test images.
        seed: seed of the pixel values.

    Returns:
        The fixture; splits ``"train"`` and ``"test"``, paths keyed by file name.
    """
    folder = _dataset_folder(root, mnist.FOLDER, mnist.CACHE_FILE)
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    images["train"], labels["train"] = _random_split(rng, n_train, 1, 28, 10)
    images["test"], labels["test"] = _random_split(rng, n_test, 1, 28, 10)
    arrays = {
        "train-images-idx3-ubyte.gz": images["train"][:, 0],
        "train-labels-idx1-ubyte.gz": labels["train"],
        "t10k-images-idx3-ubyte.gz": images["test"][:, 0],
        "t10k-labels-idx1-ubyte.gz": labels["test"],
    }
    paths = {}
    for name, array in arrays.items():
        paths[name] = folder / name
        paths[name].write_bytes(gzip.compress(_idx_bytes(array)))
    return _fixture(paths, images, labels)


def _pcam_splits(seed: int, sizes: Mapping[str, int]
                 ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Random 96 x 96 RGB images and alternating labels per PCam split."""
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    for split, count in sizes.items():
        images[split], labels[split] = _random_split(rng, count, 3, 96, 2)
    return images, labels


def make_pcam_hdf5(root: PathLike, n_train: int = 6, n_valid: int = 4, n_test: int = 4,
                   seed: int = 0) -> Fixture:
    """Writes the six official-format HDF5 files into ``<root>/PCam/``.

    ``x`` files hold (N, 96, 96, 3) ``uint8``, ``y`` files (N, 1, 1, 1) ``uint8``.

    Returns:
        The fixture; splits ``"train"``, ``"valid"``, ``"test"``, paths ``"<split>_x"`` and
        ``"<split>_y"``.
    """
    folder = Path(root) / pcam.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = _pcam_splits(seed, {"train": n_train, "valid": n_valid, "test": n_test})
    paths = {}
    for split, (x_path, y_path) in pcam.hdf5_paths(folder).items():
        with h5py.File(x_path, "w") as handle:
            handle.create_dataset("x", data=images[split].transpose(0, 2, 3, 1),  # (N, H, W, C)
                                  chunks=(1, 96, 96, 3))
        with h5py.File(y_path, "w") as handle:
            handle.create_dataset("y", data=labels[split].astype(np.uint8).reshape(-1, 1, 1, 1))
        paths[f"{split}_x"], paths[f"{split}_y"] = x_path, y_path
    return _fixture(paths, images, labels)


def make_pcam_imagefolder(root: PathLike, n_train: int = 6, n_valid: int = 4, n_test: int = 4,
                          seed: int = 0) -> Fixture:
    """Writes ``<root>/PCam/{train,valid,test}/{no_tumor,tumor}/<index>.png``.

    Labels alternate 0, 1, 0, ...; the returned arrays are in the loader's order (class 0
    first, then class 1, files sorted by name).

    Returns:
        The fixture; splits ``"train"``, ``"valid"``, ``"test"``, paths ``"<split>/<i>"``.
    """
    folder = Path(root) / pcam.FOLDER
    images, labels = _pcam_splits(seed, {"train": n_train, "valid": n_valid, "test": n_test})
    paths = {}
    for split in images:
        order = np.argsort(labels[split], kind="stable")
        images[split], labels[split] = images[split][order], labels[split][order]
        for name in pcam.CLASSES:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images[split], labels[split])):
            path = folder / split / pcam.CLASSES[label] / f"{i:05d}.png"
            Image.fromarray(image.transpose(1, 2, 0)).save(path)
            paths[f"{split}/{i}"] = path
    return _fixture(paths, images, labels)


def make_rotmnist5k(root: PathLike, n: int = 20, seed: int = 0) -> Fixture:
    """Writes ``<root>/rotMNIST5k/mnist_5k.csv.gz`` in the packaged file's format.

    One row per image: 784 pixel values (row by row), then the label.

    Returns:
        The fixture; split ``"all"`` (the upright digits in file order), path ``"csv"``.
    """
    folder = Path(root) / rot_mnist5k.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 10
    rows = np.concatenate([images.reshape(n, -1).astype(np.int64), labels[:, None]], axis=1)
    text = "\n".join(",".join(str(value) for value in row) for row in rows) + "\n"
    path = folder / rot_mnist5k.FILE
    path.write_bytes(gzip.compress(text.encode()))
    rot_mnist5k.rot_mnist5k.cache_clear()
    return _fixture({"csv": path}, {"all": images}, {"all": labels})
