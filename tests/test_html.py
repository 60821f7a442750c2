"""The self-contained HTML report and `cca-monitor report --html`, on a synthetic run."""

import base64
import re
from html.parser import HTMLParser

import pytest
import torch

from cca_monitor.cli import main
from cca_monitor.convergence import analyse_snapshots, convergence_steps, noise_floors
from cca_monitor.html_report import HTML_REPORT_NAME, render_html, write_html_report
from cca_monitor.storage import SNAPSHOT_DIR_NAME, SnapshotStore

NUM_DATAPOINTS = 300
STEPS = [0, 10, 20, 30, 40]
LAYERS = ["features.0", "head"]
MEASURES = ["svcca", "linear_cka"]
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
VOID_TAGS = {"meta", "img", "br", "hr", "link", "input"}


class _TagChecker(HTMLParser):
    """Collects the opened tags and the problems of a document: unclosed or stray tags."""

    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.problems: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID_TAGS:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``features.0`` settles by step 10, ``head`` only at the end."""
    run = tmp_path_factory.mktemp("run")
    store = SnapshotStore(run / SNAPSHOT_DIR_NAME)
    generator = torch.Generator().manual_seed(0)
    final = {layer: torch.randn(NUM_DATAPOINTS, 8, generator=generator) for layer in LAYERS}
    for step in STEPS:
        remaining = 1.0 - step / STEPS[-1]
        scale = {"features.0": 0.0 if step >= 10 else 3.0, "head": 3.0 * remaining}
        store.write(
            step,
            {
                layer: final[layer]
                + scale[layer] * torch.randn(NUM_DATAPOINTS, 8, generator=generator)
                for layer in LAYERS
            },
        )
    store.write_metadata({"layers": LAYERS, "measures": MEASURES})
    return run


@pytest.fixture(scope="module")
def analysis(run_dir):
    return analyse_snapshots(SnapshotStore(run_dir / SNAPSHOT_DIR_NAME), MEASURES, layers=LAYERS)


@pytest.fixture(scope="module")
def page(analysis):
    return render_html(analysis, title="run <seed 0>")


def test_page_is_a_well_formed_document(page):
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    checker = _TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.problems == []
    assert checker.open == []


def test_figures_are_embedded_pngs(page):
    images = DATA_URI.findall(page)
    # per measure: curves to final, heatmap, curves to previous
    assert len(images) == 3 * len(MEASURES)
    for encoded in images:
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")


def test_page_links_to_nothing_outside(page):
    checker = _TagChecker()
    checker.feed(page)
    assert "http://" not in page
    assert "https://" not in page
    for tag, attrs in checker.tags:
        assert tag not in ("link", "script", "iframe")
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith("data:"), (tag, attrs[name][:40])


def test_page_holds_layers_measures_and_convergence_steps(page, analysis):
    for name in [*LAYERS, *MEASURES]:
        assert name in page
    for measure in MEASURES:
        reached = convergence_steps(analysis.records, measure=measure, threshold=0.1)
        assert reached["features.0"] == 10
        assert f"<td>step {reached['head']}</td>" in page
    assert "<td>step 10</td>" in page
    assert "<th>svcca converged at</th>" in page


def test_page_shows_the_distance_table(page, analysis):
    head_at_zero = next(
        r.distance
        for r in analysis.records
        if (r.layer, r.step, r.measure, r.reference) == ("head", 0, "svcca", "final")
    )
    assert f"<td>{head_at_zero:.3f}</td>" in page
    for step in STEPS:
        assert f"<th>step {step}</th>" in page


def test_text_is_escaped(page):
    assert "<title>run &lt;seed 0&gt;</title>" in page
    assert "<seed 0>" not in page


def test_noise_floors_get_a_column(run_dir, analysis):
    floors = noise_floors(SnapshotStore(run_dir / SNAPSHOT_DIR_NAME), MEASURES)
    page = render_html(analysis, noise_floors=floors)
    assert "<th>svcca noise floor</th>" in page
    assert f"<td>{floors['svcca']['head']:.3f}</td>" in page
    assert "row-shuffled copy" in page


def test_without_noise_floors_there_is_no_column(page):
    assert "noise floor" not in page


def test_write_html_report_writes_report_html(analysis, tmp_path):
    path = write_html_report(analysis, tmp_path / "out")
    assert path == tmp_path / "out" / HTML_REPORT_NAME
    assert DATA_URI.search(path.read_text(encoding="utf-8"))


def test_analysis_without_layers_is_rejected(analysis):
    empty = type(analysis)(analysis.records, [], analysis.measures, analysis.summary)
    with pytest.raises(ValueError, match="no layer with distances"):
        render_html(empty)


def test_cli_report_html(run_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(run_dir), "--html", "--out", str(out)]) == 0
    page = (out / HTML_REPORT_NAME).read_text(encoding="utf-8")
    assert "features.0" in page
    assert "<th>linear_cka noise floor</th>" in page
    assert str(run_dir) in page
    assert "Wrote" in capsys.readouterr().out


def test_cli_report_without_html_writes_no_page(run_dir, tmp_path):
    out = tmp_path / "report"
    main(["report", str(run_dir), "--out", str(out)])
    assert not (out / HTML_REPORT_NAME).exists()
