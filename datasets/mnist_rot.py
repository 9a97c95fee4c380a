"""``MNIST_rot``: the original GSA-Nets code's rotated-MNIST dataset class and its processed files.

The original processed the ``.amat`` files once into ``<root>/MNIST_rot/processed/training.pt``
and ``test.pt`` (``torch.save((images, labels))``: ``uint8`` images ``(N, 28, 28)``, the first
10,000 train+valid rows for training, the 50,000 test rows). This class reads those files as the
original did and yields what its ``__getitem__`` yielded, ``(PIL image, int label)`` through the
optional transforms. The runner reads the same files (``--config.dataset=rotMNIST`` finds them
under ``--config.data_root``); downloading and parsing the raw archive is :mod:`datasets.rot_mnist`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.errors import CorruptFileError, DatasetNotFoundError

FOLDER = "MNIST_rot"
TRAINING_FILE = "training.pt"
TEST_FILE = "test.pt"


def processed_folder(root: Union[str, Path]) -> Path:
    return Path(root) / FOLDER / "processed"


def read_processed(path: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images (N, 28, 28), labels (N,))`` of one processed file.

    Raises:
        CorruptFileError: not a pair of tensors of those shapes.
    """
    try:
        images, labels = torch.load(path, weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unreadable file is reported the same way)
        raise CorruptFileError(f"{path} is not a processed MNIST_rot file (a pair of tensors): {error}") from error
    if images.dim() != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise CorruptFileError(f"{path} holds images {tuple(images.shape)} and labels {tuple(labels.shape)}; "
                               "expected (N, 28, 28) and (N,).")
    return images, labels


class MNIST_rot(Dataset):  # noqa: N801  (the original's name)
    """The original's dataset class: ``(PIL image, label)`` from the processed files.

    Args:
        root: the folder that holds ``MNIST_rot/processed/``.
        train: the training file (10,000 rows) or the test file (50,000).
        transform, target_transform: applied to the PIL image and to the label.
        download: not supported here; download with ``python main.py --config.dataset=rotMNIST
            --config.download=True`` (or ``datasets.load_splits("rotMNIST", root, download=True)``).
    """

    classes = [f"{digit} - {name}" for digit, name in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))]

    def __init__(self, root: Union[str, Path], train: bool = True, transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, download: bool = False):
        if download:
            self.download()
        self.root, self.train = str(root), train
        self.transform, self.target_transform = transform, target_transform
        path = processed_folder(root) / (TRAINING_FILE if train else TEST_FILE)
        if not path.is_file():
            raise DatasetNotFoundError(f"Dataset not found: no {path}. The original code's processed files "
                                       f"go to {processed_folder(root)}; or use datasets.load_splits('rotMNIST', "
                                       "root, download=True).")
        self.data, self.targets = read_processed(path)

    @staticmethod
    def download() -> None:
        """Not supported: raises, naming the replacement."""
        raise DatasetNotFoundError(
            "MNIST_rot(download=True) is not supported: download and parse the archive with "
            "datasets.load_splits('rotMNIST', root, download=True) (or python main.py "
            "--config.dataset=rotMNIST --config.download=True), which need no processed files.")

    @property
    def raw_folder(self) -> str:
        return str(Path(self.root) / FOLDER / "raw")

    @property
    def processed_folder(self) -> str:
        return str(processed_folder(self.root))

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
