"""Snapshots and results on disk, as plain files readable without Lightning.

A snapshot is the activations of every monitored layer on the probe set at one training step.
:class:`SnapshotStore` keeps one file per snapshot, ``<directory>/step_<step:08d>.pt``, holding a
``dict[str, torch.Tensor]`` that maps each layer name to a CPU tensor of shape
``(num_datapoints, num_neurons)``, written with :func:`torch.save` and readable with
``torch.load(path, weights_only=True)``. Every file is written to a temporary file in the same
directory and then renamed over the target, so an interrupted run leaves either the complete
file or nothing.

The distances computed from the snapshots are written by :func:`write_results` as
``cca_results.csv`` and ``cca_results.json`` and read back by :func:`read_results`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pickle
import re
import uuid
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import torch

from cca_monitor.records import DistanceRecord

__all__ = [
    "METADATA_NAME",
    "RESULTS_CSV_NAME",
    "RESULTS_FIELDS",
    "RESULTS_JSON_NAME",
    "SNAPSHOT_DIR_NAME",
    "probe_fingerprint",
    "SnapshotStore",
    "find_store",
    "read_results",
    "write_results",
]

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"
SNAPSHOT_DIR_NAME = "cca_snapshots"
"""Folder of a run's log dir that holds its snapshots."""
RESULTS_CSV_NAME = "cca_results.csv"
RESULTS_JSON_NAME = "cca_results.json"
RESULTS_FIELDS = ("step", "layer", "measure", "reference", "distance")

_SNAPSHOT_PATTERN = re.compile(r"step_(\d{8,})\.pt")
_REFERENCES = ("final", "previous")


def _atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a temporary file in the same directory, then rename it.

    The temporary file starts with a dot and ends in ``.tmp``, so it never matches a snapshot
    name; it is removed if ``write`` fails. It is created like any file (permissions from the
    process umask), not private as ``tempfile.mkstemp`` would make it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temp_path, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(
            f"`step` must be a non-negative int (the trainer's global_step), got {step!r}."
        )
    return step


def _to_storable(layer: str, tensor: torch.Tensor) -> torch.Tensor:
    """Detach ``tensor``, move it to the CPU and make it contiguous.

    A tensor that views only part of a larger storage is compacted as well, because
    :func:`torch.save` writes the whole storage of a view.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"`activations[{layer!r}]` must be a torch.Tensor of shape "
            f"(num_datapoints, num_neurons), got {type(tensor).__name__}."
        )
    stored = tensor.detach().cpu().contiguous()
    if stored.untyped_storage().nbytes() > stored.numel() * stored.element_size():
        stored = stored.clone()
    return stored


class SnapshotStore:
    """Activation snapshots of one run, one ``.pt`` file per training step.

    Each snapshot maps layer names to CPU tensors of shape ``(num_datapoints, num_neurons)``
    (the transpose of the ``(neurons, datapoints)`` layout of the original SVCCA code). The
    directory is created on the first write, so constructing a store has no side effect.

    Args:
        directory: Folder holding the snapshots and ``metadata.json``.

    Example:
        >>> import tempfile, torch
        >>> store = SnapshotStore(tempfile.mkdtemp())
        >>> _ = store.write(0, {"fc1": torch.zeros(8, 3)})
        >>> _ = store.write(10, {"fc1": torch.ones(8, 3)})
        >>> store.steps(), store.read_layer(10, "fc1").shape
        ([0, 10], torch.Size([8, 3]))
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"`directory` must be a str or os.PathLike, got {type(directory).__name__}."
            )
        self._directory = Path(directory)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._directory)!r})"

    @property
    def directory(self) -> Path:
        """The folder holding the snapshot files."""
        return self._directory

    def path(self, step: int) -> Path:
        """Return the file name of the snapshot at ``step`` (whether or not it exists)."""
        return self._directory / f"step_{_check_step(step):08d}.pt"

    def write(self, step: int, activations: Mapping[str, torch.Tensor]) -> Path:
        """Store the snapshot taken at ``step``, replacing any earlier one at that step.

        Args:
            step: ``trainer.global_step`` of the snapshot, >= 0.
            activations: Layer name -> tensor of shape ``(num_datapoints, num_neurons)``, on
                any device. Tensors are detached, moved to the CPU and made contiguous.

        Returns:
            The path of the written file.

        Raises:
            ValueError: If ``step`` is negative or ``activations`` is empty.
            TypeError: If a layer name is not a str or a value is not a tensor.
            OSError: If the file cannot be written; no partial file is left behind.
        """
        path = self.path(step)
        if not isinstance(activations, Mapping) or not activations:
            raise ValueError(
                "`activations` must be a non-empty mapping of layer name -> tensor, "
                f"got {activations!r}."
            )
        snapshot = {}
        for layer, tensor in activations.items():
            if not isinstance(layer, str):
                raise TypeError(f"Layer names in `activations` must be str, got {layer!r}.")
            snapshot[layer] = _to_storable(layer, tensor)
        _atomic_write(path, lambda file: torch.save(snapshot, file))
        log.debug("Wrote snapshot of %d layers at step %d to %s", len(snapshot), step, path)
        return path

    def steps(self) -> list[int]:
        """Return the steps of the snapshots on disk, ascending; other files are ignored."""
        if not self._directory.is_dir():
            return []
        matches = (_SNAPSHOT_PATTERN.fullmatch(entry.name) for entry in self._directory.iterdir())
        return sorted(int(match.group(1)) for match in matches if match)

    def _existing_path(self, step: int) -> Path:
        path = self.path(step)
        if not path.is_file():
            raise KeyError(
                f"No snapshot at step {step} in {self._directory}; available steps: {self.steps()}."
            )
        return path

    def read(self, step: int) -> dict[str, torch.Tensor]:
        """Load the snapshot taken at ``step``.

        The file is memory-mapped, so layers that are not used are not read from disk.

        Args:
            step: A step listed by :meth:`steps`.

        Returns:
            Layer name -> CPU tensor of shape ``(num_datapoints, num_neurons)``.

        Raises:
            KeyError: If there is no snapshot at ``step``; the message lists those there are.
            ValueError: If the file cannot be read (e.g. truncated); the message names it.
        """
        path = self._existing_path(step)
        try:
            snapshot = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
            # torch's reason for a file that is not a whole zip archive speaks of mmap options
            complete = zipfile.is_zipfile(path)
            reason = str(error) if complete else "not a complete file written by torch.save"
            _raise_unreadable(path, reason, error)
        if not isinstance(snapshot, dict) or not all(
            isinstance(layer, str) and isinstance(value, torch.Tensor)
            for layer, value in snapshot.items()
        ):
            _raise_unreadable(path, "it holds something other than layer name -> tensor")
        return snapshot

    def read_layer(self, step: int, layer: str) -> torch.Tensor:
        """Load one layer of the snapshot taken at ``step``.

        Returns:
            CPU tensor of shape ``(num_datapoints, num_neurons)``.

        Raises:
            KeyError: If there is no snapshot at ``step`` or it has no ``layer``; the message
                lists what is available.
        """
        snapshot = self.read(step)
        if layer not in snapshot:
            raise KeyError(
                f"Snapshot at step {step} has no layer {layer!r}; "
                f"available layers: {list(snapshot)}."
            )
        return snapshot[layer]

    def layers(self) -> list[str]:
        """Return the layer names over all snapshots, in the order they first appear."""
        seen: dict[str, None] = {}
        for step in self.steps():
            seen.update(dict.fromkeys(self.read(step)))
        return list(seen)

    def disk_bytes(self, step: int | None = None) -> int:
        """Return the size on disk of the snapshot at ``step``, or of all snapshots if None.

        Raises:
            KeyError: If there is no snapshot at ``step``.
        """
        steps = self.steps() if step is None else [step]
        return sum(self._existing_path(s).stat().st_size for s in steps)

    def write_metadata(self, meta: Mapping[str, Any]) -> Path:
        """Write ``meta`` as ``metadata.json`` (probe fingerprint, layers, measures, version).

        Args:
            meta: JSON-serialisable mapping; it replaces any earlier metadata.

        Returns:
            The path of the written file.

        Raises:
            TypeError: If ``meta`` is not a mapping or holds values JSON cannot represent.
        """
        if not isinstance(meta, Mapping):
            raise TypeError(f"`meta` must be a mapping, got {type(meta).__name__}.")
        text = _dump_json(dict(meta), argument="meta")
        path = self._directory / METADATA_NAME
        _atomic_write(path, lambda file: file.write(text.encode("utf-8")))
        return path

    def read_metadata(self) -> dict[str, Any]:
        """Return the mapping stored by :meth:`write_metadata`, or ``{}`` if there is none.

        Raises:
            ValueError: If the file is not a JSON object; the message names it.
        """
        path = self._directory / METADATA_NAME
        if not path.is_file():
            return {}
        try:
            metadata = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"{path} is not valid JSON ({error}); delete it to use the snapshots without it"
            ) from error
        if not isinstance(metadata, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(metadata).__name__}")
        return metadata

    def __len__(self) -> int:
        return len(self.steps())

    def __contains__(self, step: object) -> bool:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            return False
        return self.path(step).is_file()


def _raise_unreadable(path: Path, reason: str, cause: BaseException | None = None) -> NoReturn:
    raise ValueError(
        f"Snapshot file {path} cannot be read ({reason}). It may be truncated or not a "
        "snapshot; move it away to analyse the other snapshots."
    ) from cause


def probe_fingerprint(probe: torch.Tensor) -> str:
    """SHA-256 of a probe tensor's shape, dtype and bytes: the identity of a probe set.

    Runs compared with each other, or a run resumed from a checkpoint, must have the same one.

    Example:
        >>> probe_fingerprint(torch.zeros(2, 3)) == probe_fingerprint(torch.zeros(2, 3))
        True
    """
    tensor = probe.detach().cpu().contiguous()
    digest = hashlib.sha256(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def find_store(path: str | os.PathLike[str]) -> SnapshotStore:
    """Return the snapshots of a run given its log dir or its snapshot folder.

    Args:
        path: A run's log dir (holding ``cca_snapshots/``) or the snapshot folder itself.

    Returns:
        The store of ``path/cca_snapshots`` if it holds snapshots, else that of ``path``.

    Raises:
        FileNotFoundError: If neither folder holds a snapshot.

    Example:
        >>> import tempfile, torch
        >>> run_dir = Path(tempfile.mkdtemp())
        >>> _ = SnapshotStore(run_dir / SNAPSHOT_DIR_NAME).write(0, {"fc1": torch.zeros(8, 3)})
        >>> find_store(run_dir).directory.name
        'cca_snapshots'
    """
    run_dir = Path(path)
    for candidate in (run_dir / SNAPSHOT_DIR_NAME, run_dir):
        store = SnapshotStore(candidate)
        if store.steps():
            return store
    raise FileNotFoundError(
        f"no snapshots in {run_dir} or {run_dir / SNAPSHOT_DIR_NAME}; pass the run's log dir "
        f"(the folder holding {SNAPSHOT_DIR_NAME}/) or the snapshot folder itself"
    )


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (NaN, inf) by None, recursively, so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _dump_json(value: Any, *, argument: str) -> str:
    try:
        return json.dumps(_json_safe(value), indent=2, allow_nan=False) + "\n"
    except TypeError as error:
        raise TypeError(
            f"`{argument}` must hold only JSON values (str, int, float, bool, None, lists and "
            f"dicts of them): {error}"
        ) from error


def _sorted_records(records: Sequence[DistanceRecord]) -> list[DistanceRecord]:
    """Sort by reference, measure, layer (in the order first seen) and step."""
    for index, record in enumerate(records):
        if not isinstance(record, DistanceRecord):
            raise TypeError(
                f"`records[{index}]` must be a DistanceRecord, got {type(record).__name__}."
            )
    layer_rank = {layer: rank for rank, layer in enumerate(dict.fromkeys(r.layer for r in records))}
    return sorted(records, key=lambda r: (r.reference, r.measure, layer_rank[r.layer], r.step))


def _csv_text(records: Sequence[DistanceRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RESULTS_FIELDS)
    for record in records:
        distance = "" if math.isnan(record.distance) else repr(float(record.distance))
        writer.writerow([record.step, record.layer, record.measure, record.reference, distance])
    return buffer.getvalue()


def write_results(
    records: Sequence[DistanceRecord],
    directory: str | os.PathLike[str],
    *,
    summary: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write distance records as ``cca_results.csv`` and ``cca_results.json`` in ``directory``.

    Rows are sorted by reference, measure, layer (in the order layers first appear in
    ``records``) and step. The CSV has the columns ``step,layer,measure,reference,distance``;
    the JSON file is ``{"records": [{...}, ...], "summary": {...}}``, with ``"summary"`` only
    when given. A NaN distance is an empty CSV cell and a JSON ``null``.

    Args:
        records: The distances to write.
        directory: Destination folder, created if missing.
        summary: Extra JSON-serialisable information stored under ``"summary"``; non-finite
            floats in it are written as ``null``.

    Returns:
        The paths of the CSV and the JSON file.

    Raises:
        TypeError: If an element of ``records`` is not a :class:`DistanceRecord`, or
            ``summary`` holds values JSON cannot represent.

    Example:
        >>> import tempfile
        >>> records = [DistanceRecord(0, "fc1", "svcca", "final", 0.4)]
        >>> csv_path, json_path = write_results(records, tempfile.mkdtemp())
        >>> read_results(csv_path) == records
        True
    """
    ordered = _sorted_records(records)
    content: dict[str, Any] = {"records": [dataclasses.asdict(r) for r in ordered]}
    if summary is not None:
        if not isinstance(summary, Mapping):
            raise TypeError(f"`summary` must be a mapping or None, got {type(summary).__name__}.")
        content["summary"] = dict(summary)
    json_text = _dump_json(content, argument="summary")
    folder = Path(directory)
    csv_path, json_path = folder / RESULTS_CSV_NAME, folder / RESULTS_JSON_NAME
    csv_text = _csv_text(ordered)
    _atomic_write(csv_path, lambda file: file.write(csv_text.encode("utf-8")))
    _atomic_write(json_path, lambda file: file.write(json_text.encode("utf-8")))
    log.info("Wrote %d distance records to %s and %s", len(ordered), csv_path, json_path)
    return csv_path, json_path


def _record_from_fields(fields: Mapping[str, Any], where: str) -> DistanceRecord:
    missing = [name for name in RESULTS_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"{where}: missing the fields {missing}.")
    reference = fields["reference"]
    if reference not in _REFERENCES:
        raise ValueError(f"{where}: reference must be one of {_REFERENCES}, got {reference!r}.")
    distance = fields["distance"]
    return DistanceRecord(
        step=int(fields["step"]),
        layer=str(fields["layer"]),
        measure=str(fields["measure"]),
        reference=reference,
        distance=math.nan if distance in ("", None) else float(distance),
    )


def _read_csv(path: Path) -> list[DistanceRecord]:
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if tuple(reader.fieldnames or ()) != RESULTS_FIELDS:
            raise ValueError(
                f"{path} is not a results table: expected the columns {list(RESULTS_FIELDS)}, "
                f"got {reader.fieldnames}."
            )
        return [_record_from_fields(row, f"{path}, line {reader.line_num}") for row in reader]


def _read_json(path: Path) -> list[DistanceRecord]:
    content = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict) or not isinstance(content.get("records"), list):
        raise ValueError(f'{path} is not a results file: expected {{"records": [...]}}.')
    return [
        _record_from_fields(entry, f"{path}, record {index}")
        for index, entry in enumerate(content["records"])
    ]


_READERS = {".csv": _read_csv, ".json": _read_json}


def read_results(path: str | os.PathLike[str]) -> list[DistanceRecord]:
    """Read the records written by :func:`write_results` from the CSV or the JSON file.

    Args:
        path: ``cca_results.csv``, ``cca_results.json``, or a folder holding
            ``cca_results.json``.

    Returns:
        The records in file order; empty CSV cells and JSON nulls become NaN distances.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file has another suffix or is not a results file.
    """
    file = Path(path)
    if file.is_dir():
        file = file / RESULTS_JSON_NAME
    if file.suffix not in _READERS:
        raise ValueError(
            f"`path` must name a .csv or .json results file or a folder holding "
            f"{RESULTS_JSON_NAME}, got {str(path)!r}."
        )
    if not file.is_file():
        raise FileNotFoundError(f"No results file at {file}.")
    return _READERS[file.suffix](file)
