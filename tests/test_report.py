import csv
import math
import re

import pytest
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import (
    IMAGES,
    SCALARS,
    TENSORS,
    EventAccumulator,
)
from tensorboard.plugins.custom_scalar import layout_pb2

from cca_monitor.records import DistanceRecord
from cca_monitor.report import (
    custom_scalars_layout,
    log_records,
    log_tensorboard_extras,
    scalar_tag,
    tensorboard_loggers,
    write_tensorboard,
)

LAYERS = ["features.1", "features.10", "classifier"]
MEASURES = ["svcca", "pwcca"]
STEPS = [0, 3, 9, 20]
FLOAT32_TOLERANCE = 1e-6


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call and counts ``save`` calls."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.saves = 0

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def save(self):
        self.saves += 1


def _records() -> list[DistanceRecord]:
    """Final and previous distances for every layer and measure; NaN for one cell."""
    records = []
    for reference in ("final", "previous"):
        for measure_index, measure in enumerate(MEASURES):
            for layer_index, layer in enumerate(LAYERS):
                for step in STEPS:
                    distance = (1 - step / STEPS[-1]) / (1 + layer_index + 2 * measure_index)
                    if reference == "previous":
                        distance /= 3
                    records.append(DistanceRecord(step, layer, measure, reference, distance))
    records[5] = DistanceRecord(records[5].step, records[5].layer, "svcca", "final", math.nan)
    return records


def _expected_scalars(records) -> dict[str, dict[int, float]]:
    expected: dict[str, dict[int, float]] = {}
    for r in records:
        if not math.isnan(r.distance):
            expected.setdefault(scalar_tag(r.measure, r.reference, r.layer), {})[r.step] = (
                r.distance
            )
    return expected


def _accumulator(log_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0, IMAGES: 0, TENSORS: 0})
    accumulator.Reload()
    return accumulator


def _written_layout(accumulator) -> layout_pb2.Layout:
    (tag,) = accumulator.PluginTagToContent("custom_scalars")
    (event,) = accumulator.Tensors(tag)
    layout = layout_pb2.Layout()
    layout.ParseFromString(event.tensor_proto.string_val[0])
    return layout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("svcca", "final", "features.0"), "cca/svcca_to_final/features.0"),
        (("linear_cka", "previous", "classifier"), "cca/linear_cka_to_previous/classifier"),
    ],
    ids=["final", "previous"],
)
def test_scalar_tag(args, expected):
    assert scalar_tag(*args) == expected


def test_log_records_groups_by_step_in_order_and_skips_nan():
    records = _records()
    first, second = RecordingLogger(), RecordingLogger()
    log_records([first, second], list(reversed(records)))

    for logger in (first, second):
        assert [step for step, _ in logger.calls] == STEPS
        assert logger.saves == 1
        logged = {}
        for step, metrics in logger.calls:
            for tag, value in metrics.items():
                logged.setdefault(tag, {})[step] = value
        assert logged == _expected_scalars(records)
    nan_record = records[5]
    nan_tag = scalar_tag("svcca", "final", nan_record.layer)
    assert nan_tag not in dict(first.calls)[nan_record.step]


def test_log_records_leaves_out_steps_with_only_nan():
    records = [
        DistanceRecord(0, "fc", "svcca", "final", math.nan),
        DistanceRecord(5, "fc", "svcca", "final", 0.0),
    ]
    logger = RecordingLogger()
    log_records([logger], records)
    assert logger.calls == [(5, {"cca/svcca_to_final/fc": 0.0})]


@pytest.mark.parametrize(
    ("loggers", "records", "match"),
    [
        (RecordingLogger(), [], "`loggers` must be a sequence of Lightning loggers"),
        ([RecordingLogger()], DistanceRecord(0, "fc", "svcca", "final", 0.1), "`records` must"),
    ],
    ids=["single-logger", "single-record"],
)
def test_log_records_rejects_non_sequences(loggers, records, match):
    with pytest.raises(TypeError, match=match):
        log_records(loggers, records)


def test_tensorboard_loggers_picks_only_tensorboard(tmp_path):
    tensorboard = TensorBoardLogger(tmp_path)
    loggers = [CSVLogger(tmp_path), tensorboard, RecordingLogger()]
    assert tensorboard_loggers(loggers) == [tensorboard]
    assert tensorboard_loggers([RecordingLogger()]) == []


def test_layout_lists_anchored_tags_in_layer_order():
    records = [r for r in _records() if not (r.reference == "previous" and r.measure == "pwcca")]
    layout = custom_scalars_layout(records, MEASURES, list(reversed(LAYERS)))

    assert list(layout) == ["CCA distance to final", "CCA distance to previous snapshot"]
    assert list(layout["CCA distance to final"]) == MEASURES
    assert list(layout["CCA distance to previous snapshot"]) == ["svcca"]
    kind, patterns = layout["CCA distance to final"]["pwcca"]
    assert kind == "Multiline"
    assert len(patterns) == len(LAYERS)
    for pattern, layer in zip(patterns, reversed(LAYERS), strict=True):
        assert re.search(pattern, scalar_tag("pwcca", "final", layer))
    assert not re.search(patterns[-1], "cca/pwcca_to_final/features.10")
    assert not re.search(patterns[-1], "cca/pwcca_to_final/featuresX1")


def test_layout_of_final_records_only_has_one_category():
    records = [r for r in _records() if r.reference == "final"]
    assert list(custom_scalars_layout(records, MEASURES, LAYERS)) == ["CCA distance to final"]


def _check_tensorboard_events(accumulator, records):
    tags = accumulator.Tags()
    expected = _expected_scalars(records)
    assert sorted(tags["scalars"]) == sorted(expected)
    for tag, values in expected.items():
        events = accumulator.Scalars(tag)
        assert [event.step for event in events] == sorted(values)
        for event in events:
            assert event.value == pytest.approx(values[event.step], abs=FLOAT32_TOLERANCE)

    image_tags = [f"cca/{m}_to_final_{kind}" for m in MEASURES for kind in ("curves", "heatmap")]
    assert sorted(tags["images"]) == sorted(image_tags)
    for tag in image_tags:
        (image,) = accumulator.Images(tag)
        assert image.step == STEPS[-1]
        assert image.width > 100
        assert image.height > 100

    layout = _written_layout(accumulator)
    charts = {
        (category.title, chart.title): list(chart.multiline.tag)
        for category in layout.category
        for chart in category.chart
    }
    assert sorted(charts) == sorted(
        (category, measure)
        for category in ("CCA distance to final", "CCA distance to previous snapshot")
        for measure in MEASURES
    )
    for patterns in charts.values():
        assert len(patterns) == len(LAYERS)


def test_lightning_loggers_end_to_end(tmp_path):
    records = _records()
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    csv_logger = CSVLogger(tmp_path, name="csv")
    loggers = [csv_logger, tensorboard]

    log_records(loggers, records)
    log_tensorboard_extras(loggers, records, MEASURES, LAYERS)

    _check_tensorboard_events(_accumulator(tensorboard.log_dir), records)

    with open(csv_logger.experiment.metrics_file_path, newline="") as file:
        rows = list(csv.DictReader(file))
    expected = _expected_scalars(records)
    assert set(rows[0]) == {"step", *expected}
    assert [int(row["step"]) for row in rows] == STEPS
    tag = scalar_tag("pwcca", "previous", "classifier")
    assert [float(row[tag]) for row in rows] == pytest.approx(
        [expected[tag][step] for step in STEPS]
    )


def test_write_tensorboard_without_a_trainer(tmp_path):
    records = _records()
    write_tensorboard(records, tmp_path / "events", MEASURES, LAYERS)
    _check_tensorboard_events(_accumulator(tmp_path / "events"), records)


def test_extras_do_nothing_without_a_tensorboard_logger(tmp_path):
    log_tensorboard_extras([CSVLogger(tmp_path)], [], MEASURES, LAYERS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("records", "measures", "layers", "error", "match"),
    [
        ([], MEASURES, LAYERS, ValueError, "`records` is empty"),
        (None, [], LAYERS, ValueError, r"must be non-empty, got measures=\[\]"),
        (None, MEASURES, [], ValueError, r"layers=\[\]"),
        (None, "svcca", LAYERS, TypeError, "`measures` must be a sequence of measure names"),
        (
            None,
            ["svcca", "cka"],
            LAYERS,
            ValueError,
            r"`measures` \['cka'\] have no distances to the final",
        ),
        (None, MEASURES, ["fc9"], ValueError, r"None of `layers` \['fc9'\] has records"),
    ],
    ids=["no-records", "no-measures", "no-layers", "measures-str", "unknown-measure", "layers"],
)
def test_extras_errors(tmp_path, records, measures, layers, error, match):
    records = _records() if records is None else records
    with pytest.raises(error, match=match):
        write_tensorboard(records, tmp_path, measures, layers)
    with pytest.raises(error, match=match):
        log_tensorboard_extras([TensorBoardLogger(tmp_path)], records, measures, layers)
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
