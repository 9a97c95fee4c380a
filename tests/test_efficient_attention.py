"""``attention_impl="efficient"`` and ``"fused"`` against ``attention_impl="reference"``.

Every comparison is that of :mod:`tests.attention_checks` (float64 within ``1e-12`` of
scale; float32 within the round-off bound derived there, against float64).

The efficient path is run with a tiny chunk budget, so that every layer goes
through several chunks and a shorter last chunk; the fused kernel is run with
more threads than the machine may have and small query blocks, so that head-batches
are split between threads.
"""

import copy
import itertools
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import types
from typing import List

import pytest
import torch

import g_selfatt.nn.efficient_attention as efficient_attention
import g_selfatt.nn.fused_attention as fused_attention
import g_selfatt.nn.input_space_lifting as input_space_lifting
from g_selfatt.groups import get_group
from g_selfatt.nn import GroupLocalSelfAttention, GroupSelfAttention, LiftLocalSelfAttention
from g_selfatt.nn.dispatch import ATTENTION_IMPLS
from g_selfatt.nn.efficient_attention import dropout_mask
from g_selfatt.testing import assert_equivariant
from g_selfatt_models import DataSpec, create_model
from g_selfatt_models.gsa_zoo import GSA_DEFAULTS
import runner.threads
from tests.attention_checks import (
    KINDS,
    OPENMP_EXPECTED,
    ROUND_OFF_FACTOR,
    assert_close,
    check_against_float64,
    float32_bound,
    gradient_scales,
    gradients,
    pair,
    run,
    score_entries,
)
from tests.conftest import REPO_ROOT, load_script

GROUPS = ["z2", "p4", "mz2", "p4m", "p8"]
# (image side, patch size) for local layers; global layers use the side only.
LOCAL_SHAPES = [(7, 3), (8, 3), (7, 5), (8, 5), (4, 5)]  # the last: a patch larger than the image
GLOBAL_SIDES = [7, 8]
# The groups of order 12 and 16, at smaller sizes (global attention costs (group order)^3);
# see test_efficient_matches_reference_on_large_groups.
LARGE_GROUPS = ["p12", "p16", "p8m"]
LARGE_LOCAL_SHAPES = [(5, 3), (4, 3)]
LARGE_GLOBAL_SIDES = [5, 4]
SMALL_CHUNK = 700  # score entries per chunk: a few queries per chunk at these sizes
# "fused-<layout>": the fused kernel with one of its layouts forced (local layers only; by default
# the kernel chooses from the shapes, and these test shapes would not reach every layout).
FORCED_LAYOUTS = {f"fused-{layout}": layout for layout in fused_attention.LAYOUTS}
FORCED_LAYOUT_GROUPS = ("z2", "p4", "p4m", "p8m")  # one key element, rotations, reflections, the largest order
FAST_IMPLS = ("efficient", "fused", *FORCED_LAYOUTS)
DEFAULT_CHUNK = efficient_attention.CHUNK_ELEMENTS


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    monkeypatch.setattr(efficient_attention, "CHUNK_ELEMENTS", SMALL_CHUNK)
    monkeypatch.setattr(fused_attention, "QUERY_BLOCK", 5)


@pytest.fixture(autouse=True)
def _three_threads():
    """Three kernel threads (more than a CI machine's cores): blocks of a head-batch run concurrently."""
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(previous)


def _cases(groups=GROUPS, local_shapes=LOCAL_SHAPES, global_sides=GLOBAL_SIDES):
    for name, (_, _, local) in KINDS.items():
        shapes = local_shapes if local else [(side, None) for side in global_sides]
        for impl, group, (side, patch) in itertools.product(FAST_IMPLS, groups, shapes):
            if impl in FORCED_LAYOUTS and (not local or group not in FORCED_LAYOUT_GROUPS):
                continue
            yield pytest.param(impl, name, group, side, patch,
                               id=f"{impl}-{name}-{group}-{side}" + (f"-p{patch}" if patch else ""))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("group_name", ["z2", "p4", "mz2", "p4m"])
def test_flex_forward_matches_reference(kind, group_name):
    """FlexAttention's forward pass on the CPU (its backward pass needs a GPU)."""
    patch = 3 if KINDS[kind][2] else None
    reference, flex, x = pair(kind, group_name, 5, patch, torch.float64, impl="flex")
    with torch.no_grad():
        expected = reference.eval()(x)
        scale = expected.abs().max()
        assert_close(flex.eval()(x), expected, scale, 0.0, 1e-12, "float64 output")
        bound = float32_bound(score_entries(kind, group_name, 5, patch), scale)
        assert_close(flex.float()(x.float()).double(), expected, 1.0, 0.0, bound, "float32 output")


def test_flex_is_refused_where_it_cannot_train():
    layer = GroupLocalSelfAttention(get_group("p4"), 3, 6, 5, 2, 3, 0.0, attention_impl="flex")
    with pytest.raises(ValueError, match="trains on CUDA only.*attention_impl='auto'"):
        layer(torch.randn(1, 3, 4, 5, 5, requires_grad=True))
    assert GroupLocalSelfAttention(get_group("p4"), 3, 6, 5, 2, 3, 0.1).resolved_impl(torch.randn(1)) == "fused"


def _select(impl, monkeypatch):
    """The ``attention_impl`` of a test parameter (forcing a layout of the fused kernel if asked)."""
    if impl in FORCED_LAYOUTS:
        monkeypatch.setattr(fused_attention.FusedGeometry, "layout", property(lambda _: FORCED_LAYOUTS[impl]))
        if FORCED_LAYOUTS[impl] != "lanes":  # lifting in the input space needs the lanes layout
            monkeypatch.setattr(input_space_lifting, "applies", lambda *args: False)
        return "fused"
    return impl


@pytest.mark.parametrize("impl,kind,group_name,side,patch", list(_cases()))
def test_efficient_matches_reference(impl, kind, group_name, side, patch, monkeypatch):
    check_against_float64(_select(impl, monkeypatch), kind, group_name, side, patch)


@pytest.mark.parametrize("impl,kind,group_name,side,patch", list(_cases(LARGE_GROUPS, LARGE_LOCAL_SHAPES,
                                                                         LARGE_GLOBAL_SIDES)))
def test_efficient_matches_reference_on_large_groups(impl, kind, group_name, side, patch, monkeypatch):
    """p12, p16 and p8m, at smaller sizes: their sums are 27 to 64 times longer than for p4."""
    check_against_float64(_select(impl, monkeypatch), kind, group_name, side, patch)


@pytest.mark.parametrize("kind", list(KINDS))
def test_default_chunking_matches_reference(kind, monkeypatch):
    monkeypatch.setattr(efficient_attention, "CHUNK_ELEMENTS", DEFAULT_CHUNK)
    patch = 3 if KINDS[kind][2] else None
    reference, efficient, x = pair(kind, "p4", 8, patch, torch.float64)
    torch.testing.assert_close(efficient(x), reference(x), rtol=0.0, atol=1e-12 * reference(x).abs().max().item())


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("group_name", GROUPS)
def test_efficient_is_equivariant(kind, group_name):
    cls, lifting, local = KINDS[kind]
    group = get_group(group_name)
    layer = cls(group, 3, 6, 5, 2, 3 if local else 8, 0.0, attention_impl="efficient").double().eval()
    shape = (2, 3, 8, 8) if lifting else (2, 3, group.num_elements, 8, 8)
    x = torch.randn(shape, dtype=torch.float64)
    assert_equivariant(layer, x, group, input_kind="image" if lifting else "group", output_kind="group")


def _dropout_cases(kinds):
    for kind in kinds:
        for impl in FAST_IMPLS:
            if impl in FORCED_LAYOUTS and not KINDS[kind][2]:
                continue
            yield pytest.param(kind, impl, id=f"{kind}-{impl}")


@pytest.mark.parametrize("kind,impl", list(_dropout_cases(KINDS)))
def test_dropout_runs_and_is_finite(kind, impl, monkeypatch):
    patch = 3 if KINDS[kind][2] else None
    impl = _select(impl, monkeypatch)
    reference, efficient, x = pair(kind, "p4", 7, patch, torch.float32, dropout=0.5, impl=impl)
    for layer in (reference, efficient):
        layer.train()
        x_grad = x.clone().requires_grad_(True)
        out = layer(x_grad)
        out.square().sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(x_grad.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
        layer.eval()
        assert not torch.allclose(out, layer(x)), "dropout had no effect in train mode"


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_mask_drops_the_asked_fraction_without_bias(rate):
    geometry = types.SimpleNamespace(seed=123, dropout=rate)
    like = torch.empty(1000, 1003)  # a count that is not a multiple of the four lanes of a draw
    mask = dropout_mask(geometry, 0, like).double()
    count = like.numel()
    kept = (mask > 0).double().mean().item()
    assert abs(kept - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / count)
    assert abs(mask.mean().item() - 1.0) < 5 * math.sqrt(rate / (1 - rate) / count)
    assert len(mask.unique()) == 2 and mask.max().item() == pytest.approx(1 / (1 - rate), rel=2e-5)
    assert torch.equal(dropout_mask(geometry, 0, like).double(), mask)  # the backward pass draws it again
    assert not torch.equal(dropout_mask(geometry, 1, like).double(), mask)  # chunks differ
    rows = (mask > 0).double()
    assert abs(torch.corrcoef(torch.stack([rows[:, :-1].flatten(), rows[:, 1:].flatten()]))[0, 1].item()) < 0.01


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_fused_dropout_flags_drop_the_asked_fraction_independently(rate):
    rows, length = 1000, 1003
    flags = fused_attention.dropout_flags(123, rows, length, rate).double()
    count = rows * length
    kept = flags.mean().item()
    threshold, scale = fused_attention.dropout_threshold(rate)
    assert abs(kept - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / count)
    assert scale == 2 ** 24 / threshold and abs(threshold / 2 ** 24 - (1 - rate)) <= 2 ** -25  # unbiased
    assert torch.equal(fused_attention.dropout_flags(123, rows, length, rate).double(), flags)  # drawn again
    assert not torch.equal(fused_attention.dropout_flags(124, rows, length, rate).double(), flags)
    for a, b in ((flags[:, :-1], flags[:, 1:]), (flags[:-1], flags[1:])):  # neighbours in a row, and rows
        assert abs(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()) < 0.01
    assert fused_attention.dropout_threshold(0.0)[0] == 2 ** 24 and fused_attention.dropout_threshold(1.0) == (0, 0.0)


def test_dropout_mask_extremes():
    like = torch.empty(10, 7)
    assert torch.equal(dropout_mask(types.SimpleNamespace(seed=0, dropout=0.0), 0, like), torch.ones(10, 7))
    assert torch.equal(dropout_mask(types.SimpleNamespace(seed=0, dropout=1.0), 0, like), torch.zeros(10, 7))


@pytest.mark.parametrize("kind,impl", list(_dropout_cases(["lift_local", "group", "group_local"])))
def test_dropout_gradient_is_exact(kind, impl, monkeypatch):
    """With the RNG reset before each call the masks repeat, so gradcheck applies."""
    patch = 3 if KINDS[kind][2] else None
    impl = _select(impl, monkeypatch)
    _, layer, x = pair(kind, "p4", 4, patch, torch.float64, dropout=0.3, in_channels=2, heads=1, impl=impl)
    layer.train()

    def seeded(inp):
        torch.manual_seed(1)
        return layer(inp)

    assert not torch.allclose(seeded(x), layer.eval()(x))
    layer.train()
    assert torch.autograd.gradcheck(seeded, (x.requires_grad_(True),), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("impl", ["efficient", "fused"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_autocast_bfloat16(kind, impl):
    patch = 3 if KINDS[kind][2] else None
    reference, efficient, x = pair(kind, "p4", 7, patch, torch.float32, impl=impl)
    outputs = []
    for layer in (reference, efficient):
        x_grad = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x_grad)
        out.float().square().sum().backward()
        assert out.dtype == torch.bfloat16
        assert torch.isfinite(x_grad.grad).all()
        outputs.append(out.float())
    scale = outputs[0].abs().max()
    assert (outputs[1] - outputs[0]).abs().max() <= 5e-2 * scale  # bfloat16 keeps 8 bits


def test_unknown_attention_impl_is_rejected():
    with pytest.raises(ValueError, match="auto.*fused.*triton.*flex.*efficient.*reference"):
        GroupSelfAttention(get_group("p4"), 3, 6, 5, 2, 8, 0.0, attention_impl="fast")
    assert set(ATTENTION_IMPLS) == {"auto", "fused", "triton", "flex", "efficient", "reference"}


def test_auto_is_fused_on_cpu_and_efficient_where_the_kernel_does_not_run():
    layer = GroupLocalSelfAttention(get_group("p4"), 3, 6, 5, 2, 3, 0.0)
    assert layer.attention_impl == "auto"
    x = torch.randn(1, 6, 2, 4, 5, 5)  # (B, C, N, G, H, W) projections
    assert layer.resolved_impl(x) == "fused"
    assert layer.resolved_impl(x.half()) == "efficient"  # no float16 kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.resolved_impl(x.bfloat16()) == "fused"  # the attention runs in float32 under autocast
    layer.attention_impl = "fused"
    with pytest.raises(ValueError, match="float32/float64.*torch.float16.*attention_impl='auto' or 'efficient'"):
        layer.resolved_impl(x.half())


def test_without_a_compiler_auto_falls_back_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("G_SELFATT_CACHE", str(tmp_path))
    monkeypatch.setattr(fused_attention, "compiler", lambda: None)
    monkeypatch.setattr(fused_attention, "_report", None)
    monkeypatch.setattr(fused_attention, "_library", None)
    assert not fused_attention.available()
    assert "no C++ compiler" in fused_attention.build_report().error
    layer = GroupLocalSelfAttention(get_group("p4"), 3, 6, 5, 2, 3, 0.0)
    x = torch.randn(1, 3, 4, 5, 5)
    assert layer.resolved_impl(torch.randn(1, 6, 2, 4, 5, 5)) == "efficient"
    assert layer(x).shape == (1, 5, 4, 5, 5)
    layer.attention_impl = "fused"
    with pytest.raises(ValueError, match="no C\\+\\+ compiler"):
        layer(x)


def test_the_kernel_is_compiled_once_and_then_read_from_the_cache(monkeypatch, tmp_path):
    # Unoptimised (-O0 for -O3): the caching is the same, the compilation takes seconds, not 40.
    monkeypatch.setattr(fused_attention, "FLAGS", tuple("-O0" if f == "-O3" else f for f in fused_attention.FLAGS))
    monkeypatch.setenv("G_SELFATT_CACHE", str(tmp_path))
    for compiled in (True, False):  # a fresh process compiles; the next one finds the cache
        monkeypatch.setattr(fused_attention, "_report", None)
        monkeypatch.setattr(fused_attention, "_library", None)
        report = fused_attention.build_report()
        assert report.error is None and report.compiled is compiled and report.path.parent == tmp_path
        assert (report.seconds > 0) is compiled
    assert [p.name for p in tmp_path.iterdir()] == [report.path.name]  # no temporary file left


def _fresh_kernel_state(monkeypatch, cache, scratch):
    """A process that has not loaded the kernel yet, with ``cache`` and ``scratch`` as its folders."""
    monkeypatch.setenv("G_SELFATT_CACHE", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(fused_attention, "_report", None)
    monkeypatch.setattr(fused_attention, "_library", None)


def test_an_unusable_cache_folder_falls_back_to_a_private_one_with_a_warning(monkeypatch, tmp_path, caplog):
    built = fused_attention.build_report().path  # the kernel of this session, to copy instead of compiling
    private = tmp_path / f"g_selfatt-{os.getuid()}"
    private.mkdir()
    shutil.copyfile(built, private / built.name)
    _fresh_kernel_state(monkeypatch, "/proc/no-such-cache", tmp_path)  # not creatable, even by root
    with caplog.at_level(logging.WARNING):
        report = fused_attention.build_report()
    assert report.error is None and report.path == private / built.name and fused_attention.available()
    assert "cannot keep the kernel in /proc/no-such-cache" in caplog.text


def test_a_damaged_cached_kernel_is_built_again(monkeypatch, tmp_path, caplog):
    built = fused_attention.build_report().path
    (tmp_path / built.name).write_bytes(b"")  # a 0-byte file, as a full disk leaves it
    compiled = []

    def compile_by_copying(cxx, path):
        compiled.append(path)
        shutil.copyfile(built, path)
        return fused_attention.BuildReport(path, True, 0.0)

    _fresh_kernel_state(monkeypatch, tmp_path, tmp_path / "unused")
    monkeypatch.setattr(fused_attention, "_compile", compile_by_copying)
    with caplog.at_level(logging.WARNING):
        assert fused_attention.available()
    assert compiled == [tmp_path / built.name] and (tmp_path / built.name).stat().st_size > 0
    assert "could not be loaded" in caplog.text and "compiled it again" in caplog.text


def test_without_any_usable_folder_auto_runs_efficient(monkeypatch, tmp_path):
    _fresh_kernel_state(monkeypatch, "/proc/no-such-cache", "/proc/no-such-tmp")
    report = fused_attention.build_report()
    assert report.path is None and "no usable folder" in report.error and not fused_attention.available()
    layer = GroupLocalSelfAttention(get_group("p4"), 3, 6, 5, 2, 3, 0.0)
    assert layer.resolved_impl(torch.randn(1, 6, 2, 4, 5, 5)) == "efficient"
    assert layer(torch.randn(1, 3, 4, 5, 5)).shape == (1, 5, 4, 5, 5)


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
def test_model_config_selects_impl(impl):
    config = types.SimpleNamespace(**GSA_DEFAULTS["rotDigits"], attention_impl=impl)
    model = create_model("p4sa", config, DataSpec("rotDigits", 1, 10, 16, "rotDigits"))
    impls = {m.attention_impl for m in model.modules() if hasattr(m, "attention_impl") and hasattr(m, "wout")}
    assert impls == {impl}


def test_model_default_is_auto_and_matches_reference():
    data = DataSpec("rotDigits", 1, 10, 16, "rotDigits")
    config = types.SimpleNamespace(**GSA_DEFAULTS["rotDigits"])
    torch.manual_seed(3)
    efficient = create_model("p4sa", config, data).double().eval()
    reference = create_model("p4sa", types.SimpleNamespace(**vars(config), attention_impl="reference"), data)
    reference.double().eval().load_state_dict(efficient.state_dict())
    assert efficient.lifting_self_attention.attention_impl == "auto"
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    expected = reference(x)
    torch.testing.assert_close(efficient(x), expected, rtol=0.0, atol=1e-12 * expected.abs().max().item())


def _load_benchmark():
    return load_script("benchmarks/attention.py")


def test_benchmark_prints_machine_rates_then_one_line_per_case_and_impl(monkeypatch, capsys):
    """The output format of benchmarks/attention.py, on a tiny layer in place of the real cases."""
    benchmark = _load_benchmark()

    def tiny(case, impl, device):
        return benchmark._layer_case("local", "p4", 3, 6, 3, 6, 1, impl, device)

    def in_process(case, impl, device, repeats, threads=None):
        record = benchmark.measure(case, impl, device, repeats)
        record["peak_memory_mb"] = record["max_rss_mb"]  # the format only; the parent subtracts a build-only run
        return record

    monkeypatch.setattr(benchmark, "build", tiny)
    monkeypatch.setattr(benchmark, "_run_subprocess", in_process)
    benchmark.main(["--cases", "a,b", "--repeats", "3", "--load"])
    machine, *records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert machine["sgemm_gflops"] > 0 and machine["exp_per_s"] > 0 and machine["threads"] >= 1
    assert [(r["case"], r["impl"]) for r in records] == [
        (case, impl) for case in "ab" for impl in ("reference", "efficient", "fused")] + [
        ("a", "efficient"), ("a", "fused")]
    idle, loaded = records[:6], records[6:]
    for record in idle:
        assert record["device"] == "cpu" and record["repeats"] == 3 and len(record["times_s"]) == 3
        assert record["time_s"] == pytest.approx(statistics.median(record["times_s"]), abs=1e-4)
        floor = record["matmul_gflop"] / machine["sgemm_gflops"] + record["exps"] / machine["exp_per_s"]
        assert record["floor_s"] == pytest.approx(floor, rel=1e-3, abs=1e-4)
        assert record["time_over_floor"] == pytest.approx(record["time_s"] / record["floor_s"], rel=1e-2)
        assert record["exps"] == 2 * record["score_entries"] > 0
    for case in (idle[0:3], idle[3:6]):
        by_impl = {r["impl"]: r for r in case}
        expected = benchmark.ratios(by_impl)
        assert expected["time_reference_over_fused"] == round(by_impl["reference"]["time_s"] / by_impl["fused"]["time_s"], 2)
        assert {key: case[0][key] for key in expected} == expected
    for record, idle_record in zip(loaded, idle[1:3]):
        assert record["load"] == "two busy processes"
        assert record["loaded_over_idle"] == round(record["time_s"] / idle_record["time_s"], 2)

    benchmark.main(["--worker", "--cases", "b", "--impls", "fused", "--repeats", "1"])
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["impl"] == "fused" and json.loads(line)["peak_memory_mb"] is None


def test_the_timed_kernel_computes_the_same_and_times_every_phase(monkeypatch):
    """benchmarks/kernel_phases.py runs the kernel compiled with -DFUSED_PHASES in place of the cached
    one: float64 outputs and gradients within 1e-12 of the cached kernel's, time in every phase of
    a group layer, one line per attention layer of a model, and the cached kernel back afterwards."""
    phases = load_script("benchmarks/kernel_phases.py")
    _select("fused-lanes", monkeypatch)
    _, fused, x = pair("group_local", "p4", 7, 3, torch.float64, impl="fused")
    grad_out = torch.randn_like(fused(x))
    expected, expected_grads = gradients(fused, x, grad_out)
    cached = fused_attention.library()
    with phases.timed_kernel() as timed:
        names = phases.phase_names(timed)
        phases.read_phases(timed, names)
        actual, actual_grads = gradients(fused, x, grad_out)
        spent = phases.read_phases(timed, names)
        lines = phases.measure("z2sa", 1, timed)
    assert fused_attention.library() is cached and timed is not cached
    assert_close(actual, expected, expected.abs().max(), 0.0, 1e-12, "output")
    scales = gradient_scales(expected_grads)
    for name, grad in expected_grads.items():
        assert_close(actual_grads[name], grad, scales[name], 0.0, 1e-12, f"gradient of {name}")
    assert names[:3] == ["forward_content", "forward_rows", "forward_out"] and len(names) == 11
    assert all(spent[name] > 0 for name in names), spent
    assert [line["layer"] for line in lines] == ["lifting_self_attention", "transformer.1.attention.2",
                                                 "transformer.5.attention.2"]
    for line in lines:
        assert list(line["phases_ms"]) == names and 0 < line["kernel_ms"]
        assert sum(line["shares"].values()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("limit_fits", [0, 1, 2, 3, 5, 64, 100, 4096])
def test_largest_batch_search(limit_fits):
    benchmark = _load_benchmark()
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= limit_fits

    assert benchmark.largest_batch(fits) == limit_fits
    assert len(tried) <= 2 * math.log2(4096) + 2


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("group_name", ["p4", "mz2"])
def test_cost_model_counts_the_reference_logits(kind, group_name):
    """Score entries counted from the layer's shapes = the finite logits the reference computes."""
    benchmark = _load_benchmark()
    _, lifting, local = KINDS[kind]
    reference, _, x = pair(kind, group_name, 6, 5 if local else None, torch.float64)
    q = reference._project(reference.query, x)
    k = reference._project(reference.key, x)
    logits = reference.attention_logits(q, k, x.shape[1])
    counts = benchmark.layer_counts(reference, x.shape)
    assert counts["score_entries"] == int(torch.isfinite(logits).sum()) > 0
    assert counts["exps"] == 2 * counts["score_entries"]


@pytest.mark.parametrize("impl", ["efficient", "fused"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_an_empty_batch_gives_empty_outputs_and_gradients(kind, impl):
    _, lifting, local = KINDS[kind]
    _, efficient, x = pair(kind, "p4", 6, 3 if local else None, torch.float32, dropout=0.1, impl=impl)
    empty = x[:0].clone().requires_grad_(True)
    out = efficient.train()(empty)
    out.sum().backward()
    assert out.shape == (0,) + efficient.eval()(x).shape[1:]
    assert empty.grad.shape == empty.shape


_POSITIONAL = ("row_embedding.3", "col_embedding.3")


def _logit_terms(layer, x):
    """The content, positional and group terms of ``layer``'s logits on ``x``, each
    ``(B, N, V, G, H, W, M, K)``: the logits of copies with the other two terms' weights zeroed."""
    terms = []
    for kept in ("key", _POSITIONAL, "group_embedding"):
        part = copy.deepcopy(layer)
        with torch.no_grad():
            for name, parameter in part.named_parameters():
                if name.startswith(("key", *_POSITIONAL, "group_embedding")) and not name.startswith(kept):
                    parameter.zero_()
            q, k = part._project(part.query, x), part._project(part.key, x)
            terms.append(part.attention_logits(q, k, x.shape[1]))
    return terms


@pytest.mark.parametrize("impl", [f"fused-{layout}" for layout in fused_attention.LAYOUTS])
def test_rows_whose_factored_exponentials_underflow_are_computed_directly(impl, monkeypatch):
    """Content terms of several hundred, under positional and group terms of thousands that decide
    where a row's largest logit is, make the product of the three factored exponentials underflow
    float64 (below 1e-200) in some rows; those rows are recomputed from the logits, forward and
    backward, and every result equals the reference to the round-off of logits that large."""
    reference, fused, x = pair("group_local", "p4", 6, 3, torch.float64, impl=_select(impl, monkeypatch))
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.startswith((*_POSITIONAL, "group_embedding")):
                parameter.mul_(5000.0)
            elif name.startswith("key"):
                parameter.mul_(150.0)
        fused.load_state_dict(reference.state_dict())
        content, positional, group = _logit_terms(reference, x)
        logits = content + positional + group
        finite = torch.isfinite(logits)
        rows = lambda t: t.masked_fill(~finite, -math.inf).flatten(-2).amax(-1)  # noqa: E731
        base = rows(content) + rows(positional) + rows(group)
        assert (base - rows(logits) > -math.log(1e-200)).any()  # some rows underflow when factored
        largest_logit = logits[finite].abs().max().item()
    grad_out = torch.randn_like(reference(x))
    expected, expected_grads = run(reference, torch.float64, x, grad_out)
    actual, actual_grads = run(fused, torch.float64, x, grad_out)
    n_terms = score_entries("group_local", "p4", 6, 3)
    tolerance = max(1e-12, ROUND_OFF_FACTOR * torch.finfo(torch.float64).eps * math.sqrt(n_terms) * largest_logit)
    assert_close(actual, expected, expected.abs().max(), 0.0, tolerance, "float64 output")
    scales = gradient_scales(expected_grads)
    for name, grad in expected_grads.items():
        assert_close(actual_grads[name], grad, scales[name], 0.0, tolerance, f"float64 gradient of {name}")


def _fused_call(group_name: str, lifting: bool, dtype: torch.dtype = torch.float32, border_gradients: bool = True):
    """One call of the fused kernel with attention dropout, on a layer of 6 head-batches: returns a
    function that runs it and returns the output and the gradients of every input, for comparing
    runs bitwise (the kernel adds the same sums in the same order however its tasks are run).
    Without ``border_gradients``, the output's gradient is zero at the query pixels whose patch
    reaches past the image."""
    order = get_group(group_name).num_elements
    elements = 1 if lifting else order
    batch, channels, heads, side, patch = 2, 6, 3, 9, 5
    geometry = fused_attention.FusedGeometry(
        heads_batch=batch * heads, height=side, width=side, num_query_elements=elements,
        num_key_elements=elements, num_out=order, channels=channels, pos_channels=4, local=True,
        patch_size=patch, radius=patch // 2, dropout=0.2, seed=11)
    q, k, v = (torch.randn(batch, channels, heads, elements, side, side, dtype=dtype, requires_grad=True)
               for _ in range(3))
    pos_table = torch.randn(order, patch * patch, 4, dtype=dtype, requires_grad=True)
    group_table = (None if lifting else
                   torch.randn(order, elements, elements, channels - 4, dtype=dtype, requires_grad=True))
    inputs = [t for t in (q, k, v, pos_table, group_table) if t is not None]
    grad_out = torch.randn(batch, channels, heads, order, side, side, dtype=dtype)
    if not border_gradients:
        border = torch.ones(side, side, dtype=torch.bool)
        border[patch // 2:side - patch // 2, patch // 2:side - patch // 2] = False
        grad_out[..., border] = 0

    def call():
        out = fused_attention.fused_attention(geometry, q, k, v, pos_table, group_table)
        return [out.detach()] + list(torch.autograd.grad(out, inputs, grad_out))

    return call


@pytest.mark.parametrize("group_name,lifting", [("p4", True), ("p4", False), ("z2", False)])
def test_lanes_gradients_do_not_depend_on_the_thread_count(group_name, lifting, monkeypatch):
    """Every task of the lanes kernel adds into its own sums, added up in task order afterwards."""
    _select("fused-lanes", monkeypatch)
    call = _fused_call(group_name, lifting)
    runs = []
    for threads in (1, 2, 3, 3):  # 6 head-batches: none is split into parts at these thread counts
        torch.set_num_threads(threads)
        runs.append(call())
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


@pytest.mark.parametrize("group_name,lifting", [("p4", True), ("p4", False), ("z2", False)])
def test_every_layout_drops_the_same_entries_away_from_the_border(group_name, lifting, monkeypatch):
    """Each layout keeps entry x of a row by the same hash of (seed, row, x), whatever its tiles (the
    lanes layout hashes a tile's rows as one vector), where the query's patch lies inside the image:
    there the float64 outputs agree, and so do the gradients when only those outputs have one. (At
    the border the one-query layouts number only the keys inside the image.)"""
    runs = {}
    for layout in fused_attention.LAYOUTS:
        _select(f"fused-{layout}", monkeypatch)
        torch.manual_seed(0)
        runs[layout] = _fused_call(group_name, lifting, torch.float64, border_gradients=False)()
    radius = 2  # the patch of _fused_call is 5x5
    scale = max(grad.abs().max() for grad in runs["lanes"][1:])
    for layout, (out, *grads) in runs.items():
        expected = runs["lanes"][0][..., radius:-radius, radius:-radius]
        assert_close(out[..., radius:-radius, radius:-radius], expected, expected.abs().max(), 0.0, 1e-12,
                     f"{layout}: output")
        for name, actual, grad in zip(("q", "k", "v", "positions", "group"), grads, runs["lanes"][1:]):
            assert_close(actual, grad, scale, 0.0, 1e-12, f"{layout}: gradient of {name}")
    border = (runs["pixel_major"][0] - runs["lanes"][0]).abs().max()
    assert border > 1e-3 * runs["lanes"][0].abs().max()  # dropout was on


def runtimes_that_differ(threads: int = 3) -> List[str]:
    """The layouts of the fused kernel whose results on ``threads`` threads differ between torch's
    OpenMP threads and threads of the kernel's own (none should: the same tasks add the same sums)."""
    differ = []
    for layout in fused_attention.LAYOUTS:
        with pytest.MonkeyPatch.context() as patch:
            _select(f"fused-{layout}", patch)
            torch.manual_seed(0)
            call = _fused_call("p4", lifting=False)
            torch.set_num_threads(threads)
            runs = []
            for openmp in (True, False):
                fused_attention.use_openmp_threads(openmp)
                runs.append(call())
            fused_attention.use_openmp_threads(True)
        if not all(torch.equal(a, b) for a, b in zip(*runs)):
            differ.append(layout)
    return differ


@pytest.mark.skipif(not OPENMP_EXPECTED, reason="torch runs on no OpenMP runtime that the kernel can find here")
def test_the_kernel_runs_on_torchs_openmp_threads_with_the_same_results_as_on_its_own():
    assert fused_attention.use_openmp_threads(True) is not None
    assert fused_attention.build_report().openmp == fused_attention.openmp_runtime()
    assert runtimes_that_differ() == []


@pytest.mark.skipif(not OPENMP_EXPECTED, reason="torch runs on no OpenMP runtime that the kernel can find here")
def test_a_smaller_openmp_team_than_asked_for_still_runs_every_task():
    """Under a thread limit of 1 the runtime gives the kernel's 3 shares one thread, which must run them all."""
    script = ("import tests.test_efficient_attention as t, g_selfatt.nn.fused_attention as f; "
              "f.QUERY_BLOCK = 5; assert f.use_openmp_threads(True) is not None; print(t.runtimes_that_differ())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=REPO_ROOT, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("model,fields,layouts", [
    # rows of W + r lanes: 28x28 lifting, p4 at 14x14 (14 x 16 = 224 lanes for 196 queries, 1.14 per
    # query), 7x7 (7 x 9 = 63 -> 64 for 49, 1.31)
    ("p4sa", {}, ["lanes", "lanes", "lanes"]),
    ("p8sa", {}, ["lanes", "lanes", "lanes"]),
    ("z2sa", {}, ["lanes", "lanes", "lanes"]),
    # patch 13 (r = 6): 14 x 20 = 280 lanes for 196 queries (1.43 per query; 288 in 16-lane tiles,
    # 1.47); 7 x 13 = 91 -> 96
    # for 49 (1.96), 24 channels per head
    ("p4sa", {"patch_size": 13}, ["lanes", "lanes", "pixel_major"]),
    ("p4sa", {"attention_type": "Global"}, ["channel_major"] * 3),  # global layers: one query at a time
])
def test_the_kernel_chooses_its_layout_from_the_shapes(model, fields, layouts, monkeypatch):
    chosen = []
    original = fused_attention.fused_attention

    def spy(geometry, *args):
        chosen.append(geometry.layout)
        return original(geometry, *args)

    monkeypatch.setattr(efficient_attention, "fused_attention", spy)
    monkeypatch.setattr(input_space_lifting, "fused_attention", spy)  # the lifting layers (1 input channel)
    create_model(model, dataset="rotMNIST5k", **fields)(torch.randn(2, 1, 28, 28))
    assert chosen == layouts


def test_benchmark_builds_the_cases_people_train_and_compares_them_with_p4cnn(monkeypatch, capsys):
    benchmark = _load_benchmark()
    for case in "ghijk":
        assert callable(benchmark.build(case, "fused", torch.device("cpu")))  # built, not run

    def tiny(case, impl, device):
        return benchmark._layer_case("local", "p4", 3, 6, 3, 6, 1, impl, device)

    def in_process(case, impl, device, repeats, threads=None):
        return dict(benchmark.measure(case, impl, device, repeats), peak_memory_mb=1.0)

    monkeypatch.setattr(benchmark, "build", tiny)
    monkeypatch.setattr(benchmark, "_run_subprocess", in_process)
    benchmark.main(["--cases", "g,h", "--impls", "fused", "--repeats", "2"])
    _, cnn, *records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (cnn["case"], cnn["impl"]) == ("k", "none")  # measured first, once
    assert [(r["case"], r["impl"]) for r in records] == [("g", "fused"), ("h", "fused")]
    for record in records:
        assert record["over_p4cnn"] == round(record["time_s"] / cnn["time_s"], 2)
        (layer,) = record["layers"]  # the tiny case is one attention layer
        assert layer["time_s"] > 0
        # The share is of the unrounded times; the times are printed to 4 decimals, the share to 3.
        half = 0.00005
        low = (layer["time_s"] - half) / (record["time_s"] + half)
        high = (layer["time_s"] + half) / (record["time_s"] - half)
        assert low - 0.0005 <= layer["share_of_step"] <= high + 0.0005


@pytest.mark.parametrize("group_name,bases", [("z2", None), ("p4", 1), ("mz2", 1), ("p4m", 1), ("p8", 2),
                                              ("p8m", 2), ("p12", 3), ("p16", 4)])
@pytest.mark.parametrize("lifting", [True, False])
def test_positional_tables_permute_few_base_tables(group_name, bases, lifting):
    """The table of v u is that of v permuted, bitwise, where u maps the patch onto itself: the lanes
    kernel computes the base tables' logits once for every v."""
    cls = LiftLocalSelfAttention if lifting else GroupLocalSelfAttention
    layer = cls(get_group(group_name), 3, 6, 5, 2, 5, 0.0)
    table = layer.attention_tables().positional  # (V, T, 2D)
    shared = fused_attention.shared_tables(table)
    assert (shared is None) == (bases is None)
    if shared is not None:
        base_elements, perm = shared
        assert len(base_elements) == bases
        assert torch.equal(table, table[base_elements].flatten(0, 1)[perm])
        for row in perm:  # each v: a permutation of the rows of one base table
            assert sorted(row.tolist()) == list(range(row[0] // 25 * 25, row[0] // 25 * 25 + 25))


def test_library_load_benchmark_measures_a_process_that_imports_only_the_library(monkeypatch, capsys):
    """benchmarks/library_under_load.py: the measured process says nothing of how OpenMP threads wait and
    imports no runner."""
    benchmark = load_script("benchmarks/library_under_load.py")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # as a user's shell might
    monkeypatch.setenv("GOMP_SPINCOUNT", runner.threads.SPIN_COUNT)  # as main.py leaves it
    record = benchmark.measure(repeats=1, batch=1, wait_policy=None)
    assert record["step_s"] > 0 and record["batch"] == 1
    assert (record["omp_wait_policy"], record["gomp_spincount"], record["runner_imported"]) == ("unset", "unset", False)
    assert benchmark.measure(repeats=1, batch=1, wait_policy=None, spin_count=100)["gomp_spincount"] == "100"
    assert set(benchmark.WAIT_SETTINGS) == set(runner.threads.USER_SETTINGS)
    steps = iter([0.5, 1.25])
    monkeypatch.setattr(benchmark, "measure", lambda repeats, batch, policy, spin: {"step_s": next(steps), "batch": batch})
    benchmark.main(["--repeats", "1", "--batch", "2", "--busy", "1"])
    idle, loaded = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (idle["load"], loaded["load"], loaded["busy_processes"], loaded["loaded_over_idle"]) == ("idle", "busy", 1, 2.5)
