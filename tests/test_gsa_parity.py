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


def test_parity_tool_handles_new_shapes(tmp_path):
    """The tool rebuilds any record of the format, not just the shipped ones."""
    from g_selfatt.compat import build_from_record

    record = {"case": "new", "origin": "g_selfatt", "module": "GroupLocalSelfAttention",
              "kwargs": {"group": "E2", "num_elements": 4, "in_channels": 5, "mid_channels": 9,
                         "out_channels": 3, "num_heads": 3, "patch_size": 5, "attention_dropout_rate": 0.0}}
    module = build_from_record(record).eval()
    record["state_dict"] = module.state_dict()
    record["input"] = torch.randn(1, 5, 4, 6, 7)
    with torch.no_grad():
        record["output"] = module(record["input"])
    torch.save(record, tmp_path / "new.pt")
    assert _run_tool(tmp_path / "new.pt").returncode == 0


def test_loading_an_original_checkpoint_keeps_the_equivariant_group_index():
    from g_selfatt.groups import E2
    from g_selfatt.nn import GroupSelfAttention
    from g_selfatt.nn.attention import original_group_indices, relative_group_indices

    state = torch.load(REFERENCE_DIR / "gsa_group_sa_e2_8.pt", weights_only=True)["state_dict"]
    layer = GroupSelfAttention(E2(8), 4, 6, 8, 2, 6, 0.0)
    layer.load_state_dict(state, strict=True)
    assert torch.equal(layer.g_indices, relative_group_indices(E2(8)))
    assert not torch.equal(layer.g_indices, original_group_indices(E2(8)))
    assert torch.equal(layer.query.weight, state["query.weight"])


def test_strict_loading_reports_shape_mismatch():
    from g_selfatt.groups import SE2
    from g_selfatt.nn import GroupSelfAttention

    state = torch.load(REFERENCE_DIR / "gsa_group_sa_se2_4.pt", weights_only=True)["state_dict"]
    layer = GroupSelfAttention(SE2(4), 4, 6, 8, 2, 7, 0.0)  # max_pos 7 instead of 6
    with pytest.raises(RuntimeError, match="row_indices"):
        layer.load_state_dict(state)
