import csv
import json
import math
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

from cca_monitor import storage
from cca_monitor.records import DistanceRecord
from cca_monitor.storage import SnapshotStore, read_results, write_results


def _snapshot(seed: int, layers=("features.0", "classifier")) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        layer: torch.randn(16, 4 + index, generator=generator) for index, layer in enumerate(layers)
    }


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "snapshots")


# --------------------------------------------------------------------------- snapshots


def test_round_trip_keeps_every_layer_exactly(store):
    written = {step: _snapshot(step) for step in (0, 10, 250)}
    for step, activations in written.items():
        store.write(step, activations)

    assert store.steps() == [0, 10, 250]
    for step, activations in written.items():
        loaded = store.read(step)
        assert list(loaded) == list(activations)
        for layer, tensor in activations.items():
            assert loaded[layer].device.type == "cpu"
            torch.testing.assert_close(loaded[layer], tensor, rtol=0, atol=0)
            torch.testing.assert_close(store.read_layer(step, layer), tensor, rtol=0, atol=0)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"]
)
def test_round_trip_keeps_dtype(store, dtype):
    store.write(3, {"fc": torch.arange(12.0).reshape(4, 3).to(dtype)})
    assert store.read_layer(3, "fc").dtype == dtype


def test_file_is_a_plain_weights_only_dict(store):
    path = store.write(7, _snapshot(7))
    assert path == store.directory / "step_00000007.pt"
    loaded = torch.load(path, weights_only=True)
    assert isinstance(loaded, dict)
    assert set(loaded) == {"features.0", "classifier"}


def test_import_does_not_need_lightning():
    code = "import sys, cca_monitor.storage; print('pytorch_lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_write_detaches_and_makes_contiguous(store):
    leaf = torch.randn(5, 8, requires_grad=True)
    transposed = (leaf * 2).t()
    assert not transposed.is_contiguous()

    store.write(1, {"fc": transposed})

    loaded = store.read_layer(1, "fc")
    assert not loaded.requires_grad
    assert loaded.is_contiguous()
    torch.testing.assert_close(loaded, transposed.detach())


def test_write_does_not_store_the_whole_storage_of_a_view(store):
    big = torch.randn(4096, 64)
    store.write(0, {"fc": big})
    store.write(1, {"fc": big[:16]})
    assert store.disk_bytes(1) < store.disk_bytes(0) / 50
    torch.testing.assert_close(store.read_layer(1, "fc"), big[:16])


def test_directory_is_created_on_first_write_only(tmp_path):
    directory = tmp_path / "run" / "snapshots"
    store = SnapshotStore(directory)
    assert not directory.exists()
    assert store.steps() == []
    assert len(store) == 0
    store.write(0, _snapshot(0))
    assert directory.is_dir()


def test_write_replaces_an_earlier_snapshot_at_the_same_step(store):
    store.write(5, {"fc": torch.zeros(4, 2)})
    store.write(5, {"fc": torch.ones(4, 2)})
    assert store.steps() == [5]
    torch.testing.assert_close(store.read_layer(5, "fc"), torch.ones(4, 2))


def test_steps_ignores_temporary_and_unrelated_files(store):
    store.write(2, _snapshot(2))
    store.write(123_456_789, _snapshot(3))
    for name in (
        ".step_00000009.pt.k2j3.tmp",
        "step_00000011.pt.tmp",
        "step_5.pt",
        "step_0000000x.pt",
        "notes.txt",
    ):
        (store.directory / name).write_bytes(b"partial")
    store.write_metadata({"version": "0"})

    assert store.steps() == [2, 123_456_789]
    assert len(store) == 2
    assert 9 not in store
    assert 11 not in store


def test_interrupted_write_leaves_the_previous_file_and_no_temporary(store, monkeypatch):
    store.write(4, {"fc": torch.zeros(3, 2)})

    def save_half_then_fail(obj, file):
        file.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.torch, "save", save_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        store.write(4, {"fc": torch.ones(3, 2)})
    with pytest.raises(KeyboardInterrupt):
        store.write(8, {"fc": torch.ones(3, 2)})

    assert sorted(p.name for p in store.directory.iterdir()) == ["step_00000004.pt"]
    monkeypatch.undo()
    torch.testing.assert_close(store.read_layer(4, "fc"), torch.zeros(3, 2))


def test_files_get_the_permissions_of_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        store = storage.SnapshotStore(tmp_path / "snapshots")
        path = store.write(0, {"fc": torch.zeros(3, 2)})
        store.write_metadata({"a": 1})
        results = storage.write_results([], tmp_path / "results")
    finally:
        os.umask(previous)
    for written in [path, store.directory / "metadata.json", *results]:
        assert stat.S_IMODE(written.stat().st_mode) == 0o644, written


def test_write_raises_oserror_when_the_directory_cannot_be_made(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="file"):
        SnapshotStore(blocker / "snapshots").write(0, _snapshot(0))


def test_layers_is_the_union_in_first_seen_order(store):
    store.write(0, _snapshot(0, layers=("b", "a")))
    store.write(1, _snapshot(1, layers=("a", "c")))
    store.write(2, _snapshot(2, layers=("d",)))
    assert store.layers() == ["b", "a", "c", "d"]


def test_contains_and_len(store):
    store.write(0, _snapshot(0))
    store.write(30, _snapshot(1))
    assert 0 in store
    assert 30 in store
    assert 1 not in store
    assert -1 not in store
    assert "0" not in store
    assert len(store) == 2


def test_disk_bytes_per_step_and_total(store):
    store.write(0, _snapshot(0))
    store.write(1, _snapshot(1))
    assert store.disk_bytes(0) == store.path(0).stat().st_size > 0
    assert store.disk_bytes() == store.disk_bytes(0) + store.disk_bytes(1)


def test_metadata_round_trip(store):
    meta = {"layers": ["features.0", "classifier"], "measures": ["svcca"], "fingerprint": "ab12"}
    path = store.write_metadata(meta)
    assert path == store.directory / "metadata.json"
    assert store.read_metadata() == meta
    assert json.loads(path.read_text()) == meta


def test_metadata_is_empty_before_any_write(store):
    assert store.read_metadata() == {}


def test_metadata_writes_non_finite_floats_as_null(store):
    store.write_metadata({"noise_floor": math.nan})
    assert store.read_metadata() == {"noise_floor": None}


@pytest.mark.parametrize(
    ("step", "match"),
    [(-1, "non-negative int"), (True, "non-negative int"), (2.0, "non-negative int")],
    ids=["negative", "bool", "float"],
)
def test_write_rejects_bad_steps(store, step, match):
    with pytest.raises(ValueError, match=match):
        store.write(step, _snapshot(0))


@pytest.mark.parametrize(
    ("activations", "error", "match"),
    [
        ({}, ValueError, "non-empty mapping"),
        ([torch.zeros(2, 2)], ValueError, "non-empty mapping"),
        ({"fc": [[0.0, 1.0]]}, TypeError, r"activations\['fc'\].*torch.Tensor.*list"),
        ({3: torch.zeros(2, 2)}, TypeError, "Layer names .* must be str, got 3"),
    ],
    ids=["empty", "not-a-mapping", "not-a-tensor", "non-str-layer"],
)
def test_write_rejects_bad_activations(store, activations, error, match):
    with pytest.raises(error, match=match):
        store.write(0, activations)
    assert store.steps() == []


def test_constructor_rejects_non_paths():
    with pytest.raises(TypeError, match="`directory` must be a str or os.PathLike, got int"):
        SnapshotStore(3)


def test_missing_step_lists_available_steps(store):
    store.write(0, _snapshot(0))
    store.write(10, _snapshot(1))
    with pytest.raises(KeyError, match=r"No snapshot at step 5 .*available steps: \[0, 10\]"):
        store.read(5)
    with pytest.raises(KeyError, match="No snapshot at step 5"):
        store.read_layer(5, "classifier")
    with pytest.raises(KeyError, match="No snapshot at step 5"):
        store.disk_bytes(5)


def test_missing_layer_lists_available_layers(store):
    store.write(0, _snapshot(0))
    with pytest.raises(KeyError, match=r"no layer 'fc9'.*\['features.0', 'classifier'\]"):
        store.read_layer(0, "fc9")


def test_metadata_rejects_values_json_cannot_hold(store):
    with pytest.raises(TypeError, match="`meta` must hold only JSON values"):
        store.write_metadata({"probe": torch.zeros(2)})
    with pytest.raises(TypeError, match="`meta` must be a mapping, got list"):
        store.write_metadata([("a", 1)])
    assert not (store.directory / "metadata.json").exists()


# --------------------------------------------------------------------------- results

NAN = float("nan")


def _records() -> list[DistanceRecord]:
    return [
        DistanceRecord(10, "features.2", "svcca", "final", 0.0),
        DistanceRecord(10, "features.10", "svcca", "final", 0.0),
        DistanceRecord(0, "features.10", "svcca", "final", 0.1 + 0.2),
        DistanceRecord(0, "features.2", "svcca", "final", 0.75),
        DistanceRecord(10, "features.2", "pwcca", "previous", NAN),
        DistanceRecord(10, "features.10", "pwcca", "final", 1e-17),
        DistanceRecord(0, "features.10", "pwcca", "final", 0.5),
    ]


def _normalized(records: list[DistanceRecord]) -> list[tuple]:
    """Records as tuples, with NaN distances as None so that equal files compare equal."""
    return [
        (r.step, r.layer, r.measure, r.reference, None if math.isnan(r.distance) else r.distance)
        for r in records
    ]


EXPECTED_ORDER = [
    (0, "features.10", "pwcca", "final"),
    (10, "features.10", "pwcca", "final"),
    (0, "features.2", "svcca", "final"),
    (10, "features.2", "svcca", "final"),
    (0, "features.10", "svcca", "final"),
    (10, "features.10", "svcca", "final"),
    (10, "features.2", "pwcca", "previous"),
]


@pytest.mark.parametrize("which", [0, 1], ids=["csv", "json"])
def test_results_round_trip_exactly_in_sorted_order(tmp_path, which):
    paths = write_results(_records(), tmp_path)
    loaded = read_results(paths[which])

    distances = {row[:4]: row[4] for row in _normalized(_records())}
    assert _normalized(loaded) == [(*key, distances[key]) for key in EXPECTED_ORDER]


def test_results_file_names_and_csv_layout(tmp_path):
    csv_path, json_path = write_results(_records(), tmp_path / "out")
    assert csv_path == tmp_path / "out" / "cca_results.csv"
    assert json_path == tmp_path / "out" / "cca_results.json"

    with csv_path.open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["step", "layer", "measure", "reference", "distance"]
    assert len(rows) == 1 + len(_records())
    assert rows[-1] == ["10", "features.2", "pwcca", "previous", ""]
    assert rows[5] == ["0", "features.10", "svcca", "final", repr(0.1 + 0.2)]


def test_results_json_layout_and_summary(tmp_path):
    summary = {"measures": ["svcca", "pwcca"], "noise_floor": NAN, "final_step": 10}
    _, json_path = write_results(_records(), tmp_path, summary=summary)
    content = json.loads(json_path.read_text())

    assert set(content) == {"records", "summary"}
    assert content["summary"] == {
        "measures": ["svcca", "pwcca"],
        "noise_floor": None,
        "final_step": 10,
    }
    assert content["records"][-1] == {
        "step": 10,
        "layer": "features.2",
        "measure": "pwcca",
        "reference": "previous",
        "distance": None,
    }


def test_results_json_has_no_summary_unless_given(tmp_path):
    _, json_path = write_results(_records(), tmp_path)
    assert set(json.loads(json_path.read_text())) == {"records"}


def test_results_of_nothing_round_trip(tmp_path):
    csv_path, json_path = write_results([], tmp_path)
    assert read_results(csv_path) == []
    assert read_results(json_path) == []


def test_read_results_from_a_folder_reads_the_json(tmp_path):
    write_results(_records(), tmp_path)
    assert _normalized(read_results(tmp_path)) == _normalized(
        read_results(tmp_path / "cca_results.csv")
    )


def test_write_results_rejects_other_objects(tmp_path):
    with pytest.raises(TypeError, match=r"`records\[1\]` must be a DistanceRecord, got tuple"):
        write_results([_records()[0], (0, "fc", "svcca", "final", 0.5)], tmp_path)
    with pytest.raises(TypeError, match="`summary` must hold only JSON values"):
        write_results(_records(), tmp_path, summary={"tensor": torch.zeros(1)})
    with pytest.raises(TypeError, match="`summary` must be a mapping or None, got list"):
        write_results(_records(), tmp_path, summary=[1, 2])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("results.txt", "", ValueError, r"must name a \.csv or \.json results file"),
        ("missing.csv", None, FileNotFoundError, "No results file"),
        ("bad.csv", "step,layer,value\n0,fc,1\n", ValueError, "expected the columns"),
        (
            "bad_reference.csv",
            "step,layer,measure,reference,distance\n0,fc,svcca,initial,0.5\n",
            ValueError,
            "line 2: reference must be one of .*'initial'",
        ),
        ("bad.json", '[{"step": 0}]', ValueError, r'expected \{"records": \[\.\.\.\]\}'),
        (
            "missing_field.json",
            '{"records": [{"step": 0, "layer": "fc", "measure": "svcca"}]}',
            ValueError,
            r"record 0: missing the fields \['reference', 'distance'\]",
        ),
    ],
    ids=["suffix", "missing", "columns", "reference", "json-shape", "json-fields"],
)
def test_read_results_errors(tmp_path, name, content, error, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=match):
        read_results(path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncated", "not a complete file written by torch.save"),
        ("garbage", "not a complete file written by torch.save"),
        ("empty", "not a complete file written by torch.save"),
        ("other content", "something other than layer name -> tensor"),
    ],
)
def test_an_unreadable_snapshot_names_its_file(store, damage, reason):
    path = store.write(3, _snapshot(0))
    content = path.read_bytes()
    if damage == "other content":
        torch.save({"x": 1}, path)
    else:
        damaged = {"truncated": content[: len(content) // 2], "garbage": b"not a snapshot"}
        path.write_bytes(damaged.get(damage, b""))
    message = rf"Snapshot file {re.escape(str(path))} cannot be read \(.*{re.escape(reason)}"
    with pytest.raises(ValueError, match=message):
        store.read(3)


@pytest.mark.parametrize("content", ["{bad json", "[1, 2]"])
def test_unreadable_metadata_names_its_file(store, content):
    store.write_metadata({"measures": ["svcca"]})
    path = store.directory / storage.METADATA_NAME
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        store.read_metadata()
