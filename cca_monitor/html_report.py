"""One self-contained HTML page per run: figures, convergence tables and settings.

The page needs no network and no other file: figures are embedded as base64 PNG data URIs and
the style sheet is inline, so ``report.html`` can be mailed or attached as it is. The page is
built from a :class:`~cca_monitor.convergence.RunAnalysis`, never from a live model.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from cca_monitor.convergence import convergence_steps, reference_name, table_steps
from cca_monitor.plots import convergence_figure, heatmap_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cca_monitor.convergence import RunAnalysis
    from cca_monitor.records import DistanceRecord

__all__ = ["HTML_REPORT_NAME", "render_html", "write_html_report"]

log = logging.getLogger(__name__)

HTML_REPORT_NAME = "report.html"
MAX_TABLE_STEPS = 8
"""Snapshot steps shown in a distance table (evenly picked, first, last and reference included)."""

_PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
.note { color: #555; }
</style>
</head>
<body>
<h1>$title</h1>
$settings
<h2>Convergence</h2>
<p class="note">First snapshot step from which a layer stays within $threshold of its
$reference (distance = 1 - similarity), per measure.$floor_note</p>
$convergence
<h2>Distance to the $reference</h2>
$distances
<h2>Figures</h2>
$figures
</body>
</html>
"""
)

_FLOOR_NOTE = (
    " The noise floor is the distance of the {reference} to a row-shuffled copy of itself:"
    " what unrelated data scores with these shapes."
)


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; cells are escaped."""
    head = "".join(f"<th>{_text(cell)}</th>" for cell in header)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{_text(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _settings(analysis: RunAnalysis) -> str:
    summary = analysis.summary
    steps = summary["steps"]
    items = {
        "measures": ", ".join(analysis.measures),
        "layers (bottom to top)": ", ".join(analysis.layers),
        "snapshots": f"{len(steps)}, steps {steps[0]} to {steps[-1]}",
        "final (reference) step": summary["reference_step"],
        "convergence threshold": summary["threshold"],
    }
    return _table(["setting", "value"], [[name, str(value)] for name, value in items.items()])


def _convergence_table(
    analysis: RunAnalysis, noise_floors: Mapping[str, Mapping[str, float]] | None
) -> str:
    threshold = analysis.summary["threshold"]
    reached = {
        measure: convergence_steps(analysis.records, measure=measure, threshold=threshold)
        for measure in analysis.measures
    }
    floors = noise_floors or {}
    header = ["layer", *(f"{m} converged at" for m in analysis.measures)]
    header += [f"{m} noise floor" for m in analysis.measures if m in floors]
    rows = []
    for layer in analysis.layers:
        row = [layer]
        for measure in analysis.measures:
            step = reached[measure].get(layer)
            row.append("never" if step is None else f"step {step}")
        row += [_number(floors[m].get(layer)) for m in analysis.measures if m in floors]
        rows.append(row)
    return _table(header, rows)


def _distance_tables(analysis: RunAnalysis) -> str:
    summary = analysis.summary
    picks = table_steps(summary["steps"], MAX_TABLE_STEPS, reference=summary.get("reference_step"))
    values = {
        (r.measure, r.layer, r.step): r.distance for r in analysis.records if r.reference == "final"
    }
    sections = []
    for measure in analysis.measures:
        rows = [
            [layer, *(_number(values.get((measure, layer, step))) for step in picks)]
            for layer in analysis.layers
        ]
        header = ["layer", *(f"step {step}" for step in picks)]
        sections.append(f"<h3>{_text(measure)}</h3>\n{_table(header, rows)}")
    return "\n".join(sections)


def _png_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure_html(figure: Figure, caption: str) -> str:
    return (
        f'<figure><img src="{_png_data_uri(figure)}" alt="{_text(caption)}">'
        f"<figcaption>{_text(caption)}</figcaption></figure>"
    )


def _figures(analysis: RunAnalysis) -> str:
    records: Sequence[DistanceRecord] = analysis.records
    has_previous = {r.measure for r in records if r.reference == "previous"}
    reference = reference_name(analysis.summary)
    parts = []
    for measure in analysis.measures:
        kwargs = {"measure": measure, "layers": analysis.layers}
        named = {**kwargs, "reference_name": reference}
        parts.append(f"<h3>{_text(measure)}</h3>")
        parts.append(
            _figure_html(
                convergence_figure(records, **named),
                f"{measure} distance of each layer to its {reference}",
            )
        )
        parts.append(
            _figure_html(
                heatmap_figure(records, **named),
                f"{measure} distance to the {reference}, layer x step",
            )
        )
        if measure in has_previous:
            parts.append(
                _figure_html(
                    convergence_figure(records, reference="previous", **kwargs),
                    f"{measure} distance of each layer to its previous snapshot",
                )
            )
    return "\n".join(parts)


def render_html(
    analysis: RunAnalysis,
    *,
    title: str = "CCA convergence report",
    noise_floors: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """The report page of one run as a self-contained HTML document.

    Holds the settings (measures, layers, snapshot steps, reference step, threshold), a table of
    convergence steps per layer and measure (with the noise floors when given), tables of the
    distance to final at up to ``MAX_TABLE_STEPS`` snapshot steps, and per measure the
    convergence curves, the layer x step heatmap and, when recorded, the distances to the
    previous snapshot, as embedded PNG images.

    Args:
        analysis: The run's analysis, e.g. from
            :func:`cca_monitor.convergence.analyse_snapshots`.
        title: Page title and heading.
        noise_floors: Optional ``{measure: {layer: distance}}`` from
            :func:`cca_monitor.convergence.noise_floors`.

    Returns:
        The HTML text.

    Raises:
        ValueError: If the analysis has no layer with distances to the final representation.
    """
    if not analysis.layers:
        raise ValueError(
            "`analysis` has no layer with distances to the final representation; "
            "there is nothing to report"
        )
    reference = _text(reference_name(analysis.summary))
    return _PAGE.substitute(
        title=_text(title),
        settings=_settings(analysis),
        threshold=_text(analysis.summary["threshold"]),
        reference=reference,
        floor_note=_FLOOR_NOTE.format(reference=reference) if noise_floors else "",
        convergence=_convergence_table(analysis, noise_floors),
        distances=_distance_tables(analysis),
        figures=_figures(analysis),
    )


def write_html_report(
    analysis: RunAnalysis,
    directory: str | os.PathLike[str],
    *,
    title: str = "CCA convergence report",
    noise_floors: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Write :func:`render_html` as ``report.html`` in ``directory`` (created if missing).

    Returns:
        The path of the written page.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / HTML_REPORT_NAME
    path.write_text(render_html(analysis, title=title, noise_floors=noise_floors), "utf-8")
    log.info("Wrote the HTML report to %s", path)
    return path
