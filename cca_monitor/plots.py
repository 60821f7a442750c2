"""Matplotlib figures of distance records: per-layer convergence curves and a layer x step map.

Figures are built from stored :class:`~cca_monitor.records.DistanceRecord` values, never from a
live model. They are :class:`matplotlib.figure.Figure` objects drawn on an Agg canvas and never
registered with :mod:`matplotlib.pyplot`, so making them changes no global plotting state and
needs no display.

Layers are ordered as in the ``layers`` argument (layers without records are skipped), or else
as they first appear in the records; that order is taken to run from the bottom (input side) to
the top (output side) of the network.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cca_monitor.records import DistanceRecord

__all__ = [
    "convergence_figure",
    "figure_to_image",
    "final_figure_images",
    "heatmap_figure",
    "save_figures",
    "save_images",
]

log = logging.getLogger(__name__)

_REFERENCE_NAMES = {"final": "final representation", "previous": "previous snapshot"}
_LINE_COLORMAP = "viridis"
_HEATMAP_COLORMAP = "magma_r"
_Y_MARGIN = 0.02
NOISE_FLOOR_LABEL = "unrelated (row-shuffled)"
_MAX_STEP_LABELS = 8
_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    """Create a figure with its own Agg canvas, outside pyplot's figure manager."""
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _select(
    records: Sequence[DistanceRecord], measure: str, reference: str
) -> list[DistanceRecord]:
    """Return the records of one measure and reference; raise if there are none."""
    chosen = [r for r in records if r.measure == measure and r.reference == reference]
    if not chosen:
        available = sorted({(r.measure, r.reference) for r in records})
        raise ValueError(
            f"No records with measure={measure!r} and reference={reference!r}; "
            f"available (measure, reference) pairs: {available}."
        )
    return chosen


def _layer_order(records: Sequence[DistanceRecord], layers: Sequence[str] | None) -> list[str]:
    """Return the layers of ``layers`` that have records, else all in the order first seen."""
    present = dict.fromkeys(r.layer for r in records)
    if layers is None:
        return list(present)
    order = [layer for layer in layers if layer in present]
    if not order:
        raise ValueError(
            f"None of `layers` {list(layers)} has records; layers with records: {list(present)}."
        )
    return order


def _grid(records: Sequence[DistanceRecord], layers: Sequence[str]) -> tuple[list[int], np.ndarray]:
    """Arrange distances as an array of shape (len(layers), num_steps), NaN where missing."""
    steps = sorted({r.step for r in records})
    column = {step: index for index, step in enumerate(steps)}
    row = {layer: index for index, layer in enumerate(layers)}
    grid = np.full((len(layers), len(steps)), np.nan)
    for record in records:
        if record.layer in row:
            grid[row[record.layer], column[record.step]] = record.distance
    return steps, grid


def _title(measure: str, reference: str, reference_name: str | None) -> str:
    name = reference_name if reference == "final" and reference_name else None
    return f"{measure} distance to {name or _REFERENCE_NAMES.get(reference, reference)}"


def convergence_figure(
    records: Sequence[DistanceRecord],
    *,
    measure: str,
    reference: str = "final",
    noise_floor: float | None = None,
    layers: Sequence[str] | None = None,
    reference_name: str | None = None,
) -> Figure:
    """Plot each layer's distance to the reference against the training step.

    One line per layer, coloured along the viridis map from the bottom layer (dark) to the top
    layer (light), with the legend in layer order. The y-axis runs from 0 to at least 1.

    Args:
        records: Distance records; those of other measures or references are ignored.
        measure: Measure to plot, e.g. ``"svcca"``.
        reference: ``"final"`` or ``"previous"``.
        noise_floor: The distance unrelated representations reach (the distance of the final
            representation to a row-shuffled copy of itself, see
            :func:`cca_monitor.convergence.noise_floors`). If given, a shaded band from it up
            to the top marks distances no better than unrelated.
        layers: Layers to plot, bottom to top; layers without records are skipped. Defaults
            to all layers with records, in the order first seen.
        reference_name: The title's name of the "final" reference, e.g. ``"snapshot at step
            300"`` (:func:`cca_monitor.convergence.reference_name`); default "final
            representation".

    Returns:
        A figure with one axes holding one line per layer.

    Raises:
        ValueError: If no record matches ``measure`` and ``reference``, none of ``layers`` has
            records, or ``noise_floor`` is negative or not finite.

    Example:
        >>> records = [DistanceRecord(s, l, "svcca", "final", d)
        ...            for s, d in [(0, 0.5), (10, 0.0)] for l in ["fc1", "fc2"]]
        >>> figure = convergence_figure(records, measure="svcca")
        >>> len(figure.axes[0].get_lines())
        2
    """
    if noise_floor is not None and not (math.isfinite(noise_floor) and noise_floor >= 0):
        raise ValueError(f"`noise_floor` must be a finite distance >= 0, got {noise_floor!r}.")
    chosen = _select(records, measure, reference)
    order = _layer_order(chosen, layers)
    steps, grid = _grid(chosen, order)
    colors = mpl.colormaps[_LINE_COLORMAP](np.linspace(0.0, 0.9, len(order)))

    figure = _new_figure(7.0, 4.2)
    axes = figure.add_subplot()
    if noise_floor is not None:
        axes.axhspan(
            noise_floor,
            max(1.0, noise_floor) + _Y_MARGIN,
            color="0.5",
            alpha=0.2,
            label=NOISE_FLOOR_LABEL,
        )
    for layer, distances, color in zip(order, grid, colors, strict=True):
        axes.plot(steps, distances, marker="o", markersize=3, color=color, label=layer)
    top = max(1.0, float(grid[np.isfinite(grid)].max(initial=0.0)))
    axes.set_ylim(0.0, top + _Y_MARGIN)
    axes.set_xlabel("training step")
    axes.set_ylabel("distance (1 - similarity)")
    axes.set_title(_title(measure, reference, reference_name))
    axes.grid(alpha=0.3)
    axes.legend(title="layer", fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure


def _step_ticks(num_steps: int) -> list[int]:
    """Pick at most ``_MAX_STEP_LABELS`` evenly spread column indices, first and last included."""
    count = min(num_steps, _MAX_STEP_LABELS)
    return sorted({round(index) for index in np.linspace(0, num_steps - 1, count)})


def heatmap_figure(
    records: Sequence[DistanceRecord],
    *,
    measure: str,
    reference: str = "final",
    layers: Sequence[str] | None = None,
    reference_name: str | None = None,
) -> Figure:
    """Draw distances as a layer x snapshot map, with the bottom layer in the bottom row.

    Rows are layers (bottom layer at the bottom, top layer at the top), columns are the
    snapshot steps in increasing order, equally spaced whatever the gaps between steps, and
    labelled with the step. Colours cover distances 0 to 1; missing or NaN cells are grey.

    Args:
        records: Distance records; those of other measures or references are ignored.
        measure: Measure to plot, e.g. ``"pwcca"``.
        reference: ``"final"`` or ``"previous"``.
        layers: Layers to show, bottom to top; layers without records are skipped. Defaults
            to all layers with records, in the order first seen.
        reference_name: The title's name of the "final" reference (see
            :func:`convergence_figure`).

    Returns:
        A figure with the map's axes and a colorbar axes.

    Raises:
        ValueError: If no record matches ``measure`` and ``reference``, or none of ``layers``
            has records.

    Example:
        >>> records = [DistanceRecord(s, "fc1", "pwcca", "final", 1.0 - s / 10) for s in (0, 5, 10)]
        >>> heatmap_figure(records, measure="pwcca").axes[0].images[0].get_array().shape
        (1, 3)
    """
    chosen = _select(records, measure, reference)
    order = _layer_order(chosen, layers)
    steps, grid = _grid(chosen, order)
    colormap = mpl.colormaps[_HEATMAP_COLORMAP].with_extremes(bad="0.8")

    figure = _new_figure(7.0, 1.6 + 0.35 * len(order))
    axes = figure.add_subplot()
    image = axes.imshow(
        np.ma.masked_invalid(grid),
        cmap=colormap,
        vmin=0.0,
        vmax=1.0,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
    )
    ticks = _step_ticks(len(steps))
    axes.set_xticks(ticks, [str(steps[index]) for index in ticks])
    axes.set_yticks(range(len(order)), order)
    axes.set_xlabel("training step")
    axes.set_ylabel("layer")
    axes.set_title(_title(measure, reference, reference_name))
    figure.colorbar(image, ax=axes, label="distance (1 - similarity)")
    return figure


def figure_to_image(figure: Figure) -> np.ndarray:
    """Render ``figure`` to an RGB array of shape (height, width, 3), dtype uint8.

    Example:
        >>> figure_to_image(_new_figure(2.0, 1.0)).shape
        (100, 200, 3)
    """
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def final_image_names(measure: str) -> tuple[str, str]:
    """The names :func:`final_figure_images` gives ``measure``'s curves and heatmap."""
    return f"{measure}_to_final", f"{measure}_heatmap"


def image_file_name(name: str) -> str:
    """The file name :func:`save_images` writes the image ``name`` to."""
    return f"cca_{name}.png"


def final_figure_images(
    records: Sequence[DistanceRecord],
    measures: Sequence[str],
    *,
    layers: Sequence[str] | None = None,
    noise_floors: Mapping[str, float] | None = None,
    reference_name: str | None = None,
) -> dict[str, np.ndarray]:
    """Render the curves and the heatmap of the distances to final of each measure, once.

    The same images serve the PNG files (:func:`save_images`) and TensorBoard, so each figure
    is drawn once.

    Args:
        records: Distance records holding ``reference="final"`` rows for every measure.
        measures: Measures to draw, e.g. ``["svcca", "pwcca"]``.
        layers: Layers to draw, bottom to top; see :func:`convergence_figure`.
        noise_floors: ``{measure: distance}`` drawn as the band of unrelated distances on the
            curves (see :func:`convergence_figure`).
        reference_name: The titles' name of the reference (see :func:`convergence_figure`).

    Returns:
        ``{"<measure>_to_final": curves, "<measure>_heatmap": heatmap}`` as RGB arrays of
        shape (height, width, 3), dtype uint8, in the order of ``measures``.

    Raises:
        ValueError: If ``measures`` is empty or a measure has no records.
    """
    if isinstance(measures, str) or not measures:
        raise ValueError(
            f"`measures` must be a non-empty sequence of measure names, got {measures!r}."
        )
    images = {}
    for measure in measures:
        floor = (noise_floors or {}).get(measure)
        named = {"measure": measure, "layers": layers, "reference_name": reference_name}
        curves_name, heatmap_name = final_image_names(measure)
        curves = convergence_figure(records, noise_floor=floor, **named)
        images[curves_name] = figure_to_image(curves)
        heatmap = heatmap_figure(records, **named)
        images[heatmap_name] = figure_to_image(heatmap)
    return images


def save_images(images: Mapping[str, np.ndarray], directory: str | os.PathLike[str]) -> list[Path]:
    """Write each ``{name: RGB array}`` image as ``cca_<name>.png`` in ``directory`` (created).

    Returns:
        The written paths, in the order of ``images``.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in images.items():
        path = folder / image_file_name(name)
        mpl.image.imsave(path, image)
        paths.append(path)
    log.info("Wrote %d figures to %s", len(paths), folder)
    return paths


def save_figures(
    records: Sequence[DistanceRecord],
    directory: str | os.PathLike[str],
    measures: Sequence[str],
    *,
    layers: Sequence[str] | None = None,
    noise_floors: Mapping[str, float] | None = None,
) -> list[Path]:
    """Write the convergence curves and the heatmap of distances to the final representation.

    For each measure, writes ``cca_<measure>_to_final.png`` and ``cca_<measure>_heatmap.png``
    into ``directory`` (created if missing): :func:`final_figure_images`, then
    :func:`save_images`.

    Returns:
        The written paths, two per measure, in the order of ``measures``.

    Raises:
        ValueError: If ``measures`` is empty or a measure has no records.
    """
    images = final_figure_images(records, measures, layers=layers, noise_floors=noise_floors)
    return save_images(images, directory)
