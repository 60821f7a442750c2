"""noise_floors: distance of each layer's final representation to a row-shuffled copy."""

import math

import pytest
import torch

from cca_monitor.convergence import LayerWarning, noise_floors
from cca_monitor.similarity import MEASURES, random_baseline
from cca_monitor.storage import SnapshotStore

NUM_DATAPOINTS = 400


@pytest.fixture
def store(tmp_path):
    generator = torch.Generator().manual_seed(0)
    store = SnapshotStore(tmp_path)
    store.write(0, {"narrow": torch.randn(NUM_DATAPOINTS, 4, generator=generator)})
    store.write(
        10,
        {
            "narrow": torch.randn(NUM_DATAPOINTS, 4, generator=generator),
            "wide": torch.randn(NUM_DATAPOINTS, 40, generator=generator),
        },
    )
    return store


@pytest.mark.parametrize("measures", [[m] for m in sorted(MEASURES)] + [sorted(MEASURES)])
def test_floor_is_one_minus_the_random_baseline_of_the_final_snapshot(store, measures):
    floors = noise_floors(store, measures, seed=3)
    final = store.read(10)
    for measure in measures:
        for layer in ("narrow", "wide"):
            expected = 1.0 - random_baseline(final[layer], final[layer], measure, seed=3)
            assert floors[measure][layer] == pytest.approx(expected, abs=1e-12)
            assert 0.0 <= floors[measure][layer] <= 1.0


def test_more_neurons_per_datapoint_lower_the_cca_floor(store):
    floors = noise_floors(store, ["mean_cca"])["mean_cca"]
    assert floors["wide"] < floors["narrow"] < 1.0


def test_given_step_is_used(store):
    floors = noise_floors(store, ["svcca", "pwcca"], step=0)
    assert set(floors) == {"svcca", "pwcca"}
    assert list(floors["svcca"]) == ["narrow"]


def test_too_few_datapoints_give_nan_and_a_warning(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(0, {"fc": torch.randn(5, 8)})
    with pytest.warns(LayerWarning, match="layer 'fc'"):
        floors = noise_floors(store, ["svcca"])
    assert math.isnan(floors["svcca"]["fc"])


@pytest.mark.parametrize(
    ("measures", "step", "match"),
    [
        (["cosine"], None, "unknown measure 'cosine'"),
        (["svcca"], 5, r"`step` 5 is not a stored step; steps: \[0, 10\]"),
    ],
    ids=["measure", "step"],
)
def test_bad_arguments_are_named(store, measures, step, match):
    with pytest.raises(ValueError, match=match):
        noise_floors(store, measures, step=step)


def test_empty_store_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no snapshots found"):
        noise_floors(SnapshotStore(tmp_path), ["svcca"])
