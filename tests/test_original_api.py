"""The original implementations' public API, name by name, on this project.

``tests/original_api/*.json`` lists every public module, class, function, constructor
parameter, method, property and constructor-set attribute of an original package
(``python tools/original_api.py <checkout> <packages>``); each must exist here, so a name
that goes missing fails. The demo workflows of the originals run on top: build, forward,
attention scores in the original layout, equivariance.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import pathlib
from typing import Any, Callable, Dict, Iterator, Tuple

import pytest
import torch

import fixture_data
from conftest import REPO_ROOT

MANIFESTS = sorted((REPO_ROOT / "tests" / "original_api").glob("*.json"))


def _entries() -> Iterator[Tuple[str, str, Dict[str, Any]]]:
    for manifest in MANIFESTS:
        for module, names in json.loads(manifest.read_text()).items():
            for name, entry in names.items():
                yield module, name, entry


ENTRIES = list(_entries())
CLASSES = [(m, n, e) for m, n, e in ENTRIES if e["kind"] == "class"]
CALLABLES = [(m, n, e) for m, n, e in ENTRIES if e["kind"] in ("class", "function")]


def _object(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def _accepts(function: Callable, parameters) -> list:
    """The parameter names ``function`` does not accept."""
    signature = inspect.signature(function)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return []
    return [name for name in parameters if name not in signature.parameters]


@pytest.mark.parametrize("module, name, entry", ENTRIES, ids=[f"{m}.{n}" for m, n, _ in ENTRIES])
def test_every_original_name_exists(module, name, entry):
    assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


@pytest.mark.parametrize("module, name, entry", CALLABLES, ids=[f"{m}.{n}" for m, n, _ in CALLABLES])
def test_every_original_parameter_is_accepted(module, name, entry):
    assert _accepts(_object(module, name), entry["parameters"]) == []


@pytest.mark.parametrize("module, name, entry", CLASSES, ids=[f"{m}.{n}" for m, n, _ in CLASSES])
def test_every_original_method_and_property_exists(module, name, entry):
    cls = _object(module, name)
    assert [m for m in entry["methods"] + entry["properties"] if not hasattr(cls, m)] == []


# One instance of every original class that sets attributes, built as the originals' clients do.
def _p4():
    from g_selfatt.groups import SE2

    return SE2(4)


def _rotated_mnist_files(root):
    folder = root / "MNIST_rot" / "processed"
    folder.mkdir(parents=True)
    for name, rows in (("training.pt", 6), ("test.pt", 4)):
        torch.save((torch.randint(0, 256, (rows, 28, 28), dtype=torch.uint8), torch.arange(rows) % 10),
                   folder / name)
    return root


INSTANCES: Dict[str, Callable[[Any], Any]] = {
    "MNIST_rot": lambda tmp: _object("datasets", "MNIST_rot")(_rotated_mnist_files(tmp)),
    "PCam": lambda tmp: (fixture_data.make_pcam_imagefolder(tmp), _object("datasets", "PCam")(tmp, train=True))[1],
    "Crop": lambda tmp: _object("g_selfatt.nn", "Crop")(crop_size=1),
    "LayerNorm": lambda tmp: _object("g_selfatt.nn", "LayerNorm")(num_channels=4),
    "LiftSelfAttention": lambda tmp: _object("g_selfatt.nn", "LiftSelfAttention")(
        group=_p4(), in_channels=2, mid_channels=4, out_channels=6, num_heads=2, max_pos_embedding=5,
        attention_dropout_rate=0.0),
    "LiftLocalSelfAttention": lambda tmp: _object("g_selfatt.nn", "LiftLocalSelfAttention")(
        group=_p4(), in_channels=2, mid_channels=4, out_channels=6, num_heads=2, patch_size=3,
        attention_dropout_rate=0.0),
    "GroupSelfAttention": lambda tmp: _object("g_selfatt.nn", "GroupSelfAttention")(
        group=_p4(), in_channels=6, mid_channels=6, out_channels=6, num_heads=2, max_pos_embedding=5,
        attention_dropout_rate=0.0),
    "GroupLocalSelfAttention": lambda tmp: _object("g_selfatt.nn", "GroupLocalSelfAttention")(
        group=_p4(), in_channels=6, mid_channels=6, out_channels=6, num_heads=2, patch_size=3,
        attention_dropout_rate=0.0),
    "RdSelfAttention": lambda tmp: _object("g_selfatt.nn", "RdSelfAttention")(
        in_channels=2, mid_channels=4, out_channels=6, num_heads=2, max_pos_embedding=5, attention_dropout_rate=0.0),
    "TransformerBlock": lambda tmp: _object("g_selfatt.nn", "TransformerBlock")(
        in_channels=6, out_channels=6, attention_layer=INSTANCES["GroupLocalSelfAttention"](tmp),
        norm_type="LayerNorm", activation_function="Swish", crop_size=0, value_dropout_rate=0.0, dim_mlp_conv=3),
    "CNN": lambda tmp: _object("models", "CNN")(in_channels=1, num_channels=20, bn_epsilon=2e-5, dropout_rate=0.3,
                                                 use_bias=False, num_classes=10),
    "GroupTransformer": lambda tmp: _object("models", "GroupTransformer")(
        group=_p4(), in_channels=1, num_channels=12, block_sizes=[1], expansion_per_block=1, crop_per_layer=0,
        image_size=12, num_classes=10, dropout_rate_after_maxpooling=0.0, maxpool_after_last_block=False,
        normalize_between_layers=True, patch_size=3, num_heads=2, norm_type="LayerNorm",
        activation_function="Swish", attention_dropout_rate=0.0, value_dropout_rate=0.0, whitening_scale=1.0),
    "Transformer": lambda tmp: _object("models", "Transformer")(
        in_channels=1, num_channels=8, kernel_size=2, image_size=28, attention_dropout_rate=0.0,
        value_dropout_rate=0.0, use_bias=False, norm_type="LayerNorm"),
}


def _se2():
    import attgconv.group.SE2 as SE2

    return SE2


def _p4_grid():
    return _se2().H.grid_global(4)


def _att_layers():
    import attgconv

    return attgconv.layers(_se2())


INSTANCES.update({
    "ChannelAttention": lambda tmp: _object("attgconv.attention_layers", "ChannelAttention")(N_out=5, N_in=4, ratio=2),
    "ChannelAttentionGG": lambda tmp: _object("attgconv.attention_layers", "ChannelAttentionGG")(
        N_h=4, N_out=5, N_h_in=4, N_in=4, ratio=2),
    "fChannelAttention": lambda tmp: _object("attgconv.attention_layers", "fChannelAttention")(N_in=4, ratio=2),
    "fChannelAttentionGG": lambda tmp: _object("attgconv.attention_layers", "fChannelAttentionGG")(
        N_h_in=4, N_in=4, ratio=2, group="SE2"),
    "ConvRnRnLayer": lambda tmp: _att_layers().ConvRnRn(N_in=3, N_out=4, kernel_size=3),
    "ConvRnGLayer": lambda tmp: _att_layers().ConvRnG(N_in=3, N_out=4, kernel_size=3, h_grid=_p4_grid()),
    "ConvGGLayer": lambda tmp: _att_layers().ConvGG(N_in=4, N_out=4, kernel_size=3, h_grid=_p4_grid()),
    "AttConvRnGLayer": lambda tmp: _att_layers().AttConvRnG(
        N_in=3, N_out=4, kernel_size=3, h_grid=_p4_grid(),
        channel_attention=INSTANCES["ChannelAttention"](tmp).__class__(N_out=4, N_in=3)),
    "AttConvGGLayer": lambda tmp: _att_layers().AttConvGG(
        N_in=4, N_out=5, kernel_size=3, h_grid=_p4_grid(), channel_attention=INSTANCES["ChannelAttentionGG"](tmp)),
    "fAttConvRnGLayer": lambda tmp: _att_layers().fAttConvRnG(
        N_in=3, N_out=4, kernel_size=3, h_grid=_p4_grid(),
        channel_attention=_object("attgconv.attention_layers", "fChannelAttention")(N_in=3)),
    "fAttConvGGLayer": lambda tmp: _att_layers().fAttConvGG(
        N_in=4, N_out=4, kernel_size=3, h_grid=_p4_grid(), channel_attention=INSTANCES["fChannelAttentionGG"](tmp)),
    "layers": lambda tmp: _att_layers(),
})
WITH_ATTRIBUTES = [(m, n, e) for m, n, e in CLASSES if e["attributes"]]


@pytest.mark.parametrize("module, name, entry", WITH_ATTRIBUTES, ids=[f"{m}.{n}" for m, n, _ in WITH_ATTRIBUTES])
def test_every_original_attribute_is_set(module, name, entry, tmp_path):
    instance = INSTANCES[name](tmp_path)
    assert isinstance(instance, _object(module, name))
    assert [a for a in entry["attributes"] + entry["properties"] if not hasattr(instance, a)] == []


# ----- the originals' workflows ------------------------------------------------------------------
def _original_forward(layer, x):
    """The original forward, written from its attention scores: softmax over the keys, values, wout."""
    scores = layer.compute_attention_scores(x)
    key_dims = 2 if layer.lifting else 3  # (k, l) or (m, k, l)
    probs = scores.flatten(-key_dims).softmax(-1).view_as(scores)
    b, (h, w) = x.shape[0], x.shape[-2:]
    values = layer.value(x)  # (B, C N, [G,] H, W)
    if layer.local:
        p = layer.patch_size
        patches = layer.unfold(values.reshape(b, -1, h, w))
        if layer.lifting:
            v = patches.view(b, layer.mid_channels, layer.num_heads, p, p, h, w)
            out = torch.einsum("bhgijkl,bchklij->bchgij", probs, v)
        else:
            v = patches.view(b, layer.mid_channels, layer.num_heads, -1, p, p, h, w)
            out = torch.einsum("bhvgijmkl,bchmklij->bchvij", probs, v)
    elif layer.lifting:
        out = torch.einsum("bhgijkl,bchkl->bchgij", probs, values.view(b, layer.mid_channels, layer.num_heads, h, w))
    else:
        v = values.view(b, layer.mid_channels, layer.num_heads, -1, h, w)
        out = torch.einsum("bhvgijmkl,bchmkl->bchvij", probs, v)
    return layer.wout(out.reshape(b, -1, layer.group.num_elements, h, w))


@pytest.mark.parametrize("name", ["LiftSelfAttention", "LiftLocalSelfAttention", "GroupSelfAttention",
                                  "GroupLocalSelfAttention"])
def test_attention_scores_in_the_original_layout_give_the_layer_output(name, tmp_path):
    torch.manual_seed(0)
    layer = INSTANCES[name](tmp_path).double().eval()
    lifting = name.startswith("Lift")
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64) if lifting else torch.randn(2, 6, 4, 5, 5, dtype=torch.float64)
    scores = layer.compute_attention_scores(x)
    assert scores.shape[:3] == (2, 2, 4) and scores.dim() == (7 if lifting else 9)
    with torch.no_grad():
        torch.testing.assert_close(_original_forward(layer, x), layer(x), rtol=0, atol=1e-12)


def test_handle_values_outside_image_sets_the_outside_keys_to_minus_inf(tmp_path):
    layer = INSTANCES["LiftLocalSelfAttention"](tmp_path)
    scores = torch.zeros(1, 2, 4, 5, 5, 3, 3)
    layer.handle_values_outside_image(scores, 5, 5)
    corner, centre = scores[0, 0, 0, 0, 0], scores[0, 0, 0, 2, 2]
    assert torch.isinf(corner[0]).all() and torch.isinf(corner[:, 0]).all() and (corner[1:, 1:] == 0).all()
    assert (centre == 0).all() and layer.inf_outside.shape == (5, 5, 3, 3)


def test_rd_self_attention_is_the_originals_formula():
    """Scores <q, k> + <q_row, E_row[k - i]> + <q_col, E_col[l - j]>, over sqrt(C_in), as the original wrote them."""
    from g_selfatt.nn import RdSelfAttention

    torch.manual_seed(0)
    layer = RdSelfAttention(3, 4, 5, 2, 6, 0.0).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    b, _, w, h = x.shape
    q, k = layer.query(x).view(b, 4, 2, w, h), layer.key(x).view(b, 4, 2, w, h)
    rows = layer.row_embedding(layer.relative_indices[:w, :w].reshape(-1)).t().reshape(-1, w, w)
    cols = layer.col_embedding(layer.relative_indices[:h, :h].reshape(-1)).t().reshape(-1, h, h)
    scores = (torch.einsum("bchij,cik->bhijk", q[:, :2], rows).unsqueeze(-1)
              + torch.einsum("bchij,cjl->bhijl", q[:, 2:], cols).unsqueeze(-2)
              + torch.einsum("bchij,bchkl->bhijkl", q, k)) / math.sqrt(3)
    probs = scores.flatten(-2).softmax(-1).view_as(scores)
    out = torch.einsum("bhijkl,bchkl->bchij", probs, layer.value(x).view(b, 4, 2, w, h))
    expected = layer.wout(out.reshape(b, 8, w, h))
    with torch.no_grad():
        torch.testing.assert_close(layer.compute_attention_scores(x), scores, rtol=0, atol=1e-12)
        for impl in ("reference", "efficient", "fused"):
            layer.attention_impl = impl
            torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    assert sorted(layer.state_dict()) == ["col_embedding.weight", "key.bias", "key.weight", "query.bias",
                                          "query.weight", "relative_indices", "row_embedding.weight",
                                          "value.bias", "value.weight", "wout.bias", "wout.weight"]


def test_the_deprecated_transformer_builds_and_loads_its_own_state_dict_strictly(tmp_path):
    model = INSTANCES["Transformer"](tmp_path).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    type(model)(1, 8, 2, 28, 0.0, 0.0, False, "LayerNorm").load_state_dict(dict(model.state_dict()), strict=True)


def test_the_utils_are_the_originals():
    from torch.optim import SGD

    from g_selfatt.utils import linear_warmup_cosine_lr_scheduler, normalize_tensor, normalize_tensor_one_minone, num_params

    torch.testing.assert_close(normalize_tensor_one_minone(torch.arange(5)), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(normalize_tensor(torch.arange(5)), torch.arange(5) / 4.0)
    assert num_params(torch.nn.Linear(3, 2)) == 8
    optimizer = SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = linear_warmup_cosine_lr_scheduler(optimizer, warmup_time_ratio=0.2, T_max=10)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [t / 2 if t < 2 else 0.5 * (1 + math.cos(math.pi * (t - 2) / 8)) for t in range(10)]
    assert seen == pytest.approx(expected)


def test_the_original_data_classes_and_folders(tmp_path):
    import datasets

    root = _rotated_mnist_files(tmp_path / "data")
    image, label = datasets.MNIST_rot(root, train=True, transform=lambda im: im.size)[3]
    assert image == (28, 28) and label == 3
    splits = datasets.load_splits("rotMNIST", root, valid_size=2)  # only the original's processed files there
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (4, 2, 4)
    original = torch.load(root / "MNIST_rot" / "processed" / "training.pt", weights_only=True)[0]
    assert torch.equal(splits.train[1][0][0], original[1])
    fixture_data.make_pcam_imagefolder(tmp_path / "pcam")
    pcam = datasets.PCam(tmp_path / "pcam", train=False, valid=True)
    assert pcam[0][0].mode == "RGB" and pcam[0][1] in (0, 1)
    with pytest.raises(ValueError, match="valid"):
        datasets.PCam(tmp_path / "pcam", train=True, valid=True)
    with pytest.raises(datasets.DatasetNotFoundError, match="download=True"):
        datasets.MNIST_rot(tmp_path / "empty")


def test_mnist_rot_downloads_and_writes_the_original_processed_files(tmp_path, monkeypatch):
    import datasets
    from datasets import rot_mnist
    from datasets.download import Resource

    served = fixture_data.make_rotmnist(tmp_path / "www", n_train_valid=9, n_test=4)  # the archive, as served
    archive = served.paths["archive"]
    monkeypatch.setattr(rot_mnist, "ARCHIVE", Resource(archive.name, (archive.as_uri(),), served.md5["archive"]))
    monkeypatch.setattr(rot_mnist, "ORIGINAL_TRAINING_ROWS", 7)  # the original kept the first 10,000 of 12,000
    train = datasets.MNIST_rot(tmp_path / "data", train=True, download=True)
    test = datasets.MNIST_rot(tmp_path / "data", train=False)
    assert (len(train), len(test)) == (7, 4)
    assert torch.equal(train.data, torch.from_numpy(served.images["train_valid"][:7, 0]))  # (N, 28, 28) uint8
    assert torch.equal(test.targets, torch.from_numpy(served.labels["test"]).to(torch.uint8))
    assert train.raw_folder.endswith("MNIST_rot/raw") and (pathlib.Path(train.raw_folder) / archive.name).is_file()
    assert sorted(path.name for path in pathlib.Path(train.processed_folder).iterdir()) == ["test.pt", "training.pt"]
    splits = datasets.load_splits("rotMNIST", tmp_path / "data", valid_size=2)  # the runner reads them
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (5, 2, 4)
    monkeypatch.setattr(rot_mnist, "ARCHIVE", Resource(archive.name, (archive.as_uri(),), "0" * 32))
    datasets.MNIST_rot(tmp_path / "data", download=True)  # there already: nothing is downloaded again
    with pytest.raises(datasets.ChecksumError):
        datasets.MNIST_rot(tmp_path / "other", download=True)
    assert not (tmp_path / "other" / "MNIST_rot" / "processed").exists()


def test_the_attgconv_demo_workflow(tmp_path):
    """The original's demo: layers(SE2), a lifting and a group convolution, kernel(h) over h_grid.grid."""
    from attgconv.grids import get_grid
    from g_selfatt.testing import assert_equivariant

    torch.manual_seed(0)
    factory = _att_layers()
    grid = factory.H.grid_global(4)
    lifting = factory.ConvRnG(N_in=1, N_out=3, kernel_size=5, h_grid=grid)
    group = factory.ConvGG(N_in=3, N_out=2, kernel_size=5, h_grid=grid)
    for h in grid.grid:  # the lifting kernel rotated by h: torch.rot90 by its quarter turns
        turns = round(float(h) / (math.pi / 2))
        torch.testing.assert_close(lifting.kernel(h), torch.rot90(lifting.weight, turns, dims=(-2, -1)), rtol=0, atol=0)
    # a group kernel (O, C, G, k, k) transformed by h: rotated, and its group axis shifted by h
    h = grid.grid[1]
    torch.testing.assert_close(group.kernel(h), torch.roll(torch.rot90(group.weight, 1, dims=(-2, -1)), 1, dims=2),
                               rtol=0, atol=0)
    net = torch.nn.Sequential(lifting, torch.nn.ReLU(), group).double()
    p4 = get_grid("p4")
    assert_equivariant(net, torch.randn(2, 1, 11, 11, dtype=torch.float64), p4.group, input_kind="image",
                       output_kind="group", transform_out=p4.transform_feature_map)


def test_factory_layers_load_the_originals_state_dict_names(tmp_path):
    from g_selfatt_models.compat.attgconv_records import build_from_record

    record = torch.load(REPO_ROOT.parent / "shared" / "reference" / "att_layer_attconvgg_se2_p4.pt", weights_only=True)
    built = build_from_record({"module": record["module"], "kwargs": record["kwargs"]})
    built.load_state_dict(record["state_dict"], strict=True)
    assert type(built).__name__ == "AttConvGGLayer" and built.N_h == 4 and built.kernel_type == "G"
    ref = record["output"]
    with torch.no_grad():
        out = built(record["input"])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=5e-5 * max(1.0, ref.abs().max().item()))


def test_the_runs_readme_table_of_original_names_is_current():
    import sys

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import original_api
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))
    text = (REPO_ROOT / "runs" / "README.md").read_text()
    shown = text.split("<!-- original-names:start -->\n", 1)[1].split("<!-- original-names:end -->", 1)[0]
    assert shown == original_api.table(MANIFESTS)


def test_the_original_data_folders_of_cifar10_and_att_gconvs_rotmnist(tmp_path):
    import tarfile

    import numpy as np

    import datasets

    # torchvision's layout, where the original code downloaded CIFAR10: <root>/cifar-10-batches-py/.
    fixture = fixture_data.make_cifar10(tmp_path / "packed")
    with tarfile.open(fixture.paths["archive"]) as archive:
        archive.extractall(tmp_path / "root", filter="data")
    splits = datasets.load_splits("CIFAR10", tmp_path / "root", valid_size=2)
    assert len(splits.train) + len(splits.valid) == 20 and len(splits.test) == 6
    # att_gconvs' rotMNIST files: <root>/train_all.npz and <root>/test.npz.
    rng = np.random.default_rng(0)
    (tmp_path / "npz").mkdir()
    for name, rows in (("train_all.npz", 7), ("test.npz", 3)):
        np.savez(tmp_path / "npz" / name, data=rng.random((rows, 1, 28, 28), dtype=np.float32),
                 labels=np.arange(rows) % 10)
    splits = datasets.load_splits("rotMNIST", tmp_path / "npz", valid_size=2)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (5, 2, 3)
    stored = np.load(tmp_path / "npz" / "train_all.npz")["data"]
    torch.testing.assert_close(splits.train[4][0], torch.from_numpy(stored[4]), rtol=0, atol=0)


@pytest.mark.parametrize("name, side", [("P4AllCNNC", 8), ("A_P4AllCNNC", 8), ("A_Ch_P4AllCNNC", 8),
                                        ("A_Sp_P4AllCNNC", 2)])
def test_every_original_allcnnc_is_rebuilt_by_its_name_with_its_downsampling(name, side):
    # Pooled (P4AllCNNC), strided (A_, A_Ch_) or strided and pooled (A_Sp_): the side after c6 on 32x32.
    from g_selfatt_models.compat.attgconv_records import build_from_record

    model = build_from_record({"module": name, "kwargs": {}}).eval()
    seen = []
    model.c7.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[-1]))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (10,)  # the originals squeeze their logits
    assert seen == [side]


# att_gconvs' experiment scripts: the model classes each task exports and the network each of their
# --model names built (python tools/original_api.py --experiments <checkout>).
EXPERIMENTS = json.loads((REPO_ROOT / "tests" / "original_api" / "experiments" / "att_gconvs.json").read_text())
EXPERIMENT_CLASSES = [(task, name) for task, entry in sorted(EXPERIMENTS.items()) for name in entry["classes"]]
EXPERIMENT_NAMES = [(task, name, record) for task, entry in sorted(EXPERIMENTS.items())
                    for name, record in sorted(entry["models"].items())]
# Dataset, channels and a small image side of each task's inputs (the DenseNet's least is 80).
TASK_INPUTS = {"rot_mnist": ("rotMNIST", 1, 28), "cifar10": ("CIFAR10", 3, 16), "pcam": ("PCam", 3, 80)}
# The names whose network here (the paper's, exactly equivariant) computes other logits than the one
# the original scripts built: their attentive All-CNN-C strides, their PCam script trained a plain net.
# (Their fA_P4MResNet mirrors its input first, which changes nothing but round-off: the net is
# invariant to mirrors.)
NOT_THE_SCRIPTS_NETWORK = {"att_p4_allcnnc", "ch_att_p4_allcnnc", "sp_att_p4_allcnnc", "f_att_p4m_densenet"}


def _with_batch_statistics(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """``model`` in eval mode with its batch norms' statistics set to those of ``x`` (logits of order 1)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.mark.parametrize("task, name", EXPERIMENT_CLASSES, ids=[f"{t}.{n}" for t, n in EXPERIMENT_CLASSES])
def test_every_original_experiment_model_class_is_rebuilt_by_its_name(task, name):
    from g_selfatt_models.compat.attgconv_records import build_from_record

    _, channels, side = TASK_INPUTS[task]
    model = build_from_record({"module": name, "kwargs": {}}).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, channels, side, side))
    assert logits.shape == (2, 2 if task == "pcam" else 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("task, name, record", EXPERIMENT_NAMES, ids=[n for _, n, _ in EXPERIMENT_NAMES])
def test_every_original_experiment_name_builds_the_scripts_network(task, name, record):
    """``--config.model=<name> --config.original_architecture=True`` is the network the original
    script built for ``--model <name>`` (the class by its original name, same weights, same logits);
    without the option the name is the paper's network, which differs only where the script's did."""
    import g_selfatt_models as models
    from g_selfatt_models.compat.attgconv_records import build_from_record

    dataset, channels, side = TASK_INPUTS[task]
    torch.manual_seed(0)
    x = torch.randn(2, channels, side, side)
    ours = _with_batch_statistics(models.create_model(name, dataset=dataset, original_architecture=True), x)
    original = build_from_record(record).eval()
    original.load_state_dict(ours.state_dict(), strict=True)
    paper = models.create_model(name, dataset=dataset).eval()
    same_weights = paper.state_dict().keys() == ours.state_dict().keys()
    if same_weights:
        paper.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        logits = ours(x)
        scale = logits.abs().max().item()
        bound = dict(rtol=0, atol=1e3 * torch.finfo(torch.float32).eps * max(1.0, scale))
        torch.testing.assert_close(logits, original(x), **bound)
        differs = not same_weights or (paper(x) - logits).abs().max().item() > 0.01 * scale
    assert differs == (name in NOT_THE_SCRIPTS_NETWORK)


def test_the_original_rebuttal_model_has_its_experiment_name():
    # att_gconvs' rot_mnist experiment --model RomHog_att_p4cnn built RomHog_fA_P4CNN.
    import g_selfatt_models as models
    from g_selfatt_models.compat.attgconv_records import build_from_record

    torch.manual_seed(0)
    model = models.create_model("RomHog_att_p4cnn", dataset="rotMNIST").eval()
    original = build_from_record({"module": "RomHog_fA_P4CNN", "kwargs": {}}).eval()
    original.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)


def test_the_att_gconvs_input_pipeline(tmp_path):
    """validation='att_gconvs': all training rows, selection on the test set, the experiments' normalisation."""
    import datasets

    fixture = fixture_data.make_rotmnist(tmp_path / "data")  # 12 train+valid rows, 5 test rows
    splits = datasets.load_splits("rotMNIST", tmp_path / "data", validation="att_gconvs")
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (12, 5, 5)
    pixels = torch.from_numpy(fixture.images["train_valid"]).double() / 255
    normalised = splits.batch_transform(splits.train.images).double()
    torch.testing.assert_close(normalised, (pixels - pixels.mean()) / pixels.std(unbiased=False), rtol=1e-5, atol=1e-5)
    fixture_data.make_cifar10(tmp_path / "data")
    cifar = datasets.load_splits("CIFAR10", tmp_path / "data", validation="att_gconvs")
    assert len(cifar.train) == 20 and cifar.valid is cifar.test
    assert cifar.batch_transform.mean == (0.485, 0.456, 0.406) and cifar.batch_transform.std == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="no such pipeline"):
        datasets.load_splits("rotDigits", tmp_path / "data", validation="att_gconvs")


def test_the_runner_reproduces_an_att_gconvs_run_by_one_flag(tmp_path):
    import main
    from test_main_e2e import make_config

    fixture_data.make_rotmnist(tmp_path / "data")
    result = main.run(make_config(tmp_path, dataset="rotMNIST", model="p4cnn", validation="att_gconvs",
                                  max_examples=4, rotation_angles=0))
    assert "select_att_gconvs" in result.checkpoint.name
