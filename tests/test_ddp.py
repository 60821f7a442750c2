"""CCAMonitor under DDP with 2 CPU processes: no hang, one output, snapshots equal one process's."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_run import MAX_ROWS
from lightning_models import TinyConvNet, tiny_dataset

from cca_monitor import SnapshotStore, analyse_snapshots, capture_activations, read_results

DDP_TIMEOUT_S = 300
SNAPSHOT_TOL = 1e-6


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    script = Path(__file__).with_name("ddp_run.py")
    result = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=DDP_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_one_set_of_outputs(ddp_run):
    assert len(list(ddp_run.rglob("events.out.tfevents.*"))) == 1
    assert len(list(ddp_run.rglob("cca_results.csv"))) == 1
    assert len(list(ddp_run.rglob("cca_snapshots"))) == 1


@pytest.mark.slow
def test_split_probe_snapshot_equals_one_process(ddp_run):
    store = SnapshotStore(next(ddp_run.rglob("cca_snapshots")))
    # 256 training examples, 2 ranks, batch 32: 4 optimizer steps per epoch and rank
    assert store.steps() == [0, 2, 4, 6, 8]
    model = TinyConvNet()
    model.load_state_dict(torch.load(ddp_run / "initial.pt"))
    probe = tiny_dataset(128, 1).tensors[0]
    expected = capture_activations(model, probe, ["conv", "fc1", "fc2"], max_rows=MAX_ROWS)
    stored = store.read(0)
    assert set(stored) == set(expected)
    for layer, values in expected.items():
        assert stored[layer].shape == values.shape
        torch.testing.assert_close(stored[layer], values, atol=SNAPSHOT_TOL, rtol=0)


@pytest.mark.slow
def test_distances_equal_one_process_recomputation(ddp_run):
    store = SnapshotStore(next(ddp_run.rglob("cca_snapshots")))
    recomputed = analyse_snapshots(store, ["svcca", "pwcca"]).records
    written = read_results(next(ddp_run.rglob("cca_results.json")))
    key = lambda r: (r.reference, r.measure, r.layer, r.step)  # noqa: E731
    assert sorted(map(key, written)) == sorted(map(key, recomputed))
    by_key = {key(r): r.distance for r in recomputed}
    for record in written:
        assert record.distance == pytest.approx(by_key[key(record)], abs=SNAPSHOT_TOL)
