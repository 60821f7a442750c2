"""The cca-monitor command: demo (smoke) and report on the demo's output."""

import json
import subprocess
import sys

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


def test_report_with_another_reference_step(demo_run, tmp_path, capsys):
    _, run_dir = demo_run
    out = tmp_path / "report"
    main(["report", str(run_dir), "--reference-step", "0", "--out", str(out)])
    assert "svcca distance to the snapshot at step 0" in capsys.readouterr().out
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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
        (["--num-snapshots", "1"], "--num-snapshots: must be at least 2, got 1"),
        (["--epochs", "two"], "--epochs: invalid int value: 'two'"),
    ],
)
def test_demo_rejects_bad_numbers_without_a_traceback(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--smoke", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _two_snapshots(run_dir):
    store = SnapshotStore(run_dir / SNAPSHOT_DIR_NAME)
    for step in (0, 1):
        store.write(step, {"fc": torch.randn(50, 3)})
    return store


@pytest.mark.parametrize("command", ["demo", "report", "compare"])
def test_an_output_folder_that_cannot_be_made_is_named(tmp_path, command):
    _two_snapshots(tmp_path / "a")
    _two_snapshots(tmp_path / "b")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("taken")
    arguments = {
        "demo": ["demo", "--smoke"],
        "report": ["report", str(tmp_path / "a")],
        "compare": ["compare", str(tmp_path / "a"), str(tmp_path / "b")],
    }[command]
    with pytest.raises(SystemExit, match=r"cca-monitor: cannot use .*file.* as the output folder"):
        main([*arguments, "--out", str(not_a_folder / "inside")])


def test_report_with_unreadable_metadata_names_the_file(tmp_path):
    store = _two_snapshots(tmp_path)
    store.write_metadata({"measures": ["svcca"]})
    (store.directory / "metadata.json").write_text("{bad json")
    with pytest.raises(SystemExit, match=r"cca-monitor: .*metadata.json is not valid JSON"):
        main(["report", str(tmp_path)])


def test_a_second_report_replaces_the_first(demo_run, tmp_path):
    _, run_dir = demo_run
    out = tmp_path / "report"
    main(["report", str(run_dir), "--out", str(out), "--html"])
    main(["report", str(run_dir), "--out", str(out), "--measures", "linear_cka"])
    assert sorted(path.name for path in out.glob("*.png")) == [
        "cca_linear_cka_heatmap.png",
        "cca_linear_cka_to_final.png",
    ]
    assert not (out / "report.html").exists()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert not any(tag.startswith("cca/svcca") for tag in events.Tags()["scalars"])
    steps = [event.step for event in events.Scalars("cca/linear_cka_to_final/fc1")]
    assert steps == sorted(set(steps)), "one point per step"


def test_the_html_report_has_a_column_for_a_chosen_reference_step(demo_run, tmp_path):
    _, run_dir = demo_run
    out = tmp_path / "report"
    steps = SnapshotStore(run_dir / SNAPSHOT_DIR_NAME).steps()
    main(["report", str(run_dir), "--reference-step", str(steps[1]), "--out", str(out), "--html"])
    page = (out / "report.html").read_text()
    assert f"step {steps[1]}</th>" in page
    assert f"<h2>Distance to the snapshot at step {steps[1]}</h2>" in page
    assert "final representation" not in page


def test_warnings_are_printed_on_one_line_by_the_command(tmp_path):
    for run in ("a", "b"):
        _two_snapshots(tmp_path / run)  # no metadata: no probe fingerprint, a warning
    finished = subprocess.run(
        [sys.executable, "-m", "cca_monitor.cli", "compare", "a", "b", "--out", "cmp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "UserWarning: runs ['a', 'b'] record no probe fingerprint" in finished.stderr
    assert "compare_runs(" not in finished.stderr, "no source line"
