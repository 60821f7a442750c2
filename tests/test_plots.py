import math

import matplotlib as mpl
import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from cca_monitor.plots import (
    NOISE_FLOOR_LABEL,
    convergence_figure,
    figure_to_image,
    heatmap_figure,
    save_figures,
)
from cca_monitor.records import DistanceRecord

LAYERS = ["features.0", "features.3", "features.10", "classifier"]
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]


def _records(
    layers=LAYERS, steps=STEPS, measures=("svcca", "pwcca"), references=("final", "previous")
) -> list[DistanceRecord]:
    """Distances that fall to 0 at the last step, later for higher layers."""
    last = steps[-1]
    return [
        DistanceRecord(step, layer, measure, reference, (1 - step / last) ** (1 / (index + 1)))
        for reference in references
        for measure in measures
        for index, layer in enumerate(layers)
        for step in steps
    ]


@pytest.mark.parametrize(
    ("num_layers", "num_steps"), [(1, 2), (4, 12), (12, 3)], ids=["1x2", "4x12", "12x3"]
)
def test_convergence_has_one_line_per_layer(num_layers, num_steps):
    layers = [f"layer{i}" for i in range(num_layers)]
    steps = [10 * i for i in range(num_steps)]
    figure = convergence_figure(_records(layers, steps), measure="svcca")

    assert isinstance(figure, Figure)
    (axes,) = figure.axes
    lines = axes.get_lines()
    assert len(lines) == num_layers
    assert [line.get_label() for line in lines] == layers
    for line in lines:
        np.testing.assert_array_equal(line.get_xdata(), steps)
    assert [text.get_text() for text in axes.get_legend().get_texts()] == layers


def test_convergence_plots_the_selected_distances():
    records = _records()
    figure = convergence_figure(records, measure="pwcca", reference="previous")
    line = figure.axes[0].get_lines()[2]
    expected = [
        r.distance
        for r in records
        if (r.measure, r.reference, r.layer) == ("pwcca", "previous", "features.10")
    ]
    np.testing.assert_allclose(line.get_ydata(), expected)
    assert figure.axes[0].get_title() == "pwcca distance to previous snapshot"


@pytest.mark.parametrize("draw", [convergence_figure, heatmap_figure], ids=["curves", "heatmap"])
def test_a_reference_other_than_the_last_snapshot_is_named_in_the_title(draw):
    records = _records()
    named = draw(records, measure="svcca", reference_name="snapshot at step 64")
    assert named.axes[0].get_title() == "svcca distance to snapshot at step 64"
    previous = draw(records, measure="svcca", reference="previous", reference_name="ignored")
    assert previous.axes[0].get_title() == "svcca distance to previous snapshot"


def test_convergence_title_axes_and_limits():
    axes = convergence_figure(_records(), measure="svcca").axes[0]
    assert axes.get_title() == "svcca distance to final representation"
    assert axes.get_xlabel() == "training step"
    bottom, top = axes.get_ylim()
    assert bottom == 0.0
    assert 1.0 <= top < 1.1


def test_convergence_colours_run_along_viridis_from_the_bottom_layer():
    lines = convergence_figure(_records(), measure="svcca").axes[0].get_lines()
    viridis = mpl.colormaps["viridis"]
    assert to_rgba(lines[0].get_color()) == pytest.approx(viridis(0.0))
    brightness = [sum(to_rgba(line.get_color())[:3]) for line in lines]
    assert brightness == sorted(brightness)
    assert len(set(brightness)) == len(lines)


def test_convergence_y_axis_grows_to_show_values_above_one():
    records = [
        DistanceRecord(0, "fc", "svcca", "final", 1.3),
        DistanceRecord(5, "fc", "svcca", "final", 0.0),
    ]
    assert convergence_figure(records, measure="svcca").axes[0].get_ylim()[1] >= 1.3


def test_convergence_keeps_nan_as_a_gap():
    records = _records(layers=["fc"], measures=("svcca",), references=("final",))
    records[3] = DistanceRecord(records[3].step, "fc", "svcca", "final", math.nan)
    (line,) = convergence_figure(records, measure="svcca").axes[0].get_lines()
    ydata = np.asarray(line.get_ydata(), dtype=float)
    assert np.isnan(ydata[3])
    assert np.isfinite(np.delete(ydata, 3)).all()


def test_noise_floor_is_a_band_from_the_floor_up():
    axes = convergence_figure(_records(), measure="svcca", noise_floor=0.85).axes[0]
    assert len(axes.get_lines()) == len(LAYERS)
    (band,) = [patch for patch in axes.patches if patch.get_label() == NOISE_FLOOR_LABEL]
    ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
    assert ys.min() == pytest.approx(0.85)
    assert ys.max() >= 1.0
    assert NOISE_FLOOR_LABEL in [text.get_text() for text in axes.get_legend().get_texts()]


def test_layers_argument_orders_and_filters():
    order = ["classifier", "features.0", "not.recorded"]
    lines = convergence_figure(_records(), measure="svcca", layers=order).axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["classifier", "features.0"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"measure": "cka"}, r"No records with measure='cka'.*\('pwcca', 'final'\)"),
        ({"measure": "svcca", "reference": "initial"}, "reference='initial'"),
        ({"measure": "svcca", "noise_floor": -0.1}, "`noise_floor` must be a finite distance"),
        ({"measure": "svcca", "noise_floor": math.nan}, "`noise_floor` must be a finite distance"),
        ({"measure": "svcca", "layers": ["fc9"]}, r"None of `layers` \['fc9'\] has records"),
    ],
    ids=["measure", "reference", "negative-floor", "nan-floor", "layers"],
)
def test_convergence_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        convergence_figure(_records(), **kwargs)


def test_heatmap_rows_are_layers_bottom_up_and_columns_are_steps():
    records = _records()
    figure = heatmap_figure(records, measure="svcca")
    axes, colorbar_axes = figure.axes
    (image,) = axes.images

    grid = image.get_array()
    assert grid.shape == (len(LAYERS), len(STEPS))
    assert image.origin == "lower"
    expected_row0 = [
        r.distance
        for r in records
        if (r.measure, r.reference, r.layer) == ("svcca", "final", "features.0")
    ]
    np.testing.assert_allclose(grid[0], expected_row0)
    assert [label.get_text() for label in axes.get_yticklabels()] == LAYERS
    assert image.get_clim() == (0.0, 1.0)
    assert colorbar_axes.get_ylabel() == "distance (1 - similarity)"


@pytest.mark.parametrize("num_steps", [1, 5, 8, 9, 40], ids=["1", "5", "8", "9", "40"])
def test_heatmap_step_labels_are_few_and_include_both_ends(num_steps):
    steps = [3 * i + 1 for i in range(num_steps)]
    axes = heatmap_figure(_records(steps=steps), measure="svcca").axes[0]
    labels = [label.get_text() for label in axes.get_xticklabels()]
    assert len(labels) == min(num_steps, 8)
    assert labels[0] == "1"
    assert labels[-1] == str(steps[-1])


def test_heatmap_masks_missing_cells():
    records = [r for r in _records() if not (r.layer == "classifier" and r.step == 4)]
    records.append(DistanceRecord(8, "classifier", "svcca", "final", math.nan))
    grid = heatmap_figure(records, measure="svcca").axes[0].images[0].get_array()
    row = LAYERS.index("classifier")
    assert grid.mask[row, STEPS.index(4)]
    assert grid.mask[row, STEPS.index(8)]
    assert grid.mask.sum() == 2


def test_heatmap_errors():
    with pytest.raises(ValueError, match="No records with measure='mean_cca'"):
        heatmap_figure(_records(), measure="mean_cca")


def test_figure_to_image_is_rgb_uint8_of_the_figure_size():
    figure = convergence_figure(_records(), measure="svcca")
    width, height = figure.get_size_inches() * figure.dpi
    image = figure_to_image(figure)
    assert image.shape == (round(height), round(width), 3)
    assert image.dtype == np.uint8
    assert image.min() < 100
    assert image.max() == 255


def test_save_figures_writes_two_pngs_per_measure(tmp_path):
    paths = save_figures(_records(), tmp_path / "figures", ["svcca", "pwcca"])
    assert [path.name for path in paths] == [
        "cca_svcca_to_final.png",
        "cca_svcca_heatmap.png",
        "cca_pwcca_to_final.png",
        "cca_pwcca_heatmap.png",
    ]
    for path in paths:
        assert path.parent == tmp_path / "figures"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("measures", "match"),
    [
        ([], "`measures` must be a non-empty sequence"),
        ("svcca", "`measures` must be a non-empty"),
        (["cka"], "No records with measure='cka'"),
    ],
    ids=["empty", "string", "unknown"],
)
def test_save_figures_errors(tmp_path, measures, match):
    with pytest.raises(ValueError, match=match):
        save_figures(_records(), tmp_path, measures)


def test_figures_do_not_touch_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    convergence_figure(_records(), measure="svcca")
    heatmap_figure(_records(), measure="svcca")
    assert plt.get_fignums() == before
