"""The cca-monitor command: demo (smoke) and report on the demo's output."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cca_monitor.cli import main
from cca_monitor.storage import SNAPSHOT_DIR_NAME, SnapshotStore


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--smoke", "--out", str(out), "--num-snapshots", "4"]) == 0
    return out, next(out.glob("mnist_cnn/version_*"))


def test_demo_smoke_prints_table_and_writes_events(demo_run, capsys):
    out, run_dir = demo_run
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "cca_results.json").is_file()
    summary = json.loads((run_dir / "cca_results.json").read_text())["summary"]
    assert summary["layers"] == ["conv1", "conv2", "fc1", "fc2"]


def test_demo_output_prints_a_table(tmp_path, capsys):
    main(["demo", "--smoke", "--out", str(tmp_path), "--num-snapshots", "3"])
    printed = capsys.readouterr().out
    assert "svcca distance to the final representation" in printed
    for layer in ["conv1", "conv2", "fc1", "fc2"]:
        assert f"\n{layer} " in printed
    assert "within 0.1" in printed


def test_report_recomputes_other_measures(demo_run, tmp_path, capsys):
    _, run_dir = demo_run
    out = tmp_path / "report"
    assert (
        main(["report", str(run_dir), "--measures", "mean_cca", "linear_cka", "--out", str(out)])
        == 0
    )
    assert "mean_cca distance to the final representation" in capsys.readouterr().out
    results = json.loads((out / "cca_results.json").read_text())
    assert {r["measure"] for r in results["records"]} == {"mean_cca", "linear_cka"}
    assert (out / "cca_linear_cka_heatmap.png").is_file()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert "cca/mean_cca_to_final/conv1" in events.Tags()["scalars"]


def test_report_with_another_reference_step(demo_run, tmp_path):
    _, run_dir = demo_run
    out = tmp_path / "report"
    main(["report", str(run_dir), "--reference-step", "0", "--out", str(out)])
    records = json.loads((out / "cca_results.json").read_text())["records"]
    at_zero = [r["distance"] for r in records if r["step"] == 0 and r["reference"] == "final"]
    assert at_zero
    assert max(at_zero) == pytest.approx(0.0, abs=1e-6)


def test_report_without_snapshots_explains(tmp_path):
    with pytest.raises(SystemExit, match="no snapshots"):
        main(["report", str(tmp_path)])


def test_report_with_a_missing_reference_step_explains(demo_run):
    _, run_dir = demo_run
    with pytest.raises(SystemExit, match=r"--reference-step 5 is not a stored step; steps: \[0"):
        main(["report", str(run_dir), "--reference-step", "5"])


@pytest.mark.parametrize("threshold", ["-1", "1.5"])
def test_report_threshold_outside_zero_one_is_rejected(threshold, capsys):
    with pytest.raises(SystemExit):
        main(["report", ".", "--threshold", threshold])
    assert "must be in [0, 1]" in capsys.readouterr().err


def test_unknown_measure_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["report", ".", "--measures", "cosine"])
    assert "invalid choice" in capsys.readouterr().err


def test_compare_two_demo_runs(demo_run, tmp_path, capsys):
    out, first = demo_run
    assert main(["demo", "--smoke", "--out", str(out), "--num-snapshots", "2", "--seed", "1"]) == 0
    second = sorted(out.glob("mnist_cnn/version_*"))[-1]
    assert second != first
    result = tmp_path / "compare"
    assert main(["compare", str(first), str(second), "--out", str(result)]) == 0
    comparison = json.loads((result / "comparison.json").read_text())
    assert comparison["layers"] == ["conv1", "conv2", "fc1", "fc2"]
    assert (result / "dendrogram.png").is_file()


def test_report_with_an_unreadable_snapshot_names_the_file(tmp_path):
    store = SnapshotStore(tmp_path / SNAPSHOT_DIR_NAME)
    for step in (0, 1):
        store.write(step, {"fc": torch.randn(50, 3)})
    store.path(1).write_bytes(b"not a snapshot")
    with pytest.raises(SystemExit, match=r"cca-monitor: Snapshot file .*1.* cannot be read"):
        main(["report", str(tmp_path)])
