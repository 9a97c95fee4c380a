"""``MNIST_rot``: the original GSA-Nets code's rotated-MNIST dataset class and its processed files.

The original processed the ``.amat`` files once into ``<root>/MNIST_rot/processed/training.pt``
and ``test.pt`` (``torch.save((images, labels))``: ``uint8`` images ``(N, 28, 28)``, the first
10,000 train+valid rows for training, the 50,000 test rows). This class reads those files as the
original did and yields what its ``__getitem__`` yielded, ``(PIL image, int label)`` through the
optional transforms; ``download=True`` downloads the archive and writes those files
(:func:`datasets.rot_mnist.write_original_processed`). The runner reads the same files
(``--config.dataset=rotMNIST`` finds them under ``--config.data_root``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets import rot_mnist
from datasets.errors import DatasetNotFoundError


class MNIST_rot(Dataset):  # noqa: N801  (the original's name)
    """The original's dataset class: ``(PIL image, label)`` from the processed files.

    Args:
        root: the folder that holds ``MNIST_rot/processed/``.
        train: the training file (10,000 rows) or the test file (50,000).
        transform, target_transform: applied to the PIL image and to the label.
        download: download the archive (md5-verified) and write the processed files first,
            where they are not there yet.

    Raises:
        DatasetNotFoundError: no processed files and ``download=False``.
        DownloadError, ChecksumError, CorruptFileError: the download failed or the files are damaged.
    """

    classes = [f"{digit} - {name}" for digit, name in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))]

    def __init__(self, root: Union[str, Path], train: bool = True, transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, download: bool = False):
        self.root, self.train = str(root), train
        self.transform, self.target_transform = transform, target_transform
        if download:
            self.download()
        path = Path(self.processed_folder) / rot_mnist.ORIGINAL_FILES[0 if train else 1]
        if not path.is_file():
            raise DatasetNotFoundError(f"Dataset not found: no {path}. Use MNIST_rot({self.root!r}, download=True) "
                                       "to download and process it.")
        self.data, self.targets = rot_mnist.read_original_processed(path)

    def download(self) -> None:
        """Downloads and processes the archive, unless both processed files are there."""
        if not rot_mnist.has_original_processed(Path(self.root)):
            rot_mnist.write_original_processed(Path(self.root))

    @property
    def raw_folder(self) -> str:
        return str(Path(self.root) / rot_mnist.ORIGINAL_FOLDER / "raw")

    @property
    def processed_folder(self) -> str:
        return str(rot_mnist.original_processed_folder(Path(self.root)))

    def extra_repr(self) -> str:
        return f"Split: {'Train' if self.train else 'Test'}"

    @property
    def class_to_idx(self) -> dict:
        return {name: index for index, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        image, target = Image.fromarray(self.data[index].numpy(), mode="L"), int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target
