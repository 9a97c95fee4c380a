"""GSA-Net layers and models: gradients, parameter counts, argument errors, helpers."""

import subprocess
import sys

import pytest
import torch
from ml_collections import ConfigDict

from g_selfatt.functional import (
    average_pooling_rd_on_G,
    extract_patches,
    max_pooling_group,
    max_pooling_rd_on_G,
)
from g_selfatt.groups import get_group
from g_selfatt.nn import (
    Crop,
    GroupLocalSelfAttention,
    GroupSelfAttention,
    LiftLocalSelfAttention,
    LiftSelfAttention,
    PointwiseConv2d,
    PointwiseConv3d,
    PositionalMLP,
    TransformerBlock,
    get_activation,
    get_norm,
)
from g_selfatt_models import DataSpec, create_model
from g_selfatt_models.gsa_zoo import GSA_DEFAULTS
from tests.conftest import REPO_ROOT

SPECS = {
    "rotMNIST": DataSpec("rotMNIST", 1, 10, 28, "rotMNIST"),
    "CIFAR10": DataSpec("CIFAR10", 3, 10, 32, "CIFAR10"),
    "PCam": DataSpec("PCam", 3, 2, 96, "PCam"),
}

# shared/docs/papers.md: "Parameter counts of the original models (computed by building them)".
PAPER_PARAMETER_COUNTS = {
    "rotMNIST": {"z2cnn": 21_620, "z2sa": 44_368, "p4sa": 44_428, "p8sa": 44_508, "p4msa": 44_508,
                 "p12sa": 44_588, "p16sa": 44_668},
    "CIFAR10": {"z2sa": 3_001_648, "mz2sa": 3_001_808, "p4sa": 3_002_128, "p4msa": 3_002_768},
    "PCam": {"z2sa": 206_926, "p4sa": 207_034, "p4msa": 207_178},
}


def _config(architecture, **overrides):
    return ConfigDict(dict(GSA_DEFAULTS[architecture], **overrides))


def _count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("architecture", sorted(PAPER_PARAMETER_COUNTS))
def test_parameter_counts_match_the_paper(architecture):
    counts = {name: _count(create_model(name, _config(architecture), SPECS[architecture]))
              for name in PAPER_PARAMETER_COUNTS[architecture]}
    assert counts == PAPER_PARAMETER_COUNTS[architecture]


def test_parameter_count_does_not_depend_on_the_attention_extent():
    local = create_model("p4sa", _config("rotMNIST", patch_size=5), SPECS["rotMNIST"])
    global_ = create_model("p4sa", _config("rotMNIST", attention_type="Global"), SPECS["rotMNIST"])
    assert _count(local) == _count(global_) == 44_428


LAYER_CASES = [
    (LiftSelfAttention, "lift", {"max_pos_embedding": 6}),
    (LiftLocalSelfAttention, "lift", {"patch_size": 3}),
    (GroupSelfAttention, "group", {"max_pos_embedding": 6}),
    (GroupLocalSelfAttention, "group", {"patch_size": 3}),
]


# Parameters that add the same amount to every logit of a query, which the softmax
# ignores (the original has them too): a key bias adds <q, b>, the last bias of a
# positional MLP adds <q_pos, b>, and the group encoding of a one-element group adds
# <q_grp, E_G[e]>. Their gradient is exactly zero; only round-off remains.
_SOFTMAX_INVARIANT = ("key.bias", "row_embedding.3.bias", "col_embedding.3.bias")


def _softmax_invariant(name, group_order):
    return name.endswith(_SOFTMAX_INVARIANT) or (group_order == 1 and name.endswith("group_embedding.weight"))


def _assert_every_parameter_has_a_gradient(module, group_order):
    """float64 gradients: every parameter is reached; all but the softmax-invariant ones are far above round-off."""
    scale = max(p.grad.abs().max().item() for p in module.parameters() if p.grad is not None)
    for name, param in module.named_parameters():
        assert param.grad is not None, f"{name} is not connected to the output"
        relative = param.grad.abs().max().item() / scale
        if _softmax_invariant(name, group_order):
            assert relative < 1e-12, f"{name}: softmax-invariant, but its gradient is {relative:.1e} of the largest"
        else:
            assert relative > 1e-12, f"{name}: gradient {relative:.1e} of the largest, zero up to round-off"


@pytest.mark.parametrize("name", ["z2", "p4", "p4m"])
@pytest.mark.parametrize("cls, kind, extent", LAYER_CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_every_layer_parameter_receives_a_gradient(cls, kind, extent, name):
    group = get_group(name)
    layer = cls(group, 3, 6, 4, 2, attention_dropout_rate=0.0, **extent).double()
    shape = (2, 3, 6, 6) if kind == "lift" else (2, 3, group.num_elements, 6, 6)
    layer(torch.randn(shape, dtype=torch.float64)).square().sum().backward()
    _assert_every_parameter_has_a_gradient(layer, group.num_elements)


@pytest.mark.parametrize("name", ["z2cnn", "z2sa", "p4sa", "p4msa"])
def test_every_model_parameter_receives_a_gradient(name):
    model = create_model(name, _config("rotMNIST", patch_size=3), SPECS["rotMNIST"]).double().train()
    x = torch.randn(1, 1, 28, 28, dtype=torch.float64)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([3])).backward()
    group_order = getattr(getattr(model, "group", None), "num_elements", 1)
    _assert_every_parameter_has_a_gradient(model, group_order)


def test_model_output_shapes():
    for architecture in ("rotMNIST", "PCam"):
        spec = SPECS[architecture]
        model = create_model("p4sa", _config(architecture, patch_size=3), spec).eval()
        size = 56 if architecture == "PCam" else spec.image_size  # PCam's layout accepts >= 56 pixels
        assert model(torch.randn(1, spec.in_channels, size, size)).shape == (1, spec.num_classes)


def _pooled_logits(pooling):
    from g_selfatt_models.group_transformer import GroupTransformer

    torch.manual_seed(0)
    model = GroupTransformer(
        group=get_group("p4"), in_channels=1, num_channels=8, num_heads=1, block_sizes=[1],
        expansion_per_block=1, crop_per_layer=0, normalize_between_layers=False,
        maxpool_after_last_block=False, image_size=6, patch_size=3, activation_function="Swish",
        attention_dropout_rate=0.0, value_dropout_rate=0.0, spatial_pooling=pooling,
    ).double().eval()
    torch.manual_seed(1)
    return model(torch.randn(2, 1, 6, 6, dtype=torch.float64))


def test_mean_spatial_pooling_is_the_sum_over_the_pixels_divided_by_their_number():
    # Division by a positive constant commutes with the max over the group; the last map is 6x6.
    torch.testing.assert_close(_pooled_logits("mean"), _pooled_logits("sum") / 36, rtol=1e-12, atol=0)


def test_unknown_spatial_pooling_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"spatial_pooling 'max'.*'sum', 'mean'"):
        _pooled_logits("max")


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"Unknown model 'p5sa'.*'p4msa'.*'z2cnn'"):
        create_model("p5sa", _config("rotMNIST"), SPECS["rotMNIST"])


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="attention_type 'local'"):
        create_model("p4sa", _config("rotMNIST", attention_type="local"), SPECS["rotMNIST"])
    with pytest.raises(ValueError, match="norm_type 'GroupNorm'"):
        create_model("p4sa", _config("rotMNIST", norm_type="GroupNorm"), SPECS["rotMNIST"])
    with pytest.raises(ValueError, match="activation_function 'GELU'"):
        create_model("p4sa", _config("rotMNIST", activation_function="GELU"), SPECS["rotMNIST"])
    with pytest.raises(ValueError, match="defined for"):
        create_model("z2cnn", _config("rotMNIST"), SPECS["CIFAR10"])


@pytest.mark.parametrize("patch_size", [4, 1, 0])
def test_even_or_too_small_patch_is_rejected(patch_size):
    with pytest.raises(ValueError, match="patch_size must be an odd integer"):
        GroupLocalSelfAttention(get_group("p4"), 3, 6, 4, 2, patch_size, 0.0)


def test_patch_larger_than_the_image_is_rejected():
    config = _config("rotMNIST", patch_size=29)
    with pytest.raises(ValueError, match="patch_size=29 is larger than the 28x28 input image"):
        create_model("p4sa", config, SPECS["rotMNIST"])


def test_patch_larger_than_a_deep_feature_map_sees_the_whole_map():
    """Deeper layers of the paper's patch-9 rotMNIST model see 4x4 maps: every key is in reach."""
    group = get_group("p4")
    local = GroupLocalSelfAttention(group, 3, 6, 4, 2, 9, 0.0).double().eval()
    x = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64)
    inside = local._inside_image(4, 4, x.device)
    assert inside.shape == (4, 4, 81) and bool(inside.sum(-1).eq(16).all())
    assert torch.isfinite(local(x)).all()


def test_image_larger_than_max_pos_embedding_is_rejected():
    layer = GroupSelfAttention(get_group("p4"), 3, 6, 4, 2, 6, 0.0)
    with pytest.raises(ValueError, match="larger than max_pos_embedding=6"):
        layer(torch.randn(1, 3, 4, 7, 7))


def test_smaller_images_than_max_pos_embedding_are_accepted():
    layer = LiftSelfAttention(get_group("p4"), 3, 6, 4, 2, 9, 0.0).eval()
    assert layer(torch.randn(1, 3, 5, 6)).shape == (1, 4, 4, 5, 6)


def test_channel_and_group_mismatch_are_rejected():
    layer = GroupLocalSelfAttention(get_group("p4"), 3, 6, 4, 2, 3, 0.0)
    with pytest.raises(ValueError, match="built for 3 input channels, but the input has 5"):
        layer(torch.randn(1, 5, 4, 6, 6))
    with pytest.raises(ValueError, match="group axis of size 4, got 8"):
        layer(torch.randn(1, 3, 8, 6, 6))
    with pytest.raises(ValueError, match=r"expects an input of shape \(B, C, G, H, W\)"):
        layer(torch.randn(1, 3, 6, 6))


def test_mid_channel_constraints():
    with pytest.raises(ValueError, match="mid_channels must be even"):
        LiftSelfAttention(get_group("p4"), 3, 5, 4, 2, 6, 0.0)
    with pytest.raises(ValueError, match="mid_channels must be at least 3"):
        GroupSelfAttention(get_group("p4"), 3, 2, 4, 2, 6, 0.0)
    with pytest.raises(ValueError, match="group_axis_index"):
        GroupSelfAttention(get_group("p4"), 3, 6, 4, 2, 6, 0.0, group_axis_index="shifted")


def test_local_mask_follows_the_input_size():
    """The original caches its padding mask on the first call; here every size works."""
    group = get_group("p4")
    layer = GroupLocalSelfAttention(group, 3, 6, 4, 2, 3, 0.0).double().eval()
    small, large = torch.randn(1, 3, 4, 5, 5).double(), torch.randn(1, 3, 4, 8, 8).double()
    first = layer(small)
    layer(large)
    torch.testing.assert_close(layer(small), first)


def test_local_attention_ignores_keys_outside_the_image():
    """Zero padding must not act as a key: a corner output equals the one computed on a crop."""
    group = get_group("z2")
    layer = LiftLocalSelfAttention(group, 2, 4, 3, 1, 3, 0.0).double().eval()
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    full = layer(x)
    corner = layer(x[..., :3, :3])
    torch.testing.assert_close(full[..., 0, 0], corner[..., 0, 0])


def test_extract_patches_matches_a_loop():
    table = torch.randn(2, 5, 7)
    patches = extract_patches(table)
    for i, j, k, l in [(0, 0, 2, 3), (2, 3, 0, 0), (1, 2, 2, 1)]:
        torch.testing.assert_close(patches[i, j, k, l], table[:, k - i + 2, l - j + 3])


def test_group_pooling_helpers():
    x = torch.randn(2, 3, 4, 6, 6)
    assert max_pooling_rd_on_G(x, 2, 2, 0).shape == (2, 3, 4, 3, 3)
    torch.testing.assert_close(average_pooling_rd_on_G(x, 2, 2, 0)[0, 1, 2, 0, 0], x[0, 1, 2, :2, :2].mean())
    torch.testing.assert_close(max_pooling_group(x), x.max(dim=2).values)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls, convolution, spatial", [(PointwiseConv2d, torch.nn.functional.conv2d, (5, 6)),
                                                       (PointwiseConv3d, torch.nn.functional.conv3d, (4, 5, 6))])
@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_convolution_is_the_convolution_of_kernel_size_one(cls, convolution, spatial, bias, stride):
    torch.manual_seed(0)
    layer = cls(3, 7, stride=stride, bias=bias).double()
    x = torch.randn(2, 3, *spatial, dtype=torch.float64).transpose(-1, -2).requires_grad_()  # not contiguous
    out = layer(x)
    expected = convolution(x, layer.weight, layer.bias, stride=stride)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *layer.parameters()], grad)
    want = torch.autograd.grad(expected, [x, *layer.parameters()], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_pointwise_convolution_keeps_the_state_dict_of_the_convolution():
    conv = torch.nn.Conv3d(4, 6, kernel_size=1)
    layer = PointwiseConv3d(4, 6)
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 3, 5, 5)
    with torch.no_grad():  # a bound from the sizes of the inputs, not a function of the parameters
        scale = x.abs().max() * conv.weight.abs().sum(1).max() + conv.bias.abs().max()
    torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=float(scale) * 4 * torch.finfo(x.dtype).eps * 4)


def _mlp_by_its_layers(mlp: PositionalMLP, coordinates: torch.Tensor) -> torch.Tensor:
    """The embedding by the MLP's own modules (1x1 convolutions, GroupNorm), one coordinate per image."""
    out = torch.nn.Sequential.forward(mlp, coordinates.reshape(-1, 1, 1, 1))  # (N, D, 1, 1)
    return out.view(coordinates.shape + (-1,))


def test_positional_mlp_embeds_as_its_convolutions_and_norm_would():
    torch.manual_seed(0)
    mlp = PositionalMLP(5).double()
    for parameter in mlp.parameters():  # not the initial scale and shift of the norm
        torch.nn.init.normal_(parameter)
    coordinates = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0], [0.25, 0.5, 0.5, -1.0, 0.0]], dtype=torch.float64)
    out, expected = mlp(coordinates), _mlp_by_its_layers(mlp, coordinates)
    assert out.shape == (2, 5, 5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, list(mlp.parameters()), grad),
                         torch.autograd.grad(expected, list(mlp.parameters()), grad)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_positional_mlp_gives_equal_coordinates_the_same_embedding():
    """Bitwise: the group permutes the offsets of a patch, and a permuted table must be the same table."""
    torch.manual_seed(0)
    mlp = PositionalMLP(3)
    coordinates = torch.tensor([0.5, -1.0, 0.5, 0.7071067, -1.0, 0.5]).repeat(40)  # (240,)
    out = mlp(coordinates)
    for value in coordinates.unique():
        rows = out[coordinates == value]
        assert torch.equal(rows, rows[:1].expand_as(rows))


def test_crop_and_block_shapes():
    assert Crop(2)(torch.randn(1, 1, 1, 9, 9)).shape[-2:] == (5, 5)
    with pytest.raises(ValueError, match="Cannot crop"):
        Crop(3)(torch.randn(1, 1, 6, 6))
    attention = GroupLocalSelfAttention(get_group("p4"), 4, 4, 8, 2, 3, 0.0)
    block = TransformerBlock(4, 8, attention, "BatchNorm", "ReLU", 1, 0.0, 3)
    assert block(torch.randn(2, 4, 4, 7, 7)).shape == (2, 8, 4, 5, 5)
    assert isinstance(get_norm("BatchNorm", 4, dims=2), torch.nn.BatchNorm2d)
    with pytest.raises(ValueError, match="Unknown activation_function"):
        get_activation("tanh")


def test_importing_the_library_has_no_side_effects():
    code = (
        "import sys, torch, g_selfatt, g_selfatt.testing, g_selfatt_models\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "assert 'wandb' not in sys.modules, 'wandb imported'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_no_project_module_imports_torchvision():
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in REPO_ROOT.rglob("*.py")
        if ".venv" not in path.parts and path.name != "test_gsa_layers.py"
        and any(line.strip().startswith(("import torchvision", "from torchvision"))
                for line in path.read_text().splitlines())
    ]
    assert offenders == []
