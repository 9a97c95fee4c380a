#!/usr/bin/env python
"""Checks this project against reference records of the original implementations.

Usage::

    python tools/check_parity.py FILE [FILE ...] [--float64]

Each FILE is a ``torch.save``d record (format: ``shared/reference/README.md``).
The module is rebuilt from the recorded class name and arguments, the recorded
state_dict is loaded strictly, the recorded input is run in eval mode, and one
line is printed per file::

    <path> max_abs_err=<x> max_rel_err=<y> PASS|FAIL

The tolerance is the README's: ``|out - ref| <= atol + rtol |ref|`` with
``rtol = 1e-4`` and ``atol = 5e-5 max(1, max|ref|)`` in float32; with
``--float64`` the module and input are cast to float64 and compared with
``output_float64`` at ``rtol = 1e-7``, ``atol = 1e-7 max(1, max|ref|)``.
The exit status is 0 only if every file passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from g_selfatt_models.compat import attgconv_records, gsa_records

TOLERANCES = {"float32": (1e-4, 5e-5), "float64": (1e-7, 1e-7)}


@dataclasses.dataclass
class ParityResult:
    path: str
    max_abs_err: float
    max_rel_err: float
    passed: bool
    error: str = ""

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        text = f"{self.path} max_abs_err={self.max_abs_err:.3e} max_rel_err={self.max_rel_err:.3e} {status}"
        return text + (f" ({self.error})" if self.error else "")


def _origins() -> Dict[str, Tuple[Callable[..., nn.Module], Callable[..., Dict[str, Any]]]]:
    """``origin -> (build_from_record, convert_state_dict)``."""
    return {"g_selfatt": (gsa_records.build_from_record, gsa_records.convert_state_dict),
            "att_gconvs": (attgconv_records.build_from_record, attgconv_records.convert_state_dict)}


def load_record(path: str) -> Mapping[str, Any]:
    """Reads a record with the safe unpickler."""
    return torch.load(path, map_location="cpu", weights_only=True)


def build_loaded_module(record: Mapping[str, Any]) -> nn.Module:
    """Rebuilds the recorded module, loads its state_dict strictly, sets eval mode."""
    origins = _origins()
    origin = record.get("origin")
    if origin not in origins:
        raise ValueError(f"Unknown record origin {origin!r}; expected one of {sorted(origins)}.")
    build, convert = origins[origin]
    module = build(record)
    module.load_state_dict(convert(record, record["state_dict"]), strict=True)
    return module.eval()


def compare(output: torch.Tensor, reference: torch.Tensor, dtype: str) -> Tuple[float, float, bool]:
    """Maximum absolute and relative errors and the README's pass criterion."""
    rtol, atol_scale = TOLERANCES[dtype]
    if output.shape != reference.shape:
        return float("inf"), float("inf"), False
    output, reference = output.detach().to(torch.float64), reference.to(torch.float64)
    atol = atol_scale * max(1.0, reference.abs().max().item())
    diff = (output - reference).abs()
    passed = bool((diff <= atol + rtol * reference.abs()).all())
    relative = diff.max().item() / max(reference.abs().max().item(), 1e-30)
    return diff.max().item(), relative, passed


def check_file(path: str, float64: bool = False) -> ParityResult:
    """Runs one record and compares with its recorded output."""
    try:
        record = load_record(path)
        module = build_loaded_module(record)
        inputs, reference, dtype = record["input"], record["output"], "float32"
        if float64:
            module, inputs, reference, dtype = module.double(), inputs.double(), record["output_float64"], "float64"
        with torch.no_grad():
            output = module(inputs)
    except Exception as error:  # one bad file must not stop the others
        return ParityResult(path, float("inf"), float("inf"), False, f"{type(error).__name__}: {error}")
    return ParityResult(path, *compare(output, reference, dtype))


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="reference records (.pt)")
    parser.add_argument("--float64", action="store_true", help="compare in float64 with output_float64")
    args = parser.parse_args(argv)
    results: List[ParityResult] = []
    for path in args.files:
        result = check_file(str(Path(path)), args.float64)
        print(result.line(), flush=True)
        results.append(result)
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
