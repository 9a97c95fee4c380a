"""``attention_impl="triton"`` through Triton's CPU interpreter, against the float64 reference.

The kernels run on CPU tensors with ``TRITON_INTERPRET=1`` (set here, before the kernels are
first imported). The interpreter does not enforce what only a GPU compiler checks, so
:func:`test_tiles_meet_the_gpu_compile_rules` checks those rules on the tile sizes of every
group and width. Comparisons and bounds are those of :mod:`tests.attention_checks`.
"""

import logging
import math
import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="the triton package is not installed (make test installs it)")

from g_selfatt.groups import get_group  # noqa: E402
from g_selfatt.nn import GroupLocalSelfAttention, dispatch, triton_attention  # noqa: E402
from g_selfatt.nn.fused_attention import FusedGeometry, dropout_threshold  # noqa: E402
from tests.attention_checks import KINDS, check_against_float64, pair  # noqa: E402

# (kind, group, image side, patch): every layer kind; odd and even sides; a patch larger than the
# image; one, two, four, eight and twelve group elements (twelve: V and M padded to sixteen).
# One head: the interpreter runs every program in Python, and the suite's budget for these is a minute.
CASES = [
    ("lift_local", "p4", 5, 3),
    ("lift", "z2", 5, None),
    ("lift", "p8", 4, None),
    ("group_local", "p4", 4, 7),
    ("group_local", "mz2", 6, 3),
    ("group", "p4", 4, None),
    ("group", "p4m", 3, None),
    ("lift", "p12", 3, None),
    ("group_local", "p12", 2, 3),
]


def test_the_kernels_run_in_the_interpreter():
    assert triton_attention.interpreted(), "TRITON_INTERPRET was set after the kernels were imported"
    assert triton_attention.supports(torch.empty(1))


@pytest.mark.parametrize("kind,group_name,side,patch", CASES,
                         ids=[f"{k}-{g}-{s}" + (f"-p{p}" if p else "") for k, g, s, p in CASES])
def test_triton_matches_reference(kind, group_name, side, patch):
    check_against_float64("triton", kind, group_name, side, patch, heads=1, float32_reference=False)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_the_fused_kernels_fraction_without_bias(rate):
    count = 200_003
    flags = triton_attention.dropout_flags(123, count, rate).double()
    threshold, scale = dropout_threshold(rate)
    kept = flags.mean().item()
    assert abs(kept - threshold / 2 ** 24) < 5 * math.sqrt(rate * (1 - rate) / count)
    assert abs(kept * scale - 1.0) < 5 * math.sqrt(rate / (1 - rate) / count)  # kept entries scaled by 1/keep
    assert torch.equal(triton_attention.dropout_flags(123, count, rate).double(), flags)  # counter-based
    assert not torch.equal(triton_attention.dropout_flags(124, count, rate).double(), flags)
    neighbours = torch.stack([flags[:-1], flags[1:]])
    assert abs(torch.corrcoef(neighbours)[0, 1].item()) < 0.02


@pytest.mark.parametrize("kind", ["lift_local", "group"])
def test_dropout_masks_are_the_same_in_both_passes(kind):
    """With the seed fixed the forward and backward pass draw one mask, so gradcheck holds."""
    patch = 3 if KINDS[kind][2] else None
    _, layer, x = pair(kind, "p4", 3, patch, torch.float64, dropout=0.3, in_channels=2, heads=1, impl="triton")
    layer.train()

    def seeded(inp):
        torch.manual_seed(1)
        return layer(inp)

    dropped = seeded(x)
    assert not torch.allclose(dropped, layer.eval()(x))
    layer.train()
    assert torch.equal(seeded(x), dropped)
    assert torch.autograd.gradcheck(seeded, (x.requires_grad_(True),), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("dtype,bits", [(torch.bfloat16, 8), (torch.float16, 11)], ids=["bfloat16", "float16"])
def test_autocast_runs_the_attention_in_float32(dtype, bits):
    """Under autocast the kernels see float32 projections; the output differs from the reference's
    only by the half-precision projections and output layer (a few units of the last of ``bits``)."""
    reference, layer, x = pair("group_local", "p4", 4, 3, torch.float32, heads=1, impl="triton")
    outputs = []
    for module in (reference, layer):
        x_grad = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype):
            out = module(x_grad)
        out.float().square().sum().backward()
        assert out.dtype == dtype and torch.isfinite(x_grad.grad).all()
        outputs.append(out.float())
    assert (outputs[1] - outputs[0]).abs().max() <= 5e-2 * 2.0 ** (8 - bits) * outputs[0].abs().max()  # 5e-2 at 8 bits


@pytest.mark.parametrize("group_name", ["z2", "mz2", "p4", "p8", "p4m", "p12", "p16", "p8m"])
@pytest.mark.parametrize("channels", [1, 3, 8, 16, 33])
@pytest.mark.parametrize("lifting", [True, False])
def test_tiles_meet_the_gpu_compile_rules(group_name, channels, lifting):
    """Powers of two everywhere, every tl.dot operand at least 16 on each side, scores within the budget."""
    order = get_group(group_name).num_elements
    for side, local in ((28, True), (3, True), (32, False), (96, True)):
        geometry = FusedGeometry(heads_batch=2, height=side, width=side, num_query_elements=1 if lifting else order,
                                 num_key_elements=1 if lifting else order, num_out=order, channels=channels,
                                 pos_channels=2, local=local, patch_size=5 if local else 0, radius=2)
        blocks = triton_attention.Blocks.for_geometry(geometry)
        for size in (blocks.q, blocks.v, blocks.j, blocks.j_cols, blocks.m, blocks.c):
            assert size >= 1 and size & (size - 1) == 0, blocks
        assert blocks.j % blocks.j_cols == 0
        assert blocks.q >= 16 and blocks.c >= max(16, channels) and blocks.j * blocks.m >= 16
        assert blocks.v >= order and blocks.m >= geometry.num_key_elements
        assert blocks.q * blocks.v * blocks.j * blocks.m <= max(triton_attention.TILE_ENTRIES,
                                                                blocks.q * blocks.v * 16)


def test_explicit_triton_is_refused_where_it_cannot_run(monkeypatch):
    layer = GroupLocalSelfAttention(get_group("p4"), 3, 6, 5, 2, 3, 0.0, attention_impl="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="run on CUDA.*TRITON_INTERPRET=1.*attention_impl='auto'"):
        layer(torch.randn(1, 3, 4, 5, 5))


def test_the_self_check_passes_here_and_is_run_once(monkeypatch):
    monkeypatch.setattr(dispatch, "_self_checks", {})
    state = torch.random.get_rng_state()
    assert dispatch.kernel_self_check(torch.device("cpu"), torch.float32) is None
    assert torch.equal(torch.random.get_rng_state(), state), "the self-check changed the caller's random stream"
    monkeypatch.setattr(dispatch, "_compare_with_efficient", lambda *_: pytest.fail("checked twice"))
    assert dispatch.kernel_self_check(torch.device("cpu"), torch.float32) is None


def test_auto_on_an_accelerator_uses_triton_only_after_its_self_check(monkeypatch, caplog):
    q = torch.empty(1, 6, 2, 4, 5, 5)
    monkeypatch.setattr(dispatch, "_self_checks", {})
    monkeypatch.setattr(dispatch, "_fallbacks_said", set())
    assert dispatch.accelerator_choice(q) == "triton"

    def wrong_forward(geometry, q, k, v, pos_table, group_table):  # a kernel that miscomputes here
        return torch.zeros(q.shape[0], q.shape[1], geometry.num_out, q.shape[3], dtype=q.dtype) + 0 * q.sum()

    monkeypatch.setattr(dispatch, "_self_checks", {})
    monkeypatch.setattr("g_selfatt.nn.efficient_attention.triton_self_attention", wrong_forward)
    with caplog.at_level(logging.WARNING, logger="g_selfatt.nn.dispatch"):
        assert dispatch.accelerator_choice(q) == "efficient"
        assert dispatch.accelerator_choice(q) == "efficient"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "runs 'efficient'" in said[0] and "output of a local p4 group layer is off" in said[0]


# Compiled for a GPU without one: Triton's compiler runs on the CPU down to the GPU's machine code
# (cubin, through the ptxas that ships with the triton wheel), so the rules the interpreter skips
# (block shapes, tl.dot operand sizes, loop-carried types, constexpr globals) are enforced here.
COMPILE_SCRIPT = r"""
import json, sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from g_selfatt.nn import triton_attention, triton_kernels
from g_selfatt.nn.fused_attention import FusedGeometry

case = json.loads(sys.argv[1])
geometry = FusedGeometry(**case["geometry"])
scalars, constants = triton_attention._launch_arguments(geometry)
constants["HAS_GROUP"] = case["has_group"]
for kernel in (triton_kernels.attention_forward, triton_kernels.attention_backward):
    names = [name for name in kernel.arg_names if name not in constants]
    pointers = names[:len(names) - len(scalars)]
    signature = {name: "*fp32" for name in pointers}
    signature.update({name: "fp32" if isinstance(value, float) else "i32"
                      for name, value in zip(names[len(pointers):], scalars)})
    signature.update({name: "constexpr" for name in constants})
    compiled = compile(ASTSource(kernel, signature, constexprs=constants), target=GPUTarget("cuda", case["capability"], 32))
    assert compiled.asm["cubin"], kernel.__name__
print("compiled")
"""
COMPILE_CASES = {
    # z2 lifting layer, local: one output and one key element (blocks of one), 8 channels padded to 16.
    "lift_local-z2-sm80": dict(geometry=dict(heads_batch=2, height=5, width=5, num_query_elements=1,
                                             num_key_elements=1, num_out=1, channels=8, pos_channels=4, local=True,
                                             patch_size=3, radius=1), has_group=False, capability=80),
    # p4m global group layer with dropout: eight elements, 20 channels padded to 32.
    "group-p4m-dropout-sm90": dict(geometry=dict(heads_batch=2, height=5, width=5, num_query_elements=8,
                                                 num_key_elements=8, num_out=8, channels=20, pos_channels=12,
                                                 local=False, patch_size=0, radius=4, dropout=0.1, seed=5),
                                   has_group=True, capability=90),
}


@pytest.mark.parametrize("case", list(COMPILE_CASES))
def test_the_kernels_compile_for_a_gpu(case, tmp_path):
    import json
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile afresh, whatever an earlier run left in ~/.triton
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, json.dumps(COMPILE_CASES[case])], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_the_readme_lists_every_implementation_of_the_registry_in_its_order():
    from tests.conftest import REPO_ROOT

    text = (REPO_ROOT / "README.md").read_text()
    performance = text[text.index("## Performance"):text.index("**Where it stands.**")]
    listed = [line.split("`")[1] for line in performance.splitlines() if line.startswith("* **`")]
    assert listed == [name for name in dispatch.IMPLEMENTATIONS if name != "reference"]
    assert "`\"reference\"`" in performance
