"""Local lifting layers on few input channels: the fused kernel in the input space
(:mod:`g_selfatt.nn.input_space_lifting`) computes the layer's function, with the same dropout."""

import dataclasses

import pytest
import torch

import g_selfatt.nn.fused_attention as fused_attention
import g_selfatt.nn.input_space_lifting as input_space_lifting
from g_selfatt.groups import get_group
from g_selfatt.testing import assert_equivariant
from tests.attention_checks import assert_close, check_against_float64, gradient_scales, pair, run

# (in_channels, mid_channels): one input channel (rotMNIST), two, three (CIFAR10, PCam).
WIDTHS = [(1, 4), (2, 6), (3, 8)]
# (image side, patch size): odd and even sides, a patch larger than the image.
SHAPES = [(7, 3), (8, 5), (4, 5)]


@pytest.fixture
def taken(monkeypatch):
    """Counts the calls of the input-space computation."""
    calls = []
    original = input_space_lifting.lifting_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(input_space_lifting, "lifting_attention", counted)
    return calls


@pytest.mark.parametrize("side,patch", SHAPES)
@pytest.mark.parametrize("in_channels,mid_channels", WIDTHS)
@pytest.mark.parametrize("group_name", ["z2", "p4", "p4m", "p8"])
def test_matches_the_reference(group_name, in_channels, mid_channels, side, patch, taken):
    """Float64 within 1e-12 of scale, float32 within the round-off bound, outputs and gradients."""
    check_against_float64("fused", "lift_local", group_name, side, patch, heads=3, float32_reference=False,
                          in_channels=in_channels, mid_channels=mid_channels)
    assert taken  # the input-space computation ran


@pytest.mark.parametrize("in_channels,mid_channels", WIDTHS)
def test_draws_the_same_dropout_mask_as_the_plain_kernel_call(in_channels, mid_channels, monkeypatch, taken):
    """Rows and entries are numbered as in the plain call: with the same seed, the same mask."""
    _, layer, x = pair("lift_local", "p4", 7, 5, torch.float64, dropout=0.3, in_channels=in_channels,
                       mid_channels=mid_channels, heads=3, impl="fused")
    layer.train()
    grad_out = torch.randn(2, 5, 4, 7, 7, dtype=torch.float64)

    def seeded():
        torch.manual_seed(7)
        return run(layer, torch.float64, x, grad_out)

    out, grads = seeded()
    assert taken
    monkeypatch.setattr(input_space_lifting, "applies", lambda *args: False)
    plain_out, plain_grads = seeded()
    assert not torch.allclose(out, layer.eval()(x))  # dropout was on
    assert_close(out, plain_out, plain_out.abs().max(), 0.0, 1e-12, "float64 output")
    scales = gradient_scales(plain_grads)
    for name, grad in plain_grads.items():
        assert_close(grads[name], grad, scales[name], 0.0, 1e-12, f"float64 gradient of {name}")


def test_the_key_bias_gets_a_zero_gradient_not_none(taken):
    """It shifts every logit of a row alike; an optimizer must see it as the plain computation shows it."""
    _, layer, x = pair("lift_local", "p4", 6, 3, torch.float64, in_channels=1, mid_channels=4, impl="fused")
    layer(x).square().sum().backward()
    assert taken
    assert layer.key.bias.grad is not None and torch.equal(layer.key.bias.grad, torch.zeros_like(layer.key.bias))


@pytest.mark.parametrize("group_name", ["p4", "p4m"])
def test_is_equivariant(group_name, taken):
    group = get_group(group_name)
    _, layer, x = pair("lift_local", group_name, 9, 5, torch.float64, in_channels=1, mid_channels=4, impl="fused")
    assert_equivariant(layer, x, group, input_kind="image", output_kind="group")
    assert taken


def test_autocast_bfloat16_runs_in_float32(taken):
    reference, layer, x = pair("lift_local", "p4", 7, 3, torch.float32, in_channels=1, mid_channels=4, impl="fused")
    x = x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        expected = reference(x)
    out.float().square().sum().backward()
    assert taken and out.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    assert (out.float() - expected.float()).abs().max() <= 5e-2 * expected.float().abs().max()  # 8 bits kept


@pytest.mark.parametrize("in_channels,mid_channels,applies", [(1, 4, True), (1, 3, False), (3, 7, False),
                                                              (3, 8, True)])
def test_applies_where_it_needs_fewer_channels_than_the_layer(in_channels, mid_channels, applies):
    assert input_space_lifting.applies(True, True, in_channels, mid_channels) == applies
    assert not input_space_lifting.applies(True, False, in_channels, mid_channels)  # global: not here
    assert not input_space_lifting.applies(False, True, in_channels, mid_channels)  # group layers


def test_one_table_per_head_needs_the_lanes_layout(monkeypatch):
    monkeypatch.setattr(fused_attention.FusedGeometry, "layout", property(lambda _: "pixel_major"))
    geometry = fused_attention.FusedGeometry(
        heads_batch=2, height=5, width=5, num_query_elements=1, num_key_elements=1, num_out=4, channels=3,
        pos_channels=2, local=True, patch_size=3, radius=1, pos_heads=2)
    q = k = v = torch.randn(1, 3, 2, 1, 5, 5)
    with pytest.raises(ValueError, match="needs the lanes layout"):
        fused_attention.fused_attention(geometry, q, k, v, torch.randn(2, 4, 9, 2), None)


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def _per_head_call(dtype, dropout=0.2):
    """Six head-batches of three heads, one positional table per head."""
    batch, heads, channels, side, patch, order = 2, 3, 3, 9, 5, 4
    geometry = fused_attention.FusedGeometry(
        heads_batch=batch * heads, height=side, width=side, num_query_elements=1, num_key_elements=1,
        num_out=order, channels=channels, pos_channels=2, local=True, patch_size=patch, radius=patch // 2,
        dropout=dropout, seed=5, pos_heads=heads)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, channels, heads, 1, side, side, dtype=dtype, generator=generator)
               for _ in range(3))
    tables = torch.randn(heads, order, patch * patch, 2, dtype=dtype, generator=generator)
    grad_out = torch.randn(batch, channels, heads, order, side, side, dtype=dtype, generator=generator)
    return geometry, [t.requires_grad_(True) for t in (q, k, v, tables)], grad_out


@pytest.mark.parametrize("threads", [2, 3])
def test_per_head_tables_give_the_same_results_for_any_thread_count(threads, restore_threads):
    geometry, inputs, grad_out = _per_head_call(torch.float32)
    results = []
    for count in (1, threads):
        torch.set_num_threads(count)
        out = fused_attention.fused_attention(geometry, *inputs, None)
        results.append([out.detach(), *torch.autograd.grad(out, inputs, grad_out)])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_each_head_meets_only_its_own_table():
    """Output and gradients of head n are those of a call with head n alone and its table shared."""
    geometry, (q, k, v, tables), grad_out = _per_head_call(torch.float64, dropout=0.0)
    out = fused_attention.fused_attention(geometry, q, k, v, tables, None)
    grads = torch.autograd.grad(out, (q, k, v, tables), grad_out)
    alone = dataclasses.replace(geometry, heads_batch=geometry.heads_batch // tables.shape[0], pos_heads=1)
    for n in range(tables.shape[0]):
        inputs = [t[:, :, n:n + 1].detach().requires_grad_(True) for t in (q, k, v)]
        inputs.append(tables[n].detach().requires_grad_(True))
        expected = fused_attention.fused_attention(alone, *inputs, None)
        expected_grads = torch.autograd.grad(expected, inputs, grad_out[:, :, n:n + 1])
        assert_close(out[:, :, n:n + 1], expected, expected.abs().max(), 0.0, 1e-12, f"output of head {n}")
        for name, actual, exact in zip("qkv", grads[:3], expected_grads[:3]):
            assert_close(actual[:, :, n:n + 1], exact, exact.abs().max(), 0.0, 1e-12, f"gradient of {name}, head {n}")
        assert_close(grads[3][n], expected_grads[3], expected_grads[3].abs().max(), 0.0, 1e-12,
                     f"gradient of the table of head {n}")
