"""The authors' released checkpoints, recognised by their sha256.

The original Attentive G-CNN authors published trained weights, one ``model.pth`` per run
folder (``model_<name>_optim_..._seed_<n>/model.pth``). Their digests are recorded here, so a
loader can tell a released file from any other state_dict, and a damaged copy of a released
file (a folder of a released run whose ``model.pth`` has another digest) from a good one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Dict, Optional


@dataclasses.dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released weight file.

    Attributes:
        folder: the name of the run folder that holds ``model.pth``.
        model: the registry name of the model the weights load into.
        dataset: the dataset the run trained on.
        note: what the file holds, where its folder name says otherwise.
        original_name: the name the original script trained it under, where that name builds
            another network here; with ``original_architecture=True`` it builds this one.
    """

    folder: str
    model: str
    dataset: str
    note: str = ""
    original_name: str = ""

    def loads_into(self, model: str, original_architecture: bool = False) -> bool:
        """Whether the weights are meant for ``model`` built with ``original_architecture``."""
        return model == self.model or (original_architecture and model == self.original_name)


RELEASED: Dict[str, ReleasedCheckpoint] = {
    "28e881ca24165ecea911bda1f4e37d01fdffd37b9b8e49ec95a7e1fe13fdeb2c": ReleasedCheckpoint(
        "model_z2cnn_optim_adam_lr_0.001_wd_0.0001_seed_0", "z2cnn", "rotMNIST"),
    "439be1f9595778d9153b007d1585fe2af3e56c2b2733b487be4f0483870a862d": ReleasedCheckpoint(
        "model_p4cnn_optim_adam_lr_0.001_wd_0.0001_seed_0", "p4cnn", "rotMNIST"),
    "702ae48336a3884f0f57982de4ab0bb068dbfa432816f5004398431ef561ad2f": ReleasedCheckpoint(
        "model_att_p4cnn_optim_adam_lr_0.001_wd_0.0001_seed_0", "att_p4cnn", "rotMNIST"),
    "cfb1f8db988af82a90c9b2076712de86e01f82ab183f4a9a6e4f57378ba4e1f1": ReleasedCheckpoint(
        "model_f_att_p4cnn_optim_adam_lr_0.001_wd_0.0001_seed_0", "f_att_p4cnn", "rotMNIST"),
    "a6d0666669b87d8a7591ad9374e105f6abe3f3eb7ed1f3ec4b014476af266ead": ReleasedCheckpoint(
        "model_f_att_p4m_densenet_optim_adam_lr_0.001_wd_0.0001_seed_1_dilatedkernelseverywhere_pat20onmaxacc",
        "p4m_densenet", "PCam", note="a plain p4m DenseNet, although the folder names f_att_p4m_densenet",
        original_name="f_att_p4m_densenet"),
}
_BY_FOLDER = {entry.folder: digest for digest, entry in RELEASED.items()}


def file_sha256(path: pathlib.Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identify(path: pathlib.Path) -> Optional[ReleasedCheckpoint]:
    """The released checkpoint that ``path`` is a copy of, or ``None`` for any other file.

    Raises:
        ValueError: ``path`` sits in the folder of a released run under the released file's
            name but its bytes differ from the released file's (a damaged copy).
    """
    path = pathlib.Path(path)
    digest = file_sha256(path)
    if digest in RELEASED:
        return RELEASED[digest]
    expected = _BY_FOLDER.get(path.parent.name)
    if expected is not None and path.name == "model.pth":
        raise ValueError(
            f"{path} is in the folder of the authors' released run {path.parent.name!r} but its "
            f"sha256 is {digest[:16]}..., not the released file's {expected[:16]}...: the copy is "
            "damaged or was changed. Download it again.")
    return None
