"""Record layer activations with forward hooks, and run the out-of-band probe forward.

:class:`ActivationRecorder` is a context manager that hooks the selected layers of a model and
keeps, for each layer, its output as a ``(num_datapoints, num_neurons)`` matrix on the CPU
(see :mod:`cca_monitor.layout`). :func:`capture_activations` runs a probe set through a model
with such a recorder, in eval mode and without gradients, and leaves the model exactly as it
found it: the ``training`` flag of every submodule, the CPU and CUDA random number generator
states and the BatchNorm running statistics are unchanged afterwards.

Layers are named as in ``model.named_modules()``, e.g. ``"features.0"``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from cca_monitor.layout import (
    DEFAULT_MAX_ROWS,
    ConvMode,
    LayoutKind,
    check_layout_arguments,
    datapoints_per_example,
    kept_rows_in_range,
    to_datapoints,
)

__all__ = [
    "ActivationRecorder",
    "capture_activations",
    "default_layer_names",
    "preserved_rng_state",
    "resolve_layer_names",
    "unwrap_model",
]

Probe = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]

_MONITORED_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.RNNBase)
_MAX_NAMES_IN_MESSAGE = 30
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside ``DataParallel`` / ``DistributedDataParallel`` / compile wrappers.

    A model compiled whole with ``torch.compile`` is unwrapped to the original module, so the
    probe forward runs eagerly and layer names are the original ones. Submodules compiled
    inside an eager model stay compiled; their layers are named through the wrapper
    (``"body._orig_mod.0"``) and recorded as well (the hooks are traced into the graph).

    Args:
        model: A model, possibly wrapped (several wrappers are removed in turn).

    Returns:
        The innermost module of the wrappers, or ``model`` itself if it is not wrapped.

    Examples:
        >>> net = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        else:
            return model


def default_layer_names(model: nn.Module) -> list[str]:
    """Names of the layers monitored by default, in registration order.

    These are every convolution (``Conv1d/2d/3d`` and the transposed ones), ``Linear`` and
    recurrent (``RNN``, ``LSTM``, ``GRU``) submodule. The root module itself and the projection
    layers inside ``nn.MultiheadAttention`` (whose forward never calls them) are left out.

    Args:
        model: The model whose layers to list.

    Returns:
        Module names as in ``model.named_modules()``.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
        >>> default_layer_names(net)
        ['0', '3']
    """
    attention_prefixes = tuple(
        f"{name}."
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
    )
    return [
        name
        for name, module in model.named_modules()
        if name
        and isinstance(module, _MONITORED_TYPES)
        and not (attention_prefixes and name.startswith(attention_prefixes))
    ]


def resolve_layer_names(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """Turn a user's layer selection into module names, in the model's order.

    Args:
        model: The model whose submodules are selected.
        layers: ``None`` for :func:`default_layer_names`, or a sequence whose entries are exact
            module names or ``fnmatch`` patterns (``"features.*"`` selects every submodule under
            ``features``, at any depth). The root module (named ``""``) cannot be selected.

    Returns:
        The selected names, each once, in ``model.named_modules()`` order.

    Raises:
        TypeError: If ``layers`` is a single string or holds something other than strings.
        ValueError: If ``layers`` is empty, an entry matches no submodule, or ``layers`` is
            ``None`` and the model has no convolution, linear or recurrent layer.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> resolve_layer_names(net, ["2", "0"])
        ['0', '2']
        >>> resolve_layer_names(net, ["*"])
        ['0', '1', '2']
    """
    if layers is None:
        names = default_layer_names(model)
        if not names:
            raise ValueError(
                f"layers=None selects every Conv, Linear and RNN/LSTM/GRU submodule, but "
                f"{type(model).__name__} has none. Pass the names to monitor as layers=[...]; "
                f"available: {_format_names(_submodule_names(model))}."
            )
        return names
    _check_layer_entries(layers)
    available = _submodule_names(model)
    selected: set[str] = set()
    for entry in layers:
        matches = [name for name in available if name == entry or fnmatch.fnmatchcase(name, entry)]
        if not matches:
            raise ValueError(
                f"layers entry {entry!r} matches no submodule of {type(model).__name__}. "
                f"Use names from model.named_modules() or glob patterns; available: "
                f"{_format_names(available)}."
            )
        selected.update(matches)
    return [name for name in available if name in selected]


class ActivationRecorder:
    """Context manager that records the outputs of selected layers as activation matrices.

    Inside the ``with`` block, every forward call of a selected layer appends its output to
    :attr:`activations` as a ``(num_datapoints, num_neurons)`` matrix (see
    :func:`cca_monitor.layout.to_datapoints`), detached, copied to the CPU (so that later
    in-place operations on the output, such as ``nn.ReLU(inplace=True)``, do not change it) and
    upcast to float32 if it was float16 or bfloat16. Several forward calls (probe minibatches)
    concatenate their rows. The row cap ``max_rows`` applies to each call separately, unless
    :meth:`set_probe_window` declares which examples of a whole probe the next call holds
    (:func:`capture_activations` does): then the rows kept are those the cap keeps from the
    whole probe, whatever the minibatches.

    Which part of a layer's output is recorded:

    * a tuple or list output: element ``output_index`` (0 by default, which for ``nn.LSTM``,
      ``nn.GRU`` and ``nn.RNN`` is the output sequence);
    * a dict output: the value under key ``output_index``;
    * ``nn.Linear`` applied to ``(N, ..., features)`` inputs (tokens, positions): every
      leading position of every example is a datapoint and the features are the neurons;
    * recurrent modules (``nn.RNNBase``): only the output sequence (``output_index=0``) is
      supported. It is put batch first, ``(N, T, H)``, if the module is not ``batch_first``,
      and every time step of every example becomes a datapoint, ``(N * T, H)``. An unbatched
      ``(T, H)`` output counts as one example. ``PackedSequence`` outputs are not supported.

    A layer whose output cannot be recorded, or whose module runs more than once within one
    forward call of the model (a shared module, whose calls could not be told apart), does not
    stop the forward: the problem is stored in :attr:`errors`, a warning naming the layer is
    issued, and the layer's activations are dropped for the rest of the recording. Calls of a
    layer made outside a forward call of the model are not checked for repetition.

    The hooks are registered on ``__enter__`` and all removed on ``__exit__``, also when the
    block raises. Models wrapped in ``DataParallel`` / ``DistributedDataParallel`` are
    unwrapped first (see :func:`unwrap_model`), so layer names are those of the inner model.

    Args:
        model: The model to observe.
        layers: Layer selection, see :func:`resolve_layer_names`.
        conv_mode: Layout of convolution outputs, see :data:`cca_monitor.layout.ConvMode`.
        max_rows: Cap on the rows kept per layer, or ``None`` for no cap. Each forward call
            is capped on its own unless :meth:`set_probe_window` says which part of a larger
            probe it holds.
        seed: Seed of the row subsampling.
        output_index: Which element of a tuple/list output (an int) or dict output (a key) to
            record.

    Attributes:
        errors: Layer name -> why that layer's activations were dropped, for the last ``with``
            block.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with ActivationRecorder(net, layers=["0", "2"]) as recorder:
        ...     _ = net(torch.randn(5, 4))
        >>> {name: tuple(value.shape) for name, value in recorder.activations.items()}
        {'0': (5, 8), '2': (5, 2)}
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        *,
        conv_mode: ConvMode = "positions",
        max_rows: int | None = DEFAULT_MAX_ROWS,
        seed: int = 0,
        output_index: int | str = 0,
    ) -> None:
        self._model = unwrap_model(model)
        self._layers = resolve_layer_names(self._model, layers)
        check_layout_arguments(conv_mode=conv_mode, max_rows=max_rows, seed=seed)
        if isinstance(output_index, bool) or not isinstance(output_index, (int, str)):
            raise TypeError(f"output_index must be an int or a str, got {output_index!r}.")
        self._conv_mode, self._max_rows, self._seed = conv_mode, max_rows, seed
        self._window: tuple[int, int] | None = None
        self._output_index = output_index
        self._handles: list[RemovableHandle] = []
        self._chunks: dict[str, list[torch.Tensor]] = {}
        self._calls: dict[str, int] = {}
        self._in_model_forward = False
        self.errors: dict[str, str] = {}

    @property
    def layers(self) -> list[str]:
        """The resolved names of the observed layers, in the model's order."""
        return list(self._layers)

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        """Layer name -> ``(num_datapoints, num_neurons)`` CPU tensor, for each layer that ran.

        Layers are in the model's order; layers listed in :attr:`errors` are absent.
        """
        result = {}
        for name in self._layers:
            chunks = self._chunks.get(name)
            if chunks:
                if len(chunks) > 1:
                    chunks[:] = [torch.cat(chunks)]
                result[name] = chunks[0]
        return result

    def __enter__(self) -> ActivationRecorder:
        if self._handles:
            raise RuntimeError("This ActivationRecorder is already active; it is not reentrant.")
        self._chunks = {}
        self._calls = {}
        self.errors = {}
        try:
            self._register_hooks()
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._remove_hooks()

    def _register_hooks(self) -> None:
        """Hook the model's forward boundaries and every observed layer."""
        self._handles.append(self._model.register_forward_pre_hook(self._on_model_start))
        self._handles.append(
            self._model.register_forward_hook(self._on_model_end, always_call=True)
        )
        modules = dict(self._model.named_modules())
        for name in self._layers:
            self._handles.append(modules[name].register_forward_hook(self._layer_hook(name)))

    def _remove_hooks(self) -> None:
        """Remove every registered hook."""
        while self._handles:
            self._handles.pop().remove()
        self._in_model_forward = False

    def _on_model_start(self, module: nn.Module, args: Any) -> None:
        """Start counting layer calls for a new forward call of the model."""
        self._calls = {}
        self._in_model_forward = True

    def _on_model_end(self, module: nn.Module, args: Any, output: Any) -> None:
        """End the current forward call of the model."""
        self._in_model_forward = False

    def _layer_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        """Build the forward hook that records layer ``name``."""

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name in self.errors:
                return
            try:
                self._check_single_call(name)
                self._append(name, self._to_matrix(module, output))
            except (ValueError, TypeError) as error:
                self._drop(name, str(error))

        return hook

    def _check_single_call(self, name: str) -> None:
        """Raise if layer ``name`` already ran in the current forward call of the model."""
        if not self._in_model_forward:
            return
        self._calls[name] = self._calls.get(name, 0) + 1
        if self._calls[name] > 1:
            raise ValueError(
                "the module ran more than once in one forward call of the model (a shared "
                "module), so its outputs cannot be told apart; select another layer"
            )

    def _to_matrix(self, module: nn.Module, output: Any) -> torch.Tensor:
        """Select, lay out, detach, copy to the CPU and upcast one layer output."""
        selected = _select_output(output, self._output_index)
        kind: LayoutKind = "auto"
        if isinstance(module, nn.RNNBase):
            selected = _batch_first_sequence(module, selected, self._output_index)
            kind = "sequence"
        elif isinstance(module, nn.Linear) and selected.dim() > 2:
            # (N, ..., features): every token or position is a datapoint, features are neurons
            selected = selected.reshape(selected.shape[0], -1, selected.shape[-1])
            kind = "sequence"
        selected = selected.detach()
        per_example = datapoints_per_example(selected, kind=kind, conv_mode=self._conv_mode)
        rows = self._kept_rows(selected.shape[0], per_example)
        matrix = to_datapoints(selected, kind=kind, conv_mode=self._conv_mode, rows=rows)
        dtype = torch.float32 if matrix.dtype in _HALF_DTYPES else matrix.dtype
        return matrix.to(device="cpu", dtype=dtype, copy=True)

    def set_probe_window(self, start: int, total: int) -> None:
        """Declare that the next forward call starts at example ``start`` of ``total``.

        The row cap then keeps the rows it would keep from the whole probe of ``total``
        examples. Without a window, the cap applies to each forward call on its own.
        """
        if not 0 <= start < total:
            raise ValueError(f"probe window start must be in [0, {total}), got {start}")
        self._window = (start, total)

    def _kept_rows(self, examples: int, per_example: int) -> torch.Tensor | None:
        """Rows of one forward call's matrix that the row cap keeps; None when it keeps all."""
        start, total = self._window or (0, examples)
        keep = kept_rows_in_range(
            total * per_example,
            self._max_rows,
            self._seed,
            start * per_example,
            (start + examples) * per_example,
        )
        return None if keep.numel() == examples * per_example else keep

    def _append(self, name: str, matrix: torch.Tensor) -> None:
        """Add rows to layer ``name``, checking that the number of neurons did not change."""
        chunks = self._chunks.setdefault(name, [])
        if chunks and chunks[0].shape[1] != matrix.shape[1]:
            raise ValueError(
                f"the number of neurons changed between forward calls ({chunks[0].shape[1]} "
                f"then {matrix.shape[1]}); with conv_mode='flatten' every probe minibatch must "
                "have the same spatial size"
            )
        chunks.append(matrix)

    def _drop(self, name: str, reason: str) -> None:
        """Record why layer ``name`` cannot be recorded, warn, and discard its rows."""
        self.errors[name] = reason
        self._chunks.pop(name, None)
        warnings.warn(f"Layer {name!r} is not recorded: {reason}.", RuntimeWarning, stacklevel=2)


def capture_activations(
    model: nn.Module,
    probe: Probe,
    layers: Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    conv_mode: ConvMode = "positions",
    max_rows: int | None = DEFAULT_MAX_ROWS,
    seed: int = 0,
    output_index: int | str = 0,
    device: torch.device | str | None = None,
    autocast_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    probe_offset: int = 0,
    probe_total: int | None = None,
) -> dict[str, torch.Tensor]:
    """Run the probe set through the model and return the selected layers' activations.

    The forward runs in eval mode, under ``torch.no_grad()`` and inside ``autocast_context()``
    when given (e.g. the trainer's precision context). Afterwards, also after an error, the
    ``training`` flag of every submodule is restored exactly (including submodules frozen in
    eval mode inside a model in train mode) and so are the CPU random number generator state
    and, if CUDA is initialized, the state of every CUDA generator. BatchNorm running
    statistics are not updated, since the forward runs in eval mode. Layers that cannot be
    recorded, or that did not run, are left out of the result with a warning.

    Args:
        model: The model, possibly wrapped in ``DataParallel``/``DistributedDataParallel``
            (it is unwrapped first, and layer names are those of the inner model).
        probe: The probe inputs, batch first. A tensor ``x`` is passed as ``model(x)``; a tuple
            or list of tensors as ``model(*probe)``; a mapping of tensors as ``model(**probe)``.
            All tensors must have the same size along dimension 0.
        layers: Layer selection, see :func:`resolve_layer_names`.
        batch_size: Probe examples per forward call, or ``None`` to run the whole probe at
            once. The result does not depend on it: the row cap keeps the rows it would keep
            from one call on the whole probe.
        conv_mode: Layout of convolution outputs, see :data:`cca_monitor.layout.ConvMode`.
        max_rows: Cap on the rows kept per layer over the whole probe, or ``None``; see
            :func:`cca_monitor.layout.to_datapoints`.
        seed: Seed of the row subsampling (never the global generator).
        output_index: Which element of tuple/list outputs (an int) or dict outputs (a key) to
            record; see :class:`ActivationRecorder`.
        device: Where to run the forward; defaults to the device of the model's first
            parameter, or the CPU if it has none.
        autocast_context: A callable returning a context manager to run the forward in.
        probe_offset: When ``probe`` is a slice of a larger probe (one process's share),
            the index of its first example in the whole probe.
        probe_total: The number of examples of the whole probe (default: ``probe``'s). With
            ``probe_offset`` it makes the row cap keep, from the slice, exactly the rows it
            keeps from the whole probe, so slices captured apart concatenate to one capture.

    Returns:
        Layer name -> float ``(num_datapoints, num_neurons)`` tensor on the CPU (float16 and
        bfloat16 outputs are upcast to float32), in the model's order.

    Raises:
        TypeError: If ``probe`` is not a tensor, a sequence or a mapping of tensors, or
            ``batch_size`` is not an int.
        ValueError: If the probe is empty or its tensors differ in batch size, ``batch_size``
            is below 1, or the layer selection or layout arguments are invalid.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
        >>> acts = capture_activations(net, torch.randn(10, 3, 6, 6))
        >>> {name: tuple(value.shape) for name, value in acts.items()}
        {'0': (160, 4), '3': (10, 2)}
    """
    model = unwrap_model(model)
    batches = _probe_batches(probe, batch_size)
    if device is None:
        device = _model_device(model)
    recorder = ActivationRecorder(
        model,
        layers,
        conv_mode=conv_mode,
        max_rows=max_rows,
        seed=seed,
        output_index=output_index,
    )
    context = autocast_context or contextlib.nullcontext
    with _preserved_modes(model), preserved_rng_state(), torch.no_grad(), recorder:
        model.eval()
        start = probe_offset
        total = probe_total if probe_total is not None else _num_examples(batches)
        for batch in batches:
            recorder.set_probe_window(start, total)
            with context():
                _call(model, _to_device(batch, device))
            start += _probe_tensors(batch)[0].shape[0]
    activations = recorder.activations
    missing = [
        name for name in recorder.layers if name not in activations and name not in recorder.errors
    ]
    if missing:
        warnings.warn(
            f"Layers {missing} did not run during the probe forward and are not recorded.",
            RuntimeWarning,
            stacklevel=2,
        )
    return activations


def _select_output(output: Any, output_index: int | str) -> torch.Tensor:
    """Pick the recorded tensor out of a layer output; see :class:`ActivationRecorder`."""
    if isinstance(output, (tuple, list)):
        if not isinstance(output_index, int) or not -len(output) <= output_index < len(output):
            raise ValueError(
                f"output_index={output_index!r} does not select an element of the layer's "
                f"{type(output).__name__} output of length {len(output)}"
            )
        output = output[output_index]
    elif isinstance(output, Mapping):
        if output_index not in output:
            raise ValueError(
                f"output_index={output_index!r} is not a key of the layer's dict output; "
                f"keys: {list(output)}"
            )
        output = output[output_index]
    if isinstance(output, PackedSequence):
        raise ValueError("PackedSequence outputs are not supported; pad the sequences instead")
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"the selected output is a {type(output).__name__}, not a tensor; choose another "
            "output_index"
        )
    return output


def _batch_first_sequence(
    module: nn.RNNBase, output: torch.Tensor, output_index: int | str
) -> torch.Tensor:
    """Put a recurrent layer's output sequence in ``(N, T, H)`` layout."""
    if output_index != 0:
        raise ValueError(
            f"recurrent layers are recorded from their output sequence only (output_index=0), "
            f"got output_index={output_index!r}"
        )
    if output.dim() == 2:
        return output.unsqueeze(0)
    return output if module.batch_first else output.transpose(0, 1)


def _probe_batches(probe: Probe, batch_size: int | None) -> list[Probe]:
    """Validate the probe and split it along dimension 0 into minibatches."""
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int or None, got {batch_size!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or None for one batch), got {batch_size}.")
    tensors = _probe_tensors(probe)
    sizes = {t.shape[0] if t.dim() else None for t in tensors}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        raise ValueError(
            f"The probe tensors must be non-empty and batch first with one common size along "
            f"dimension 0, got shapes {[tuple(t.shape) for t in tensors]}."
        )
    num_examples = sizes.pop()
    step = batch_size or num_examples
    return [_slice(probe, start, start + step) for start in range(0, num_examples, step)]


def _num_examples(batches: Sequence[Probe]) -> int:
    return sum(_probe_tensors(batch)[0].shape[0] for batch in batches)


def _probe_tensors(probe: Probe) -> list[torch.Tensor]:
    """The tensors of a probe, checking that it is a tensor, sequence or mapping of tensors."""
    if isinstance(probe, torch.Tensor):
        return [probe]
    if isinstance(probe, Mapping):
        values = list(probe.values())
    elif isinstance(probe, Sequence) and not isinstance(probe, str):
        values = list(probe)
    else:
        raise TypeError(
            f"probe must be a tensor, a sequence of tensors or a mapping of tensors, got "
            f"{type(probe).__name__}."
        )
    if not values or not all(isinstance(value, torch.Tensor) for value in values):
        raise TypeError(
            f"probe must hold at least one tensor and only tensors, got "
            f"{[type(value).__name__ for value in values]}."
        )
    return values


def _slice(probe: Probe, start: int, stop: int) -> Probe:
    """Examples ``start:stop`` of every tensor of the probe, keeping its structure."""
    if isinstance(probe, torch.Tensor):
        return probe[start:stop]
    if isinstance(probe, Mapping):
        return {key: value[start:stop] for key, value in probe.items()}
    return [value[start:stop] for value in probe]


def _to_device(batch: Probe, device: torch.device | str) -> Probe:
    """Move every tensor of a probe batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: value.to(device) for key, value in batch.items()}
    return [value.to(device) for value in batch]


def _call(model: nn.Module, batch: Probe) -> None:
    """Call the model on one probe batch, unpacking sequences and mappings."""
    if isinstance(batch, torch.Tensor):
        model(batch)
    elif isinstance(batch, Mapping):
        model(**batch)
    else:
        model(*batch)


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter, or the CPU if it has none."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextlib.contextmanager
def _preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore the ``training`` flag of every submodule on exit."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore every random stream training may use on exit.

    That is torch's CPU generator, every CUDA generator (if CUDA is initialized), Python's
    ``random`` and numpy's global generator, the streams ``seed_everything`` seeds.
    """
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _submodule_names(model: nn.Module) -> list[str]:
    """Names of every submodule except the root, in ``named_modules()`` order."""
    return [name for name, _ in model.named_modules() if name]


def _check_layer_entries(layers: Sequence[str]) -> None:
    """Reject a bare string, a non-sequence, an empty sequence and non-string entries."""
    if isinstance(layers, str):
        raise TypeError(
            f"layers must be a sequence of names, got the string {layers!r}; "
            f"write layers=[{layers!r}]."
        )
    if not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of names or None, got {type(layers).__name__}.")
    if not layers:
        raise ValueError("layers is empty; pass at least one name, or None for the defaults.")
    bad = [entry for entry in layers if not isinstance(entry, str)]
    if bad:
        raise TypeError(f"layers entries must be strings, got {bad!r}.")


def _format_names(names: Sequence[str]) -> str:
    """List names for an error message, truncated after a few dozen."""
    shown = ", ".join(repr(name) for name in names[:_MAX_NAMES_IN_MESSAGE])
    hidden = len(names) - _MAX_NAMES_IN_MESSAGE
    return f"{shown}, ... ({hidden} more)" if hidden > 0 else shown or "(none)"
