"""The experiment scripts: their statistics, and every script end to end in --smoke mode."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

from _common import (  # noqa: E402
    adjusted_rand_index,
    load_split,
    mean_pairwise,
    permuted_labels,
    ranks,
    spearman,
)
from learning_rates import nearest_neighbour_agreement  # noqa: E402

TOLERANCE = 1e-12
SMOKE_TIMEOUT_SECONDS = 120


# -- statistics ---------------------------------------------------------------------------

PAIRS = {
    "increasing": ([1, 2, 3, 4, 5], [2, 4, 8, 16, 32]),
    "decreasing": ([16, 32, 64, 128], [0.3, 0.2, 0.25, 0.1]),
    "ties": ([0, 1, 2, 3, 4], [0, 0, 29, 97, 97]),
    "floats": ([0.5, -1.0, 2.5, 3.0, 0.0, 1.5], [1.0, 3.0, -2.0, 0.5, 0.5, 4.0]),
}


@pytest.mark.parametrize(("x", "y"), PAIRS.values(), ids=PAIRS.keys())
def test_spearman_matches_scipy(x, y):
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=TOLERANCE)


@pytest.mark.parametrize(("x", "y"), PAIRS.values(), ids=PAIRS.keys())
def test_ranks_match_scipy(x, y):
    np.testing.assert_allclose(ranks(y), stats.rankdata(y))


def test_spearman_of_a_constant_is_nan():
    assert math.isnan(spearman([0, 1, 2], [5, 5, 5]))


@pytest.mark.parametrize(
    ("x", "y"), [([1, 2, 3], [1, 2]), ([1], [1])], ids=["lengths differ", "one value"]
)
def test_spearman_rejects_bad_lengths(x, y):
    with pytest.raises(ValueError, match="same length >= 2"):
        spearman(x, y)


ARI_CASES = {
    "identical": ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], 1.0),
    "renamed": ([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1], 1.0),
    # pairs together in both: 1, in the truth: 2, in the prediction: 3, of 6 pairs; the
    # expected overlap 2 * 3 / 6 = 1 equals the observed one: ARI 0
    "one run moved": ([0, 0, 1, 1], [0, 0, 0, 1], 0.0),
    "crossed": ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),
    "merged": ([0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0], 0.0),
}


@pytest.mark.parametrize(("truth", "labels", "expected"), ARI_CASES.values(), ids=ARI_CASES.keys())
def test_adjusted_rand_index_known_values(truth, labels, expected):
    assert adjusted_rand_index(truth, labels) == pytest.approx(expected, abs=TOLERANCE)


def test_adjusted_rand_index_from_the_pair_counts():
    # 8 items; truth {0..3}, {4..7}; prediction {0,1,2}, {3,4}, {5,6,7}
    truth, labels = [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 2, 2, 2]
    together, true_pairs, pred_pairs, all_pairs = 6, 12, 7, 28
    expected = true_pairs * pred_pairs / all_pairs
    value = (together - expected) / ((true_pairs + pred_pairs) / 2 - expected)
    assert adjusted_rand_index(truth, labels) == pytest.approx(value, abs=TOLERANCE)


def test_adjusted_rand_index_rejects_different_items():
    with pytest.raises(ValueError, match="label the same items"):
        adjusted_rand_index([0, 1], [0, 1, 1])


def test_mean_pairwise_within_and_between_groups():
    distances = np.array([[0.0, 0.1, 0.5], [0.1, 0.0, 0.7], [0.5, 0.7, 0.0]])
    assert mean_pairwise(distances, [0, 1], [0, 1]) == pytest.approx(0.1)
    assert mean_pairwise(distances, [0, 1], [2]) == pytest.approx(0.6)


def test_mean_pairwise_rejects_a_single_run():
    with pytest.raises(ValueError, match="no pair of distinct runs"):
        mean_pairwise(np.zeros((2, 2)), [0], [0])


NEAREST = {
    "separated": (
        [[0, 0.1, 0.9, 0.9], [0.1, 0, 0.9, 0.9], [0.9, 0.9, 0, 0.2], [0.9, 0.9, 0.2, 0]],
        1.0,
    ),
    "crossed": (
        [[0, 0.9, 0.1, 0.9], [0.9, 0, 0.9, 0.1], [0.1, 0.9, 0, 0.9], [0.9, 0.1, 0.9, 0]],
        0.0,
    ),
}


@pytest.mark.parametrize(("distances", "expected"), NEAREST.values(), ids=NEAREST.keys())
def test_nearest_neighbour_agreement(distances, expected):
    assert nearest_neighbour_agreement(np.array(distances), [0, 0, 1, 1]) == expected


# -- data ---------------------------------------------------------------------------------


def test_load_split_is_disjoint_and_seeded():
    split = load_split("mnist_digits", num_train=300, num_probe=200, seed=3)
    again = load_split("mnist_digits", num_train=300, num_probe=200, seed=3)
    assert split.train_images.shape == (300, 1, 28, 28)
    assert split.image_shape == (1, 28, 28)
    assert torch.equal(split.probe_images, again.probe_images)
    train = {tuple(row.tolist()) for row in split.train_images.flatten(1)[:, ::7]}
    probe = {tuple(row.tolist()) for row in split.probe_images.flatten(1)[:, ::7]}
    assert not train & probe


@pytest.mark.parametrize(
    ("dataset", "sizes", "message"),
    [
        ("mnist_digits", (4000, 2000), "exceeds the 5000 bundled digits"),
        ("svhn", (10, 10), "dataset must be one of"),
    ],
    ids=["too many digits", "unknown dataset"],
)
def test_load_split_rejects(dataset, sizes, message):
    with pytest.raises(ValueError, match=message):
        load_split(dataset, num_train=sizes[0], num_probe=sizes[1])


def test_permuted_labels_keep_the_label_counts():
    labels = torch.arange(100) % 10
    shuffled = permuted_labels(labels, seed=1)
    assert torch.equal(torch.bincount(shuffled), torch.bincount(labels))
    assert not torch.equal(shuffled, labels)
    assert torch.equal(shuffled, permuted_labels(labels, seed=1))


# -- scripts in smoke mode ----------------------------------------------------------------


def _is_float(value):
    return isinstance(value, float)


def _is_float_or_null(value):
    return value is None or isinstance(value, float)


def _is_step_or_null(value):
    return value is None or isinstance(value, int)


def _check_bottom_up(summary):
    assert summary["layers"]
    assert set(summary["convergence_step"]) == set(summary["layers"])
    assert all(_is_step_or_null(step) for step in summary["convergence_step"].values())
    assert _is_float_or_null(summary["spearman_depth_vs_convergence_step"])
    assert 0.0 <= summary["val_accuracy"] <= 1.0


def _check_generalize_vs_memorize(summary):
    layers = summary["layers"]
    assert layers
    assert all(isinstance(layer, str) for layer in layers)
    for key in ("gen_gen", "mem_mem", "gen_mem"):
        assert list(summary[key]) == layers
        assert all(0.0 <= distance <= 1.0 for distance in summary[key].values())
    assert 0.0 <= summary["mem_train_accuracy"] <= 1.0


def _check_width(summary):
    widths = summary["widths"]
    assert len(widths) >= 2
    assert all(isinstance(width, int) for width in widths)
    assert list(summary["mean_pairwise_distance"]) == [str(width) for width in widths]
    assert all(_is_float(value) for value in summary["mean_pairwise_distance"].values())
    assert _is_float_or_null(summary["spearman_width_vs_distance"])


def _check_learning_rates(summary):
    rates = summary["learning_rates"]
    assert len(rates) >= 2
    assert all(_is_float(rate) for rate in rates)
    assert len(summary["accuracy"]) == len(summary["runs"]) == len(summary["cluster_labels"])
    assert all(0.0 <= value <= 1.0 for value in summary["accuracy"])
    assert -1.0 <= summary["adjusted_rand_index"] <= 1.0
    assert 0.0 <= summary["nearest_neighbour_same_learning_rate"] <= 1.0


SCRIPTS = {
    "bottom_up": (_check_bottom_up, "bottom_up.png"),
    "bottom_up_rnn": (_check_bottom_up, "bottom_up.png"),
    "generalize_vs_memorize": (_check_generalize_vs_memorize, "generalize_vs_memorize.png"),
    "width": (_check_width, "width.png"),
    "learning_rates": (_check_learning_rates, "learning_rates.png"),
}


def test_every_script_is_smoke_tested():
    scripts = {path.stem for path in EXPERIMENTS.glob("*.py") if not path.stem.startswith("_")}
    assert scripts == set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPTS)
def test_script_smoke_run(script, tmp_path):
    check, figure = SCRIPTS[script]
    result = subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{script}.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check(json.loads((tmp_path / "summary.json").read_text()))
    assert (tmp_path / figure).stat().st_size > 0
    assert list(tmp_path.glob("*/version_*/events.out.tfevents.*"))
    assert list(tmp_path.glob("*/version_*/cca_snapshots"))
