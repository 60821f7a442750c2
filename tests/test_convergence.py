"""Distances between stored snapshots, checked against the similarity functions one by one."""

import math
import warnings

import pytest
import torch

from cca_monitor import SnapshotStore, convergence
from cca_monitor.convergence import (
    LayerWarning,
    analyse_snapshots,
    distances_to_previous,
    distances_to_reference,
    prepare_snapshot,
    snapshot_distances,
)
from cca_monitor.records import DistanceRecord
from cca_monitor.similarity import MEASURES

STEPS = [0, 5, 10, 20]
MEASURE_NAMES = ["svcca", "pwcca", "linear_cka"]


@pytest.fixture
def store(tmp_path):
    """Four snapshots of two layers drifting towards their last state."""
    generator = torch.Generator().manual_seed(11)
    store = SnapshotStore(tmp_path / "snapshots")
    final = {"conv": torch.randn(300, 6, generator=generator), "fc": torch.randn(300, 4)}
    for index, step in enumerate(STEPS):
        weight = index / (len(STEPS) - 1)
        store.write(
            step,
            {
                layer: weight * values + (1 - weight) * torch.randn(values.shape)
                for layer, values in final.items()
            },
        )
    return store


def _expected(store, pairs, reference):
    """Records computed with the plain similarity functions, one pair at a time."""
    records = []
    for base_step, step in pairs:
        base, snapshot = store.read(base_step), store.read(step)
        for layer in snapshot:
            for measure in MEASURE_NAMES:
                distance = 1.0 - MEASURES[measure](base[layer], snapshot[layer])
                records.append(DistanceRecord(step, layer, measure, reference, distance))
    return records


def _assert_same(found, expected):
    assert [(r.step, r.layer, r.measure, r.reference) for r in found] == [
        (r.step, r.layer, r.measure, r.reference) for r in expected
    ]
    for got, want in zip(found, expected, strict=True):
        assert got.distance == pytest.approx(want.distance, abs=1e-10)


def test_distances_to_final_match_the_similarity_functions(store):
    found = distances_to_reference(store, MEASURE_NAMES)
    _assert_same(found, _expected(store, [(20, step) for step in STEPS], "final"))
    assert all(r.distance == pytest.approx(0.0, abs=1e-9) for r in found if r.step == 20)


def test_distances_to_a_chosen_reference_step(store):
    found = distances_to_reference(store, MEASURE_NAMES, reference_step=5)
    _assert_same(found, _expected(store, [(5, step) for step in STEPS], "final"))


def test_distances_to_previous_match_the_similarity_functions(store):
    found = distances_to_previous(store, MEASURE_NAMES)
    _assert_same(found, _expected(store, list(zip(STEPS, STEPS[1:], strict=False)), "previous"))


def test_analysis_is_both_curves_in_one_pass(store):
    analysis = analyse_snapshots(store, MEASURE_NAMES)
    final = distances_to_reference(store, MEASURE_NAMES)
    previous = distances_to_previous(store, MEASURE_NAMES)
    _assert_same(analysis.records, final + previous)
    assert analysis.summary["steps"] == STEPS
    assert analysis.summary["reference_step"] == 20
    assert analysis.layers == ["conv", "fc"]


def test_known_previous_distances_are_reused_when_they_cover_every_step(store):
    marked = [
        DistanceRecord(r.step, r.layer, r.measure, r.reference, 0.125)
        for r in distances_to_previous(store, MEASURE_NAMES)
    ]
    analysis = analyse_snapshots(store, MEASURE_NAMES, known_previous=marked)
    previous = [r for r in analysis.records if r.reference == "previous"]
    assert previous == marked


@pytest.mark.parametrize(
    "keep",
    [
        lambda r: r.step != 10,  # a step missing (e.g. a resumed run)
        lambda r: r.measure != "pwcca",  # a measure missing
    ],
    ids=["step-missing", "measure-missing"],
)
def test_incomplete_known_previous_distances_are_recomputed(store, keep):
    marked = [
        DistanceRecord(r.step, r.layer, r.measure, r.reference, 0.125)
        for r in distances_to_previous(store, MEASURE_NAMES)
        if keep(r)
    ]
    analysis = analyse_snapshots(store, MEASURE_NAMES, known_previous=marked)
    previous = [r for r in analysis.records if r.reference == "previous"]
    _assert_same(previous, distances_to_previous(store, MEASURE_NAMES))


def test_known_previous_distances_of_an_extra_step_are_not_reused(store):
    extra = DistanceRecord(7, "fc", "svcca", "previous", 0.125)
    known = [*distances_to_previous(store, MEASURE_NAMES), extra]
    analysis = analyse_snapshots(store, MEASURE_NAMES, known_previous=known)
    assert extra not in analysis.records


def test_prepared_snapshots_give_the_same_distances_as_tensors(store):
    base, snapshot = store.read(0), store.read(10)
    plain, _ = snapshot_distances(base, snapshot, MEASURE_NAMES, step=10, kind="final")
    prepared, _ = snapshot_distances(
        prepare_snapshot(base), prepare_snapshot(snapshot), MEASURE_NAMES, step=10, kind="final"
    )
    _assert_same(prepared, plain)


def test_a_layer_with_nan_stays_a_tensor_and_gets_nan_distances():
    bad = torch.randn(50, 3)
    bad[0, 0] = math.nan
    prepared = prepare_snapshot({"fc": bad})
    assert isinstance(prepared["fc"], torch.Tensor)
    records, problems = snapshot_distances(
        {"fc": torch.randn(50, 3)}, prepared, ["svcca"], step=1, kind="final"
    )
    assert math.isnan(records[0].distance)
    assert "fc" in problems


@pytest.mark.parametrize("function", [distances_to_reference, analyse_snapshots])
def test_unknown_reference_step_lists_the_steps(store, function):
    with pytest.raises(ValueError, match=r"reference_step 7 is not a stored step; steps: \[0, 5"):
        function(store, MEASURE_NAMES, reference_step=7)


def test_empty_store_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no snapshots found"):
        analyse_snapshots(SnapshotStore(tmp_path / "empty"), ["svcca"])


def test_a_dead_layer_is_named_in_one_warning(tmp_path):
    store = SnapshotStore(tmp_path / "snapshots")
    for step in (0, 1, 2):
        store.write(step, {"alive": torch.randn(200, 3), "dead": torch.zeros(200, 4)})
    with pytest.warns(LayerWarning) as caught:
        analysis = analyse_snapshots(store, ["svcca", "linear_cka"])
    messages = [str(w.message) for w in caught if "'dead'" in str(w.message)]
    assert messages
    assert all("has no varying neuron" in m for m in messages)
    assert not any("'alive'" in str(w.message) for w in caught)
    dead = [r for r in analysis.records if r.layer == "dead" and r.reference == "final"]
    assert {r.distance for r in dead if r.measure == "svcca"} == {1.0}
    assert all(math.isnan(r.distance) for r in dead if r.measure == "linear_cka")


@pytest.fixture
def two_threads():
    """Torch at two threads, so that the snapshots are split into two ranges."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_snapshots_split_into_one_range_per_core_give_the_same_records(
    store, two_threads, monkeypatch
):
    ranges = []
    over_steps = convergence._distances_over_steps

    def spy(*args):
        ranges.append(args[-2:])
        return over_steps(*args)

    monkeypatch.setattr(convergence, "_distances_over_steps", spy)
    split = analyse_snapshots(store, MEASURE_NAMES).records
    assert sorted(ranges) == [(0, 2), (2, 4)]
    torch.set_num_threads(1)
    ranges.clear()
    one_pass = analyse_snapshots(store, MEASURE_NAMES).records
    assert ranges == [(0, 4)]
    assert [(r.step, r.layer, r.measure, r.reference) for r in split] == [
        (r.step, r.layer, r.measure, r.reference) for r in one_pass
    ]
    assert [r.distance for r in split] == pytest.approx([r.distance for r in one_pass], abs=1e-13)


def test_problems_found_in_parallel_ranges_name_their_own_layer(tmp_path, two_threads):
    store = SnapshotStore(tmp_path / "snapshots")
    for step in range(6):
        layers = {"alive": torch.randn(200, 3), "wide": torch.randn(200, 30)}
        if step >= 3:  # compared with its previous snapshot in the second range only
            layers["dead"] = torch.zeros(200, 4)
        store.write(step, layers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distances_to_previous(store, ["svcca"])
    named = {
        layer: [str(w.message) for w in caught if f"layer '{layer}'" in str(w.message)]
        for layer in ("alive", "wide", "dead")
    }
    assert all(issubclass(w.category, LayerWarning) for w in caught)
    assert named["alive"] == []
    assert len(named["wide"]) == 1
    assert "200 datapoints for 30 neurons" in named["wide"][0]
    assert len(named["dead"]) == 1
    assert "has no varying neuron" in named["dead"][0]
    assert len(caught) == 2


def test_other_warnings_raised_in_parallel_ranges_are_shown(store, two_threads, monkeypatch):
    distances = convergence.snapshot_distances

    def warning_distances(*args, **kwargs):
        warnings.warn(f"step {kwargs['step']} looked odd", RuntimeWarning, stacklevel=1)
        return distances(*args, **kwargs)

    monkeypatch.setattr(convergence, "snapshot_distances", warning_distances)
    with pytest.warns(RuntimeWarning) as caught:
        distances_to_reference(store, MEASURE_NAMES)
    assert {str(w.message) for w in caught} == {f"step {s} looked odd" for s in STEPS}
