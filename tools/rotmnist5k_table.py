#!/usr/bin/env python
"""Trains every model of the rotMNIST5k results table and writes the table.

Usage::

    python tools/rotmnist5k_table.py [--models z2cnn p4cnn ...] [--seeds 0 1 2]
                                     [--save-dir saved/rotMNIST5k_table_ep80_rot]
                                     [--output-dir runs/rotMNIST5k/ep80_rot]

Every run is one ``main.py`` process (``--config.dataset=rotMNIST5k --config.model=M
--config.seed=S``) under the one protocol of the dataset (:data:`g_selfatt_models.protocols.ROTMNIST5K`:
the same optimiser, learning rate, batch, epochs, schedule and augmentation for every model; the
epoch is selected on the validation part), with the test accuracy measured at every 15 degrees of
rotation (``--config.rotation_angles=24``): each test digit rotated once from its upright source,
and, for the blur columns, the rotated test digit rotated again (see :mod:`tester`). A run that
has a row in ``runs.csv`` or a test report is not trained again, and ``runs.csv``, the table and
the figure are rewritten after every run, so an interrupted table (even one whose checkpoints are
gone) goes on where it stopped, and a run cut short goes on from its last checkpoint
(``--config.resume=True``); ``--overwrite`` retrains. A row or a finished run is reused only if it is
the run the table would train now (the same run identity, :func:`runner.paths.run_identity`):
after a default changed, or under other ``--config`` flags, the tool stops with an error that
names the difference instead of mixing two configurations in one table. ``runs.csv`` is read again before every
write, so two table processes (say one per core, ``--models`` split between them) can share one
``--output-dir``.

Writes to ``--output-dir``:

* ``runs.csv``: one row per run (model, seed, test accuracy, accuracy at every angle
  (``accuracy_<a>deg``) and, off the 90-degree grid, with the test digits rotated a second time
  (``blur_<a>deg``), parameters, seconds of the fastest training epoch (the least disturbed by
  other work), the run's ``--config.num_threads`` and ``machine`` (the CPU, or the machines, it
  trained on; empty for runs of versions that did not record it), best epoch, checkpoint, and
  ``run``: the hash of the run's identity, which rows written before that column lack);
* ``table.md``: per model, mean and standard deviation over the seeds of the test accuracy, the
  accuracy on the test set rotated by 90/180/270 degrees (exact rotations of the pixel grid) and
  by the other 15-degree steps (each digit interpolated once, from its source), the lowest
  accuracy over all angles, the accuracy at the other 15-degree steps when the rotated test digit
  is rotated again (interpolated twice: blur), the parameter count and the seconds per epoch
  for each thread count and machine (machines numbered in a line below the table); printed too;
* ``comparisons.md``: the papers' orderings the table can test (:data:`PAPER_ORDERINGS`: equivariance
  helps CNNs and self-attention, attention helps the P4CNN, finer rotation groups help GSA-Nets),
  each with both models' test accuracies, the difference of the means, Welch's t (the difference
  over its standard error) and a verdict (``reproduced`` where the means are :data:`SEPARATED`
  standard errors apart in the paper's direction, ``reversed`` where as far apart the other way,
  otherwise within the noise of the seeds), and whether the best GSA-Net (the highest mean
  best-validation accuracy) reaches p4cnn's mean test accuracy minus one standard deviation (the
  mark of GSA-Nets "on a par with G-CNNs"); a comparison needs
  two seeds of each model, printed too;
* ``rotation.png``: test accuracy against the rotation angle, mean over the seeds, per model
  (solid: rotated once; dashed: rotated twice).

Extra ``--config.<field>=<value>`` arguments are passed to every run (e.g.
``--config.max_examples=64 --config.epochs=1`` for a smoke test).

``--ship`` then copies the best GSA-Net and the best attentive G-CNN of the table into
``saved/pretrained/`` under the names the runner derives from their configuration (so
``--config.save_dir=saved/pretrained --config.pretrained=True`` finds them, and a run of the same
configuration trains into ``saved/`` beside them) and records each in ``saved/manifest.json``
with its seed, sha256, flags, validation and test accuracy (the whole configuration is in the
file). "Best" is decided on the validation part only: the model with the highest mean
best-validation accuracy over the seeds, and its seed with the highest best-validation accuracy
among those whose checkpoint is here. A run shipped already is not copied again.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import pathlib
import shutil
import statistics
import sys
from typing import Callable, Dict, List, Mapping, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# att_p4cnn (full attention) is left out: about 160 s per epoch on 2 cores, 30x p4cnn.
DATASET = "rotMNIST5k"
MODELS = ("z2cnn", "p4cnn", "f_att_p4cnn", "z2sa", "p4sa", "p8sa", "p12sa")
SEEDS = (0, 1, 2)
NUM_ANGLES = 24  # every 15 degrees
EXACT_ANGLES = (90.0, 180.0, 270.0)
NOT_MEASURED = "–"
SHIPPED_KINDS = ("GSA-Net", "attentive G-CNN")  # the best model of each is shipped
SHIPPED_FOLDER = "pretrained"  # under saved/
# The papers' orderings the table can test: (claim, the model expected above, the model below).
PAPER_ORDERINGS = (
    ("rotation equivariance helps CNNs", "p4cnn", "z2cnn"),
    ("rotation equivariance helps self-attention", "p4sa", "z2sa"),
    ("attention on top of the P4CNN helps", "f_att_p4cnn", "p4cnn"),
    ("p8 helps GSA-Nets more than p4", "p8sa", "p4sa"),
    ("p12 helps GSA-Nets more than p8", "p12sa", "p8sa"),
)
# GSA-Nets "on a par with G-CNNs": the best GSA-Net's mean test accuracy at least this model's mean
# minus one of its standard deviations (the mark). The best GSA-Net is chosen on the validation
# digits (as the one shipped), never on the test accuracies it is judged by.
PAR_MODEL = "p4cnn"
SEPARATED = 2.0  # standard errors of a difference of means that tell it from the seeds' noise
COMPARED_SEEDS = 2  # seeds a model needs for a comparison (a standard deviation)


def run_prefix(save_dir: pathlib.Path, model: str, seed: int) -> pathlib.Path:
    """The file prefix of one run's checkpoint and reports (its own folder per model and seed)."""
    return save_dir / f"{model}_seed{seed}" / "model"


class OtherRunError(Exception):
    """A file of the table (a row of ``runs.csv``, a finished run) holds another configuration's run."""


def run_flags(model: str, seed: int) -> List[str]:
    """The ``--config`` flags that make a run one of the table's (before its path, start flag and
    the extra flags given to the tool)."""
    return [f"--config.dataset={DATASET}", f"--config.model={model}", f"--config.seed={seed}",
            f"--config.rotation_angles={NUM_ANGLES}"]


def resolved_config(flags: Sequence[str]):
    """The configuration of ``main.py <flags>`` once the model's defaults are filled in, and the
    model's family (a value is read as a Python literal where it is one, else as text)."""
    import ast

    import config as config_file
    import main
    from runner.defaults import resolve_config

    config = config_file.get_config()
    for flag in flags:
        field, text = flag[len("--config."):].split("=", 1)
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        config[field] = float(value) if isinstance(config[field], float) else value
    architecture = main.data_spec(config).architecture
    spec = main.model_spec(config, architecture)
    resolve_config(config, spec.defaults.get(architecture, {}))
    return config, spec.family


def planned_identity(model: str, seed: int, extra: Sequence[str]) -> Dict[str, object]:
    """The run identity (:func:`runner.paths.run_identity`) of the table's run of ``model`` and ``seed``
    under today's defaults and ``extra``."""
    from runner import paths

    config, family = resolved_config([*run_flags(model, seed), *extra])
    return paths.run_identity(config, family)


def saved_identity(saved: Mapping[str, object], model: str) -> Dict[str, object]:
    """The run identity of a run of ``model`` from its checkpoint's contents, ``saved``."""
    import g_selfatt_models as models
    from runner import paths

    return paths.run_identity(saved["config"], models.get_model_spec(model).family)


def check_reused_run(prefix: pathlib.Path, model: str, seed: int, extra: Sequence[str]) -> None:
    """Checks that the finished run at ``prefix`` is the run the table would train now.

    Raises:
        OtherRunError: it was trained under another configuration (say, a default changed since).
    """
    from g_selfatt_models import checkpoints
    from runner import paths

    differences = paths.identity_differences(saved_identity(checkpoints.read(prefix.with_suffix(".pt")), model),
                                             planned_identity(model, seed, extra))
    if differences:
        raise OtherRunError(
            f"{prefix.with_suffix('.pt')} holds a run of {model} seed {seed} under another configuration "
            f"({'; '.join(differences)}); the table never reuses nor replaces it. Train this table into "
            "another folder with --save-dir DIR (and --output-dir DIR for its runs.csv).")


def check_recorded_row(row: Mapping[str, object], output_dir: pathlib.Path, extra: Sequence[str]) -> None:
    """Checks that a row of ``runs.csv`` records the run the table would train now (its ``run``
    column, the identity hash; rows written before that column are taken as they are).

    Raises:
        OtherRunError: the row is another configuration's run.
    """
    from runner import paths

    model, seed = str(row["model"]), int(row["seed"])
    planned = paths.identity_hash(planned_identity(model, seed, extra))
    if row.get("run") and row["run"] != planned:
        raise OtherRunError(
            f"{output_dir / 'runs.csv'} records {model} seed {seed} from run {row['run']}, another "
            f"configuration than this table's ({planned}: a default or a --config flag differs); the "
            "table never mixes the two. Write this table to another --output-dir (and --save-dir), or "
            "train the run again with --overwrite.")


def train_and_test(model: str, seed: int, save_dir: pathlib.Path, extra: Sequence[str], overwrite: bool) -> pathlib.Path:
    """Runs ``main.py`` for one model and seed unless its test report exists; returns the prefix.

    A run cut short (its resumable checkpoint exists) goes on from there unless ``overwrite``.

    Raises:
        OtherRunError: the finished run there has another configuration.
    """
    prefix = run_prefix(save_dir, model, seed)
    if prefix.with_suffix(".test.json").exists() and not overwrite:
        check_reused_run(prefix, model, seed, extra)
        print(f"[table] {model} seed {seed}: done before, reusing {prefix}.test.json", flush=True)
        return prefix
    from runner.paths import start_or_resume_flag
    from runner.signals import run_to_completion

    checkpoint = prefix.with_suffix(".pt")
    start = "--config.overwrite=True" if overwrite else start_or_resume_flag(checkpoint)
    command = [sys.executable, str(REPO_ROOT / "main.py"), *run_flags(model, seed), f"--config.path={checkpoint}",
               start, *extra]
    print("[table]", " ".join(command[1:]), flush=True)
    run_to_completion(command, REPO_ROOT, f"[table] {model} seed {seed}")
    return prefix


def read_run(model: str, seed: int, prefix: pathlib.Path) -> Dict[str, object]:
    """One row of ``runs.csv`` from the files a run wrote."""
    from g_selfatt_models import checkpoints
    from runner import machine, paths

    report = json.loads(prefix.with_suffix(".test.json").read_text())
    with open(f"{prefix}.rotation.csv") as handle:
        points = list(csv.DictReader(handle))
    curve = {float(row["angle_deg"]): float(row["accuracy"]) for row in points}
    blur = {float(row["angle_deg"]): float(row["blur_accuracy"]) for row in points if row.get("blur_accuracy")}
    with open(f"{prefix}.metrics.csv") as handle:
        history = list(csv.DictReader(handle))
    saved = checkpoints.read(prefix.with_suffix(".pt"))
    network = checkpoints.model_from(saved, prefix.with_suffix(".pt"))
    threads = saved["config"].get("num_threads")
    best = max(history, key=lambda row: float(row["best_val_accuracy"]))
    return {
        "model": model,
        "seed": seed,
        "test_accuracy": report["accuracy"],
        **{f"accuracy_{angle:g}deg": curve[angle] for angle in sorted(curve)},
        **{f"blur_{angle:g}deg": blur[angle] for angle in sorted(blur)},
        "parameters": sum(p.numel() for p in network.parameters()),
        "seconds_per_epoch": min(float(row["train_seconds"]) for row in history),
        "threads": threads or "",  # "": the runner's default, one per core
        "machine": machine.recorded(saved["train_state"]),
        "epochs": len(history),
        "best_val_accuracy": float(best["best_val_accuracy"]),
        "checkpoint": str(prefix.with_suffix(".pt").relative_to(REPO_ROOT)
                          if prefix.is_relative_to(REPO_ROOT) else prefix.with_suffix(".pt")),
        "run": paths.identity_hash(saved_identity(saved, model)),
    }


def _angles(row: Mapping[str, object], column: str) -> List[float]:
    """The angles of the ``<column><angle>deg`` cells of a ``runs.csv`` row that hold a value."""
    return [float(key[len(column):-len("deg")]) for key, value in row.items()
            if key.startswith(column) and key.endswith("deg") and value not in ("", None)]


def _mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` in percent (std over the seeds, n - 1); the value alone for one seed, whose
    spread is unknown rather than 0."""
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def _runs_by_model(rows: Sequence[Mapping[str, object]]) -> Dict[str, List[Mapping[str, object]]]:
    """The runs (one per seed) of each model, models in the order of ``rows``."""
    runs: Dict[str, List[Mapping[str, object]]] = {}
    for row in rows:
        runs.setdefault(str(row["model"]), []).append(row)
    return runs


def _counted(count: int, noun: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def machine_labels(rows: Sequence[Mapping[str, object]]) -> Dict[str, str]:
    """A short label (``M1``, ``M2``, ...) for each machine that ``rows`` recorded, in order of first
    appearance; runs that recorded none get none."""
    labels: Dict[str, str] = {}
    for row in rows:
        machine = str(row.get("machine") or "")
        if machine and machine not in labels:
            labels[machine] = f"M{len(labels) + 1}"
    return labels


def summary_rows(rows: Sequence[Mapping[str, object]]) -> List[Dict[str, str]]:
    """Per model (in table order): the seed statistics of every column of ``table.md``."""
    labels = machine_labels(rows)
    summary = []
    for model, runs in _runs_by_model(rows).items():
        angles = _angles(runs[0], "accuracy_")
        off_grid = [angle for angle in angles if angle % 90]

        def per_run(chosen: Sequence[float], column: str = "accuracy_") -> List[float]:
            return [statistics.mean(float(run[f"{column}{a:g}deg"]) for a in chosen) for run in runs]

        summary.append({
            "model": model,
            "seeds": str(len(runs)),
            "test accuracy %": _mean_std([float(run["test_accuracy"]) for run in runs]),
            "rotated 90/180/270 %": _mean_std(per_run(EXACT_ANGLES)),
            "rotated by other 15° steps %": _mean_std(per_run(off_grid)) if off_grid else NOT_MEASURED,
            "lowest over angles %": _mean_std([min(float(run[f"accuracy_{a:g}deg"]) for a in angles) for run in runs])
            if off_grid else NOT_MEASURED,
            "blur: other 15° steps, rotated twice %": _mean_std(per_run(_angles(runs[0], "blur_"), "blur_"))
            if _angles(runs[0], "blur_") else NOT_MEASURED,
            "parameters": f"{int(runs[0]['parameters']):,}",
            "s / epoch": _seconds_per_epoch(runs, labels),
        })
    return summary


def _seconds_per_epoch(runs: Sequence[Mapping[str, object]], labels: Mapping[str, str]) -> str:
    """Mean seconds per epoch of ``runs`` for each thread count and machine they recorded, e.g.
    ``178.4 (1 thread, M1); 75.2 (2 threads)``, the machines named by ``labels`` (see
    :func:`machine_labels`); what a run did not record (its thread count: the runner's default;
    its machine) is left out of the note."""
    groups: Dict[tuple, List[float]] = {}
    for run in runs:
        key = (int(run.get("threads") or 0), labels.get(str(run.get("machine") or ""), ""))
        groups.setdefault(key, []).append(float(run["seconds_per_epoch"]))

    def note(count: int, label: str) -> str:
        parts = ([_counted(count, "thread")] if count else []) + ([label] if label else [])
        return f" ({', '.join(parts)})" if parts else ""

    return "; ".join(f"{statistics.mean(seconds):.1f}{note(*key)}" for key, seconds in sorted(groups.items()))


def machines_line(rows: Sequence[Mapping[str, object]]) -> str:
    """The line below ``table.md`` that names the machines of its seconds per epoch (empty if none)."""
    labels = machine_labels(rows)
    if not labels:
        return ""
    return "\nMachines of the seconds per epoch: " + "; ".join(
        f"{label}: {machine}" for machine, label in labels.items()) + ".\n"


def welch_t(first: Sequence[float], second: Sequence[float]) -> float:
    """Welch's t of ``mean(first) - mean(second)``: the difference over its standard error
    ``sqrt(s1^2 / n1 + s2^2 / n2)`` (standard deviations over the seeds, n - 1); needs two values
    of each. Equal values on both sides give 0, a difference without spread an infinite t."""
    difference = statistics.mean(first) - statistics.mean(second)
    error = math.sqrt(statistics.variance(first) / len(first) + statistics.variance(second) / len(second))
    if error == 0:
        return math.copysign(math.inf, difference) if difference else 0.0
    return difference / error


def ordering_verdict(t: float) -> str:
    """Whether a paper's ordering (the first model above the second) holds, from Welch's t of their
    difference: apart by :data:`SEPARATED` standard errors either way, or within them."""
    if t >= SEPARATED:
        return "reproduced"
    if t > 0:
        return f"same direction, within {SEPARATED:g} standard errors"
    if t > -SEPARATED:
        return f"not reproduced: within {SEPARATED:g} standard errors"
    return "reversed"


def _seed_cell(model: str, accuracies: Sequence[float]) -> str:
    """``p4cnn 95.93 ± 0.21 (3)``: the model, its mean test accuracy ± std and its number of seeds."""
    return f"{model} {_mean_std(accuracies)} ({len(accuracies)})"


def _comparison(claim: str, above: str, below: str, accuracies: Mapping[str, List[float]],
                verdict: Callable[[float], str]) -> Dict[str, str]:
    """One row of ``comparisons.md``: ``above`` against ``below``, judged by ``verdict(t)``."""
    row = {"claim": claim, "expected above": above, "expected below": below,
           "difference, points": NOT_MEASURED, "Welch's t": NOT_MEASURED}
    missing = [model for model in (above, below) if len(accuracies.get(model, ())) < COMPARED_SEEDS]
    if missing:
        row["verdict"] = f"needs {COMPARED_SEEDS} seeds of " + " and ".join(missing)
        return row
    t = welch_t(accuracies[above], accuracies[below])
    row.update({"expected above": _seed_cell(above, accuracies[above]),
                "expected below": _seed_cell(below, accuracies[below]),
                "difference, points": f"{100 * (statistics.mean(accuracies[above]) - statistics.mean(accuracies[below])):+.2f}",
                "Welch's t": f"{t:+.1f}", "verdict": verdict(t)})
    return row


def best_on_validation(runs_by_model: Mapping[str, Sequence[Mapping[str, object]]]) -> str:
    """The model whose runs have the highest mean best-validation accuracy (the test digits play no
    part): the one shipped, and the GSA-Net held against the mark."""
    return max(runs_by_model, key=lambda model: statistics.mean(
        float(run["best_val_accuracy"]) for run in runs_by_model[model]))


def comparison_rows(rows: Sequence[Mapping[str, object]]) -> List[Dict[str, str]]:
    """The papers' orderings (:data:`PAPER_ORDERINGS`) and the GSA-Nets' mark against
    :data:`PAR_MODEL`, each with its numbers, from the test accuracies of ``rows``. The GSA-Net held
    against the mark is the one with the highest mean best-validation accuracy among those with
    :data:`COMPARED_SEEDS` seeds or more."""
    runs_by_model = _runs_by_model(rows)
    accuracies = {model: [float(run["test_accuracy"]) for run in runs] for model, runs in runs_by_model.items()}
    compared = [_comparison(claim, above, below, accuracies, ordering_verdict) for claim, above, below in PAPER_ORDERINGS]
    gsa_nets = {model: runs for model, runs in runs_by_model.items()
                if kind_of(model) == "GSA-Net" and len(runs) >= COMPARED_SEEDS}
    best = best_on_validation(gsa_nets) if gsa_nets else "the best GSA-Net"
    reference = accuracies.get(PAR_MODEL, [])
    mark = statistics.mean(reference) - statistics.stdev(reference) if len(reference) >= COMPARED_SEEDS else None

    def against_mark(_: float) -> str:
        return "met" if statistics.mean(accuracies[best]) >= mark else "not met"

    claim = (f"GSA-Nets on a par with G-CNNs: the best GSA-Net on validation at least {PAR_MODEL}'s mean minus one std"
             + (f" ({100 * mark:.2f}%)" if mark is not None else ""))
    compared.append(_comparison(claim, best, PAR_MODEL, accuracies, against_mark))
    return compared


def markdown(summary: Sequence[Mapping[str, str]]) -> str:
    """A Markdown table of ``summary``."""
    columns = list(summary[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in summary]
    return "\n".join(lines) + "\n"


def plot_rotation(rows: Sequence[Mapping[str, object]], path: pathlib.Path) -> None:
    """Test accuracy against the rotation angle, mean over the seeds, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 3.5))
    runs_by_model = _runs_by_model(rows)
    seed_counts = {len(runs) for runs in runs_by_model.values()}
    same_seeds = len(seed_counts) == 1  # else each model's label says how many seeds it has
    for model, runs in runs_by_model.items():
        angles = sorted(_angles(runs[0], "accuracy_"))
        means = [100 * statistics.mean(float(run[f"accuracy_{a:g}deg"]) for run in runs) for a in angles]
        label = model if same_seeds else f"{model} ({_counted(len(runs), 'seed')})"
        line, = axes.plot(angles + [360.0], means + means[:1], marker="o", markersize=3, label=label)
        blurred = sorted(_angles(runs[0], "blur_"))
        if blurred:  # the rotated test digits rotated again, between the exact angles
            means = {a: 100 * statistics.mean(float(run[f"blur_{a:g}deg"]) for run in runs) for a in blurred}
            for start in (0.0, 90.0, 180.0, 270.0):
                inside = [a for a in blurred if start < a < start + 90]
                axes.plot(inside, [means[a] for a in inside], linestyle="--", color=line.get_color(), linewidth=1)
    axes.set(xlabel="rotation of the test digits (degrees)", ylabel="test accuracy (%)", xticks=range(0, 361, 45),
             title=f"rotMNIST5k, mean over {_counted(min(seed_counts), 'seed') if same_seeds else 'the seeds'}; "
                   "dashed: test digits rotated twice (blur)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)




def kind_of(model: str) -> str:
    """``"GSA-Net"``, ``"attentive G-CNN"`` or ``"other"`` (CNN, plain G-CNN)."""
    import g_selfatt_models as models
    from g_selfatt_models.attgconv_zoo.zoo import ATTENTION_PREFIXES

    family = models.get_model_spec(model).family
    if family == "gsa":
        return "GSA-Net"
    attentive = any(prefix and model.startswith(prefix) for prefix in ATTENTION_PREFIXES)
    return "attentive G-CNN" if family == "attgconv" and attentive else "other"


def ranked_runs(rows: Sequence[Mapping[str, object]], kind: str) -> List[Mapping[str, object]]:
    """The runs of the model to ship of the ``kind``, best first, chosen on validation accuracies
    only: the model with the highest mean best-validation accuracy over its seeds, its seeds by
    their best-validation accuracy (none where the table has no model of the kind)."""
    runs_by_model = _runs_by_model([row for row in rows if kind_of(str(row["model"])) == kind])
    if not runs_by_model:
        return []
    best = runs_by_model[best_on_validation(runs_by_model)]
    return sorted(best, key=lambda row: -float(row["best_val_accuracy"]))


def shipped_before(row: Mapping[str, object], manifest: Mapping[str, Mapping[str, object]]) -> str:
    """The manifest's name of the file shipped from ``row``'s run ("" if none): same model, seed and
    accuracies."""
    fields = ("dataset", "model", "seed", "validation_accuracy", "test_accuracy")
    run = (DATASET, row["model"], int(row["seed"]), float(row["best_val_accuracy"]), float(row["test_accuracy"]))
    for name, record in manifest.items():
        if tuple(record.get(field) for field in fields) == run:
            return name
    return ""


def _plain(value: object) -> object:
    """``value`` with lists as tuples (a configuration read back from a checkpoint holds lists)."""
    return tuple(value) if isinstance(value, list) else value


def ship(row: Mapping[str, object], saved_dir: pathlib.Path) -> pathlib.Path:
    """Copies the checkpoint of ``row`` into ``saved_dir/pretrained`` and records it in the manifest.

    The file gets the name the runner derives for the run's configuration, and both files are
    written to a temporary file first and then renamed. It replaces the model of the same kind
    shipped before for the dataset: that one's manifest entry goes, then its file (the earlier
    file stays in the repository's history).
    """
    from ml_collections import config_dict

    import g_selfatt_models as models
    from g_selfatt_models.gsa_zoo import LAYOUT_FIELDS
    from g_selfatt_models import checkpoints
    from runner import paths
    from runner.defaults import flag_value

    source = REPO_ROOT / str(row["checkpoint"])
    saved = checkpoints.read(source)
    config = config_dict.ConfigDict(saved["config"])
    config.path, config.save_dir = "", str(saved_dir / SHIPPED_FOLDER)
    spec = models.get_model_spec(saved["model"])
    target = paths.best_checkpoint_path(config, spec.family)
    # The flags that find the file: its layout, and every default of the model for the dataset that
    # the run did not keep (so they stay right after the protocol changes).
    defaults = spec.defaults.get(config.dataset, {})
    changed = {name: config.get(name) for name in LAYOUT_FIELDS if config.get(name) is not None}
    changed.update({name: config.get(name) for name, value in defaults.items()
                    if flag_value(_plain(config.get(name))) != flag_value(_plain(value))})
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    temporary.replace(target)
    manifest_path = saved_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"checkpoints": {}}
    name = f"{SHIPPED_FOLDER}/{target.name}"
    replaced = [other for other, record in manifest["checkpoints"].items()
                if other != name and record.get("dataset") == config.dataset
                and kind_of(record["model"]) == kind_of(saved["model"])]
    for other in replaced:
        del manifest["checkpoints"][other]
    manifest["checkpoints"][name] = {
        "model": saved["model"],
        "dataset": config.dataset,
        "seed": config.seed,
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "flags": (f"--config.dataset={config.dataset} --config.model={saved['model']} "
                  + "".join(f"--config.{name}={flag_value(_plain(value))} " for name, value in changed.items())
                  + f"--config.seed={config.seed} --config.save_dir=saved/{SHIPPED_FOLDER}"),
        "validation_accuracy": float(row["best_val_accuracy"]),
        "test_accuracy": float(row["test_accuracy"]),
    }
    temporary = manifest_path.with_name(f".{manifest_path.name}.tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    temporary.replace(manifest_path)
    for other in replaced:
        (saved_dir / other).unlink(missing_ok=True)
        print(f"[table] {other} replaced", flush=True)
    print(f"[table] shipped {row['model']} seed {row['seed']} as {target}", flush=True)
    return target


def _table_order(key) -> tuple:
    """Sort key of (model, seed): the models in the order of :data:`MODELS` (others after), then seed."""
    model, seed = key
    return (MODELS.index(model) if model in MODELS else len(MODELS), model, seed)


def _keyed(rows: Sequence[Mapping[str, object]]) -> Dict[tuple, Mapping[str, object]]:
    """``rows`` keyed by (model, seed)."""
    return {(row["model"], int(row["seed"])): row for row in rows}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--save-dir", type=pathlib.Path, default=REPO_ROOT / "saved" / "rotMNIST5k_table_ep80_rot")
    parser.add_argument("--output-dir", type=pathlib.Path, default=REPO_ROOT / "runs" / "rotMNIST5k" / "ep80_rot")
    parser.add_argument("--overwrite", action="store_true", help="train again runs that are done")
    parser.add_argument("--ship", action="store_true",
                        help="copy the best GSA-Net and attentive G-CNN into --saved-dir (see above)")
    parser.add_argument("--saved-dir", type=pathlib.Path, default=REPO_ROOT / "saved")
    from runner.defaults import parse_with_config_flags

    return parse_with_config_flags(parser, argv)


def recorded_rows(path: pathlib.Path) -> List[Dict[str, str]]:
    """The rows of an existing ``runs.csv`` (none if there is none)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_outputs(rows: Sequence[Mapping[str, object]], output_dir: pathlib.Path) -> str:
    """Writes ``runs.csv``, ``table.md``, ``comparisons.md`` and ``rotation.png`` (each atomically);
    returns the table and the comparisons."""
    from runner import files, reporting  # rounded floats, written atomically

    output_dir.mkdir(parents=True, exist_ok=True)
    reporting.write_csv(rows, output_dir / "runs.csv")
    table = markdown(summary_rows(rows)) + machines_line(rows)
    files.atomic_write(output_dir / "table.md", lambda handle: handle.write(table), text=True)
    comparisons = markdown(comparison_rows(rows))
    files.atomic_write(output_dir / "comparisons.md", lambda handle: handle.write(comparisons), text=True)
    temporary = output_dir / ".rotation.tmp.png"
    plot_rotation(rows, temporary)
    temporary.replace(output_dir / "rotation.png")
    return table + "\n" + comparisons


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    try:
        make_table(args)
    except OtherRunError as error:
        sys.exit(f"Error: {error}")


def make_table(args: argparse.Namespace) -> None:
    """Trains the runs missing from the table, writes it, ships the best models (``--ship``).

    Raises:
        OtherRunError: a recorded row or a finished run holds another configuration than the
            table's.
    """
    runs_csv = args.output_dir / "runs.csv"
    for seed in args.seeds:  # seed by seed, so that a table cut short has every model
        for model in args.models:
            recorded = _keyed(recorded_rows(runs_csv)).get((model, seed))
            if recorded and not args.overwrite:
                check_recorded_row(recorded, args.output_dir, args.extra)
                print(f"[table] {model} seed {seed}: recorded in runs.csv, reused", flush=True)
                continue
            prefix = train_and_test(model, seed, args.save_dir.resolve(), args.extra, args.overwrite)
            # Re-read just before writing: another table process may have recorded runs meanwhile.
            rows = {**_keyed(recorded_rows(runs_csv)), (model, seed): read_run(model, seed, prefix)}
            write_outputs([rows[key] for key in sorted(rows, key=_table_order)], args.output_dir)
    rows = _keyed(recorded_rows(runs_csv))
    ordered = [rows[key] for key in sorted(rows, key=_table_order)]
    print(write_outputs(ordered, args.output_dir))
    if args.ship:
        for kind in SHIPPED_KINDS:
            ship_best(ordered, kind, args.saved_dir)


def ship_best(rows: Sequence[Mapping[str, object]], kind: str, saved_dir: pathlib.Path) -> None:
    """Ships the best run of ``kind`` (:func:`ranked_runs`) unless it is shipped already.

    A ``runs.csv`` may come from a session whose checkpoints are gone: then the best run that is
    shipped already or has its checkpoint here wins, and the better ones are named (with the
    command that trains them again); the model shipped before stays where the table has no run of
    the kind yet or none with its checkpoint.
    """
    ranked = ranked_runs(rows, kind)
    if not ranked:  # a table still being trained
        print(f"[table] no {kind} in the table yet: the one shipped before stays", flush=True)
        return
    manifest_path = saved_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())["checkpoints"] if manifest_path.exists() else {}
    for row in ranked:
        name = shipped_before(row, manifest)
        if name:
            print(f"[table] {row['model']} seed {row['seed']} is shipped already as {name}", flush=True)
            return
        if (REPO_ROOT / str(row["checkpoint"])).is_file():
            ship(row, saved_dir)
            return
        print(f"[table] {row['model']} seed {row['seed']}: its checkpoint {row['checkpoint']} is gone; to ship it, "
              f"train it again: --models {row['model']} --seeds {row['seed']} --overwrite", flush=True)
    print(f"[table] no checkpoint of {ranked[0]['model']} is here: the one shipped before stays", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main(sys.argv[1:])
