"""The CPU-side parts of ``benchmarks/gpu_check.py``: arguments, the budget, the report and the projection."""

import json

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("benchmarks/gpu_check.py")


def test_arguments_default_to_every_part_and_implementation(gpu_check, tmp_path):
    args = gpu_check.parse_args([str(tmp_path)])
    assert args.parts == list(gpu_check.PARTS) and args.impls == ["efficient", "flex", "triton"]
    assert args.budget_s == 360 and args.out_dir == tmp_path


@pytest.mark.parametrize("argv,message", [
    (["--parts", "equality,speed"], "unknown part 'speed'; choose from environment,equality"),
    (["--impls", "fused2"], "unknown implementation 'fused2'; choose from efficient,flex,triton"),
    (["--budget-s", "0"], "--budget-s must be positive"),
])
def test_bad_arguments_are_named_with_the_choices(gpu_check, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        gpu_check.parse_args([str(tmp_path)] + argv)
    assert message in capsys.readouterr().err


def test_the_budget_is_shared_out_between_the_parts(gpu_check):
    now = [100.0]
    budget = gpu_check.Budget(360, clock=lambda: now[0])
    assert budget.for_part("equality") == pytest.approx(72) and budget.for_part("projection") == 360
    now[0] += 300
    assert budget.left() == pytest.approx(60) and budget.for_part("benchmark") == pytest.approx(36)
    now[0] += 100
    assert budget.left() == 0


def _benchmark_record(case, impl, time_s, memory_mb):
    return {"case": case, "description": f"case {case}", "impl": impl, "time_s": time_s,
            "peak_memory_mb": memory_mb, "time_over_floor": 3.0}


def test_the_projection_multiplies_case_c_by_the_papers_steps(gpu_check):
    records = [_benchmark_record("c", "reference", 2.0, 4000.0), _benchmark_record("c", "efficient", 0.5, 800.0),
               _benchmark_record("c", "triton", 0.1, 200.0), _benchmark_record("a", "triton", 9.0, 1.0)]
    projected = gpu_check.projection(records)
    steps = 350 * -(-45_000 // 24)  # 1,875 steps an epoch
    assert projected["steps"] == steps == 656_250
    assert projected["runs"]["triton"]["hours"] == pytest.approx(steps * 0.1 / 3600)
    assert projected["ratios"] == {"reference time / triton time": 20.0, "reference memory / triton memory": 20.0,
                                   "efficient time / triton time": 5.0, "efficient memory / triton memory": 4.0}
    assert gpu_check.projection([]) == {"steps": steps, "runs": {}, "ratios": {}}


def test_the_report_is_written_whole_as_json_and_markdown(gpu_check, tmp_path):
    report = {
        "environment": {"gpu": "Some GPU", "torch": "2.11"},
        "equality": [{"impl": "triton", "kind": "group", "precision": "float32", "output_ratio": 0.01,
                      "gradient_ratio": 0.2, "passed": True},
                     {"impl": "flex", "kind": "lift", "precision": "bf16", "output_ratio": 3.0,
                      "gradient_ratio": 0.2, "passed": False},
                     {"impl": "flex", "kind": "group", "precision": "bf16", "error": "RuntimeError: boom"}],
        "benchmark": [_benchmark_record("c", "triton", 0.1, 200.0),
                      {"case": "d", "impl": "reference", "skipped": "would need about 16 GiB"},
                      {"stopped": "cut at 200 s (the budget)"}],
        "max_batch": [{"impl": "triton", "max_batch": 512}, {"impl": "efficient", "error": "no result"}],
        "main_amp": {"result": "Test accuracy 0.5"},
        "projection": gpu_check.projection([_benchmark_record("c", "triton", 0.1, 200.0)]),
        "errors": {"main_amp": "ValueError: x"},
    }
    gpu_check.write_report(tmp_path / "out", report)
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == report
    text = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "- gpu: Some GPU" in text
    assert "| triton | group | float32 | 0.01 | 0.2 | pass |" in text
    assert "| flex | lift | bf16 | 3 | 0.2 | **FAIL** |" in text and "failed to run: RuntimeError: boom" in text
    assert "| (c) case c | triton | 0.1 s | 200 MB | 3 |" in text and "skipped: would need about 16 GiB" in text
    assert "stopped: cut at 200 s" in text and "| triton | 512 |" in text and "| efficient | no result |" in text
    assert "| triton | 0.1 s | 18.2 h (0.76 days) |" in text and "part main_amp failed: ValueError: x" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.md"]


def test_a_run_of_the_cpu_side_parts_writes_both_files(gpu_check, tmp_path):
    report = gpu_check.main([str(tmp_path), "--parts", "environment,equality,projection", "--impls", "efficient",
                             "--device", "cpu", "--budget-s", "120"])
    assert report["environment"]["torch"] and not report["errors"]
    assert {(r["impl"], r["precision"]) for r in report["equality"]} == {
        (impl, precision) for impl in ("reference", "efficient") for precision in ("float32", "bf16")}
    assert all(r["passed"] for r in report["equality"]), report["equality"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["equality"] == report["equality"]


def test_the_main_py_flags_are_fields_of_the_configuration(gpu_check, tmp_path):
    from runner.defaults import check_field_names

    flags = gpu_check.main_amp_flags("cuda", tmp_path)
    check_field_names(flags)  # raises ConfigError naming an unknown field
    assert "--config.amp=bf16" in flags and "--config.device=cuda" in flags
