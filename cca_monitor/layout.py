"""Turn a captured activation of any layer kind into a (num_datapoints, num_neurons) matrix.

Every similarity measure in this package takes activation matrices of shape
``(num_datapoints, num_neurons)``: one row per datapoint, one column per neuron. (The SVCCA
reference code uses the transpose, ``(num_neurons, num_datapoints)``.) This module is the one
place where layer outputs are brought into that layout:

* dense outputs ``(N, D)`` are already in it;
* convolution outputs ``(N, C, *spatial)`` (Conv1d, Conv2d, Conv3d and their transposes) have
  channels as neurons; ``conv_mode`` chooses what a datapoint is (see :data:`ConvMode`);
* sequence outputs ``(N, T, H)`` (recurrent layers, batch first) have every time step of every
  example as a datapoint and the hidden units as neurons.

The module depends on torch only.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "DEFAULT_MAX_ROWS",
    "ConvMode",
    "LayoutKind",
    "check_layout_arguments",
    "sequence_to_datapoints",
    "to_datapoints",
]

ConvMode = Literal["positions", "avgpool", "flatten"]
"""How a convolution output ``(N, C, *spatial)`` becomes a matrix.

* ``"positions"``: every spatial position of every example is a datapoint and the ``C`` channels
  are the neurons, ``(N * prod(spatial), C)``. Rows are ordered example-major, then by the
  spatial indices in order (for 2-D: ``h``, then ``w``), i.e. row ``(n * H + h) * W + w`` holds
  ``activation[n, :, h, w]``. This treats a channel as one neuron, as in Raghu et al. (2017).
* ``"avgpool"``: the mean over the spatial positions, ``(N, C)``.
* ``"flatten"``: every (channel, position) pair is a neuron, ``(N, C * prod(spatial))``.
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


def to_datapoints(
    activation: torch.Tensor,
    *,
    kind: LayoutKind = "auto",
    conv_mode: ConvMode = "positions",
    max_rows: int | None = None,
    seed: int = 0,
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

    Returns:
        A contiguous ``(num_datapoints, num_neurons)`` tensor with the input's dtype and device.
        The input is never modified; the result may share memory with it (a dense input below
        the row cap is returned as is).

    Raises:
        TypeError: If ``activation`` is not a tensor, or ``max_rows`` or ``seed`` is not an int.
        ValueError: If the rank does not fit ``kind``, or ``kind``, ``conv_mode`` or
            ``max_rows`` has an invalid value.

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
    if not isinstance(activation, torch.Tensor):
        raise TypeError(f"activation must be a torch.Tensor, got {type(activation).__name__}.")
    check_layout_arguments(kind=kind, conv_mode=conv_mode, max_rows=max_rows, seed=seed)
    matrix = _reshape(activation, kind=kind, conv_mode=conv_mode)
    if max_rows is not None and matrix.shape[0] > max_rows:
        matrix = matrix.index_select(0, _row_subset(matrix.shape[0], max_rows, seed, matrix.device))
    return matrix.contiguous()


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
        ("conv_mode", conv_mode, ("positions", "avgpool", "flatten")),
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
    if sequence.dim() != _SEQUENCE_RANK:
        raise ValueError(
            f"A sequence must be a batch-first (N, T, H) tensor, got shape "
            f"{tuple(sequence.shape)}. Put recurrent outputs batch first before converting."
        )
    return sequence.reshape(-1, sequence.shape[-1]).contiguous()


def _reshape(activation: torch.Tensor, *, kind: LayoutKind, conv_mode: ConvMode) -> torch.Tensor:
    """Dispatch on ``kind`` and rank; see :func:`to_datapoints`."""
    rank = activation.dim()
    if kind == "sequence":
        return sequence_to_datapoints(activation)
    if kind == "auto" and rank == 2:
        return activation
    if rank in _CONV_RANKS:
        return _conv_to_datapoints(activation, conv_mode)
    expected = "2 (dense) or 3 to 5 (convolution)" if kind == "auto" else "3 to 5"
    raise ValueError(
        f"Cannot lay out an activation of shape {tuple(activation.shape)} with kind={kind!r}: "
        f"expected rank {expected} with the batch first. Pass kind='sequence' for (N, T, H) "
        "sequences."
    )


def _conv_to_datapoints(activation: torch.Tensor, conv_mode: ConvMode) -> torch.Tensor:
    """Lay out a channels-first ``(N, C, *spatial)`` tensor; see :data:`ConvMode`."""
    if conv_mode == "positions":
        return activation.movedim(1, -1).reshape(-1, activation.shape[1])
    if conv_mode == "avgpool":
        return activation.mean(dim=tuple(range(2, activation.dim())))
    return activation.reshape(activation.shape[0], -1)


def _row_subset(num_rows: int, max_rows: int, seed: int, device: torch.device) -> torch.Tensor:
    """Sorted indices of ``max_rows`` of ``num_rows`` rows, drawn from a private generator."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(num_rows, generator=generator)[:max_rows]
    return chosen.sort().values.to(device)
