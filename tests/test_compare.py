"""compare_runs, the average-linkage clustering, and `cca-monitor compare`, on synthetic runs."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.spatial.distance import squareform

from cca_monitor.cli import main
from cca_monitor.compare import (
    RunComparison,
    average_linkage,
    compare_runs,
    cut_tree,
    format_comparison,
    leaves_order,
)
from cca_monitor.similarity import pwcca
from cca_monitor.storage import SNAPSHOT_DIR_NAME, SnapshotStore, find_store

NUM_DATAPOINTS = 300
LATENT = 4
FAMILIES = [0, 0, 1, 1, 0]
"""The family of each synthetic run: runs of one family share their latent representation."""
FINAL_STEP = 20
LINKAGE_TOL = 1e-12
METADATA = {"probe_fingerprint": "f" * 64, "conv_mode": "positions", "max_rows": 8192, "seed": 0}


def _partition(labels):
    return {frozenset(i for i, label in enumerate(labels) if label == value) for value in labels}


def _write_run(run_dir, latent, generator, *, layers=("fc1", "fc2"), metadata=METADATA):
    """A run whose layers are noisy linear maps of ``latent``; step 0 is unrelated noise."""
    store = SnapshotStore(run_dir / SNAPSHOT_DIR_NAME)
    final = {}
    for width, layer in zip((12, 6), layers, strict=False):
        mixing = torch.randn(LATENT, width, generator=generator)
        noise = torch.randn(NUM_DATAPOINTS, width, generator=generator)
        final[layer] = latent @ mixing + 0.1 * noise
    store.write(0, {layer: torch.randn(NUM_DATAPOINTS, a.shape[1]) for layer, a in final.items()})
    store.write(FINAL_STEP, final)
    if metadata is not None:
        store.write_metadata({**metadata, "layers": list(layers)})
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    generator = torch.Generator().manual_seed(0)
    latents = [torch.randn(NUM_DATAPOINTS, LATENT, generator=generator) for _ in range(2)]
    return [
        _write_run(root / f"seed_{index}" / "version_0", latents[family], generator)
        for index, family in enumerate(FAMILIES)
    ]


@pytest.fixture(scope="module")
def comparison(runs):
    return compare_runs(runs, measure="pwcca")


# -- clustering against scipy -------------------------------------------------------------------


def _random_distances(count, seed):
    points = np.random.default_rng(seed).normal(size=(count, 3))
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


@pytest.mark.parametrize(
    ("count", "seed"), [(2, 0), (3, 1), (5, 2), (9, 3), (16, 4)], ids=["2", "3", "5", "9", "16"]
)
def test_average_linkage_matches_scipy(count, seed):
    distances = _random_distances(count, seed)
    reference = linkage(squareform(distances), method="average")
    ours = average_linkage(distances)
    np.testing.assert_allclose(ours, reference, atol=LINKAGE_TOL)
    assert leaves_order(ours) == leaves_list(reference).tolist()
    for k in range(1, count + 1):
        expected = fcluster(reference, k, criterion="maxclust")
        assert _partition(cut_tree(ours, k)) == _partition(expected.tolist())


def test_cluster_labels_are_numbered_by_first_run():
    distances = np.array([[0.0, 0.9, 0.1], [0.9, 0.0, 0.8], [0.1, 0.8, 0.0]])
    tree = average_linkage(distances)
    assert cut_tree(tree, 2) == [0, 1, 0]
    assert cut_tree(tree, 1) == [0, 0, 0]
    assert cut_tree(tree, 3) == [0, 1, 2]


@pytest.mark.parametrize(
    ("distances", "match"),
    [
        (np.zeros((2, 3)), "square"),
        (np.zeros((1, 1)), "R >= 2"),
        (np.array([[0.0, math.nan], [math.nan, 0.0]]), "NaN"),
        (np.array([[0.0, 0.2], [0.3, 0.0]]), "symmetric"),
        (np.array([[0.1, 0.2], [0.2, 0.0]]), "zero on the diagonal"),
    ],
    ids=["not-square", "one-run", "nan", "asymmetric", "diagonal"],
)
def test_average_linkage_rejects_bad_matrices(distances, match):
    with pytest.raises(ValueError, match=match):
        average_linkage(distances)


@pytest.mark.parametrize("k", [0, 4, 1.5, True], ids=["zero", "too-many", "float", "bool"])
def test_cut_tree_rejects_bad_k(k):
    tree = average_linkage(_random_distances(3, 0))
    with pytest.raises(ValueError, match="`k` must be an int from 1"):
        cut_tree(tree, k)


# -- compare_runs ---------------------------------------------------------------------------------


def test_distance_matrices_are_symmetric_with_zero_diagonal(comparison):
    assert comparison.layers == ("fc1", "fc2")
    assert comparison.steps == (FINAL_STEP,) * len(FAMILIES)
    for matrix in comparison.distances.values():
        assert matrix.shape == (len(FAMILIES), len(FAMILIES))
        np.testing.assert_array_equal(matrix, matrix.T)
        np.testing.assert_array_equal(np.diag(matrix), 0.0)
        assert not matrix.flags.writeable


def test_runs_of_a_family_are_closer_than_across_families(comparison):
    same = np.equal.outer(FAMILIES, FAMILIES)
    off_diagonal = ~np.eye(len(FAMILIES), dtype=bool)
    for matrix in comparison.distances.values():
        assert matrix[same & off_diagonal].max() < 0.2
        assert matrix[~same].min() > 0.5


def test_cluster_labels_recover_the_families(comparison):
    assert comparison.cluster_labels(2) == FAMILIES
    assert comparison.cluster_labels(2, layer="fc2") == FAMILIES
    order = comparison.dendrogram_order()
    assert sorted(order) == list(range(len(FAMILIES)))
    grouped = [FAMILIES[index] for index in order]
    assert grouped in ([0, 0, 0, 1, 1], [1, 1, 0, 0, 0])


def test_pwcca_is_the_mean_of_both_orders(runs, comparison):
    final = [SnapshotStore(run / SNAPSHOT_DIR_NAME).read(FINAL_STEP)["fc1"] for run in runs]
    expected = 1.0 - (pwcca(final[0], final[2]) + pwcca(final[2], final[0])) / 2
    assert comparison.symmetrized
    assert comparison.description == "pwcca distance (mean of both orders)"
    assert comparison.distances["fc1"][0, 2] == pytest.approx(expected, abs=1e-12)
    assert 1.0 - pwcca(final[0], final[2]) != pytest.approx(expected, abs=1e-6)


def test_symmetric_measure_is_not_symmetrized(runs):
    result = compare_runs(runs[:2], measure="svcca")
    assert not result.symmetrized
    assert result.description == "svcca distance"


def test_run_labels_are_the_shortest_distinct_path_endings(comparison):
    assert comparison.runs == tuple(f"seed_{i}/version_0" for i in range(len(FAMILIES)))


def test_names_label_the_runs(runs):
    result = compare_runs(runs[:2], measure="svcca", names=["a", "b"])
    assert result.runs == ("a", "b")


@pytest.mark.parametrize("names", [["a"], ["a", "a"], "ab"], ids=["short", "duplicate", "string"])
def test_bad_names_are_rejected(runs, names):
    with pytest.raises(ValueError, match="`names` must be 2 distinct labels"):
        compare_runs(runs[:2], names=names)


def test_snapshot_folder_is_accepted(runs):
    result = compare_runs([runs[0] / SNAPSHOT_DIR_NAME, runs[1]], measure="svcca")
    assert result.paths == (runs[0] / SNAPSHOT_DIR_NAME, runs[1] / SNAPSHOT_DIR_NAME)


def test_given_step_is_compared(runs):
    result = compare_runs(runs[:2], measure="svcca", step=0)
    assert result.steps == (0, 0)
    assert result.distances["fc1"][0, 1] > 0.5  # step 0 holds unrelated noise


def test_missing_step_is_named(runs):
    with pytest.raises(ValueError, match=r"has no snapshot at step 7; its steps: \[0, 20\]"):
        compare_runs(runs[:2], step=7)


def test_different_probes_are_rejected_naming_the_runs(tmp_path, runs):
    other = _write_run(
        tmp_path / "other",
        torch.randn(NUM_DATAPOINTS, LATENT),
        torch.Generator().manual_seed(1),
        metadata={**METADATA, "probe_fingerprint": "0" * 64},
    )
    with pytest.raises(ValueError, match=r"differ in 'probe_fingerprint'.*'other'"):
        compare_runs([runs[0], other])


def test_different_row_sampling_is_rejected(tmp_path, runs):
    other = _write_run(
        tmp_path / "other",
        torch.randn(NUM_DATAPOINTS, LATENT),
        torch.Generator().manual_seed(1),
        metadata={**METADATA, "seed": 1},
    )
    with pytest.raises(ValueError, match="differ in 'seed'"):
        compare_runs([runs[0], other])


def test_missing_fingerprint_warns(tmp_path, runs):
    other = _write_run(
        tmp_path / "other",
        torch.randn(NUM_DATAPOINTS, LATENT),
        torch.Generator().manual_seed(1),
        metadata=None,
    )
    with pytest.warns(UserWarning, match=r"runs \['other'\] record no probe fingerprint"):
        compare_runs([runs[0], other], measure="svcca")


def test_layers_not_in_every_run_are_left_out_with_a_warning(tmp_path, runs):
    other = _write_run(
        tmp_path / "other",
        torch.randn(NUM_DATAPOINTS, LATENT),
        torch.Generator().manual_seed(1),
        layers=("fc1", "head"),
    )
    with pytest.warns(UserWarning, match=r"'fc2': \['other'\], 'head': \['version_0'\]"):
        result = compare_runs([runs[0], other], measure="svcca")
    assert result.layers == ("fc1",)
    with pytest.raises(ValueError, match=r"not stored in every run.*'fc2': \['other'\]"):
        compare_runs([runs[0], other], layers=["fc1", "fc2"])


def test_runs_without_common_layers_are_rejected(tmp_path, runs):
    other = _write_run(
        tmp_path / "other",
        torch.randn(NUM_DATAPOINTS, LATENT),
        torch.Generator().manual_seed(1),
        layers=("a", "b"),
    )
    with pytest.warns(UserWarning, match="left out"), pytest.raises(ValueError, match="no layer"):
        compare_runs([runs[0], other])


def test_chosen_layers_are_compared(runs):
    assert compare_runs(runs[:2], layers=["fc2"]).layers == ("fc2",)


@pytest.mark.parametrize(
    ("run_dirs", "error", "match"),
    [
        ("some/run", TypeError, "sequence of run folders"),
        (["some/run"], ValueError, "at least 2 runs"),
    ],
    ids=["string", "one-run"],
)
def test_bad_run_dirs_are_rejected(run_dirs, error, match):
    with pytest.raises(error, match=match):
        compare_runs(run_dirs)


def test_same_run_twice_is_rejected(runs):
    with pytest.raises(ValueError, match="the same run more than once"):
        compare_runs([runs[0], runs[0] / SNAPSHOT_DIR_NAME])


def test_unknown_measure_is_rejected(runs):
    with pytest.raises(ValueError, match="unknown measure 'cosine'"):
        compare_runs(runs[:2], measure="cosine")


def test_folder_without_snapshots_is_named(tmp_path, runs):
    with pytest.raises(FileNotFoundError, match="no snapshots in"):
        compare_runs([runs[0], tmp_path])


def test_find_store_takes_the_log_dir_or_the_snapshot_folder(runs):
    assert find_store(runs[0]).directory == runs[0] / SNAPSHOT_DIR_NAME
    assert find_store(runs[0] / SNAPSHOT_DIR_NAME).directory == runs[0] / SNAPSHOT_DIR_NAME


def test_unknown_layer_for_clustering_is_named(comparison):
    with pytest.raises(ValueError, match=r"`layer` 'conv' was not compared; layers: \['fc1'"):
        comparison.cluster_labels(2, layer="conv")


# -- output -----------------------------------------------------------------------------------


def test_write_produces_json_heatmaps_and_dendrogram(comparison, tmp_path):
    paths = comparison.write(tmp_path / "out")
    names = [path.name for path in paths]
    assert names == ["comparison.json", "distances_fc1.png", "distances_fc2.png", "dendrogram.png"]
    for path in paths[1:]:
        assert path.read_bytes().startswith(b"\x89PNG")
    content = json.loads(paths[0].read_text())
    assert content["measure"] == "pwcca"
    assert content["symmetrized"] is True
    np.testing.assert_allclose(content["distances"]["fc1"], comparison.distances["fc1"])
    assert set(content["clustering"]) == {"fc1", "fc2", "mean over layers"}
    assert content["clustering"]["fc1"]["order"] == comparison.dendrogram_order("fc1")


def test_nan_pairs_are_reported_and_not_clustered(tmp_path, runs):
    # 5 datapoints and 6 neurons in fc2: CCA cannot be computed
    store = SnapshotStore(tmp_path / "thin" / SNAPSHOT_DIR_NAME)
    base = SnapshotStore(runs[0] / SNAPSHOT_DIR_NAME).read(FINAL_STEP)
    thin = {"fc1": base["fc1"], "fc2": base["fc2"][:5]}
    store.write(FINAL_STEP, thin)
    store.write_metadata(METADATA)
    twin = SnapshotStore(tmp_path / "twin" / SNAPSHOT_DIR_NAME)
    twin.write(FINAL_STEP, {"fc1": base["fc1"] * 2, "fc2": base["fc2"][:5] * 2})
    twin.write_metadata(METADATA)
    with pytest.warns(UserWarning, match="layer 'fc2'"):
        result = compare_runs([tmp_path / "thin", tmp_path / "twin"], measure="svcca")
    assert math.isnan(result.distances["fc2"][0, 1])
    assert result.cluster_labels(1, layer="fc1") == [0, 0]
    with pytest.raises(ValueError, match="NaN"):
        result.cluster_labels(2, layer="fc2")
    content = json.loads(result.to_json())
    assert content["distances"]["fc2"][0][1] is None
    assert set(content["clustering"]) == {"fc1"}
    assert (result.write(tmp_path / "out")[-1]).is_file()


def test_format_comparison_prints_a_table_per_layer(comparison):
    text = format_comparison(comparison)
    assert text.startswith("pwcca distance (mean of both orders) between runs")
    assert "[4] seed_4/version_0 (step 20)" in text
    assert "layer fc1" in text
    assert "layer fc2" in text


def test_comparison_is_immutable(comparison):
    assert isinstance(comparison, RunComparison)
    with pytest.raises(AttributeError):
        comparison.measure = "svcca"


def test_cli_compare_prints_and_writes(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *map(str, runs[:3]), "--measure", "svcca", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "svcca distance between runs" in printed
    assert "layer fc2" in printed
    assert (out / "comparison.json").is_file()
    assert (out / "dendrogram.png").is_file()


def test_cli_compare_explains_errors(runs, tmp_path):
    with pytest.raises(SystemExit, match="cca-monitor: no snapshots in"):
        main(["compare", str(runs[0]), str(tmp_path), "--out", str(tmp_path / "cmp")])


@pytest.mark.parametrize("figure_name", ["heatmap", "dendrogram"])
@pytest.mark.parametrize(
    "runs",
    [
        ("version_0", "version_1"),
        ("cca_demo/mnist_cnn/version_0", "runs/seed_1/mnist_cnn/version_0"),
    ],
    ids=["short", "long"],
)
def test_nothing_drawn_falls_outside_the_figure_with_two_runs(figure_name, runs):
    comparison = RunComparison(
        runs=runs,
        layers=("conv1", "fc1"),
        measure="pwcca",
        distances={"conv1": np.array([[0, 0.2], [0.2, 0]]), "fc1": np.array([[0, 0.3], [0.3, 0]])},
        paths=(Path("a"), Path("b")),
        steps=(10, 10),
        symmetrized=True,
    )
    figure = (
        comparison.heatmap_figure("conv1")
        if figure_name == "heatmap"
        else comparison.dendrogram_figure()
    )
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    drawn = figure.get_tightbbox(canvas.get_renderer())
    width, height = figure.get_size_inches()
    assert drawn.x0 >= 0
    assert drawn.y0 >= 0
    assert drawn.x1 <= width
    assert drawn.y1 <= height
