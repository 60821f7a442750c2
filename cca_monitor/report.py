"""Send distance records to Lightning loggers and TensorBoard.

Every record becomes the scalar ``cca/<measure>_to_<reference>/<layer>`` at the record's step,
through any :class:`pytorch_lightning.loggers.Logger` (TensorBoard, CSV, ...). TensorBoard also
gets a custom-scalars layout that shows all layers of a measure in one chart, and, per measure,
the convergence curves and the layer x step heatmap of the distances to the final
representation as images.

The same events can be written without a trainer by :func:`write_tensorboard`, from records
read back from disk.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch.utils.tensorboard import SummaryWriter

from cca_monitor.convergence import reference_name
from cca_monitor.plots import final_figure_images, final_image_names, save_images
from cca_monitor.records import DistanceRecord
from cca_monitor.storage import write_results

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    from pytorch_lightning.loggers import Logger

    from cca_monitor.convergence import RunAnalysis

__all__ = [
    "LAYOUT_CATEGORIES",
    "custom_scalars_layout",
    "log_records",
    "log_tensorboard_extras",
    "scalar_tag",
    "summary_markdown",
    "tensorboard_loggers",
    "write_report",
    "write_tensorboard",
]

log = logging.getLogger(__name__)

SUMMARY_TEXT_TAG = "cca/convergence_summary"

LAYOUT_CATEGORIES = {
    "final": "CCA distance to final",
    "previous": "CCA distance to previous snapshot",
}


def scalar_tag(measure: str, reference: str, layer: str) -> str:
    """Return the logged name of one layer's distance.

    Example:
        >>> scalar_tag("svcca", "final", "features.0")
        'cca/svcca_to_final/features.0'
    """
    return f"cca/{measure}_to_{reference}/{layer}"


def _check_sequence(value: object, argument: str, what: str) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"`{argument}` must be a sequence of {what} (wrap a single one in a list), "
            f"got {type(value).__name__}."
        )


def _metrics_by_step(records: Sequence[DistanceRecord]) -> list[tuple[int, dict[str, float]]]:
    """Group the finite distances by step, ascending: ``[(step, {tag: distance}), ...]``."""
    _check_sequence(records, "records", "DistanceRecord")
    grouped: dict[int, dict[str, float]] = {}
    for record in records:
        if not math.isnan(record.distance):
            tag = scalar_tag(record.measure, record.reference, record.layer)
            grouped.setdefault(record.step, {})[tag] = float(record.distance)
    return sorted(grouped.items())


def log_records(loggers: Sequence[Logger], records: Sequence[DistanceRecord]) -> None:
    """Log every finite distance as a scalar through every logger, then save the loggers.

    Each logger gets one ``log_metrics({tag: distance, ...}, step=step)`` call per step, in
    ascending step order, with tags from :func:`scalar_tag`. NaN distances are left out.

    Args:
        loggers: Lightning loggers, e.g. ``trainer.loggers``.
        records: The distances to log.

    Raises:
        TypeError: If ``loggers`` or ``records`` is not a sequence.

    Example:
        >>> import tempfile
        >>> from pytorch_lightning.loggers import CSVLogger
        >>> logger = CSVLogger(tempfile.mkdtemp())
        >>> log_records([logger], [DistanceRecord(0, "fc1", "svcca", "final", 0.4)])
        >>> "cca/svcca_to_final/fc1" in open(logger.experiment.metrics_file_path).read()
        True
    """
    _check_sequence(loggers, "loggers", "Lightning loggers")
    metrics = _metrics_by_step(records)
    for logger in loggers:
        for step, values in metrics:
            logger.log_metrics(values, step=step)
        logger.save()


def _tensorboard_logger_types() -> tuple[type, ...]:
    """Return the TensorBoard logger classes of the installed Lightning packages."""
    from lightning_fabric.loggers import TensorBoardLogger

    types: list[type] = [TensorBoardLogger]
    try:
        from lightning.fabric.loggers import TensorBoardLogger as UnifiedTensorBoardLogger
    except ImportError:
        pass
    else:
        types.append(UnifiedTensorBoardLogger)
    return tuple(types)


def tensorboard_loggers(loggers: Sequence[Logger]) -> list[Logger]:
    """Return the TensorBoard loggers among ``loggers``, in order.

    Recognises the TensorBoard loggers of ``pytorch_lightning`` and, when installed, of
    ``lightning`` (both the trainer and the Fabric ones).

    Example:
        >>> import tempfile
        >>> from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
        >>> root = tempfile.mkdtemp()
        >>> found = tensorboard_loggers([CSVLogger(root), TensorBoardLogger(root)])
        >>> [type(logger).__name__ for logger in found]
        ['TensorBoardLogger']
    """
    _check_sequence(loggers, "loggers", "Lightning loggers")
    types = _tensorboard_logger_types()
    return [logger for logger in loggers if isinstance(logger, types)]


def custom_scalars_layout(
    records: Sequence[DistanceRecord], measures: Sequence[str], layers: Sequence[str]
) -> dict[str, dict[str, list[Any]]]:
    r"""Build the TensorBoard custom-scalars layout: one multi-line chart per measure.

    Categories are ``"CCA distance to final"`` and ``"CCA distance to previous snapshot"``;
    each holds a ``"Multiline"`` chart named after the measure whose entries are anchored
    regular expressions for the layers' tags, in the order of ``layers``. Charts without
    records and categories without charts are left out.

    Returns:
        ``{category: {measure: ["Multiline", [tag_regex, ...]]}}``, the format of
        :meth:`torch.utils.tensorboard.SummaryWriter.add_custom_scalars`.

    Example:
        >>> records = [DistanceRecord(0, "fc.1", "svcca", "final", 0.4)]
        >>> custom_scalars_layout(records, ["svcca"], ["fc.1"])
        {'CCA distance to final': {'svcca': ['Multiline', ['^cca/svcca_to_final/fc\\.1$']]}}
    """
    present = {(r.reference, r.measure, r.layer) for r in records}
    layout: dict[str, dict[str, list[Any]]] = {}
    for reference, category in LAYOUT_CATEGORIES.items():
        charts = {}
        for measure in measures:
            tags = [
                f"^{re.escape(scalar_tag(measure, reference, layer))}$"
                for layer in layers
                if (reference, measure, layer) in present
            ]
            if tags:
                charts[measure] = ["Multiline", tags]
        if charts:
            layout[category] = charts
    return layout


def _check_extras_arguments(
    records: Sequence[DistanceRecord], measures: Sequence[str], layers: Sequence[str]
) -> None:
    """Reject arguments that would leave the TensorBoard output half written."""
    _check_sequence(records, "records", "DistanceRecord")
    _check_sequence(measures, "measures", "measure names")
    _check_sequence(layers, "layers", "layer names")
    if not records:
        raise ValueError("`records` is empty: there is nothing to draw.")
    if not measures or not layers:
        raise ValueError(
            f"`measures` and `layers` must be non-empty, got measures={list(measures)} and "
            f"layers={list(layers)}."
        )
    drawable = {r.measure for r in records if r.reference == "final"}
    missing = [measure for measure in measures if measure not in drawable]
    if missing:
        raise ValueError(
            f"`measures` {missing} have no distances to the final representation in `records`; "
            f"measures that have: {sorted(drawable)}."
        )
    recorded = {r.layer for r in records}
    if not recorded.intersection(layers):
        raise ValueError(
            f"None of `layers` {list(layers)} has records; layers with records: {sorted(recorded)}."
        )


def _write_extras(
    writer: SummaryWriter,
    records: Sequence[DistanceRecord],
    measures: Sequence[str],
    layers: Sequence[str],
    images: Mapping[str, np.ndarray],
    summary_text: str | None,
) -> None:
    """Write the custom-scalars layout, the figures of every measure and the summary text."""
    layout = custom_scalars_layout(records, measures, layers)
    if layout:
        writer.add_custom_scalars(layout)
    last_step = max(record.step for record in records)
    for measure in measures:
        for tag, name in zip(("curves", "heatmap"), final_image_names(measure), strict=True):
            writer.add_image(
                f"cca/{measure}_to_final_{tag}", images[name], last_step, dataformats="HWC"
            )
    if summary_text:
        writer.add_text(SUMMARY_TEXT_TAG, summary_text, global_step=last_step)
    writer.flush()


def log_tensorboard_extras(
    loggers: Sequence[Logger],
    records: Sequence[DistanceRecord],
    measures: Sequence[str],
    layers: Sequence[str],
    *,
    noise_floors: Mapping[str, float] | None = None,
    summary_text: str | None = None,
    images: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Add the chart layout and figures to every TensorBoard logger among ``loggers``.

    For each TensorBoard logger: the layout of :func:`custom_scalars_layout`, and per measure
    the images ``cca/<measure>_to_final_curves`` (:func:`~cca_monitor.plots.convergence_figure`)
    and ``cca/<measure>_to_final_heatmap`` (:func:`~cca_monitor.plots.heatmap_figure`) at the
    last recorded step. Other loggers are ignored. Scalars are logged by :func:`log_records`.

    Args:
        loggers: Lightning loggers, e.g. ``trainer.loggers``.
        records: The distances to draw; each measure needs ``reference="final"`` records.
        measures: Measures to draw, e.g. ``["svcca", "pwcca"]``.
        layers: Monitored layers, bottom to top; sets the order of lines and rows.
        noise_floors: ``{measure: distance}`` drawn as the band of unrelated distances.
        summary_text: Markdown shown in TensorBoard's Text tab under ``cca/convergence_summary``
            (see :func:`summary_markdown`).
        images: The figures already rendered by
            :func:`~cca_monitor.plots.final_figure_images` for these arguments, to reuse;
            None renders them here.

    Raises:
        TypeError: If an argument is not a sequence.
        ValueError: If ``records``, ``measures`` or ``layers`` is empty, or a measure has no
            records of distances to the final representation.
    """
    selected = tensorboard_loggers(loggers)
    if not selected:
        return
    _check_extras_arguments(records, measures, layers)
    if images is None:
        images = final_figure_images(records, measures, layers=layers, noise_floors=noise_floors)
    for logger in selected:
        _write_extras(logger.experiment, records, measures, layers, images, summary_text)


def write_tensorboard(
    records: Sequence[DistanceRecord],
    log_dir: str | os.PathLike[str],
    measures: Sequence[str],
    layers: Sequence[str],
    *,
    noise_floors: Mapping[str, float] | None = None,
    summary_text: str | None = None,
    images: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write the scalars, layout and figures of ``records`` as TensorBoard events, no trainer.

    Produces the same tags as :func:`log_records` followed by :func:`log_tensorboard_extras`
    with a :class:`~pytorch_lightning.loggers.TensorBoardLogger`.

    Args:
        records: The distances to write.
        log_dir: Folder for the event file, created if missing; point ``tensorboard --logdir``
            at it or at a parent.
        measures: Measures to draw, e.g. ``["svcca", "pwcca"]``.
        layers: Monitored layers, bottom to top.
        noise_floors: ``{measure: distance}`` drawn as the band of unrelated distances.
        summary_text: Markdown shown in TensorBoard's Text tab under ``cca/convergence_summary``
            (see :func:`summary_markdown`).
        images: Figures already rendered for these arguments, see
            :func:`log_tensorboard_extras`.

    Raises:
        TypeError: If an argument is not a sequence.
        ValueError: If ``records``, ``measures`` or ``layers`` is empty, or a measure has no
            records of distances to the final representation.
    """
    _check_extras_arguments(records, measures, layers)
    if images is None:
        images = final_figure_images(records, measures, layers=layers, noise_floors=noise_floors)
    writer = SummaryWriter(log_dir=os.fspath(log_dir))
    try:
        for step, values in _metrics_by_step(records):
            for tag, value in values.items():
                writer.add_scalar(tag, value, global_step=step)
        _write_extras(writer, records, measures, layers, images, summary_text)
    finally:
        writer.close()
    log.info("Wrote TensorBoard events for %d records to %s", len(records), log_dir)


def write_report(
    analysis: RunAnalysis,
    directory: str | os.PathLike[str],
    *,
    loggers: Sequence[Logger] = (),
    tensorboard_dir: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Write a run's analysis: result files, PNG figures and TensorBoard output.

    Writes ``cca_results.csv``, ``cca_results.json`` (records and summary) and the figures of
    :func:`~cca_monitor.plots.save_figures` into ``directory``; each figure is drawn once, for
    the file and for TensorBoard. The distances to final go to
    every logger in ``loggers`` (the distances to the previous snapshot are logged during
    training), with the TensorBoard layout and figures; with ``tensorboard_dir`` instead, all
    records are written there as TensorBoard events without a trainer.

    Returns:
        The paths of the CSV, JSON and PNG files.
    """
    paths = list(write_results(analysis.records, directory, summary=analysis.summary))
    if not analysis.layers:
        log.warning("No layer has distances to report; only the result files were written")
        return paths
    floors = _lowest_noise_floors(analysis.summary.get("noise_floor", {}))
    images = final_figure_images(
        analysis.records,
        analysis.measures,
        layers=analysis.layers,
        noise_floors=floors,
        reference_name=reference_name(analysis.summary),
    )
    paths += save_images(images, directory)
    to_final = [record for record in analysis.records if record.reference == "final"]
    arguments = (analysis.records, analysis.measures, analysis.layers)
    extras = {
        "noise_floors": floors,
        "summary_text": summary_markdown(analysis.summary),
        "images": images,
    }
    if loggers:
        log_records(loggers, to_final)
        log_tensorboard_extras(loggers, *arguments, **extras)
    if tensorboard_dir is not None:
        write_tensorboard(arguments[0], tensorboard_dir, *arguments[1:], **extras)
    return paths


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """A markdown table of each layer's convergence step and noise floor, for TensorBoard.

    Args:
        summary: A run summary (:attr:`cca_monitor.convergence.RunAnalysis.summary`).

    Example:
        >>> print(summary_markdown({"measure": "svcca", "threshold": 0.1, "layers": ["fc"],
        ...                         "convergence_step": {"fc": 40},
        ...                         "noise_floor": {"svcca": {"fc": 0.91}}}))
        | layer | first step within 0.1 svcca distance of final | svcca noise floor |
        |---|---|---|
        | fc | 40 | 0.910 |
    """
    measure, threshold = summary["measure"], summary["threshold"]
    floors = summary.get("noise_floor", {}).get(measure, {})
    lines = [
        f"| layer | first step within {threshold} {measure} distance of final "
        f"| {measure} noise floor |",
        "|---|---|---|",
    ]
    for layer in summary["layers"]:
        step = summary["convergence_step"].get(layer)
        floor = floors.get(layer, math.nan)
        lines.append(
            f"| {layer} | {'never' if step is None else step} "
            f"| {'n/a' if math.isnan(floor) else f'{floor:.3f}'} |"
        )
    return "\n".join(lines)


def _lowest_noise_floors(floors: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per measure, the lowest finite layer floor: above it, some layer looks unrelated."""
    lowest = {}
    for measure, by_layer in floors.items():
        finite = [value for value in by_layer.values() if math.isfinite(value)]
        if finite:
            lowest[measure] = min(finite)
    return lowest
