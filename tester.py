"""Test metrics and reports.

:func:`test` computes the accuracy, the per-class accuracy, the confusion matrix, the ROC-AUC
for two-class problems (PCam) and the accuracy as a function of a rotation applied to the test
images, and writes them next to the checkpoint:

* ``<stem>.test.json``: all metrics;
* ``<stem>.rotation.csv`` and ``<stem>.rotation.png``: accuracy per rotation angle.

Rotation robustness is measured with one interpolation per image. Where the test images were
themselves made by rotating upright images (rotMNIST5k, rotDigits: a
:class:`~datasets.base.RotatedImageDataset`), the test at angle ``t`` rotates each upright source
once by its own angle plus ``t``; other test images are rotated by ``t`` directly. Rotating an
already rotated image again interpolates it a second time, which blurs it: that accuracy is
reported apart, as the *blur curve* (``blur_curve``, column ``blur_accuracy``), for the datasets
that have sources.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from absl import logging
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import datasets
from datasets.base import RotatedImageDataset
from runner.precision import AMP_DTYPES
from runner.files import atomic_write
from runner.reporting import write_csv


@dataclasses.dataclass
class Predictions:
    """Float32 logits (N, K) and integer labels (N,) on the CPU."""

    logits: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader,
            batch_transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
            amp: str = "none", angle_deg: Optional[float] = None) -> Predictions:
    """Runs ``model`` in evaluation mode over ``loader``.

    Args:
        model: the bare (unwrapped) model.
        loader: batches of raw images and labels.
        batch_transform: turns a raw batch on the device into the model's inputs.
        device: where the model lives.
        amp: the config's mixed-precision setting.
        angle_deg: rotate every raw image by this angle (degrees, counter-clockwise) first.
    """
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        if angle_deg is not None:
            images = datasets.rotate_images(images, torch.full((len(images),), float(angle_deg)))
        with torch.autocast(device.type, dtype=AMP_DTYPES[amp], enabled=amp != "none"):
            outputs = model(batch_transform(images))
        logits.append(outputs.float().cpu())
        labels.append(targets.cpu())
    model.train(was_training)
    if not logits:
        return Predictions(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
    return Predictions(torch.cat(logits), torch.cat(labels).long())


def classification_metrics(predictions: Predictions, num_classes: int) -> Dict[str, object]:
    """Accuracy, per-class accuracy, confusion matrix and (two classes) ROC-AUC.

    The confusion matrix has true classes as rows and predicted classes as columns.
    """
    labels = predictions.labels.numpy()
    predicted = predictions.logits.argmax(dim=1).numpy()
    confusion = confusion_matrix(labels, predicted, num_classes)
    support = confusion.sum(axis=1)
    per_class = np.divide(np.diag(confusion), support, out=np.full(num_classes, np.nan),
                          where=support > 0)
    result = {
        "num_examples": int(len(labels)),
        "accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
        "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
        "confusion_matrix": confusion.tolist(),
    }
    if num_classes == 2:
        result["roc_auc"] = binary_roc_auc(predictions)
    return result


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts: row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first index of each run of ties
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks start+1 .. end
    return ranks


def binary_roc_auc(predictions: Predictions) -> Optional[float]:
    """ROC-AUC of the class-1 probability; None when the labels hold a single class.

    The probability that a random positive scores above a random negative (ties count one half):
    the Mann-Whitney statistic ``(sum of the positives' ranks - P (P + 1) / 2) / (P N)``.
    """
    labels = predictions.labels.numpy()
    positives = int((labels == 1).sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    scores = predictions.logits.double().softmax(dim=1)[:, 1].numpy()
    rank_sum = average_ranks(scores)[labels == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def rotation_angles(count: int) -> List[float]:
    """``count`` evenly spaced angles in [0, 360) degrees."""
    return [360.0 * i / count for i in range(count)]


def rotated_from_sources(dataset: Dataset, angle_deg: float) -> Optional[Dataset]:
    """``dataset`` made again from its upright sources, each rotated by its own angle plus
    ``angle_deg`` (rows and order kept); ``None`` when its images have no sources."""
    if isinstance(dataset, Subset):
        remade = rotated_from_sources(dataset.dataset, angle_deg)
        return None if remade is None else Subset(remade, dataset.indices)
    if isinstance(dataset, RotatedImageDataset):
        return dataset.rotated_by(angle_deg)
    return None


def has_sources(dataset: Dataset) -> bool:
    """Whether the images of ``dataset`` were made by rotating upright images that it keeps."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, RotatedImageDataset)


def _accuracy(predictions: Predictions) -> float:
    return float((predictions.logits.argmax(dim=1) == predictions.labels).float().mean())


def rotation_curve(model: nn.Module, loader: DataLoader,
                   batch_transform: Callable[[torch.Tensor], torch.Tensor],
                   device: torch.device, amp: str,
                   angles: Sequence[float], unrotated: Optional[Predictions] = None) -> List[Dict[str, float]]:
    """Test accuracy with every test image rotated by each angle, interpolated once.

    Images with upright sources are made again from them (:func:`rotated_from_sources`);
    other images are rotated directly. ``unrotated``, the predictions of the test images as
    they are, stands for the angle 0 instead of predicting them again.
    """
    curve = []
    for angle in angles:
        if angle == 0 and unrotated is not None:
            curve.append({"angle_deg": angle, "accuracy": _accuracy(unrotated)})
            continue
        remade = rotated_from_sources(loader.dataset, angle)
        if remade is None:
            predictions = predict(model, loader, batch_transform, device, amp, angle_deg=angle)
        else:
            predictions = predict(model, DataLoader(remade, batch_size=loader.batch_size), batch_transform,
                                  device, amp)
        curve.append({"angle_deg": angle, "accuracy": _accuracy(predictions)})
    return curve


def blur_curve(model: nn.Module, loader: DataLoader,
               batch_transform: Callable[[torch.Tensor], torch.Tensor],
               device: torch.device, amp: str,
               angles: Sequence[float]) -> List[Dict[str, float]]:
    """Test accuracy with every (already rotated) test image rotated again by each angle off the
    90-degree grid.

    That interpolates each image a second time, which blurs it (on the grid the rotation would be
    exact and the accuracy that of :func:`rotation_curve`, so those angles are left out). The
    difference between the two curves measures sensitivity to that blur, not to rotation.
    """
    return [{"angle_deg": angle,
             "accuracy": _accuracy(predict(model, loader, batch_transform, device, amp, angle_deg=angle))}
            for angle in angles if angle % 90]


ROTATION_LABEL = "rotated once (from the upright source where there is one)"
BLUR_LABEL = "test image rotated again (a second interpolation)"


def write_rotation_curve(curve: List[Dict[str, float]], prefix: pathlib.Path, title: str,
                         blur: Optional[List[Dict[str, float]]] = None) -> List[pathlib.Path]:
    """Writes ``<prefix>.rotation.csv`` (columns ``angle_deg``, ``accuracy`` and, with ``blur``,
    ``blur_accuracy``, empty on the 90-degree grid) and ``<prefix>.rotation.png``; returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    csv_path = pathlib.Path(f"{prefix}.rotation.csv")
    png_path = pathlib.Path(f"{prefix}.rotation.png")
    blurred = {point["angle_deg"]: point["accuracy"] for point in blur or []}
    write_csv([dict(point, blur_accuracy=blurred[point["angle_deg"]]) if point["angle_deg"] in blurred
               else point for point in curve], csv_path)
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot([p["angle_deg"] for p in curve], [p["accuracy"] for p in curve], marker="o", label=ROTATION_LABEL)
    if blur:
        axes.plot([p["angle_deg"] for p in blur], [p["accuracy"] for p in blur], marker=".", linestyle="--",
                  label=BLUR_LABEL)
        axes.legend(fontsize=7, loc="lower left")
    axes.set(xlabel="rotation of the test images (degrees)", ylabel="test accuracy",
             title=title, xlim=(0, 360), ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write(png_path, lambda handle: figure.savefig(handle, dpi=120, format="png"))
    plt.close(figure)
    return [csv_path, png_path]


def test(model: nn.Module, loader: DataLoader,
         batch_transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device, *,
         amp: str, num_classes: int, num_angles: int, prefix: Optional[pathlib.Path],
         title: str = "") -> Dict[str, object]:
    """Computes the test metrics and, when ``prefix`` is given, writes the reports.

    Args:
        model: the bare model to test.
        loader: the test split.
        batch_transform: the dataset's normalisation.
        device: where the model lives.
        amp: the config's mixed-precision setting.
        num_classes: number of classes of the dataset.
        num_angles: angles of the rotation curve (0 = no curve).
        prefix: path prefix of the report files, or None to write nothing.
        title: title of the rotation plot.

    Returns:
        The metrics (see :func:`classification_metrics`), plus, when ``num_angles`` > 0,
        ``rotation_curve``, ``rotation_from`` (``"upright sources"`` or ``"test images"``) and, for
        test images with upright sources, ``blur_curve``.
    """
    unrotated = predict(model, loader, batch_transform, device, amp)
    results = classification_metrics(unrotated, num_classes)
    logging.info("Test accuracy on %d images: %.4f", results["num_examples"], results["accuracy"])
    if results.get("roc_auc") is not None:
        logging.info("Test ROC-AUC: %.4f", results["roc_auc"])
    if num_angles > 0:
        angles = rotation_angles(num_angles)
        sources = has_sources(loader.dataset)
        results["rotation_from"] = "upright sources" if sources else "test images"
        results["rotation_curve"] = rotation_curve(model, loader, batch_transform, device, amp, angles, unrotated)
        logging.info("Test accuracy per rotation (from the %s): %s", results["rotation_from"],
                     _curve_text(results["rotation_curve"]))
        if sources and any(angle % 90 for angle in angles):
            results["blur_curve"] = blur_curve(model, loader, batch_transform, device, amp, angles)
            logging.info("Test accuracy per rotation of the rotated test images (blur): %s",
                         _curve_text(results["blur_curve"]))
    if prefix is not None:
        written = write_reports(results, prefix, title)
        logging.info("Test reports: %s", ", ".join(str(p) for p in written))
    return results


def _curve_text(curve: Sequence[Dict[str, float]]) -> str:
    return ", ".join(f"{p['angle_deg']:g}deg {p['accuracy']:.4f}" for p in curve)


def write_reports(results: Dict[str, object], prefix: pathlib.Path,
                  title: str) -> List[pathlib.Path]:
    """Writes ``<prefix>.test.json`` and the rotation curve files; returns their paths."""
    json_path = pathlib.Path(f"{prefix}.test.json")
    text = json.dumps(results, indent=2)
    atomic_write(json_path, lambda handle: handle.write(text), text=True)  # never a truncated report
    written = [json_path]
    if "rotation_curve" in results:
        written += write_rotation_curve(results["rotation_curve"], prefix, title, results.get("blur_curve"))
    return written
