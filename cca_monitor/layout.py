"""Turn a captured activation of any layer kind into a (num_datapoints, num_neurons) matrix.

Every similarity measure in this package takes activation matrices of shape
``(num_datapoints, num_neurons)``: one row per datapoint, one column per neuron. (The SVCCA
reference code uses the transpose, ``(num_neurons, num_datapoints)``.) This module is the one
place where layer outputs are brought into that layout:

* dense outputs ``(N, D)`` are already in it;
* convolution outputs ``(N, C, *spatial)`` (Conv1d, Conv2d, Conv3d and their transposes) have
  channels as neurons; ``conv_mode`` chooses what a datapoint is (see :data:`ConvMode`);
* sequence outputs ``(N, T, H)`` (recurrent layers, batch first) have every time step of every
  example as a datapoint and the hidden units as neurons (:func:`sequence_to_datapoints`), or
  give one ``(N, H)`` matrix per time step (:func:`per_timestep`).

:func:`to_datapoints` turns one activation into one matrix. Two ways of comparing convolution
outputs need more than that, and are offered as functions of a pair of activations; together
with the single-matrix modes they are the values of :data:`ConvPairMode`, all available through
:func:`conv_similarity`:

* ``"dft"``: the 2-D discrete Fourier transform of every channel splits a convolution output
  into one ``(N, 2C)`` matrix per spatial frequency (:func:`dft_frequency_blocks`), and a
  measure is computed per frequency and averaged (:func:`per_frequency_similarity`), following
  Raghu et al. (2017): for translation-invariant data the frequencies are uncorrelated with each
  other, so the CCA of the ``"flatten"`` layout splits into one small CCA per frequency, and
  the mean CCA over frequencies equals that of ``"flatten"`` at a fraction of its cost.
* ``"interpolate"``: two outputs of different spatial sizes are resized to a common size and laid
  out as ``"positions"`` with aligned rows (:func:`match_spatial`).

Layers whose output is a tuple, list or dict (recurrent layers, attention, custom modules) are
reduced to one tensor before any of this, by the ``output_index`` selector of
:class:`cca_monitor.capture.ActivationRecorder` and
:func:`cca_monitor.capture.capture_activations`; the functions here take that tensor.

The module depends on torch only.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from torch.nn import functional

__all__ = [
    "kept_rows_in_range",
    "DEFAULT_MAX_ROWS",
    "ConvMode",
    "ConvPairMode",
    "LayoutKind",
    "MeasureFn",
    "check_layout_arguments",
    "conv_similarity",
    "datapoints_per_example",
    "dft_frequency_blocks",
    "match_spatial",
    "per_frequency",
    "per_frequency_similarity",
    "per_timestep",
    "sequence_to_datapoints",
    "to_datapoints",
]

_T = TypeVar("_T")

MeasureFn = Callable[[torch.Tensor, torch.Tensor], float]
"""A similarity of two ``(num_datapoints, num_neurons)`` matrices with the same rows, e.g. one
of ``cca_monitor.similarity.MEASURES``."""

ConvMode = Literal["positions", "avgpool", "flatten"]
"""How a convolution output ``(N, C, *spatial)`` becomes a matrix.

* ``"positions"``: every spatial position of every example is a datapoint and the ``C`` channels
  are the neurons, ``(N * prod(spatial), C)``. Rows are ordered example-major, then by the
  spatial indices in order (for 2-D: ``h``, then ``w``), i.e. row ``(n * H + h) * W + w`` holds
  ``activation[n, :, h, w]``. This treats a channel as one neuron, as in Raghu et al. (2017).
* ``"avgpool"``: the mean over the spatial positions, ``(N, C)``.
* ``"flatten"``: every (channel, position) pair is a neuron, ``(N, C * prod(spatial))``.
"""

ConvPairMode = Literal["positions", "avgpool", "flatten", "dft", "interpolate"]
"""How two convolution outputs are compared by :func:`conv_similarity`.

* ``"positions"``, ``"avgpool"``, ``"flatten"``: each output is laid out by
  :func:`to_datapoints` (see :data:`ConvMode`) and the measure compares the two matrices.
  ``"positions"`` needs equal spatial sizes, so that the rows are the same (example, position)
  pairs.
* ``"dft"``: the measure per spatial frequency, averaged over the frequencies; see
  :func:`per_frequency_similarity`. Needs equal spatial sizes.
* ``"interpolate"``: both outputs resized to a common spatial size, then ``"positions"``; see
  :func:`match_spatial`.
"""

LayoutKind = Literal["auto", "conv", "sequence"]
"""What a tensor of rank >= 3 holds.

* ``"auto"``: rank 2 is dense; ranks 3 to 5 are channels-first convolution outputs
  ``(N, C, *spatial)`` (a rank-3 tensor is read as a Conv1d output ``(N, C, L)``).
* ``"conv"``: a channels-first convolution output of rank 3, 4 or 5.
* ``"sequence"``: a batch-first sequence ``(N, T, H)``, as produced by recurrent layers once
  their output is put batch first.
"""

DEFAULT_MAX_ROWS = 8192
"""Default cap on the rows kept per layer and snapshot.

A snapshot of a conv layer in ``"positions"`` mode has ``N * H * W`` rows, which grows fast
(512 probe images of 32x32 give 524,288 rows). Capping at 8192 rows bounds a float32 snapshot of
a layer to ``8192 * num_neurons * 4`` bytes (32 MiB for 1024 neurons) on disk and in memory,
while keeping ten or more datapoints per neuron for layers up to about 800 channels, which CCA
needs to give meaningful correlations.
"""

_CONV_RANKS = (3, 4, 5)
_SEQUENCE_RANK = 3
_CONV_MODES = ("positions", "avgpool", "flatten")
_CONV_PAIR_MODES = (*_CONV_MODES, "dft", "interpolate")
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
"""Interpolation mode of ``torch.nn.functional.interpolate`` by number of spatial dimensions."""
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def to_datapoints(
    activation: torch.Tensor,
    *,
    kind: LayoutKind = "auto",
    conv_mode: ConvMode = "positions",
    max_rows: int | None = None,
    seed: int = 0,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reshape one layer's activation into a ``(num_datapoints, num_neurons)`` matrix.

    Args:
        activation: A layer output with the batch as first dimension: ``(N, D)`` for dense
            layers, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)`` for convolutions,
            ``(N, T, H)`` for sequences (with ``kind="sequence"``).
        kind: What the tensor holds; see :data:`LayoutKind`. ``"auto"`` reads every tensor of
            rank 3 to 5 as a convolution output, so pass ``"sequence"`` for batch-first
            sequences.
        conv_mode: Layout of convolution outputs; see :data:`ConvMode`. Ignored for dense and
            sequence activations.
        max_rows: If given and the matrix has more rows, keep only ``max_rows`` of them, chosen
            at random by a private generator seeded with ``seed`` and kept in their original
            order. The cap acts on the rows *after* layout, so in ``"positions"`` mode it keeps
            a subset of (example, position) pairs, and for sequences a subset of
            (example, time step) pairs. The same input shape and seed always keep the same
            rows, so successive snapshots of a layer share their datapoints. The global random
            number generator is never used.
        seed: Seed of the row subsampling.
        rows: Instead of ``max_rows``, the indices of the rows to keep, in the order wanted
            (a 1-D int32 or int64 tensor, values in ``[0, num_rows)``, on any device). In
            ``"positions"`` mode only those rows are gathered, so a large convolution output is
            never copied whole.

    Returns:
        A contiguous ``(num_datapoints, num_neurons)`` tensor with the input's dtype and device.
        The input is never modified; the result may share memory with it (a dense input below
        the row cap is returned as is).

    Raises:
        TypeError: If ``activation`` is not a tensor, ``max_rows`` or ``seed`` is not an int, or
            ``rows`` is not an integer tensor.
        ValueError: If the rank does not fit ``kind``, ``kind``, ``conv_mode`` or
            ``max_rows`` has an invalid value, both ``max_rows`` and ``rows`` are given, or
            ``rows`` is not 1-D or holds an index out of range.

    Examples:
        >>> x = torch.zeros(8, 16, 5, 5)
        >>> to_datapoints(x).shape
        torch.Size([200, 16])
        >>> to_datapoints(x, conv_mode="avgpool").shape
        torch.Size([8, 16])
        >>> to_datapoints(x, conv_mode="flatten").shape
        torch.Size([8, 400])
        >>> to_datapoints(x, max_rows=50).shape
        torch.Size([50, 16])
    """
    _check_tensor(activation, "activation")
    check_layout_arguments(kind=kind, conv_mode=conv_mode, max_rows=max_rows, seed=seed)
    if max_rows is not None and rows is not None:
        raise ValueError("give either max_rows or rows, not both")
    _check_rank(activation, kind)
    num_rows = activation.shape[0] * datapoints_per_example(
        activation, kind=kind, conv_mode=conv_mode
    )
    if rows is not None:
        _check_rows(rows, num_rows)
    elif max_rows is not None and num_rows > max_rows:
        rows = _row_subset(num_rows, max_rows, seed, activation.device)
    if rows is not None and kind != "sequence" and activation.dim() in _CONV_RANKS:
        if conv_mode == "positions":
            return _positions_at(activation, rows.to(activation.device))
    matrix = _reshape(activation, kind=kind, conv_mode=conv_mode)
    if rows is not None:
        matrix = matrix.index_select(0, rows.to(matrix.device))
    return matrix.contiguous()


def datapoints_per_example(
    activation: torch.Tensor, *, kind: LayoutKind = "auto", conv_mode: ConvMode = "positions"
) -> int:
    """How many rows :func:`to_datapoints` makes of each example of ``activation``.

    ``T`` for a sequence ``(N, T, H)``, ``prod(spatial)`` for a convolution output in
    ``"positions"`` mode, 1 otherwise.

    Examples:
        >>> datapoints_per_example(torch.zeros(8, 16, 5, 5))
        25
        >>> datapoints_per_example(torch.zeros(8, 16, 5, 5), conv_mode="avgpool")
        1
    """
    if kind == "sequence":
        _check_sequence(activation)
        return activation.shape[1]
    if activation.dim() in _CONV_RANKS and conv_mode == "positions":
        return activation.shape[2:].numel()
    return 1


def check_layout_arguments(
    *,
    kind: LayoutKind = "auto",
    conv_mode: ConvMode = "positions",
    max_rows: int | None = None,
    seed: int = 0,
) -> None:
    """Validate the keyword arguments of :func:`to_datapoints` without any activation.

    Lets a caller that converts activations later (e.g. in forward hooks) reject bad settings
    at construction time.

    Args:
        kind: See :func:`to_datapoints`.
        conv_mode: See :func:`to_datapoints`.
        max_rows: See :func:`to_datapoints`.
        seed: See :func:`to_datapoints`.

    Raises:
        TypeError: If ``max_rows`` is neither an int nor None, or ``seed`` is not an int.
        ValueError: If ``kind`` or ``conv_mode`` is not a known choice or ``max_rows < 1``.

    Examples:
        >>> check_layout_arguments(conv_mode="avgpool", max_rows=100)
        >>> check_layout_arguments(conv_mode="spatial")
        Traceback (most recent call last):
        ...
        ValueError: conv_mode must be one of ('positions', 'avgpool', 'flatten'), got 'spatial'.
    """
    for name, value, choices in (
        ("kind", kind, ("auto", "conv", "sequence")),
        ("conv_mode", conv_mode, _CONV_MODES),
    ):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    if max_rows is not None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int):
            raise TypeError(f"max_rows must be an int or None, got {max_rows!r}.")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 (or None for no cap), got {max_rows}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}.")


def sequence_to_datapoints(sequence: torch.Tensor) -> torch.Tensor:
    """Make every time step of every example a datapoint: ``(N, T, H) -> (N * T, H)``.

    Args:
        sequence: A batch-first sequence ``(N, T, H)``, e.g. a recurrent layer's output
            sequence (transposed from ``(T, N, H)`` when the layer is not ``batch_first``).

    Returns:
        A contiguous ``(N * T, H)`` tensor; row ``n * T + t`` holds ``sequence[n, t]``.

    Raises:
        ValueError: If ``sequence`` is not 3-D.

    Examples:
        >>> sequence_to_datapoints(torch.zeros(4, 10, 32)).shape
        torch.Size([40, 32])
    """
    _check_sequence(sequence)
    return sequence.reshape(-1, sequence.shape[-1]).contiguous()


def per_timestep(sequence: torch.Tensor) -> list[torch.Tensor]:
    """Split a sequence into one matrix per time step: ``(N, T, H) -> T x (N, H)``.

    Use it to compare two recurrent layers (or one at two training steps) time step by time
    step, e.g. ``[svcca(a, b) for a, b in zip(per_timestep(x), per_timestep(y))]``; this needs
    more examples than hidden units at every step, whereas :func:`sequence_to_datapoints` pools
    the time steps into ``N * T`` datapoints.

    Args:
        sequence: A batch-first sequence ``(N, T, H)``.

    Returns:
        ``T`` contiguous ``(N, H)`` tensors; element ``t`` holds ``sequence[:, t]``, with the
        examples as datapoints and the hidden units as neurons.

    Raises:
        TypeError: If ``sequence`` is not a tensor.
        ValueError: If ``sequence`` is not 3-D.

    Examples:
        >>> steps = per_timestep(torch.zeros(4, 10, 32))
        >>> len(steps), tuple(steps[0].shape)
        (10, (4, 32))
    """
    _check_tensor(sequence, "sequence")
    _check_sequence(sequence)
    return list(sequence.transpose(0, 1).contiguous().unbind(0))


def dft_frequency_blocks(activation: torch.Tensor) -> dict[tuple[int, ...], torch.Tensor]:
    """Split a convolution output into one real matrix per spatial frequency.

    The discrete Fourier transform over the spatial dimensions (``torch.fft.fftn``, i.e.
    ``torch.fft.fft2`` for Conv2d outputs) of every channel turns ``(N, C, H, W)`` into complex
    coefficients ``F[n, c, u, v]``. For each frequency ``(u, v)`` the ``(N, C)`` complex matrix
    ``F[:, :, u, v]`` is returned as the real ``(N, 2C)`` matrix ``[Re F | Im F]``: the examples
    are the datapoints and the real and imaginary parts of the channels' coefficients are the
    neurons. A complex-linear map of the channels is a real-linear map of these ``2C`` neurons,
    so CCA of two such blocks finds every complex canonical correlation of the frequency (twice,
    once per real dimension, when the coefficients' real and imaginary parts are equally
    spread, as for translation-invariant data).

    For a real input the coefficients at ``(u, v)`` and ``(-u mod H, -v mod W)`` are complex
    conjugates, so both blocks give the same canonical correlations; at the frequencies that are
    their own conjugate (``(0, 0)``, and those with ``u = H/2`` or ``v = W/2`` for even sizes)
    the imaginary half is zero, and the measures leave such constant neurons out.

    Args:
        activation: A real channels-first convolution output ``(N, C, *spatial)`` with one to
            three spatial dimensions; float16 and bfloat16 are transformed in float32.

    Returns:
        Frequency index -> contiguous ``(N, 2C)`` real tensor ``[Re | Im]``, on the input's
        device and in the real dtype of the transform (float32 for float16/bfloat16/float32
        input, float64 for float64). Keys are tuples with one index per spatial dimension
        (``(u, v)`` for Conv2d outputs), in row-major order of the frequency grid: all
        ``prod(spatial)`` frequencies of the full (not one-sided) transform.

    Raises:
        TypeError: If ``activation`` is not a tensor or is complex.
        ValueError: If ``activation`` is not of rank 3 to 5.

    Examples:
        >>> blocks = dft_frequency_blocks(torch.randn(8, 16, 5, 6))
        >>> len(blocks), tuple(blocks[(2, 3)].shape)
        (30, (8, 32))
    """
    _check_conv(activation, "activation")
    if activation.is_complex():
        raise TypeError(
            f"activation must be real, got dtype {activation.dtype}; pass the layer output "
            "itself, not its Fourier transform."
        )
    if activation.dtype in _HALF_DTYPES:
        activation = activation.float()
    spatial = tuple(activation.shape[2:])
    coefficients = torch.fft.fftn(activation, dim=tuple(range(2, activation.dim())))
    # (N, 2C, *spatial) -> (*spatial, N, 2C): each frequency's block is contiguous
    stacked = torch.cat([coefficients.real, coefficients.imag], dim=1)
    stacked = stacked.permute(*range(2, activation.dim()), 0, 1).contiguous()
    return {index: stacked[index] for index in itertools.product(*map(range, spatial))}


def per_frequency(
    x: torch.Tensor, y: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], _T]
) -> dict[tuple[int, ...], _T]:
    """Apply ``fn`` to the blocks of every spatial frequency of two convolution outputs.

    Args:
        x: A convolution output ``(N, C, *spatial)``.
        y: A convolution output of the same examples and spatial size, ``(N, C_y, *spatial)``.
        fn: Called as ``fn(x_block, y_block)`` on the ``(N, 2C)`` and ``(N, 2C_y)`` blocks of
            each frequency (see :func:`dft_frequency_blocks`), e.g. a similarity measure, or
            ``cca_monitor.similarity.canonical_correlations`` to see the correlations.

    Returns:
        Frequency index -> ``fn``'s result, keyed as in :func:`dft_frequency_blocks`.

    Raises:
        TypeError: If ``x`` or ``y`` is not a tensor or ``fn`` is not callable.
        ValueError: If ``x`` or ``y`` is not of rank 3 to 5, or they differ in the number of
            examples or in spatial size.

    Examples:
        >>> x = torch.randn(40, 2, 3, 3)
        >>> widths = per_frequency(x, x[:, :1], lambda a, b: (a.shape[1], b.shape[1]))
        >>> widths[(1, 2)]
        (4, 2)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(x_block, y_block), got {fn!r}.")
    _check_conv_pair(x, y, same_spatial=True, mode="dft")
    x_blocks, y_blocks = dft_frequency_blocks(x), dft_frequency_blocks(y)
    return {index: fn(x_blocks[index], y_blocks[index]) for index in x_blocks}


def per_frequency_similarity(x: torch.Tensor, y: torch.Tensor, measure_fn: MeasureFn) -> float:
    """A measure computed per spatial frequency, averaged over all frequencies.

    Each of the ``prod(spatial)`` frequencies of the full transform weighs the same (see
    :func:`per_frequency` and :func:`dft_frequency_blocks`). With ``mean_cca`` this is the
    average of all frequencies' canonical correlations pooled, as in Raghu et al. (2017): for
    circularly translation-invariant data (e.g. a probe set closed under circular shifts) the
    frequencies are uncorrelated with each other, so the canonical correlations of the
    ``"flatten"`` layouts are those of the frequencies taken together, each conjugate pair
    ``(u, v), (-u, -v)`` once; the two frequencies of a pair give the same ``2C`` real
    correlations and a self-conjugate frequency gives ``C``, so the uniform mean over all
    frequencies equals ``mean_cca`` of the ``"flatten"`` layouts, while each CCA has only
    ``2C`` instead of ``C * prod(spatial)`` neurons per side. For other measures it is simply
    their mean over the frequencies. The result is NaN if the measure is NaN at any frequency.

    Each frequency's CCA has ``N`` datapoints for ``2C`` neurons, so this mode needs
    ``N > 2C`` examples (and warns below ``20C``), whereas ``"positions"`` uses
    ``N * prod(spatial)`` datapoints for ``C`` neurons.

    Args:
        x: A convolution output ``(N, C, *spatial)``.
        y: A convolution output of the same examples and spatial size, ``(N, C_y, *spatial)``.
        measure_fn: The similarity of two ``(num_datapoints, num_neurons)`` matrices.

    Returns:
        The mean of ``measure_fn`` over the frequencies.

    Raises:
        TypeError: If ``x`` or ``y`` is not a tensor or ``measure_fn`` is not callable.
        ValueError: If ``x`` or ``y`` is not of rank 3 to 5, or they differ in the number of
            examples or in spatial size; and whatever ``measure_fn`` raises.

    Examples:
        >>> def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
        ...     return float(torch.equal(a, b))
        >>> x = torch.randn(30, 2, 4, 4)
        >>> per_frequency_similarity(x, x, overlap)
        1.0
    """
    values = per_frequency(x, y, measure_fn)
    return float(sum(float(value) for value in values.values()) / len(values))


def match_spatial(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize two convolution outputs to one spatial size and lay both out as ``"positions"``.

    The target size is, per spatial dimension, the larger of the two sizes, so a map is only
    ever upsampled; a map already of that size is used as is. Resizing is
    ``torch.nn.functional.interpolate`` with ``align_corners=False`` and mode ``"linear"``,
    ``"bilinear"`` or ``"trilinear"`` for one, two or three spatial dimensions. Both results
    then have the same rows: row ``(n * H + h) * W + w`` (for 2-D) is example ``n`` at position
    ``(h, w)`` of the common grid, as in :data:`ConvMode` ``"positions"``.

    Args:
        x: A convolution output ``(N, C_x, *spatial_x)``.
        y: A convolution output of the same examples, ``(N, C_y, *spatial_y)``, with as many
            spatial dimensions as ``x``.

    Returns:
        ``(x_rows, y_rows)``, contiguous tensors of shapes ``(N * prod(size), C_x)`` and
        ``(N * prod(size), C_y)``, where ``size`` is the common spatial size.

    Raises:
        TypeError: If ``x`` or ``y`` is not a tensor.
        ValueError: If ``x`` or ``y`` is not of rank 3 to 5, or they differ in rank or in the
            number of examples.

    Examples:
        >>> x_rows, y_rows = match_spatial(torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2))
        >>> tuple(x_rows.shape), tuple(y_rows.shape)
        ((32, 8), (32, 16))
    """
    _check_conv_pair(x, y, same_spatial=False, mode="interpolate")
    size = tuple(max(a, b) for a, b in zip(x.shape[2:], y.shape[2:], strict=True))
    return _positions(_resized(x, size)), _positions(_resized(y, size))


def conv_similarity(
    x: torch.Tensor,
    y: torch.Tensor,
    measure_fn: MeasureFn,
    *,
    conv_mode: ConvPairMode = "positions",
) -> float:
    """The similarity of two convolution outputs of the same examples, in any mode.

    Args:
        x: A convolution output ``(N, C_x, *spatial_x)``.
        y: A convolution output of the same examples, ``(N, C_y, *spatial_y)``.
        measure_fn: The similarity of two ``(num_datapoints, num_neurons)`` matrices, e.g.
            ``cca_monitor.similarity.MEASURES["svcca"]``.
        conv_mode: How the outputs are compared; see :data:`ConvPairMode`.

    Returns:
        ``measure_fn`` of the two outputs in that mode.

    Raises:
        TypeError: If ``x`` or ``y`` is not a tensor or ``measure_fn`` is not callable.
        ValueError: If ``conv_mode`` is unknown, ``x`` or ``y`` is not of rank 3 to 5, they
            differ in the number of examples, or, for ``"positions"`` and ``"dft"``, in
            spatial size; and whatever ``measure_fn`` raises.

    Examples:
        >>> def width_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
        ...     return a.shape[1] / b.shape[1]
        >>> x, y = torch.randn(10, 4, 6, 6), torch.randn(10, 8, 3, 3)
        >>> conv_similarity(x, y, width_ratio, conv_mode="interpolate")
        0.5
        >>> conv_similarity(x, y, width_ratio, conv_mode="flatten")
        2.0
    """
    if conv_mode not in _CONV_PAIR_MODES:
        raise ValueError(f"conv_mode must be one of {_CONV_PAIR_MODES}, got {conv_mode!r}.")
    if not callable(measure_fn):
        raise TypeError(f"measure_fn must be callable as measure_fn(x, y), got {measure_fn!r}.")
    if conv_mode == "dft":
        return per_frequency_similarity(x, y, measure_fn)
    if conv_mode == "interpolate":
        return float(measure_fn(*match_spatial(x, y)))
    _check_conv_pair(x, y, same_spatial=conv_mode == "positions", mode=conv_mode)
    layout = {"kind": "conv", "conv_mode": conv_mode}
    return float(measure_fn(to_datapoints(x, **layout), to_datapoints(y, **layout)))


def _reshape(activation: torch.Tensor, *, kind: LayoutKind, conv_mode: ConvMode) -> torch.Tensor:
    """Dispatch on ``kind`` and rank; see :func:`to_datapoints`."""
    _check_rank(activation, kind)
    if kind == "sequence":
        return sequence_to_datapoints(activation)
    if activation.dim() == 2:
        return activation
    return _conv_to_datapoints(activation, conv_mode)


def _check_rank(activation: torch.Tensor, kind: LayoutKind) -> None:
    """Raise unless ``activation`` has a rank that ``kind`` can lay out."""
    rank = activation.dim()
    if kind == "sequence":
        _check_sequence(activation)
    elif not ((kind == "auto" and rank == 2) or rank in _CONV_RANKS):
        expected = "2 (dense) or 3 to 5 (convolution)" if kind == "auto" else "3 to 5"
        raise ValueError(
            f"Cannot lay out an activation of shape {tuple(activation.shape)} with "
            f"kind={kind!r}: expected rank {expected} with the batch first. Pass "
            "kind='sequence' for (N, T, H) sequences."
        )


def _conv_to_datapoints(activation: torch.Tensor, conv_mode: ConvMode) -> torch.Tensor:
    """Lay out a channels-first ``(N, C, *spatial)`` tensor; see :data:`ConvMode`."""
    if conv_mode == "positions":
        return _positions(activation)
    if conv_mode == "avgpool":
        return activation.mean(dim=tuple(range(2, activation.dim())))
    return activation.reshape(activation.shape[0], -1)


def _positions(activation: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial) -> (N * prod(spatial), C)``, example-major; see :data:`ConvMode`."""
    return activation.movedim(1, -1).reshape(-1, activation.shape[1]).contiguous()


def _check_rows(rows: object, num_rows: int) -> None:
    """Raise unless ``rows`` is a 1-D integer tensor of indices in ``[0, num_rows)``."""
    if not isinstance(rows, torch.Tensor) or rows.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"rows must be an int32 or int64 tensor of row indices, got {rows!r}")
    if rows.dim() != 1:
        raise ValueError(f"rows must be 1-D, got shape {tuple(rows.shape)}")
    if rows.numel() and not (0 <= int(rows.min()) and int(rows.max()) < num_rows):
        raise ValueError(
            f"rows must be in [0, {num_rows}), the rows of the laid-out matrix; got values "
            f"from {int(rows.min())} to {int(rows.max())}"
        )


def _positions_at(activation: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of :func:`_positions` of ``activation``, gathered without the others."""
    flat = activation.flatten(2)  # (N, C, P); a view of a contiguous activation
    positions = flat.shape[2]
    return flat[rows // positions, :, rows % positions].contiguous()


def _resized(activation: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``activation`` interpolated to spatial ``size``, or itself if it already has it."""
    if tuple(activation.shape[2:]) == size:
        return activation
    mode = _INTERPOLATION[len(size)]
    return functional.interpolate(activation, size=size, mode=mode, align_corners=False)


def _check_tensor(value: object, name: str) -> None:
    """Raise TypeError unless ``value`` is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")


def _check_sequence(sequence: torch.Tensor) -> None:
    """Raise unless ``sequence`` is 3-D, ``(N, T, H)``."""
    if sequence.dim() != _SEQUENCE_RANK:
        raise ValueError(
            f"A sequence must be a batch-first (N, T, H) tensor, got shape "
            f"{tuple(sequence.shape)}. Put recurrent outputs batch first before converting."
        )


def _check_conv(activation: object, name: str) -> None:
    """Raise unless ``activation`` is a tensor of a convolution rank, ``(N, C, *spatial)``."""
    _check_tensor(activation, name)
    if activation.dim() not in _CONV_RANKS:
        raise ValueError(
            f"{name} must be a channels-first convolution output (N, C, *spatial) of rank 3 "
            f"to 5, got shape {tuple(activation.shape)}."
        )


def _check_conv_pair(x: object, y: object, *, same_spatial: bool, mode: str) -> None:
    """Raise unless ``x`` and ``y`` are convolution outputs that ``mode`` can compare."""
    _check_conv(x, "x")
    _check_conv(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same examples, got x.shape={tuple(x.shape)} and "
            f"y.shape={tuple(y.shape)} (batch sizes {x.shape[0]} and {y.shape[0]})."
        )
    if x.dim() != y.dim():
        raise ValueError(
            f"x and y must have the same number of spatial dimensions, got "
            f"x.shape={tuple(x.shape)} and y.shape={tuple(y.shape)}."
        )
    if same_spatial and x.shape[2:] != y.shape[2:]:
        raise ValueError(
            f"conv_mode={mode!r} compares x and y position by position or frequency by "
            f"frequency, so they need the same spatial size, got x.shape={tuple(x.shape)} and "
            f"y.shape={tuple(y.shape)}; use conv_mode='interpolate' (match_spatial) to resize "
            "them, or 'flatten' or 'avgpool'."
        )


def _row_subset(num_rows: int, max_rows: int, seed: int, device: torch.device) -> torch.Tensor:
    """Sorted indices of ``max_rows`` of ``num_rows`` rows, drawn from a private generator."""
    return _cached_row_subset(num_rows, max_rows, seed).to(device)


@functools.lru_cache(maxsize=64)
def _cached_row_subset(num_rows: int, max_rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(num_rows, generator=generator)[:max_rows]
    return chosen.sort().values


def kept_rows_in_range(
    num_rows: int, max_rows: int | None, seed: int, start: int, stop: int
) -> torch.Tensor:
    """Which rows of ``[start, stop)`` the row cap keeps, as indices relative to ``start``.

    For a matrix of ``num_rows`` rows built in pieces (probe minibatches, or the slices of
    several processes), keeping these rows of each piece gives exactly the rows that
    :func:`to_datapoints` with the same ``max_rows`` and ``seed`` keeps from the whole matrix.

    Example:
        >>> whole = to_datapoints(torch.arange(10.0)[:, None], max_rows=4, seed=1)
        >>> pieces = [torch.arange(s, s + 5.0)[:, None][kept_rows_in_range(10, 4, 1, s, s + 5)]
        ...           for s in (0, 5)]
        >>> bool(torch.equal(torch.cat(pieces), whole))
        True
    """
    if max_rows is None or num_rows <= max_rows:
        return torch.arange(stop - start)
    chosen = _cached_row_subset(num_rows, max_rows, seed)
    return chosen[(chosen >= start) & (chosen < stop)] - start
