"""Checking every record of a split before training, so a bad one is reported with its file.

A label outside ``0 .. num_classes - 1`` or an image that cannot be decoded, or has the wrong
size, would otherwise crash a run in the middle of an epoch (an IndexError in the loss, a PIL
traceback in a loader worker). :func:`check_records` finds them all at once, up front:

* in-memory splits (:class:`~datasets.base.TensorImageDataset`): the labels and the image shape;
* PCam's HDF5 files: the labels (the image shape is checked when the file is opened);
* PCam's image folders: the labels and, for every file, that it decodes in full (a truncated
  JPEG included) and its size;
* every split: that it is not empty, and floating images: that every pixel is finite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from datasets.base import TensorImageDataset
from datasets.errors import CorruptFileError, RecordError
from datasets.pcam import PCamHDF5, PCamImageFolder
from g_selfatt_models.registry import DataSpec

SHOWN = 5  # bad records listed in a message


def _unwrap(dataset: Dataset) -> Tuple[Dataset, Any]:
    """The dataset under any :class:`~torch.utils.data.Subset` wrappers, and the rows they keep
    (``None``: all)."""
    rows: Any = None
    while isinstance(dataset, Subset):
        rows = dataset.indices if rows is None else [dataset.indices[i] for i in rows]
        dataset = dataset.dataset
    return dataset, rows


def missing_classes(dataset: Dataset, num_classes: int) -> List[int]:
    """The classes of ``0 .. num_classes - 1`` that no record of ``dataset`` has (none known: [])."""
    dataset, rows = _unwrap(dataset)
    if isinstance(dataset, (TensorImageDataset, PCamHDF5)):
        labels = dataset.labels if rows is None else dataset.labels[torch.as_tensor(rows)]
        present = set(torch.as_tensor(labels).flatten().tolist())
    elif isinstance(dataset, PCamImageFolder):
        samples = dataset.samples if rows is None else [dataset.samples[i] for i in rows]
        present = {label for _, label in samples}
    else:
        return []
    return [label for label in range(num_classes) if label not in present]


def check_records(dataset: Dataset, spec: DataSpec, what: str) -> None:
    """Raises if any record of ``dataset`` (a split of the dataset ``spec``) is bad.

    Args:
        dataset: a split, possibly a :class:`~torch.utils.data.Subset` of one.
        spec: the dataset's classes, channels and image side.
        what: the split's description for messages, e.g. "the training split of PCam".

    Raises:
        RecordError: labels out of range or images of the wrong shape in memory.
        CorruptFileError: an image file that does not decode or has the wrong size.
    """
    dataset, rows = _unwrap(dataset)
    if isinstance(dataset, (TensorImageDataset, PCamHDF5)):
        labels = dataset.labels if rows is None else dataset.labels[torch.as_tensor(rows)]
        _check_labels(labels, spec, what, getattr(dataset, "source", None)
                      or getattr(dataset, "labels_path", None))
    if isinstance(dataset, TensorImageDataset):
        _check_shape(tuple(dataset.images.shape[1:]), spec, what, dataset.source)
        images = dataset.images if rows is None else dataset.images[torch.as_tensor(rows)]
        _check_finite(images, what, dataset.source)
    if isinstance(dataset, PCamImageFolder):
        samples = dataset.samples if rows is None else [dataset.samples[i] for i in rows]
        _check_image_files([path for path, _ in samples], spec)


def _check_labels(labels: torch.Tensor, spec: DataSpec, what: str, source: Any) -> None:
    bad = ((labels < 0) | (labels >= spec.num_classes)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(f"row {row}: {int(labels[row])}" for row in bad[:SHOWN])
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise RecordError(
            f"{what}: {len(bad)} label(s) outside 0..{spec.num_classes - 1} ({shown}{more})"
            f"{_read_from(source)}. The data is damaged or belongs to another dataset; "
            "replace the files.")


def _check_finite(images: torch.Tensor, what: str, source: Any) -> None:
    """Raises when a floating image holds NaN or an infinity (one would poison every statistic)."""
    if not images.is_floating_point():
        return
    bad = (~torch.isfinite(images.flatten(1))).any(dim=1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(str(row) for row in bad[:SHOWN])
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise RecordError(
            f"{what}: {len(bad)} image(s) with NaN or infinite pixels (rows {shown}{more}){_read_from(source)}. "
            "The file is damaged; replace it (and delete a parse cache made from it).")


def _check_shape(shape: tuple, spec: DataSpec, what: str, source: Any) -> None:
    expected = (spec.in_channels, spec.image_size, spec.image_size)
    if shape != expected:
        raise RecordError(f"{what}: images of shape {shape}, expected {expected}"
                          f"{_read_from(source)}. Replace the files.")


def _read_from(source: Any) -> str:
    return f", read from {source}" if source is not None else ""


def _check_image_files(paths: Sequence[Path], spec: DataSpec) -> None:
    problems: List[Tuple[Path, str]] = []
    for path in paths:
        problem = _image_problem(path, spec.image_size)
        if problem:
            problems.append((path, problem))
    if problems:
        listed = "; ".join(f"{path} ({problem})" for path, problem in problems[:SHOWN])
        more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise CorruptFileError(problems[0][0], f"{len(problems)} bad image file(s): {listed}{more}")


def _image_problem(path: Path, side: int) -> str:
    """Why ``path`` is not a readable ``side x side`` image, or ``""``."""
    try:
        with Image.open(path) as image:
            size = image.size
            image.load()  # every pixel decoded: a truncated JPEG fails here, not in an epoch
    except Exception as error:  # PIL raises many types for damaged files
        return f"cannot be decoded: {error}"
    if size != (side, side):
        return f"{size[0]}x{size[1]} pixels, expected {side}x{side}"
    return ""
