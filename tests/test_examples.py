"""Every script in examples/ runs in smoke mode and leaves its outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cca_monitor.storage import SNAPSHOT_DIR_NAME, SnapshotStore

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
TIMEOUT_S = 600


def _run(script, out):
    return subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def run_example(tmp_path_factory):
    """Run a script once per test module; later calls return the same result and folder."""
    done = {}

    def run(script):
        if script not in done:
            out = tmp_path_factory.mktemp(script.stem) / "out"
            done[script] = (_run(script, out), out)
        return done[script]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[script.stem for script in SCRIPTS])
def test_example_runs_in_smoke_mode(script, run_example):
    result, out = run_example(script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.is_dir()


@pytest.mark.slow
def test_plain_pytorch_writes_snapshots_report_and_events(run_example):
    result, out = run_example(EXAMPLES / "plain_pytorch.py")
    assert result.returncode == 0, result.stderr[-3000:]
    layers = ["fc1", "fc2", "fc3"]
    for layer in layers:
        assert f"\n  {layer} " in result.stdout
    assert SnapshotStore(out / SNAPSHOT_DIR_NAME).steps() == [0, 3, 7, 10]
    summary = json.loads((out / "cca_results.json").read_text())["summary"]
    assert summary["layers"] == layers
    assert set(summary["convergence_step"]) == set(layers)
    for measure in ("svcca", "pwcca"):
        assert (out / f"cca_{measure}_to_final.png").is_file()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert "cca/pwcca_to_final/fc3" in events.Tags()["scalars"]
