"""The rotMNIST5k results table: its script trains through main.py, resumes, and summarises."""

from __future__ import annotations

import csv
import math
import pathlib
import shlex
import statistics
import subprocess
import sys

import pytest

import fixture_data
from runner import machine
from tests.conftest import REPO_ROOT, load_script


def _table_module():
    return load_script("tools/rotmnist5k_table.py")


# The tests that share the table run go to one test process (make test: --dist loadgroup), so
# that the eight runs of the fixture are made once.
on_the_table = pytest.mark.xdist_group("rotmnist5k_table")


@pytest.fixture(scope="session")  # session: kept while other modules' tests run on this worker
def table_run(tmp_path_factory, main_server):
    """The script on 40 fixture digits: four models, two seeds, one step each (its main.py runs
    forked from one process that imported everything once)."""
    tmp_path = tmp_path_factory.mktemp("table")
    fixture_data.make_rotmnist5k(tmp_path / "data", n=40)
    table = _table_module()
    argv = ["--models", "z2cnn", "p4cnn", "f_att_p4cnn", "p4sa", "--seeds", "0", "1", "--save-dir", str(tmp_path / "saved"),
            "--output-dir", str(tmp_path / "out"), f"--config.data_root={tmp_path / 'data'}",
            "--config.max_examples=4", "--config.batch_size=4", "--config.epochs=1",
            "--config.valid_size=4", "--config.num_threads=1", "--config.device=cpu"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "run", main_server.run_command)  # as runner.signals runs main.py
        table.main(argv)
    return table, argv, tmp_path


@on_the_table
def test_every_run_has_a_row_with_its_rotation_accuracies(table_run):
    _, _, tmp_path = table_run
    rows = list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))
    assert [(row["model"], row["seed"]) for row in rows] == [
        ("z2cnn", "0"), ("z2cnn", "1"), ("p4cnn", "0"), ("p4cnn", "1"), ("f_att_p4cnn", "0"), ("f_att_p4cnn", "1"),
        ("p4sa", "0"), ("p4sa", "1")]
    for row in rows:
        angles = [key for key in row if key.startswith("accuracy_")]
        assert len(angles) == 24 and "accuracy_90deg" in angles and "accuracy_345deg" in angles
        assert float(row["accuracy_0deg"]) == float(row["test_accuracy"])  # both from unrotated images
        blurred = [key for key in row if key.startswith("blur_")]  # rotMNIST5k digits have upright sources
        assert len(blurred) == 20 and "blur_15deg" in blurred and "blur_90deg" not in blurred
        assert float(row["seconds_per_epoch"]) > 0 and int(row["epochs"]) == 1 and row["threads"] == "1"
    assert {row["parameters"] for row in rows if row["model"] == "z2cnn"} == {"21620"}
    assert (tmp_path / "out" / "rotation.png").stat().st_size > 0


@on_the_table
def test_table_gives_the_mean_and_spread_over_seeds(table_run):
    table, _, tmp_path = table_run
    rows = list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))
    text = (tmp_path / "out" / "table.md").read_text()
    for model in ("z2cnn", "p4sa"):
        accuracies = [100 * float(row["test_accuracy"]) for row in rows if row["model"] == model]
        expected = f"{statistics.mean(accuracies):.2f} ± {statistics.stdev(accuracies):.2f}"
        line = next(line for line in text.splitlines() if line.startswith(f"| {model} |"))
        assert line.split(" | ")[2] == expected
        seconds = statistics.mean(float(row["seconds_per_epoch"]) for row in rows if row["model"] == model)
        assert line.split(" | ")[-1] == f"{seconds:.1f} (1 thread, M1) |"  # the runs' --config.num_threads
    assert {row["machine"] for row in rows} == {machine.cpu()}  # every run trained here
    assert f"\nMachines of the seconds per epoch: M1: {machine.cpu()}.\n" in text


@on_the_table
def test_finished_runs_are_not_trained_again(table_run, capsys):
    table, argv, tmp_path = table_run
    checkpoint = tmp_path / "saved" / "p4sa_seed1" / "model.pt"
    before = checkpoint.stat().st_mtime_ns
    table.main(argv)
    assert checkpoint.stat().st_mtime_ns == before
    assert capsys.readouterr().out.count("recorded in runs.csv, reused") == 8
    elsewhere = list(argv)  # the runs.csv of another session, whose checkpoints are gone
    elsewhere[elsewhere.index("--save-dir") + 1] = str(tmp_path / "gone")
    table.main(elsewhere)
    assert not (tmp_path / "gone").exists()


def _write_runs(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def _table_elsewhere(table_run, tmp_path, edit_rows):
    """The fixture's table copied into another output folder with ``edit_rows`` applied to its
    rows; returns the arguments that run the script on it, and the header and rows it copied."""
    _, argv, run_path = table_run
    with open(run_path / "out" / "runs.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    (tmp_path / "out").mkdir()
    _write_runs(tmp_path / "out" / "runs.csv", header, edit_rows(rows))
    elsewhere = list(argv)
    elsewhere[elsewhere.index("--output-dir") + 1] = str(tmp_path / "out")
    return elsewhere, header, rows


@on_the_table
def test_rows_that_another_table_process_records_meanwhile_are_kept(table_run, tmp_path, monkeypatch):
    table = table_run[0]
    key = lambda row: (row["model"], row["seed"])  # noqa: E731
    elsewhere, header, rows = _table_elsewhere(
        table_run, tmp_path, lambda rows: [row for row in rows if key(row) not in {("p4sa", "1"), ("z2cnn", "1")}])
    out = tmp_path / "out"
    reuse_finished_run = table.train_and_test

    def another_process_records_z2cnn_seed1(model, seed, *args):
        _write_runs(out / "runs.csv", header, [row for row in rows if key(row) != ("p4sa", "1")])
        return reuse_finished_run(model, seed, *args)

    monkeypatch.setattr(table, "train_and_test", another_process_records_z2cnn_seed1)
    elsewhere[elsewhere.index("--models") + 1:elsewhere.index("--seeds") + 3] = ["p4sa", "--seeds", "1"]
    table.main(elsewhere)
    with open(out / "runs.csv", newline="") as handle:
        assert [key(row) for row in csv.DictReader(handle)] == [key(row) for row in rows]  # in MODELS' order


@on_the_table
def test_a_recorded_row_of_another_configuration_is_not_reused(table_run, tmp_path, capsys):
    table = table_run[0]
    other = lambda row: {**row, "run": "0badc0de"} if (row["model"], row["seed"]) == ("p4sa", "0") else row  # noqa: E731
    elsewhere, _, _ = _table_elsewhere(table_run, tmp_path, lambda rows: [other(row) for row in rows])
    before = (tmp_path / "out" / "runs.csv").read_bytes()
    with pytest.raises(SystemExit) as stopped:
        table.main(elsewhere)
    message = str(stopped.value.code)
    assert message.startswith("Error: ") and "p4sa seed 0 from run 0badc0de" in message
    assert "--output-dir" in message and "--overwrite" in message
    assert (tmp_path / "out" / "runs.csv").read_bytes() == before
    assert capsys.readouterr().out.count("recorded in runs.csv, reused") == 3  # seed 0's CNNs, then it stops


@on_the_table
def test_a_finished_run_of_another_configuration_is_not_reused(table_run, tmp_path, capsys):
    """A layout flag (or a changed default) makes the table's p4sa another run than the one saved."""
    table, argv, run_path = table_run
    checkpoint = run_path / "saved" / "p4sa_seed0" / "model.pt"
    before = checkpoint.read_bytes()
    elsewhere = list(argv) + ["--config.num_channels=8", "--config.num_heads=2"]
    elsewhere[elsewhere.index("--output-dir") + 1] = str(tmp_path / "out")
    with pytest.raises(SystemExit) as stopped:
        table.main(elsewhere)
    message = str(stopped.value.code)
    assert f"{checkpoint} holds a run of p4sa seed 0 under another configuration" in message
    from g_selfatt_models.gsa_zoo import GSA_DEFAULTS

    assert f"num_channels: {GSA_DEFAULTS['rotMNIST5k'].num_channels} -> 8" in message and "--save-dir" in message
    assert checkpoint.read_bytes() == before
    out = capsys.readouterr().out
    assert out.count("done before, reusing") == 3 and "p4sa seed 0: done before" not in out  # CNNs have no layout
    rows = list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))
    assert [row["model"] for row in rows] == ["z2cnn", "p4cnn", "f_att_p4cnn"]
    recorded = {(row["model"], row["seed"]): row["run"] for row in csv.DictReader(open(run_path / "out" / "runs.csv"))}
    assert [row["run"] for row in rows] == [recorded[(row["model"], "0")] for row in rows]  # the same runs


@on_the_table
def test_ship_copies_the_best_gsa_net_and_attentive_g_cnn_chosen_on_validation(table_run, tmp_path):
    import json

    import main
    from g_selfatt_models.released import file_sha256
    from runner import paths

    table, argv, run_path = table_run
    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    table.main(argv + ["--ship", "--saved-dir", str(shipped_dir)])
    rows = list(csv.DictReader(open(run_path / "out" / "runs.csv")))
    manifest = json.loads((shipped_dir / "manifest.json").read_text())["checkpoints"]
    assert sorted(record["model"] for record in manifest.values()) == ["f_att_p4cnn", "p4sa"]  # not p4cnn
    for name, record in manifest.items():
        runs = [row for row in rows if row["model"] == record["model"]]
        best = max(runs, key=lambda row: float(row["best_val_accuracy"]))
        assert name.startswith("pretrained/rotMNIST5k_") and f"_model_{record['model']}_" in name
        assert f"seed_{best['seed']}_" in name
        assert record["sha256"] == file_sha256(shipped_dir / name)
        assert record["test_accuracy"] == float(best["test_accuracy"])
        assert f"--config.seed={best['seed']}" in record["flags"]
        assert type(main.load_model(shipped_dir / name)).__name__ in ("GroupTransformer", "RotMNISTCNN")
        # The recorded flags (with the runs' data options) name the file: the fields the runs set
        # away from the protocol (batch 4, 1 epoch) are among them, the ones they kept are not.
        assert "--config.batch_size=4" in record["flags"] and "--config.lr=" not in record["flags"]
        data_flags = [flag for flag in argv if flag.split("=")[0] in ("--config.data_root", "--config.max_examples",
                                                                         "--config.valid_size")]
        config, family = _resolved(shlex.split(record["flags"]) + data_flags)
        assert paths.best_checkpoint_path(config, family).name == pathlib.Path(name).name
    written = sorted(str(path.relative_to(shipped_dir)) for path in shipped_dir.rglob("*") if path.is_file())
    assert written == sorted([*manifest, "manifest.json"])


@on_the_table
def test_ship_replaces_the_model_of_the_same_kind_shipped_before_for_the_dataset(table_run, tmp_path):
    import json

    table, argv, _ = table_run
    shipped_dir = tmp_path / "shipped"
    (shipped_dir / "pretrained").mkdir(parents=True)
    before = {"pretrained/rotMNIST5k_model_p4sa_old.pt": {"model": "p4sa", "dataset": "rotMNIST5k"},
              "pretrained/rotMNIST5k_model_p4cnn_kept.pt": {"model": "p4cnn", "dataset": "rotMNIST5k"},
              "rotDigits_model_p4sa_kept.pt": {"model": "p4sa", "dataset": "rotDigits"}}
    for name in before:
        (shipped_dir / name).write_bytes(b"a checkpoint")
    (shipped_dir / "manifest.json").write_text(json.dumps({"checkpoints": before}))
    table.main(argv + ["--ship", "--saved-dir", str(shipped_dir)])
    manifest = json.loads((shipped_dir / "manifest.json").read_text())["checkpoints"]
    assert "pretrained/rotMNIST5k_model_p4sa_old.pt" not in manifest
    assert not (shipped_dir / "pretrained" / "rotMNIST5k_model_p4sa_old.pt").exists()
    for name in ("pretrained/rotMNIST5k_model_p4cnn_kept.pt", "rotDigits_model_p4sa_kept.pt"):  # other kind, dataset
        assert manifest[name] == before[name] and (shipped_dir / name).exists()
    assert sorted(record["model"] for record in manifest.values() if record["dataset"] == "rotMNIST5k") == [
        "f_att_p4cnn", "p4cnn", "p4sa"]


@on_the_table
def test_ship_keeps_the_model_of_a_kind_the_table_does_not_have_yet(table_run, tmp_path, capsys):
    import json

    table, argv, _ = table_run
    shipped_dir = tmp_path / "shipped"
    (shipped_dir / "pretrained").mkdir(parents=True)
    before = {"pretrained/rotMNIST5k_model_f_att_p4cnn_old.pt": {"model": "f_att_p4cnn", "dataset": "rotMNIST5k"}}
    (shipped_dir / "pretrained" / "rotMNIST5k_model_f_att_p4cnn_old.pt").write_bytes(b"a checkpoint")
    (shipped_dir / "manifest.json").write_text(json.dumps({"checkpoints": before}))
    partial = list(argv)  # a table of p4sa alone so far, in another output folder
    partial[partial.index("--output-dir") + 1] = str(tmp_path / "partial")
    partial[partial.index("--models") + 1:partial.index("--seeds")] = ["p4sa"]
    table.main(partial + ["--ship", "--saved-dir", str(shipped_dir)])
    assert "no attentive G-CNN in the table yet" in capsys.readouterr().out
    manifest = json.loads((shipped_dir / "manifest.json").read_text())["checkpoints"]
    assert sorted(record["model"] for record in manifest.values()) == ["f_att_p4cnn", "p4sa"]
    assert (shipped_dir / "pretrained" / "rotMNIST5k_model_f_att_p4cnn_old.pt").exists()


@on_the_table
def test_ship_takes_the_best_seed_whose_checkpoint_is_here_and_names_the_missing_one(table_run, tmp_path, capsys):
    import json

    table = table_run[0]

    def best_p4sa_gone(rows):
        best = max((row for row in rows if row["model"] == "p4sa"), key=lambda row: float(row["best_val_accuracy"]))
        return [{**row, "checkpoint": str(tmp_path / "gone.pt")} if row is best else row for row in rows]

    argv, _, rows = _table_elsewhere(table_run, tmp_path, best_p4sa_gone)
    p4sa = sorted((row for row in rows if row["model"] == "p4sa"), key=lambda row: -float(row["best_val_accuracy"]))
    table.main(argv + ["--ship", "--saved-dir", str(tmp_path / "shipped")])
    assert f"p4sa seed {p4sa[0]['seed']}: its checkpoint {tmp_path / 'gone.pt'} is gone" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "shipped" / "manifest.json").read_text())["checkpoints"]
    assert [record["seed"] for record in manifest.values() if record["model"] == "p4sa"] == [int(p4sa[1]["seed"])]
    table.main(argv + ["--ship", "--saved-dir", str(tmp_path / "shipped")])  # again: the next best is shipped already
    out = capsys.readouterr().out
    assert f"p4sa seed {p4sa[0]['seed']}: its checkpoint" in out and f"p4sa seed {p4sa[1]['seed']} is shipped already" in out


@on_the_table
def test_ship_keeps_the_shipped_model_when_no_checkpoint_of_the_best_is_here(table_run, tmp_path, capsys):
    import json

    table = table_run[0]
    argv, _, _ = _table_elsewhere(table_run, tmp_path, lambda rows: [
        {**row, "checkpoint": str(tmp_path / "gone.pt")} if row["model"] == "p4sa" else row for row in rows])
    (tmp_path / "shipped").mkdir()
    before = {"pretrained/rotMNIST5k_model_p4sa_old.pt": {"model": "p4sa", "dataset": "rotMNIST5k"}}
    (tmp_path / "shipped" / "manifest.json").write_text(json.dumps({"checkpoints": before}))
    table.main(argv + ["--ship", "--saved-dir", str(tmp_path / "shipped")])
    assert "no checkpoint of p4sa is here: the one shipped before stays" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "shipped" / "manifest.json").read_text())["checkpoints"]
    assert manifest["pretrained/rotMNIST5k_model_p4sa_old.pt"] == before["pretrained/rotMNIST5k_model_p4sa_old.pt"]


@on_the_table
def test_ship_does_not_copy_a_run_shipped_already_even_when_its_checkpoint_is_gone(table_run, tmp_path, capsys):
    table, argv, _ = table_run
    shipped_dir = tmp_path / "shipped"
    table.main(argv + ["--ship", "--saved-dir", str(shipped_dir)])
    files = {path: path.stat().st_mtime_ns for path in shipped_dir.rglob("*") if path.is_file()}
    capsys.readouterr()
    table.main(argv + ["--ship", "--saved-dir", str(shipped_dir)])
    # The same table in a later session, its checkpoints gone.
    gone, _, _ = _table_elsewhere(table_run, tmp_path, lambda rows: [{**row, "checkpoint": str(tmp_path / "gone.pt")}
                                                                  for row in rows])
    table.main(gone + ["--ship", "--saved-dir", str(shipped_dir)])
    out = capsys.readouterr().out
    assert out.count("is shipped already as pretrained/rotMNIST5k_") == 4
    assert "shipped p4sa" not in out and "is gone" not in out
    assert {path: path.stat().st_mtime_ns for path in shipped_dir.rglob("*") if path.is_file()} == files


@on_the_table
def test_comparisons_are_written_from_the_runs_beside_the_table(table_run):
    table, _, tmp_path = table_run
    rows = list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))
    text = (tmp_path / "out" / "comparisons.md").read_text()
    assert text == table.markdown(table.comparison_rows(rows))
    line = next(line for line in text.splitlines() if line.startswith("| attention on top of the P4CNN helps |"))
    assert "| f_att_p4cnn " in line and "needs" not in line  # two seeds of both models
    assert "needs 2 seeds of z2sa" in text  # not in this table


def test_welch_t_is_the_difference_of_means_over_its_standard_error():
    welch_t = _table_module().welch_t
    # means 2 and 5, variances 1 and 1, three values each
    assert welch_t([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(-3 / math.sqrt(2 / 3), rel=1e-12)
    # means 1 and 0, variances 2 (two values) and 2/3 (four values)
    assert welch_t([0.0, 2.0], [-1.0, 0.0, 1.0, 0.0]) == pytest.approx(1 / math.sqrt(2 / 2 + (2 / 3) / 4), rel=1e-12)
    assert welch_t([0.5, 0.5], [0.5, 0.5]) == 0 and welch_t([0.6, 0.6], [0.5, 0.5]) == math.inf


def test_an_ordering_counts_as_reproduced_only_two_standard_errors_apart():
    verdict = _table_module().ordering_verdict
    assert verdict(2.0) == verdict(9.6) == "reproduced"
    assert verdict(1.9).startswith("same direction") and verdict(0.0).startswith("not reproduced")
    assert verdict(-1.9).startswith("not reproduced") and verdict(-2.0) == "reversed"


def _rows_of(accuracies, validation=None):
    """Rows of runs.csv with these test accuracies; the validation accuracies are the test ones
    unless ``validation`` gives a model's."""
    validation = {**accuracies, **(validation or {})}
    return [{"model": model, "seed": str(seed), "test_accuracy": str(accuracy),
             "best_val_accuracy": str(validation[model][seed])}
            for model, values in accuracies.items() for seed, accuracy in enumerate(values)]


def test_comparisons_give_each_ordering_and_the_mark_with_their_numbers():
    table = _table_module()
    accuracies = {"z2cnn": [0.90, 0.91, 0.92], "p4cnn": [0.95, 0.96, 0.97], "p4sa": [0.950, 0.951],
                  "p8sa": [0.93, 0.94, 0.95], "p12sa": [0.99]}
    compared = {row["claim"]: row for row in table.comparison_rows(_rows_of(accuracies))}
    cnns = compared["rotation equivariance helps CNNs"]
    assert (cnns["expected above"], cnns["expected below"]) == ("p4cnn 96.00 ± 1.00 (3)", "z2cnn 91.00 ± 1.00 (3)")
    assert cnns["difference, points"] == "+5.00" and cnns["verdict"] == "reproduced"
    assert cnns["Welch's t"] == f"{0.05 / math.sqrt(2 * 0.0001 / 3):+.1f}"
    assert compared["rotation equivariance helps self-attention"]["verdict"] == "needs 2 seeds of z2sa"
    assert compared["attention on top of the P4CNN helps"]["verdict"] == "needs 2 seeds of f_att_p4cnn"
    p8 = compared["p8 helps GSA-Nets more than p4"]  # p8sa 1.05 points below p4sa, t about -1.8
    assert p8["difference, points"] == "-1.05" and p8["verdict"].startswith("not reproduced")
    assert compared["p12 helps GSA-Nets more than p8"]["verdict"] == "needs 2 seeds of p12sa"
    # The best GSA-Net with two seeds is p4sa (p12sa's one seed does not count); the mark is 96.00 - 1.00.
    mark = next(row for claim, row in compared.items() if claim.startswith("GSA-Nets on a par"))
    assert "(95.00%)" in mark["claim"] and mark["expected above"].startswith("p4sa 95.05") and mark["verdict"] == "met"
    accuracies["p4sa"] = [0.930, 0.931]  # now p8sa is the best, below the mark
    mark = table.comparison_rows(_rows_of(accuracies))[-1]
    assert mark["expected above"].startswith("p8sa 94.00") and mark["verdict"] == "not met"
    # The best GSA-Net is chosen on the validation digits, not on the test accuracies it is judged by.
    mark = table.comparison_rows(_rows_of(accuracies, validation={"p4sa": [0.97, 0.98]}))[-1]
    assert mark["expected above"].startswith("p4sa 93.05") and mark["verdict"] == "not met"


def test_seconds_per_epoch_are_averaged_per_thread_count():
    seconds = _table_module()._seconds_per_epoch
    runs = [{"seconds_per_epoch": "180", "threads": "1"}, {"seconds_per_epoch": "70", "threads": "2"},
            {"seconds_per_epoch": "170", "threads": "1"}, {"seconds_per_epoch": "80", "threads": "2"}]
    assert seconds(runs, {}) == "175.0 (1 thread); 75.0 (2 threads)"
    assert seconds(runs[:1] + [{"seconds_per_epoch": "90", "threads": ""}], {}) == "90.0; 180.0 (1 thread)"


def test_seconds_per_epoch_are_kept_apart_per_machine():
    table = _table_module()
    runs = [{"model": "p4sa", "seconds_per_epoch": "20", "threads": "1", "machine": "Intel CPU"},
            {"model": "p4sa", "seconds_per_epoch": "40", "threads": "1", "machine": "AMD CPU"},
            {"model": "p4sa", "seconds_per_epoch": "30", "threads": "1", "machine": "AMD CPU"},
            {"model": "p4sa", "seconds_per_epoch": "50", "threads": "1", "machine": ""}]  # not recorded
    labels = table.machine_labels(runs)
    assert labels == {"Intel CPU": "M1", "AMD CPU": "M2"}
    assert table._seconds_per_epoch(runs, labels) == "50.0 (1 thread); 20.0 (1 thread, M1); 35.0 (1 thread, M2)"
    assert table.machines_line(runs) == "\nMachines of the seconds per epoch: M1: Intel CPU; M2: AMD CPU.\n"
    assert table.machines_line(runs[3:]) == ""  # no machine recorded: no line


def test_one_seed_is_shown_without_a_spread():
    mean_std = _table_module()._mean_std
    assert mean_std([0.956]) == "95.60"  # one run: its spread is unknown, not 0
    assert mean_std([0.94, 0.952]) == f"94.60 ± {100 * statistics.stdev([0.94, 0.952]):.2f}"


def test_arguments_other_than_config_fields_are_refused(capsys):
    with pytest.raises(SystemExit):
        _table_module().parse_args(["--model", "p4sa"])
    assert "only --config.<field>=<value>" in capsys.readouterr().err


def _resolved(flags):
    """The configuration of ``main.py <flags>`` after the defaults are filled in, and the family."""
    return _table_module().resolved_config(flags)


def _readme_rotmnist5k_commands(program: str = "main.py"):
    """The arguments of each ``python <program>`` command of runs/README.md's rotMNIST5k section."""
    return [shlex.split(line)[2:] for line in _rotmnist5k_section().splitlines()
            if line.startswith(f"python {program} ")]


def test_runs_readme_spells_out_the_defaults_the_table_trains_with():
    from runner import paths

    commands = _readme_rotmnist5k_commands()
    assert [flags[1] for flags in commands] == [f"--config.model={name}" for name in _table_module().MODELS]
    for flags in commands:
        spelled, family = _resolved(flags)
        table_run, _ = _resolved(flags[:3])  # dataset, model and seed only, as the table script runs it
        assert paths.run_identity(spelled, family) == paths.run_identity(table_run, family)


def test_kinds_of_models_that_are_shipped():
    kind_of = _table_module().kind_of
    assert [kind_of(name) for name in ("p4sa", "z2sa", "f_att_p4cnn", "att_p4cnn", "p4cnn", "z2cnn")] == [
        "GSA-Net", "GSA-Net", "attentive G-CNN", "attentive G-CNN", "other", "other"]


def test_epoch_benchmark_times_the_model_and_each_attention_layer(capsys):
    import json

    benchmark = load_script("benchmarks/rotmnist5k_epoch.py")
    benchmark.main(["--models", "z2sa", "z2cnn", "--repeats", "1", "--threads", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model, *layers, cnn = lines
    from g_selfatt_models.protocols import ROTMNIST5K

    batch = ROTMNIST5K["batch_size"]  # the protocol's
    assert (model["model"], model["batch"], cnn["model"]) == ("z2sa", batch, "z2cnn")
    steps = -(-3500 // batch)  # 3,500 training digits
    assert model["epoch_s"] == pytest.approx(model["step_s"] * steps, abs=0.1)
    from g_selfatt.nn.attention import SelfAttentionCore
    import g_selfatt_models as models

    network = models.create_model("z2sa", dataset="rotMNIST5k")
    attention = [name for name, module in network.named_modules() if isinstance(module, SelfAttentionCore)]
    assert [layer["layer"] for layer in layers] == attention and len(attention) == 3
    # lifting at 28x28, then one block at 14x14 and one at 7x7 (z2: one group element)
    assert [layer["input"][-3:] for layer in layers] == [[1, 28, 28], [1, 14, 14], [1, 7, 7]]
    assert all(0 < layer["share_of_step"] for layer in layers)


def test_epoch_benchmark_sets_fields_of_the_model(capsys):
    import json

    benchmark = load_script("benchmarks/rotmnist5k_epoch.py")
    benchmark.main(["--models", "z2sa", "--repeats", "1", "--threads", "1", "--set", "num_channels=8",
                    "num_heads=2"])
    model = json.loads(capsys.readouterr().out.splitlines()[0])
    import g_selfatt_models as models

    network = models.create_model("z2sa", dataset="rotMNIST5k", num_channels=8, num_heads=2)
    assert (model["num_channels"], model["num_heads"]) == (8, 2)
    assert model["parameters"] == sum(p.numel() for p in network.parameters())
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        benchmark.main(["--models", "z2sa", "--set", "num_heads"])


def test_a_run_that_a_signal_stopped_ends_the_tool_without_a_traceback(capsys):
    from runner.signals import run_to_completion

    run_to_completion([sys.executable, "-c", "pass"], REPO_ROOT, "[table] ok")
    with pytest.raises(SystemExit) as stopped:
        run_to_completion([sys.executable, "-c", "import sys; sys.exit(143)"], REPO_ROOT, "[table] p4sa seed 0")
    assert stopped.value.code == 143
    assert "[table] p4sa seed 0: stopped by SIGTERM; run the same command again to resume it." in capsys.readouterr().err
    with pytest.raises(subprocess.CalledProcessError):
        run_to_completion([sys.executable, "-c", "import sys; sys.exit(1)"], REPO_ROOT, "[table] p4sa seed 0")


# A tool running one stand-in for main.py, which saves for half a second when SIGINT stops it.
_TOOL = """
import sys
from runner.signals import run_to_completion
run_to_completion([sys.executable, "-c", sys.argv[1], sys.argv[2]], ".", "[table] p4sa seed 0")
"""
_RUN = """
import pathlib, signal, sys, time
def stop(signal_number, frame):
    time.sleep(0.5)  # its current step, then its resumable checkpoint
    pathlib.Path(sys.argv[1], "saved").write_text("checkpoint")
    sys.exit(128 + signal_number)
signal.signal(signal.SIGINT, stop)
pathlib.Path(sys.argv[1], "ready").write_text("")
time.sleep(60)
"""


def test_ctrl_c_on_a_tool_lets_its_run_save_before_both_end(tmp_path):
    """Ctrl-C reaches the terminal's whole process group: the tool waits while its run saves."""
    import os
    import signal
    import time

    tool = subprocess.Popen([sys.executable, "-c", _TOOL, _RUN, str(tmp_path)], cwd=REPO_ROOT, start_new_session=True,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(tool.pid, signal.SIGINT)  # what Ctrl-C does
    _, err = tool.communicate(timeout=60)
    assert tool.returncode == 130
    assert (tmp_path / "saved").read_text() == "checkpoint"
    assert "stopped by SIGINT; run the same command again to resume it." in err and "Traceback" not in err


def test_search_logs_validation_numbers_only_and_skips_recorded_candidates(tmp_path, capsys, monkeypatch,
                                                                           main_server):
    search = load_script("tools/rotmnist5k_search.py")
    monkeypatch.setattr(subprocess, "run", main_server.run_command)  # as runner.signals runs main.py
    fixture_data.make_rotmnist5k(tmp_path / "data", n=40)
    argv = ["--only", "p4_h4", "--threads", "1", "--save-dir", str(tmp_path / "saved"), "--log", str(tmp_path / "log.csv"),
            f"--config.data_root={tmp_path / 'data'}", "--config.max_examples=4", "--config.batch_size=4",
            "--config.epochs=1", "--config.valid_size=4", "--config.device=cpu"]
    search.main(argv)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [(row["key"], row["flags"], row["parameters"], row["threads"], row["machine"]) for row in rows] == [
        ("p4_h4", "num_channels=16 num_heads=4", "11670", "1", machine.cpu())]
    assert not any("test" in column for column in rows[0])
    # The runs never look at the test digits (--config.test=False): no test report is written.
    assert not list((tmp_path / "saved" / "p4_h4").glob("*.test.json"))
    history = list(csv.DictReader(open(tmp_path / "saved" / "p4_h4" / "model.metrics.csv")))
    assert float(rows[0]["best_val_accuracy"]) == max(float(row["val_accuracy"]) for row in history)
    # The epoch logged is the one the run selected, not the first of equal accuracies: an earlier
    # epoch of the same accuracy in the history changes nothing.
    prefix = tmp_path / "saved" / "p4_h4" / "model"
    with open(f"{prefix}.metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows([{**history[-1], "epoch": "0"}, *history])
    assert search.summarise("p4_h4", {}, prefix, 1)["best_epoch"] == int(rows[0]["best_epoch"]) == 1
    search.main(argv)
    assert "p4_h4: recorded" in capsys.readouterr().out
    assert len(list(csv.DictReader(open(tmp_path / "log.csv")))) == 1
    assert "--config.block_sizes=(0,1,2)" in search.command("k", {"block_sizes": (0, 1, 2)}, tmp_path, 2)
    # Every GSA-Net candidate spells out its layout, so that a key means one run after a default
    # changes (a CNN's layout is fixed by its model).
    import g_selfatt_models as models

    assert [key for key, flags in search.CANDIDATES.items()
            if models.get_model_spec(flags.get("model", search.SEARCH_BASE["model"])).family == "gsa"
            and not {"num_channels", "num_heads"} <= set(flags)] == []
    # The base (seed 0, and the protocol's epochs, batch and augmentation when the search began) unless the
    # candidate names another value, each field given once.

    def given(flags, field):
        return [flag for flag in search.command("k", flags, tmp_path, 2) if flag.startswith(f"--config.{field}=")]

    assert [given({}, "seed"), given({"seed": 1}, "seed")] == [["--config.seed=0"], ["--config.seed=1"]]
    assert given({}, "epochs") + given({}, "batch_size") == ["--config.epochs=20", "--config.batch_size=32"]
    assert given({}, "augment") + given({"augment": True}, "augment") == ["--config.augment=False", "--config.augment=True"]
    assert given({"epochs": 40, "batch_size": 8}, "epochs") + given({"epochs": 40, "batch_size": 8}, "batch_size") == [
        "--config.epochs=40", "--config.batch_size=8"]
    # A run whose row is missing (the session ended before it was written) goes on from its checkpoint.
    (tmp_path / "log.csv").unlink()
    assert "--config.resume=True" in search.command("p4_h4", search.CANDIDATES["p4_h4"], tmp_path / "saved", 1)
    assert "--config.overwrite=True" in search.command("p4_h5", {}, tmp_path / "saved", 1)
    search.main(argv)
    assert "--config.resume=True" in capsys.readouterr().out
    assert list(csv.DictReader(open(tmp_path / "log.csv"))) == rows


def _blur_module():
    return load_script("tools/blur_sensitivity.py")


def test_blur_measures_interpolate_without_turning_and_blur_with_unit_weight():
    import torch

    blur = _blur_module()
    images = torch.zeros(2, 1, 15, 15)
    images[:, :, 7, 4:11] = 1.0  # a bar through the centre
    assert blur.reinterpolated(images, 90.0) is images
    twice = blur.reinterpolated(images, 45.0)
    # blurred, not moved: every bar pixel but the centre of rotation (which maps onto itself, so
    # stays 1 up to round-off) loses ink to its neighbours
    assert 0.05 < float((twice - images).abs().max())
    assert float(twice[:, :, 7, [4, 5, 6, 8, 9, 10]].max()) < 0.9
    torch.testing.assert_close(twice[:, :, 7, 7], torch.ones(2, 1), rtol=0, atol=1e-5)
    assert float((twice * images).sum()) > 0.5 * float((twice * twice).sum())  # the ink stays on the bar
    smooth = blur.gaussian_blurred(images, 1.0)
    torch.testing.assert_close(smooth.sum(), images.sum(), rtol=1e-5, atol=0)  # away from the borders
    torch.testing.assert_close(smooth[0, 0], smooth[0, 0].flip(0), rtol=0, atol=1e-6)  # symmetric kernel


def test_blur_report_recalibrates_batchnorm_and_measures_drift_per_stage():
    import torch
    from torch import nn

    blur = _blur_module()
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten()).eval()
    images = torch.rand(200, 1, 6, 6)  # two full batches: the cumulative average is their mean
    adapted = blur.recalibrated(model, lambda x: x, images)
    with torch.no_grad():
        features = model[0](images)  # (B, 3, 4, 4)
    torch.testing.assert_close(adapted[1].running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    assert float(model[1].running_mean.abs().max()) == 0.0  # the original is left alone
    shifted = images + 0.1
    drift = dict(blur.stage_drift(nn.Sequential(model), lambda x: x, images, shifted))
    assert drift["input"] == pytest.approx(float((0.1 * torch.ones_like(images)).norm() / images.norm()))
    assert set(drift) == {"input", "0.0", "0.1", "0.2"}


@pytest.mark.parametrize("written", ["table.md", "comparisons.md"])
@pytest.mark.parametrize("folder", ["default", "rotMNIST5k"])
def test_readme_shows_the_committed_results_table(written, folder):
    """README's results tables and their comparisons are what the script last wrote, every row:
    to its default ``--output-dir`` (the protocol's table) and to ``runs/rotMNIST5k/`` (the
    previous protocol's)."""
    output_dir = _table_module().parse_args([]).output_dir if folder == "default" else REPO_ROOT / "runs" / folder
    table = (output_dir / written).read_text().splitlines()
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Results on real rotated digits", 1)[1].split("\n## ", 1)[0]
    assert len(table) >= 3 and all(f"\n{line}\n" in section for line in table)


def _rotmnist5k_section() -> str:
    text = (REPO_ROOT / "runs" / "README.md").read_text()
    return text.split("## rotMNIST5k: both families on real rotated digits", 1)[1].split("\n## ", 1)[0]


def test_the_documented_commands_are_the_committed_tables_runs():
    """Each ``main.py`` command of runs/README.md's rotMNIST5k section is, under today's defaults,
    the run that the table's runs.csv records for its model (seed 0), and each documented table
    command (and the tool without arguments) accepts every row of the runs.csv it writes to; one
    such command without its protocol flags is refused."""
    from runner import paths

    table_tool = _table_module()
    default = table_tool.parse_args([])
    rows = table_tool._keyed(table_tool.recorded_rows(default.output_dir / "runs.csv"))
    commands = _readme_rotmnist5k_commands()
    assert len(commands) == len(table_tool.MODELS)
    for flags in commands:
        config, family = table_tool.resolved_config([*flags, "--config.rotation_angles=24"])
        assert paths.identity_hash(paths.run_identity(config, family)) == rows[(config.model, 0)]["run"]

    def checked(argv):
        args = table_tool.parse_args(argv)
        output_dir = REPO_ROOT / args.output_dir
        recorded = table_tool.recorded_rows(output_dir / "runs.csv")
        for row in recorded:
            table_tool.check_recorded_row(row, output_dir, args.extra)
        return recorded

    tables = _readme_rotmnist5k_commands("tools/rotmnist5k_table.py")
    assert len(tables) == 3 and all(checked(argv) for argv in [[], *tables])
    wider = next(argv for argv in tables if "--config.num_heads=4" in argv)
    with pytest.raises(table_tool.OtherRunError, match="another configuration"):
        checked([flag for flag in wider if flag not in ("--config.epochs=40", "--config.augment=False")])
