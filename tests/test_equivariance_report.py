"""tools/equivariance_report.py: both tables, the CSV of the curves and the plot."""

from __future__ import annotations

import csv
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
import equivariance_report  # noqa: E402


def rows_of(markdown: str, section: int):
    """The rows of the table of a ``## `` section as dicts."""
    _title, _blank, header, _rule, *lines = markdown.split("## ")[section + 1].strip().splitlines()

    def cells(line):
        return [cell.strip() for cell in line.split("|")[1:-1]]

    return [dict(zip(cells(header), cells(line))) for line in lines]


def test_report_measures_every_layer_kind(tmp_path):
    text = equivariance_report.report(["z2", "p4"], 90.0, tmp_path)
    exact, angles = rows_of(text, 0), rows_of(text, 1)
    kinds = set(equivariance_report.KINDS)
    assert {row["layer"] for row in exact} == kinds and {row["layer"] for row in angles} == kinds
    for row in exact:
        if row["group_axis_index"] == "relative":
            assert float(row["float32"]) < 1e-5 and float(row["float64"]) < 1e-10, row
    originals = [row for row in exact if row["group_axis_index"] == "original"]
    assert {row["group"] for row in originals} == {"p4"}  # on z2 both indices are the same
    assert all(float(row["float64"]) > 1e-3 for row in originals)
    p4 = [row for row in angles if row["group"] == "p4" and row["group_axis_index"] == "relative"]
    assert all(float(row["90-degree multiples"]) < 1e-12 for row in p4)
    assert (tmp_path / "equivariance_report.md").read_text() == text
    with open(tmp_path / "equivariance_angles.csv") as handle:
        curve_rows = list(csv.DictReader(handle))
    assert {float(row["angle_deg"]) for row in curve_rows} == {0.0, 90.0, 180.0, 270.0, 360.0}
    assert (tmp_path / "equivariance_angles.png").stat().st_size > 10_000


def test_angle_step_must_divide_360(capsys):
    with pytest.raises(SystemExit):
        equivariance_report.main(["--angle-step", "7"])
    assert "must divide 360" in capsys.readouterr().err
