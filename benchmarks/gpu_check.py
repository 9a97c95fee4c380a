#!/usr/bin/env python
"""One script for the minutes a GPU machine is at hand: equality, speed, memory, largest batch, AMP steps.

Usage::

    python benchmarks/gpu_check.py OUT_DIR [--budget-s 360] [--parts equality,benchmark,...]
                                   [--impls efficient,flex,triton] [--wheels DIR]

Runs on a CUDA machine, in this order, each part within what is left of ``--budget-s``:

* ``environment``: GPU, torch, triton, CUDA capability;
* ``equality``: every implementation (and ``reference``) on CUDA against the float64 reference
  on the same GPU, for the four layer kinds, in float32 (bound: ``4 eps sqrt(n) scale``, as the
  test suite derives it) and under bfloat16 autocast (bound: ``5e-2 scale``, eight bits); the
  output and every parameter gradient;
* ``benchmark``: cases (a)-(d) of ``benchmarks/attention.py`` with every implementation
  (time, peak memory, time over the cost-model floor);
* ``max_batch``: the largest batch of the global rotMNIST p4sa (case e) that trains, per
  implementation;
* ``main_amp``: ``main.py`` for a few steps of rotDigits with ``--config.amp=bf16`` (needs
  ml_collections and absl-py: installed from ``--wheels DIR`` when the machine lacks them);
* ``projection``: the paper's 350-epoch CIFAR10 run (45,000 training images, batch 24), projected
  from case (c)'s step time for each implementation, with the speed and memory ratios of
  ``triton`` over the original formulation (``reference``) and over ``efficient``.

After every part it writes ``OUT_DIR/gpu_check.json`` (all records) and ``OUT_DIR/gpu_check.md``
(the tables), each to a temporary file renamed into place, so a machine taken away mid-run
still leaves what was measured. A part that fails records its error and the next one runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PARTS = ("environment", "equality", "benchmark", "max_batch", "main_amp", "projection")
IMPLS = ("efficient", "flex", "triton")
BENCHMARK_CASES = ("a", "b", "c", "d")
KINDS = ("lift", "lift_local", "group", "group_local")
# The paper's CIFAR10 run (docs: 350 epochs at batch 24; 50,000 images less 5,000 for validation).
CIFAR10_EPOCHS = 350
CIFAR10_TRAIN_IMAGES = 45_000
CIFAR10_BATCH = 24
ROUND_OFF_FACTOR = 4  # as in the test suite's float32 bound
BFLOAT16_BOUND = 5e-2  # bfloat16 keeps eight bits
# Share of the remaining budget each part may take (the rest is kept for the parts after it).
PART_SHARE = {"equality": 0.2, "benchmark": 0.6, "max_batch": 0.5, "main_amp": 0.8, "projection": 1.0}


class Budget:
    """Seconds left of the script's budget, shared out between the parts."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.deadline = clock() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def for_part(self, part: str) -> float:
        return self.left() * PART_SHARE.get(part, 1.0)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for gpu_check.json and gpu_check.md (created)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="wall-clock seconds for all parts (default 360)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--wheels", type=Path, help="folder of wheels (ml_collections, absl-py) for main_amp")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu" only for the tests
    args = parser.parse_args(argv)
    args.parts = _subset(parser, "part", args.parts, PARTS)
    args.impls = _subset(parser, "implementation", args.impls, IMPLS)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    return args


def _subset(parser: argparse.ArgumentParser, what: str, text: str, valid: Sequence[str]) -> List[str]:
    chosen = [name for name in text.split(",") if name]
    for name in chosen:
        if name not in valid:
            parser.error(f"unknown {what} {name!r}; choose from {','.join(valid)}")
    return chosen


# ---------------------------------------------------------------- report
def write_report(out_dir: Path, report: Dict[str, object]) -> None:
    """Writes ``gpu_check.json`` and ``gpu_check.md`` into ``out_dir`` (each: temporary file, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(report, indent=1) + "\n"),
                       ("gpu_check.md", markdown(report))):
        handle, temporary = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, out_dir / name)


def markdown(report: Dict[str, object]) -> str:
    """The report's tables: environment, equality, benchmark, largest batch, main.py and projection."""
    lines = ["# GPU check", ""]
    environment = report.get("environment", {})
    lines += [f"- {key}: {value}" for key, value in environment.items()] + [""]
    if report.get("equality"):
        rows = [[r["impl"], r["kind"], r["precision"], "", "", f"failed to run: {r['error']}"] if "error" in r else
                [r["impl"], r["kind"], r["precision"], f"{r['output_ratio']:.3g}", f"{r['gradient_ratio']:.3g}",
                 "pass" if r["passed"] else "**FAIL**"] for r in report["equality"]]
        lines += _table("Equality with the float64 reference", ["implementation", "layer", "precision",
                        "output error / bound", "worst gradient error / bound", "result"], rows)
    if report.get("benchmark"):
        rows = []
        for r in report["benchmark"]:
            if "stopped" in r:
                rows.append(["", "", f"stopped: {r['stopped']}", "", ""])
            elif "skipped" in r:
                rows.append([f"({r['case']}) {r.get('description', '')}", r["impl"], f"skipped: {r['skipped']}", "", ""])
            elif "case" in r and "impl" in r:
                rows.append([f"({r['case']}) {r.get('description', '')}", r["impl"], _number(r.get("time_s"), " s"),
                             _number(r.get("peak_memory_mb"), " MB"), _number(r.get("time_over_floor"))])
        lines += _table("Cases of benchmarks/attention.py",
                        ["case", "implementation", "time", "peak memory", "time / floor"], rows)
    if report.get("max_batch"):
        lines += _table("Largest batch of the global rotMNIST p4sa that trains", ["implementation", "batch"],
                        [[r["impl"], r.get("max_batch", r.get("error", ""))] for r in report["max_batch"]])
    if report.get("main_amp"):
        amp = report["main_amp"]
        lines += ["## main.py with --config.amp=bf16", "", f"- {amp.get('result', amp.get('skipped', ''))}", ""]
    if report.get("projection"):
        runs = report["projection"].get("runs", {}).items()
        lines += _table("Projection of the paper's 350-epoch CIFAR10 run (from case c)",
                        ["implementation", "step", "projected run"],
                        [[impl, _number(r["step_s"], " s"), f"{r['hours']:.1f} h ({r['hours'] / 24:.2f} days)"]
                         for impl, r in runs])
        lines += [f"- {name}: {value}" for name, value in report["projection"].get("ratios", {}).items()] + [""]
    for part, error in report.get("errors", {}).items():
        lines.append(f"- part {part} failed: {error}")
    return "\n".join(lines).rstrip() + "\n"


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    """A markdown section: ``## title`` and a table with ``columns``, one line per row."""
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""]


def _number(value, unit: str = "") -> str:
    return "" if value is None else f"{value:.4g}{unit}"


# ---------------------------------------------------------------- parts
def environment(device: str) -> Dict[str, object]:
    import torch

    found = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if importlib.util.find_spec("triton"):
        import triton

        found["triton"] = triton.__version__
    if device == "cuda" and torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
        found["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        found["memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    return found


def equality(device_name: str, impls: Sequence[str], budget_s: float) -> List[Dict[str, object]]:
    """Each implementation's float32 and bfloat16-autocast errors against float64 on ``device_name``."""
    import torch

    from g_selfatt.groups import get_group
    from g_selfatt.nn import GroupLocalSelfAttention, GroupSelfAttention, LiftLocalSelfAttention, LiftSelfAttention

    classes = {"lift": (LiftSelfAttention, True), "lift_local": (LiftLocalSelfAttention, True),
               "group": (GroupSelfAttention, False), "group_local": (GroupLocalSelfAttention, False)}
    device = torch.device(device_name)
    group, side, batch, heads = get_group("p4"), 9, 2, 2
    deadline = time.monotonic() + budget_s
    exact: Dict[str, object] = {}  # kind -> the float64 reference layer, its input and results (or the error)
    records = []
    for impl in ("reference",) + tuple(impls):
        for kind in KINDS:
            cls, lifting = classes[kind]
            extent = 5 if "local" in kind else side
            for precision in ("float32", "bf16"):
                if time.monotonic() > deadline:
                    return records
                record = {"impl": impl, "kind": kind, "precision": precision}
                try:
                    if kind not in exact:
                        torch.manual_seed(0)
                        layer = cls(group, 3, 6, 5, heads, extent, 0.0, attention_impl="reference").to(device).double()
                        shape = (batch, 3, side, side) if lifting else (batch, 3, group.num_elements, side, side)
                        exact[kind] = _Exact(layer, torch.randn(shape, device=device, dtype=torch.float64))
                    layer = cls(group, 3, 6, 5, heads, extent, 0.0, attention_impl=impl).to(device)
                    layer.load_state_dict(exact[kind].layer.state_dict())  # copied into float32
                    keys = (extent ** 2 if "local" in kind else side ** 2) * (1 if lifting else group.num_elements)
                    entries = batch * heads * group.num_elements * side * side * keys
                    record.update(exact[kind].compare(layer, precision, entries))
                except Exception as error:  # recorded, and the next one runs
                    record["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                records.append(record)
    return records


class _Exact:
    """A float64 reference layer, its input, a gradient of its output, and its output and gradients."""

    def __init__(self, layer, x):
        import torch

        self.layer, self.x = layer, x
        self.grad_out = torch.randn(layer(x).shape, device=x.device, dtype=torch.float64)
        self.output, self.grads = self.run(layer, x, autocast=False)

    def run(self, module, x, autocast: bool):
        """Output and gradients (input first, then every parameter) of ``module`` at ``x``, in float64."""
        import torch

        x = x.clone().requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = module(x)
        grads = torch.autograd.grad(out.float(), [x] + list(module.parameters()), self.grad_out.to(out.dtype))
        return out.double(), [g.double() for g in grads]

    def compare(self, layer, precision: str, entries: int) -> Dict[str, object]:
        """Errors of ``layer`` (float32 or bf16 autocast) over the float64 results, each over its bound."""
        import torch

        actual, actual_grads = self.run(layer, self.x.float(), autocast=precision == "bf16")
        eps = torch.finfo(torch.float32).eps
        relative = BFLOAT16_BOUND if precision == "bf16" else ROUND_OFF_FACTOR * eps * math.sqrt(entries)
        scale = max(g.abs().max().item() for g in self.grads) or 1.0
        output_ratio = (actual - self.output).abs().max().item() / (relative * self.output.abs().max().item())
        gradient_ratio = max((a - e).abs().max().item() for a, e in zip(actual_grads, self.grads)) / (relative * scale)
        return {"output_ratio": output_ratio, "gradient_ratio": gradient_ratio,
                "passed": output_ratio <= 1.0 and gradient_ratio <= 1.0}


def _json_lines(text: str) -> List[Dict[str, object]]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def _run(command: List[str], timeout_s: float, env: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """Runs ``command``; its JSON lines, and why it stopped if it did not finish."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, timeout_s), cwd=REPO_ROOT,
                              env=env)
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return {"records": _json_lines(out), "stopped": f"cut at {timeout_s:.0f} s (the budget)"}
    result = {"records": _json_lines(done.stdout)}
    if done.returncode:
        result["stopped"] = f"exit {done.returncode}: {(done.stderr or '').strip().splitlines()[-1:]}"
    return result


def benchmark(device: str, impls: Sequence[str], budget_s: float) -> List[Dict[str, object]]:
    """The records of ``benchmarks/attention.py`` (one per case and implementation), and why it stopped early."""
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "attention.py"), "--device", device, "--repeats", "3",
               "--cases", ",".join(BENCHMARK_CASES), "--impls", ",".join(("reference",) + tuple(impls))]
    result = _run(command, budget_s)
    return result["records"] + ([{"stopped": result["stopped"]}] if "stopped" in result else [])


def max_batch(device: str, impls: Sequence[str], budget_s: float) -> List[Dict[str, object]]:
    records = []
    deadline = time.monotonic() + budget_s
    for impl in impls:
        command = [sys.executable, str(REPO_ROOT / "benchmarks" / "attention.py"), "--worker", "--max-batch",
                   "--cases", "e", "--impls", impl, "--device", device]
        result = _run(command, max(1.0, (deadline - time.monotonic()) / max(1, len(impls) - len(records))))
        records += result["records"] or [{"impl": impl, "error": result.get("stopped", "no result")}]
    return records


def main_amp_flags(device: str, out_dir: Path) -> List[str]:
    """The ``main.py`` flags of the ``main_amp`` part: a few bfloat16-autocast steps of p4sa on rotDigits."""
    return ["--config.dataset=rotDigits", "--config.model=p4sa", f"--config.device={device}", "--config.amp=bf16",
            "--config.epochs=1", "--config.max_examples=256", "--config.batch_size=32", "--config.rotation_angles=0",
            "--config.overwrite=True", f"--config.path={out_dir / 'main_amp' / 'model.pt'}"]


def main_amp(device: str, wheels: Optional[Path], budget_s: float, out_dir: Path) -> Dict[str, object]:
    env = dict(os.environ)
    missing = [name for name in ("ml_collections", "absl") if importlib.util.find_spec(name) is None]
    if missing and wheels is None:
        return {"skipped": f"{', '.join(missing)} not installed here; pass --wheels DIR with their wheels"}
    if missing:
        target = out_dir / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
                        "--target", str(target), "ml_collections", "absl-py"], check=True, timeout=120)
        env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(REPO_ROOT / "main.py"), *main_amp_flags(device, out_dir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, budget_s), cwd=REPO_ROOT,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"result": f"cut at {budget_s:.0f} s (the budget)"}
    log = done.stderr.splitlines()
    chosen = [line.split("] ", 1)[-1] for line in log if "Attention implementation of each layer" in line]
    accuracy = [line.split("] ", 1)[-1] for line in log if "Test accuracy" in line]
    return {"returncode": done.returncode, "impls": chosen, "result": "; ".join(chosen + accuracy) or log[-1:]}


def projection(benchmark_records: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """The paper's CIFAR10 run projected from case (c)'s step times, and triton's ratios."""
    steps = CIFAR10_EPOCHS * math.ceil(CIFAR10_TRAIN_IMAGES / CIFAR10_BATCH)
    case_c = {r["impl"]: r for r in benchmark_records if r.get("case") == "c" and r.get("time_s")}
    runs = {impl: {"step_s": r["time_s"], "hours": steps * r["time_s"] / 3600} for impl, r in case_c.items()}
    ratios = {}
    triton = case_c.get("triton")
    for other in ("reference", "efficient"):
        if triton and other in case_c:
            ratios[f"{other} time / triton time"] = round(case_c[other]["time_s"] / triton["time_s"], 2)
            if case_c[other].get("peak_memory_mb") and triton.get("peak_memory_mb"):
                ratios[f"{other} memory / triton memory"] = round(
                    case_c[other]["peak_memory_mb"] / triton["peak_memory_mb"], 2)
    return {"steps": steps, "runs": runs, "ratios": ratios}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    report: Dict[str, object] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": args.budget_s,
                                 "errors": {}}
    parts = {
        "environment": lambda: environment(args.device),
        "equality": lambda: equality(args.device, args.impls, budget.for_part("equality")),
        "benchmark": lambda: benchmark(args.device, args.impls, budget.for_part("benchmark")),
        "max_batch": lambda: max_batch(args.device, args.impls, budget.for_part("max_batch")),
        "main_amp": lambda: main_amp(args.device, args.wheels, budget.for_part("main_amp"), args.out_dir),
        "projection": lambda: projection(report.get("benchmark", [])),
    }
    for part in PARTS:
        if part not in args.parts:
            continue
        if part != "projection" and budget.left() < 1:
            report["errors"][part] = "not run: the budget was spent"
            continue
        try:
            report[part] = parts[part]()
        except Exception as error:  # recorded; the next part runs
            report["errors"][part] = f"{type(error).__name__}: {error}"
        write_report(args.out_dir, report)
    return report


if __name__ == "__main__":
    main()
