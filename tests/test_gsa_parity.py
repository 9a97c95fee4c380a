"""The GSA-Net modules reproduce the original implementation's recorded outputs."""

import subprocess
import sys

import pytest
import torch

from tests.conftest import REFERENCE_DIR, REPO_ROOT, reference_files

TOOL = REPO_ROOT / "tools" / "check_parity.py"
GSA_FILES = reference_files("gsa_")


def _run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)


def test_parity_tool_passes_on_every_gsa_record():
    result = _run_tool(*GSA_FILES)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(GSA_FILES), result.stdout + result.stderr
    for line in lines:
        assert line.endswith("PASS"), line
        assert "max_abs_err=" in line and "max_rel_err=" in line
    assert result.returncode == 0


def test_parity_tool_passes_in_float64_on_the_layer_records():
    files = [f for f in GSA_FILES if "_gt_" not in f.name]
    result = _run_tool("--float64", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_parity_tool_fails_on_a_wrong_reference(tmp_path):
    record = torch.load(REFERENCE_DIR / "gsa_lift_local_sa_se2_4.pt", weights_only=True)
    record["output"] = record["output"] * 1.01  # a 1% error must be caught
    bad = tmp_path / "bad.pt"
    torch.save(record, bad)
    record["module"] = "NoSuchLayer"
    unknown = tmp_path / "unknown.pt"
    torch.save(record, unknown)
    result = _run_tool(REFERENCE_DIR / "gsa_lift_local_sa_se2_4.pt", bad, unknown)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 1
    assert lines[0].endswith("PASS") and lines[1].endswith("FAIL")
    assert "FAIL" in lines[2] and "NoSuchLayer" in lines[2]


# Records of every module kind with groups, sizes and options that ../shared does not use.
NEW_RECORDS = {
    "group_local_e2_4": ("GroupLocalSelfAttention", (1, 5, 4, 6, 7), {
        "group": "E2", "num_elements": 4, "in_channels": 5, "mid_channels": 9, "out_channels": 3,
        "num_heads": 3, "patch_size": 5, "attention_dropout_rate": 0.1}),
    "lift_se2_12": ("LiftSelfAttention", (1, 2, 5, 4), {
        "group": "SE2", "num_elements": 12, "in_channels": 2, "mid_channels": 4, "out_channels": 3,
        "num_heads": 1, "max_pos_embedding": 5, "attention_dropout_rate": 0.0}),
    "block_global_e2_2": ("TransformerBlock", (2, 6, 2, 5, 5), {
        "attention_layer": {"module": "GroupSelfAttention", "kwargs": {
            "group": "E2", "num_elements": 2, "in_channels": 6, "mid_channels": 3, "out_channels": 6,
            "num_heads": 2, "max_pos_embedding": 5, "attention_dropout_rate": 0.0}},
        "in_channels": 6, "out_channels": 6, "norm_type": "BatchNorm", "activation_function": "Swish",
        "crop_size": 0, "value_dropout_rate": 0.0, "dim_mlp_conv": 3}),
    "gt_global_e2_16": ("GroupTransformer", (1, 2, 6, 6), {
        "group": "E2", "num_elements": 16, "in_channels": 2, "num_channels": 8, "num_heads": 1,
        "norm_type": "BatchNorm", "block_sizes": [1], "expansion_per_block": [2], "crop_per_layer": [1],
        "normalize_between_layers": True, "maxpool_after_last_block": True,
        "dropout_rate_after_maxpooling": 0.2, "image_size": 6, "patch_size": None,
        "activation_function": "ReLU", "attention_dropout_rate": 0.1, "value_dropout_rate": 0.1,
        "input_dropout_rate": 0.1, "num_classes": 3, "whitening_scale": 1.0}),
    "cnn_bias": ("CNN", (2, 2, 28, 28), {
        "in_channels": 2, "num_channels": 4, "bn_epsilon": 1e-3, "dropout_rate": 0.0, "use_bias": True}),
}


def _write_record(directory, case, module_name, input_shape, kwargs):
    """A record in the format of ../shared/reference, made with this project's modules."""
    from g_selfatt_models.compat.gsa_records import build_from_record

    record = {"case": case, "origin": "g_selfatt", "module": module_name, "kwargs": kwargs}
    module = build_from_record(record)
    with torch.no_grad():
        for param in module.parameters():  # constant initial values (norm weights, zero biases) made generic
            param.add_(0.1 * torch.randn_like(param))
    module.eval()
    record["state_dict"] = module.state_dict()
    record["input"] = torch.randn(input_shape)
    with torch.no_grad():
        record["output"] = module(record["input"])
        record["output_float64"] = module.double()(record["input"].double())
    path = directory / f"{case}.pt"
    torch.save(record, path)
    return path


def test_parity_tool_handles_new_records(tmp_path):
    """The tool rebuilds any record of the format (every module kind), not just the shipped ones."""
    paths = [_write_record(tmp_path, case, *spec) for case, spec in NEW_RECORDS.items()]
    for flags in ([], ["--float64"]):
        result = _run_tool(*flags, *paths)
        lines = result.stdout.strip().splitlines()
        assert result.returncode == 0 and len(lines) == len(paths), result.stdout + result.stderr
        assert all(line.startswith(str(path)) and line.endswith("PASS") for line, path in zip(lines, paths))


def _original_layer_record():
    return torch.load(REFERENCE_DIR / "gsa_group_sa_e2_8.pt", weights_only=True)


def _fresh_group_layer():
    from g_selfatt.groups import E2
    from g_selfatt.nn import GroupSelfAttention

    return GroupSelfAttention(E2(8), 4, 6, 8, 2, 6, 0.0)  # the record's layer, default (equivariant) index


def test_an_original_state_dict_loads_with_the_original_index_and_says_so(caplog):
    from g_selfatt.groups import E2
    from g_selfatt.nn.attention import original_group_indices

    record = _original_layer_record()
    layer = _fresh_group_layer()
    with caplog.at_level("WARNING"):
        layer.load_state_dict(record["state_dict"], strict=True)
    assert layer.group_axis_index == "original"
    assert torch.equal(layer.g_indices, original_group_indices(E2(8)))
    notices = [r.getMessage() for r in caplog.records if "group-axis index" in r.getMessage()]
    assert len(notices) == 1 and "set_group_axis_index(model, 'relative')" in notices[0]
    # It reproduces the original's output (float64 record, the reference README's float64 tolerance).
    with torch.no_grad():
        out = layer.double().eval()(record["input"].double())
    expected = record["output_float64"]
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(out, expected, rtol=1e-7, atol=1e-7 * scale)


def test_a_state_dict_of_this_project_or_a_vouched_load_keeps_the_index(caplog):
    from g_selfatt.groups import E2
    from g_selfatt.nn import recorded_group_axis_index, set_group_axis_index
    from g_selfatt.nn.attention import relative_group_indices

    record = _original_layer_record()
    with caplog.at_level("WARNING"):
        saved_here = _fresh_group_layer().state_dict()  # records version 2
        layer = _fresh_group_layer()
        layer.load_state_dict(saved_here, strict=True)
        assert layer.group_axis_index == "relative"
        with recorded_group_axis_index():  # the runner's way: it built the model with the recorded index
            layer.load_state_dict(record["state_dict"], strict=True)
        assert layer.group_axis_index == "relative"
    assert not [r for r in caplog.records if "group-axis index" in r.getMessage()]
    original = _fresh_group_layer()
    original.load_state_dict(record["state_dict"])
    set_group_axis_index(original, "relative")
    assert torch.equal(original.g_indices, relative_group_indices(E2(8)))
    assert torch.equal(original.query.weight, record["state_dict"]["query.weight"])


def test_a_gsa_net_built_by_hand_loads_original_weights_with_the_original_index():
    # The originals' own code builds GroupTransformer(...) itself and calls load_state_dict.
    import g_selfatt_models as models

    model = models.create_model("p4sa", dataset="rotDigits")
    weights = {key: value.clone() for key, value in model.state_dict().items()}  # a plain dict: no versions
    model.load_state_dict(weights)
    assert model.group_axis_index == "original"
    assert models.create_model("p4sa", dataset="rotDigits").group_axis_index == "relative"  # built fresh


def test_derived_buffers_are_not_saved_but_older_files_holding_them_load():
    from g_selfatt.groups import E2
    from g_selfatt.nn import GroupLocalSelfAttention, recorded_group_axis_index
    from g_selfatt.compat.state_dict import DERIVED_BUFFERS, derived_state_shapes

    layer = GroupLocalSelfAttention(E2(8), 4, 6, 8, 2, 3, 0.0)
    assert not set(DERIVED_BUFFERS) & set(layer.state_dict())
    assert set(derived_state_shapes(torch.nn.Sequential(layer))) == {f"0.{name}" for name in DERIVED_BUFFERS}
    older = {**layer.state_dict(), **{name: torch.zeros(shape) for name, shape in layer.derived_buffer_shapes().items()}}
    fresh = GroupLocalSelfAttention(E2(8), 4, 6, 8, 2, 3, 0.0)
    with recorded_group_axis_index():  # as the runner loads its older files
        fresh.load_state_dict(older, strict=True)
    assert torch.equal(fresh.g_indices, layer.g_indices)  # derived again, not the zeros of the file
    wrong = dict(older, row_indices=torch.zeros(8, 5, 5))  # saved by a layer of patch size 5
    with pytest.raises(RuntimeError, match="size mismatch for row_indices"):
        fresh.load_state_dict(wrong)


def test_strict_loading_reports_shape_mismatch():
    from g_selfatt.groups import SE2
    from g_selfatt.nn import GroupSelfAttention

    state = torch.load(REFERENCE_DIR / "gsa_group_sa_se2_4.pt", weights_only=True)["state_dict"]
    layer = GroupSelfAttention(SE2(4), 4, 6, 8, 2, 7, 0.0)  # max_pos 7 instead of 6
    with pytest.raises(RuntimeError, match="row_indices"):
        layer.load_state_dict(state)
