"""Similarity of two representations of the same datapoints, computed from second moments.

Orientation: every activation matrix is ``(num_datapoints, num_neurons)``; row ``i`` of ``x``
and row ``i`` of ``y`` are the same input seen by two layers (or one layer at two training
steps). The reference numpy code of the SVCCA authors uses the transpose, ``(neurons,
datapoints)``. Inputs may be torch tensors or numpy arrays of any floating dtype; all linear
algebra runs in float64 on the inputs' device.

Definitions (every similarity lies in [0, 1]; a distance is ``1 - similarity``):

* **Canonical correlations** (Hotelling 1936): with ``Cxx``, ``Cyy``, ``Cxy`` the centered
  covariance blocks, the singular values of ``Wxᵀ Cxy Wy``, where ``Wx`` whitens ``Cxx``. There
  are ``min(rank x, rank y)`` of them, in descending order.
* **Mean CCA**: the plain mean of all canonical correlations, without dropping small ones.
* **SVCCA** (Raghu et al. 2017): center each input, keep its leading singular directions
  (scores ``U_k S_k``), then take the mean canonical correlation of the reduced inputs. ``keep``
  is an int (that many directions) or a float in (0, 1]: the fewest directions whose squared
  singular values, i.e. variance, reach that fraction of the total (``cutoff="variance"``, as in
  the reference tutorial). ``cutoff="singular_values"`` uses the fraction of the sum of singular
  values instead, as some other tools do; it keeps fewer directions for the same ``keep``.
* **PWCCA** (Morcos, Raghu & Bengio 2018): the weighted mean ``Σ αᵢ ρᵢ / Σ αᵢ`` of the canonical
  correlations, with ``αᵢ = Σⱼ |⟨hᵢ, xⱼ⟩|``, where ``hᵢ`` is the ``i``-th canonical variate of
  ``x`` (unit norm) and ``xⱼ`` the ``j``-th centered neuron of ``x``. The weights come from ``x``
  only, so ``pwcca(x, y) != pwcca(y, x)`` in general. ``reference_code=True`` reproduces the
  released ``pwcca.compute_pwcca`` instead (un-whitened, un-centered directions).
* **Linear CKA** (Kornblith et al. 2019): ``‖Cxy‖²_F / (‖Cxx‖_F ‖Cyy‖_F)``.
* **Debiased linear CKA** (Nguyen, Raghu & Kornblith 2021): CKA from the unbiased HSIC
  estimator of Song et al. 2012, averaged over minibatches of at least 4 rows.

Invariances: the CCA measures (canonical correlations, mean CCA, and SVCCA with all directions)
are invariant to any invertible linear map and translation of either input. SVCCA with a
reduction and linear CKA are invariant to orthogonal maps, isotropic scaling and translation,
because the reduction and CKA depend on the variance of each direction. PWCCA is invariant to
any invertible linear map of ``y``, but only to isotropic scaling, translation and permutations
(or sign flips) of ``x``'s neurons, because its weights add up x's neurons one by one.

Numerics: moments are accumulated in float64 (minibatches merged with Chan's pairwise update),
and inputs with large offsets are centered before they are multiplied, so such offsets cost no
precision. Whitening drops directions whose variance is below ``rtol`` times the largest (dead
and duplicate neurons) instead of adding an epsilon: a Cholesky factor is used when a bound on
the condition number proves that nothing would be dropped, a symmetric eigendecomposition
otherwise. Measures that need no weights take singular values only. CCA needs more datapoints
than neurons: with ``num_datapoints <= num_neurons`` any two representations have all
correlations equal to 1, so that raises; fewer than ``MIN_DATAPOINTS_PER_NEURON`` datapoints per
neuron warns.

Performance: a :class:`Representation` keeps one input's moments and whitening, so comparing it
with many others (every snapshot with the final one) computes them once. Float64 inputs with
small offsets are multiplied in place; other inputs are upcast and centered in cache-sized
chunks, never copied whole. On the CPU, products and decompositions go through numpy's BLAS
and LAPACK (symmetric products as rank-k updates, which torch lacks); row sums run as one
single-threaded task per core, the two sides' decompositions side by side, each on one
thread, which keeps them fast when other processes share the cores. For very large layers,
:func:`gram_precision` ``("float32")`` computes the products in float32 (about twice as fast
on a CPU), at a measured cost in accuracy.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

ArrayLike = torch.Tensor | np.ndarray
Measure = Literal["mean_cca", "svcca", "pwcca", "linear_cka"]
SvccaCutoff = Literal["variance", "singular_values"]

COMPUTE_DTYPE = torch.float64
GramPrecision = Literal["float64", "float32"]
_PRODUCT_DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}
_product_dtype: contextvars.ContextVar[torch.dtype] = contextvars.ContextVar(
    "cca_monitor_product_dtype", default=COMPUTE_DTYPE
)
DEFAULT_RTOL = 1e-10
"""Directions with variance below this fraction of the largest are dropped before whitening."""
MIN_DATAPOINTS_PER_NEURON = 10
"""Below this many datapoints per neuron, canonical correlations are biased upward: warn."""


_P = ParamSpec("_P")
_R = TypeVar("_R")
_SERIAL_LOCK = threading.Lock()
_serial_depth = 0
_saved_threads: tuple[int, list[int]] = (1, [])


@contextlib.contextmanager
def gram_precision(precision: GramPrecision) -> Iterator[None]:
    """Compute the Gram and cross products of the inputs in ``precision`` inside the block.

    ``"float64"`` (the default everywhere) gives the exact results this module documents.
    ``"float32"``, meant for very large layers, centers the rows in float32 chunks of about
    ``CHUNK_BYTES`` and multiplies them in float32, adding the chunks' products in float64.
    A (256,000, 64) float32 conv layer then takes about 35% less time on a CPU (dense float64
    inputs barely gain), but each product entry carries a relative error of about 1e-7, which
    the whitening amplifies by the inputs' condition number: the measures move by up to 2e-7
    on real activations and 5e-6 at a condition number of 1e4, and by 1e-2 at 1e8, where
    directions are lost (measured values in ``benchmarks/RESULTS.md``).
    Means, decompositions and results stay float64. The setting is local to the current
    thread (and asyncio task) and restored on exit.

    Args:
        precision: ``"float64"`` or ``"float32"``.

    Raises:
        ValueError: If ``precision`` is neither.

    Example:
        >>> x, y = torch.randn(1000, 8), torch.randn(1000, 8)
        >>> with gram_precision("float32"):
        ...     fast = mean_cca(x, y)
        >>> abs(fast - mean_cca(x, y)) < 1e-5
        True
    """
    if precision not in _PRODUCT_DTYPES:
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    token = _product_dtype.set(_PRODUCT_DTYPES[precision])
    try:
        yield
    finally:
        _product_dtype.reset(token)


@functools.cache
def _blas_libraries() -> list[Any]:
    """Controllers (threadpoolctl's) of the BLAS libraries loaded in the process: numpy's."""
    return ThreadpoolController().select(user_api="blas").lib_controllers


@contextlib.contextmanager
def _serial() -> Iterator[None]:
    """One intra-op CPU thread for torch and numpy's BLAS inside, restored after the outermost exit.

    Work here is either small, or split by :func:`_sum_over_rows` into one task per core.
    Torch's own threading cuts every operation into short parallel regions, which gain little
    on (num_neurons, num_neurons) matrices and small chunks, and which stall for a scheduler
    time slice at every barrier when other processes share the cores (an eigh of a 512 x 512
    matrix took 0.03 s on one thread and 6 s on two on such a machine). With one BLAS thread,
    numpy's products run in the calling thread, and no BLAS worker threads keep spinning on
    the cores after them (which slowed torch work right after a product 2.5-fold). Both
    settings are process-wide while inside.
    """
    global _serial_depth, _saved_threads
    with _SERIAL_LOCK:
        if _serial_depth == 0:
            _saved_threads = torch.get_num_threads(), [b.num_threads for b in _blas_libraries()]
            torch.set_num_threads(1)
            for library in _blas_libraries():
                library.set_num_threads(1)
        _serial_depth += 1
    try:
        yield
    finally:
        with _SERIAL_LOCK:
            _serial_depth -= 1
            if _serial_depth == 0:
                torch_threads, blas_threads = _saved_threads
                torch.set_num_threads(torch_threads)
                for library, threads in zip(_blas_libraries(), blas_threads, strict=True):
                    library.set_num_threads(threads)


def _one_thread(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` inside :func:`_serial`."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _serial():
            return fn(*args, **kwargs)

    return wrapper


MIN_NEURONS_SIDE_BY_SIDE = 128
"""Both sides' decompositions run as parallel tasks when each has at least this many neurons."""
MIN_ROWS_PER_TASK = 4096
"""Row sums over fewer rows than this per core run in one task."""


def map_over_ranges(
    total: int,
    work: Callable[[int, int], _R],
    *,
    min_per_task: int,
    device: torch.device | None = None,
) -> list[_R]:
    """``work(start, stop)`` over consecutive ranges that cover ``range(total)``, in order.

    On the CPU (``device`` None or a CPU device) the ranges run as one single-threaded task per
    core (``torch.get_num_threads()`` of them, each at least ``min_per_task`` long), so the
    cores work without synchronising; elsewhere, or when there is too little work to split,
    ``[work(0, total)]``. Each task runs in a copy of the caller's context (e.g.
    :func:`gram_precision`). Tasks started from inside a task run in it, in turn.
    """
    if device is not None and device.type != "cpu":
        return [work(0, total)]
    tasks = min(torch.get_num_threads(), total // max(min_per_task, 1))
    with _serial():
        if tasks < 2:
            return [work(0, total)]
        edges = [round(k * total / tasks) for k in range(tasks + 1)]
        return _in_parallel(
            [
                functools.partial(work, start, stop)
                for start, stop in zip(edges[:-1], edges[1:], strict=True)
            ]
        )


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _in_parallel(calls: Sequence[Callable[[], _R]]) -> list[_R]:
    """``[call() for call in calls]``: the first in this thread, the others on worker threads.

    The worker threads are started once and kept (starting a thread took about 1 ms on a
    2-core virtual machine, as long as a whole small comparison). Each call runs in a copy of
    the caller's context; every call has finished when this returns or raises.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(thread_name_prefix="cca_monitor")
        pool = _pool
    pending = [pool.submit(contextvars.copy_context().run, call) for call in calls[1:]]
    try:
        first = calls[0]()
    finally:
        wait(pending)
    return [first, *(task.result() for task in pending)]


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's worker threads: it starts its own."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _sum_over_rows(
    total_rows: int, device: torch.device, work: Callable[[int, int], list[torch.Tensor]]
) -> list[torch.Tensor]:
    """``work(0, total_rows)``, computed as the sum of its parts over row ranges.

    ``work(start, stop)`` returns tensors that add up over disjoint row ranges (sums,
    products); on the CPU each core computes its own ranges' (:func:`map_over_ranges`).
    """
    partials = map_over_ranges(total_rows, work, min_per_task=MIN_ROWS_PER_TASK, device=device)
    return [functools.reduce(torch.add, terms) for terms in zip(*partials, strict=True)]


def _side_by_side(
    first: Callable[[], _R], second: Callable[[], _R], *, device: torch.device, large: bool
) -> tuple[_R, _R]:
    """``(first(), second())``; on the CPU and when ``large``, as two single-threaded tasks.

    For the two sides' decompositions (Cholesky factors and their inverses,
    eigendecompositions), chains of small steps that gain little from threads inside each
    (512 neurons on two idle AMD EPYC cores: 16.6 ms side by side against 24.3 ms in turn).
    Small ones run in turn: starting the tasks would cost more than they save.
    """
    if device.type != "cpu" or torch.get_num_threads() < 2 or not large:
        return first(), second()
    with _serial():
        done_first, done_second = _in_parallel([first, second])
    return done_first, done_second


def _nan_on_linalg_error(fn: Callable[_P, float]) -> Callable[_P, float]:
    """Return NaN with a warning, never a ``LinAlgError``, when a decomposition fails."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> float:
        try:
            return fn(*args, **kwargs)
        except torch.linalg.LinAlgError as error:
            warnings.warn(f"{fn.__name__}: {error}; returning NaN", RuntimeWarning, stacklevel=2)
            return math.nan

    return wrapper


class SampleSizeWarning(UserWarning):
    """Too few datapoints per neuron for unbiased canonical correlations."""


class ConstantInputWarning(UserWarning):
    """An input has no varying neuron: CCA similarities are 0 and linear CKA is NaN for it."""


def _checked(a: ArrayLike, name: str) -> torch.Tensor:
    """``a`` as a tensor of shape (num_datapoints, num_neurons), checked, detached, not copied."""
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (num_datapoints, num_neurons), got shape {tuple(a.shape)}; "
            "convert conv or recurrent activations with cca_monitor.layout.to_datapoints first"
        )
    if not (a.is_floating_point() or a.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a.detach()


def _raise_if_not_finite(a: torch.Tensor, name: str) -> None:
    bad = int((~torch.isfinite(a)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf) of {a.numel()}")


def _as_matrix(a: ArrayLike, name: str) -> torch.Tensor:
    """Return ``a`` as a float64 tensor of shape (num_datapoints, num_neurons), checked."""
    a = _checked(a, name).to(COMPUTE_DTYPE)
    _raise_if_not_finite(a, name)
    return a


def _column_mean(a: torch.Tensor, name: str) -> torch.Tensor:
    """(num_neurons,) float64 mean of ``a``; raises if ``a`` holds NaN or inf.

    Any NaN or inf makes its column's mean non-finite, so the full check runs only then. On
    the CPU the rows are summed by one task per core: float64 rows by numpy (twice as fast as
    torch's reduction over rows here), other dtypes upcast chunk by chunk into a small buffer
    (much faster than a reduction that converts every element).
    """
    if a.device.type != "cpu" or not a.shape[0]:
        mean = a.mean(dim=0, dtype=COMPUTE_DTYPE)
    else:
        column_sum = _float64_sum if a.dtype == COMPUTE_DTYPE else _upcast_sum
        mean = _sum_over_rows(a.shape[0], a.device, functools.partial(column_sum, a))[0]
        mean /= a.shape[0]
    if a.shape[0] and not bool(torch.isfinite(mean).all()):
        _raise_if_not_finite(a, name)
    return mean


def _float64_sum(a: torch.Tensor, start: int, stop: int) -> list[torch.Tensor]:
    return [torch.from_numpy(np.add.reduce(a[start:stop].numpy(), axis=0))]


def _upcast_sum(a: torch.Tensor, start: int, stop: int) -> list[torch.Tensor]:
    rows = _chunk_rows(stop - start, a.shape[1])
    buffer = a.new_empty((rows, a.shape[1]), dtype=COMPUTE_DTYPE)
    total = a.new_zeros(a.shape[1], dtype=COMPUTE_DTYPE)
    for begin in range(start, stop, rows):
        chunk = a[begin : min(begin + rows, stop)]
        total += buffer[: chunk.shape[0]].copy_(chunk).sum(dim=0)
    return [total]


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            "x and y must have the same datapoints (rows), got "
            f"x.shape={tuple(x.shape)} and y.shape={tuple(y.shape)}"
        )


def _check_rtol(rtol: float) -> float:
    if not 0.0 <= rtol < 1.0:
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    return rtol


CHUNK_BYTES = 3 * 2**19
"""Rows are upcast and centered in float64 chunks of about this size (1.5 MiB, which stays in
a core's cache; (256,000, 64 + 64) float32: 86 ms against 121 ms with 0.5 MiB chunks)."""
MIN_CHUNK_ROWS = 1024
"""Chunks hold at least this many rows, so that each product stays efficient ((10,000,
512 + 512) float32: 160 ms against 224 ms with 256 rows)."""
FLOAT32_CHUNK_ROWS = 4096
"""Float32 chunks hold at least this many rows, so that adding their products in float64 stays
a small part of the work."""
OFFSET_LIMIT = 1.0
"""Float64 inputs whose column means are at most ``sqrt(OFFSET_LIMIT)`` standard deviations are
multiplied uncentered, without a copy, and corrected by ``n m mᵀ``; their rounding error is then
at most ``1 + OFFSET_LIMIT`` times that of centered data. Larger offsets are centered first."""


def _chunk_rows(total_rows: int, width: int) -> int:
    """Rows per chunk so that ``width`` float64 columns fill about ``CHUNK_BYTES``."""
    return max(1, min(total_rows, max(MIN_CHUNK_ROWS, CHUNK_BYTES // (8 * max(width, 1)))))


_NUMPY_DTYPES = (torch.float32, torch.float64)


def _blas_layout(a: torch.Tensor) -> bool:
    """Whether numpy hands the 2-D tensor ``a`` to BLAS as it is (rows or columns unit-strided)."""
    rows, cols = a.shape
    return rows * cols > 0 and (
        (a.stride(1) == 1 and a.stride(0) >= cols) or (a.stride(0) == 1 and a.stride(1) >= rows)
    )


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of 2-D tensors, in their dtype.

    On the CPU, float32 and float64 matrices are multiplied by numpy's matmul, i.e. its BLAS,
    without a copy: it computes ``aᵀ a`` (the two sharing their data) as a symmetric rank-k
    update, half the work of a general product, which torch does not expose; and its general
    products measured faster than torch's on one thread (512 x 512 on an AMD EPYC: 5.9 ms
    against 12.5 ms, ``benchmarks/RESULTS.md``). Other
    dtypes, layouts BLAS cannot take as they are, and other devices use torch.
    """
    numpy_ok = a.device.type == "cpu" and a.dtype == b.dtype in _NUMPY_DTYPES
    if numpy_ok and _blas_layout(a) and _blas_layout(b):
        return torch.from_numpy(a.numpy() @ b.numpy())
    return a @ b


def _by_numpy(matrix: torch.Tensor) -> bool:
    """Whether the decompositions of ``matrix`` run through numpy's LAPACK (CPU, float64)."""
    return matrix.device.type == "cpu" and matrix.dtype == torch.float64


def _numpy_lapack(function: Callable[..., Any], matrix: torch.Tensor, **kwargs: Any) -> Any:
    """``function(matrix as numpy, **kwargs)``; numpy's ``LinAlgError`` raised as torch's."""
    try:
        return function(matrix.numpy(), **kwargs)
    except np.linalg.LinAlgError as error:
        raise torch.linalg.LinAlgError(str(error)) from error


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending eigenvalues and eigenvectors of a symmetric (d, d) matrix.

    On the CPU (float64) by numpy's LAPACK, whose decompositions of (512, 512) matrices on
    one thread measured 1.2 to 1.3 times as fast as torch's (eigh, SVD); elsewhere by torch.
    """
    if _by_numpy(matrix):
        values, vectors = _numpy_lapack(np.linalg.eigh, matrix)
        return torch.from_numpy(values), torch.from_numpy(vectors)
    return torch.linalg.eigh(matrix)


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``(u, s, vh)`` of a 2-D matrix, singular values descending (see :func:`_eigh`)."""
    if _by_numpy(matrix):
        u, s, vh = _numpy_lapack(np.linalg.svd, matrix, full_matrices=False)
        return torch.from_numpy(u), torch.from_numpy(s), torch.from_numpy(vh)
    return torch.linalg.svd(matrix, full_matrices=False)


def _svdvals(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D matrix, descending (see :func:`_eigh`)."""
    if _by_numpy(matrix):
        return torch.from_numpy(_numpy_lapack(np.linalg.svd, matrix, compute_uv=False))
    return torch.linalg.svdvals(matrix)


def _centered_products(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    pairs: Sequence[tuple[int, int]],
    dtype: torch.dtype = COMPUTE_DTYPE,
) -> list[torch.Tensor]:
    """Float64 ``(a_i - m_i)ᵀ (a_j - m_j)`` for each ``(i, j)`` in ``pairs``, centered first.

    Args:
        parts: ``(activations (n, d_i), mean (d_i,))`` for each input, rows aligned.
        pairs: Index pairs into ``parts``.
        dtype: Precision of the centered rows and their products; the chunks' products are
            added in float64.

    On the CPU the rows are converted and centered in one step per chunk, side by side in one
    small buffer that stays in cache; elsewhere in one piece.
    """
    first = parts[0][0]
    return _sum_over_rows(
        first.shape[0], first.device, functools.partial(_centered_rows, parts, pairs, dtype)
    )


def _centered_rows(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    pairs: Sequence[tuple[int, int]],
    dtype: torch.dtype,
    start: int,
    stop: int,
) -> list[torch.Tensor]:
    """The products of :func:`_centered_products` over rows ``start:stop``.

    The inputs' centered rows stand side by side in one buffer. When every input's own
    product is asked for, one symmetric product of the buffer gives all the blocks at once
    (the floor's shape); otherwise each pair is multiplied from its columns.
    """
    first = parts[0][0]
    widths = [a.shape[1] for a, _ in parts]
    bounds = [(sum(widths[:k]), sum(widths[: k + 1])) for k in range(len(widths))]
    rows = stop - start
    if first.device.type == "cpu":
        chunk = _chunk_rows(rows, sum(widths))
        rows = chunk if dtype == COMPUTE_DTYPE else min(rows, max(chunk, FLOAT32_CHUNK_ROWS))
    buffer = first.new_empty((rows, sum(widths)), dtype=dtype)
    means = [mean.to(dtype) for _, mean in parts]
    totals = [first.new_zeros((widths[i], widths[j]), dtype=COMPUTE_DTYPE) for i, j in pairs]
    stacked = all((i, i) in pairs for i in range(len(parts)))
    for begin in range(start, stop, rows):
        centered = buffer[: min(rows, stop - begin)]
        columns = [centered[:, low:high] for low, high in bounds]
        for (a, _), mean, column in zip(parts, means, columns, strict=True):
            torch.sub(a[begin : begin + centered.shape[0]], mean, out=column)
        if stacked:
            gram = _matmul(centered.T, centered)
            blocks = [gram[slice(*bounds[i]), slice(*bounds[j])] for i, j in pairs]
        else:
            blocks = [_matmul(columns[i].T, columns[j]) for i, j in pairs]
        for total, block in zip(totals, blocks, strict=True):
            total += block
    return totals


def _uncentered_products(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]], pairs: Sequence[tuple[int, int]]
) -> list[torch.Tensor]:
    """``a_iᵀ a_j - n m_i m_jᵀ`` for each pair, from float64 inputs as they are (no copy).

    On the CPU each core multiplies its own range of rows, on one thread (see
    :func:`_sum_over_rows`).
    """
    count = parts[0][0].shape[0]
    matrices = [a for a, _ in parts]
    products = _sum_over_rows(
        count, matrices[0].device, functools.partial(_row_products, matrices, pairs)
    )
    with _serial():
        for product, (i, j) in zip(products, pairs, strict=True):
            product.addr_(parts[i][1], parts[j][1], alpha=-count)
    return products


def _row_products(
    matrices: Sequence[torch.Tensor], pairs: Sequence[tuple[int, int]], start: int, stop: int
) -> list[torch.Tensor]:
    """``a_iᵀ a_j`` over rows ``start:stop`` for each pair."""
    rows = [a[start:stop] for a in matrices]
    return [_matmul(rows[i].T, rows[j]) for i, j in pairs]


def _offsets_are_small(scatter: torch.Tensor, mean: torch.Tensor, count: int) -> bool:
    """Whether every ``n m_i²`` is within ``OFFSET_LIMIT`` times the scatter's ``C_ii``.

    A constant neuron with a nonzero mean fails (its ``C_ii`` is rounding noise), a zero one
    passes. The rounding of an uncentered ``C_ii`` cannot hide a large offset.
    """
    return bool((count * mean.square() <= OFFSET_LIMIT * scatter.diagonal()).all())


def _active_neurons(scatter: torch.Tensor, rtol: float) -> int:
    """Neurons whose variance is above ``rtol`` times the largest (0 if all are constant)."""
    diagonal = scatter.diagonal()
    if not diagonal.numel():
        return 0
    top = diagonal.max()
    return int((diagonal > rtol * top).sum()) if top > 0 else 0


@dataclass(frozen=True)
class Spectrum:
    """Eigendecomposition of one representation's centered scatter matrix ``Xcᵀ Xc``.

    Attributes:
        eigenvalues: (k,) descending squared singular values of the centered data, after
            dropping directions below ``rtol`` times the largest.
        eigenvectors: (num_neurons, k) matching orthonormal directions in neuron space.
        num_active_neurons: neurons whose variance is not negligible (dead neurons excluded).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    num_active_neurons: int

    @classmethod
    @_one_thread
    def of(cls, scatter: torch.Tensor, rtol: float = DEFAULT_RTOL) -> Spectrum:
        """Decompose a symmetric positive semi-definite (d, d) scatter matrix."""
        eigenvalues, eigenvectors = _eigh(scatter)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        top = eigenvalues[0].clamp_min(0) if eigenvalues.numel() else scatter.new_zeros(())
        kept = eigenvalues > rtol * top
        return cls(eigenvalues[kept], eigenvectors[:, kept], _active_neurons(scatter, rtol))

    @property
    def rank(self) -> int:
        """Number of directions kept."""
        return int(self.eigenvalues.numel())

    def truncated(self, keep: float | int, cutoff: SvccaCutoff = "variance") -> Spectrum:
        """The leading directions as chosen by SVCCA's ``keep`` (see the module docstring)."""
        if isinstance(keep, bool) or not isinstance(keep, (int, float)):
            raise TypeError(f"keep must be an int or a float, got {keep!r}")
        if isinstance(keep, int):
            if keep < 1:
                raise ValueError(f"keep as a number of directions must be >= 1, got {keep}")
            k = min(keep, self.rank)
        else:
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"keep as a fraction must be in (0, 1], got {keep}")
            if cutoff == "variance":
                mass = self.eigenvalues
            elif cutoff == "singular_values":
                mass = self.eigenvalues.sqrt()
            else:
                raise ValueError(f"cutoff must be 'variance' or 'singular_values', got {cutoff!r}")
            fraction = mass.cumsum(0) / mass.sum()
            # fewest directions whose fraction reaches keep (tolerant to rounding at keep=1)
            k = int((fraction < keep - 1e-12).sum()) + 1
            k = min(k, self.rank)
        return Spectrum(self.eigenvalues[:k], self.eigenvectors[:, :k], self.num_active_neurons)

    def whitening(self) -> torch.Tensor:
        """(num_neurons, k) map ``W`` with ``Wᵀ C W = I`` on the kept directions."""
        return self.eigenvectors / self.eigenvalues.sqrt()


CHOLESKY_MARGIN = 100.0
"""The Cholesky whitening is used when ``cond(C)`` is provably below ``1 / (margin * rtol)``."""


@_one_thread
def _cholesky_whitening(scatter: torch.Tensor, rtol: float) -> torch.Tensor | None:
    """``W = L⁻ᵀ`` from ``C = L Lᵀ`` when no direction of ``C`` falls below ``rtol``, else None.

    ``λ_max <= ‖C‖_F`` and ``1 / λ_min = ‖C⁻¹‖₂ <= ‖L⁻¹‖_F²``, so when their product is below
    ``1 / (CHOLESKY_MARGIN * rtol)`` the eigendecomposition would keep every direction and both
    whitenings give the same canonical correlations; otherwise (dead, duplicate or nearly
    dependent neurons) the caller falls back to the eigendecomposition, which drops them.
    """
    factor, info = torch.linalg.cholesky_ex(scatter)
    if int(info) != 0:
        return None
    eye = torch.eye(scatter.shape[0], dtype=scatter.dtype, device=scatter.device)
    inverse = torch.linalg.solve_triangular(factor, eye, upper=False)
    bound = torch.linalg.matrix_norm(scatter) * torch.linalg.matrix_norm(inverse) ** 2
    if not bool(bound * CHOLESKY_MARGIN * rtol < 1.0):
        return None
    return inverse.T


class _Side:
    """One representation's scatter matrix with its decompositions, computed on first use.

    Thread-safe: tasks that compare one representation with others in parallel compute each
    decomposition once and share it.
    """

    def __init__(self, scatter: torch.Tensor, rtol: float) -> None:
        self.scatter = scatter
        self.rtol = rtol
        self._spectrum: Spectrum | None = None
        self._whitening: torch.Tensor | None = None
        self._lock = threading.RLock()

    def spectrum(self) -> Spectrum:
        with self._lock:
            if self._spectrum is None:
                self._spectrum = Spectrum.of(self.scatter, self.rtol)
            return self._spectrum

    def whitening(self) -> torch.Tensor:
        """(num_neurons, k) whitening: Cholesky when well conditioned, else the spectrum's."""
        with self._lock:
            if self._whitening is None:
                whitening = None
                if self.rtol > 0 and self.scatter.numel():
                    whitening = _cholesky_whitening(self.scatter, self.rtol)
                self._whitening = self.spectrum().whitening() if whitening is None else whitening
            return self._whitening

    def num_active_neurons(self) -> int:
        return _active_neurons(self.scatter, self.rtol)


class Representation:
    """One layer's activations, prepared once to be compared with many others.

    Keeps the input (not copied) with its float64 column means and, once computed, its
    scatter matrix, eigendecomposition and whitening. Comparing one representation, e.g. the
    final one, with many snapshots through :meth:`PairMoments.between` computes those once.

    Args:
        activations: (num_datapoints, num_neurons) tensor or array of any real dtype.
        rtol: Relative tolerance below which directions are dropped as degenerate.
        name: Argument name used in error messages.

    Example:
        >>> final = Representation(torch.randn(500, 8))
        >>> curve = [PairMoments.between(final, Representation(torch.randn(500, 8))).mean_cca()
        ...          for _ in range(3)]
        >>> len(curve)
        3
    """

    def __init__(
        self, activations: ArrayLike, *, rtol: float = DEFAULT_RTOL, name: str = "x"
    ) -> None:
        self.rtol = _check_rtol(rtol)
        self.activations = _checked(activations, name)
        self.mean = _column_mean(self.activations, name)
        self._side: _Side | None = None
        self._small_offsets: bool | None = None  # known once the scatter is

    def prepare(self) -> Representation:
        """Compute the scatter matrix now (otherwise done with the first comparison); ``self``.

        Call it before comparing the representation with others from several threads, so
        that they share one scatter matrix instead of each computing its own.
        """
        if self._side is None:
            self._side = _Side(_scatter_products((self,), [(0, 0)])[0], self.rtol)
        return self

    @property
    def count(self) -> int:
        """Number of datapoints (rows)."""
        return int(self.activations.shape[0])

    @property
    def num_neurons(self) -> int:
        """Number of neurons (columns)."""
        return int(self.activations.shape[1])


def _scatter_products(
    reps: Sequence[Representation], pairs: Sequence[tuple[int, int]]
) -> list[torch.Tensor]:
    """Centered float64 products of the representations, ``(i, j)`` for each pair.

    Each representation either appears as ``(i, i)`` in ``pairs`` or has its scatter already.
    Float64 inputs with small offsets are multiplied in place, the others centered in chunks;
    under ``gram_precision("float32")`` every input is centered in float32 chunks.
    """
    parts = [(r.activations, r.mean) for r in reps]
    dtype = _product_dtype.get()
    if dtype != COMPUTE_DTYPE:
        return _centered_products(parts, pairs, dtype)
    if all(r.activations.dtype == COMPUTE_DTYPE and r._small_offsets is not False for r in reps):
        totals = _uncentered_products(parts, pairs)
        scatters = {i: total for total, (i, j) in zip(totals, pairs, strict=True) if i == j}
        for index, rep in enumerate(reps):
            scatter = scatters[index] if index in scatters else rep._side.scatter
            rep._small_offsets = _offsets_are_small(scatter, rep.mean, rep.count)
        if all(r._small_offsets for r in reps):
            return totals
    return _centered_products(parts, pairs)


@dataclass(frozen=True)
class CCAResult:
    """Canonical correlation analysis of two representations.

    Attributes:
        correlations: (m,) canonical correlations in descending order, m = min(kx, ky).
        x_weights: (num_neurons_x, m) canonical weights: ``(x - x.mean(0)) @ x_weights`` are
            the canonical variates of x, with unit norm.
        y_weights: (num_neurons_y, m) the same for y.
        num_directions_x: kx, directions of x kept (after dropping dead/duplicate ones or the
            SVCCA reduction).
        num_directions_y: ky, the same for y.
    """

    correlations: torch.Tensor
    x_weights: torch.Tensor
    y_weights: torch.Tensor
    num_directions_x: int
    num_directions_y: int


class PairMoments:
    """Streaming joint second moments of two representations of the same datapoints.

    Update it with minibatches of rows (both inputs ``(batch, num_neurons)``), merge two of them
    (e.g. across processes), then ask for any measure; results equal those on the full
    matrices. All state is float64 on the device of the first batch.

    Example:
        >>> x, y = torch.randn(300, 5), torch.randn(300, 4)
        >>> moments = PairMoments()
        >>> for rows in torch.arange(300).split(100):
        ...     moments.update(x[rows], y[rows])
        >>> abs(moments.mean_cca() - mean_cca(x, y)) < 1e-10
        True
    """

    def __init__(self, rtol: float = DEFAULT_RTOL) -> None:
        self.rtol = _check_rtol(rtol)
        self.count = 0
        self.mean_x: torch.Tensor | None = None
        self.mean_y: torch.Tensor | None = None
        self.scatter_xx: torch.Tensor | None = None
        self.scatter_yy: torch.Tensor | None = None
        self.scatter_xy: torch.Tensor | None = None
        self._sides: dict[str, _Side] = {}

    @classmethod
    def from_data(cls, x: ArrayLike, y: ArrayLike, *, rtol: float = DEFAULT_RTOL) -> PairMoments:
        """Moments of two full matrices ``x`` (n, dx) and ``y`` (n, dy)."""
        return cls.between(
            Representation(x, rtol=rtol, name="x"), Representation(y, rtol=rtol, name="y")
        )

    @classmethod
    def between(cls, x: Representation, y: Representation) -> PairMoments:
        """Moments of two prepared representations, reusing what each has computed before.

        Only the cross products are always computed; each side's scatter matrix, spectrum
        and whitening are computed once per :class:`Representation` and shared.

        Raises:
            ValueError: If the row counts or the ``rtol`` of ``x`` and ``y`` differ.
        """
        _check_pair(x.activations, y.activations)
        if x.rtol != y.rtol:
            raise ValueError(f"x and y must share rtol, got {x.rtol} and {y.rtol}")
        moments = cls(x.rtol)
        if x.count == 0:
            return moments
        missing = [(i, rep) for i, rep in enumerate((x, y)) if rep._side is None]
        products = _scatter_products((x, y), [(0, 1), *((i, i) for i, _ in missing)])
        for (_, rep), scatter in zip(missing, products[1:], strict=True):
            rep._side = _Side(scatter, x.rtol)
        moments.count = x.count
        moments.mean_x, moments.mean_y = x.mean, y.mean
        moments.scatter_xx, moments.scatter_yy = x._side.scatter, y._side.scatter
        moments.scatter_xy = products[0]
        moments._sides = {"x": x._side, "y": y._side}
        return moments

    def update(self, x: ArrayLike, y: ArrayLike) -> None:
        """Add a minibatch: ``x`` (batch, dx) and ``y`` (batch, dy), rows aligned."""
        xb = Representation(x, rtol=self.rtol, name="x")
        yb = Representation(y, rtol=self.rtol, name="y")
        _check_pair(xb.activations, yb.activations)
        if self.scatter_xx is not None and (
            xb.num_neurons != self.scatter_xx.shape[0] or yb.num_neurons != self.scatter_yy.shape[0]
        ):
            raise ValueError(
                f"minibatch neuron counts ({xb.num_neurons}, {yb.num_neurons}) differ from "
                f"earlier ones ({self.scatter_xx.shape[0]}, {self.scatter_yy.shape[0]})"
            )
        self._absorb(PairMoments.between(xb, yb))

    def merge(self, other: PairMoments) -> PairMoments:
        """A new accumulator holding the datapoints of both ``self`` and ``other``."""
        merged = PairMoments(self.rtol)
        merged._absorb(self)
        merged._absorb(other)
        return merged

    def _absorb(self, other: PairMoments) -> None:
        self._sides = {}
        if other.count == 0:
            return
        if self.count == 0:
            self.count = other.count
            self.mean_x, self.mean_y = other.mean_x.clone(), other.mean_y.clone()
            self.scatter_xx = other.scatter_xx.clone()
            self.scatter_yy = other.scatter_yy.clone()
            self.scatter_xy = other.scatter_xy.clone()
            return
        if other.scatter_xx.shape != self.scatter_xx.shape or (
            other.scatter_xy.shape != self.scatter_xy.shape
        ):
            raise ValueError(
                "cannot merge moments of different neuron counts: "
                f"{tuple(self.scatter_xy.shape)} and {tuple(other.scatter_xy.shape)}"
            )
        total = self.count + other.count
        factor = self.count * other.count / total
        dx = other.mean_x.to(self.mean_x.device) - self.mean_x
        dy = other.mean_y.to(self.mean_y.device) - self.mean_y
        self.scatter_xx = (
            self.scatter_xx + other.scatter_xx.to(dx.device) + factor * torch.outer(dx, dx)
        )
        self.scatter_yy = (
            self.scatter_yy + other.scatter_yy.to(dx.device) + factor * torch.outer(dy, dy)
        )
        self.scatter_xy = (
            self.scatter_xy + other.scatter_xy.to(dx.device) + factor * torch.outer(dx, dy)
        )
        self.mean_x = self.mean_x + dx * (other.count / total)
        self.mean_y = self.mean_y + dy * (other.count / total)
        self.count = total

    # -- solving --------------------------------------------------------------------------

    def _require_data(self) -> None:
        if self.count == 0:
            raise ValueError("no datapoints: call update() with at least one minibatch first")

    def _side(self, side: Literal["x", "y"]) -> _Side:
        self._require_data()
        if side not in self._sides:
            scatter = self.scatter_xx if side == "x" else self.scatter_yy
            self._sides[side] = _Side(scatter, self.rtol)
        return self._sides[side]

    def spectrum(self, side: Literal["x", "y"]) -> Spectrum:
        """The (cached) :class:`Spectrum` of the x or y scatter matrix."""
        return self._side(side).spectrum()

    def _check_sample_size(self) -> None:
        for side in ("x", "y"):
            active = self._side(side).num_active_neurons()
            if self.count <= active:
                raise ValueError(
                    f"{side} has {active} non-constant neurons but only {self.count} datapoints: "
                    "CCA needs more datapoints than neurons (with that few, any two "
                    "representations have all canonical correlations equal to 1); use more "
                    "probe inputs, conv positions as datapoints, or fewer neurons"
                )
            if active == 0:
                warnings.warn(
                    f"{side} has no varying neuron (constant activations, e.g. a dead layer): "
                    "it has no canonical correlations, and its CCA similarity is 0",
                    ConstantInputWarning,
                    stacklevel=4,
                )
            elif self.count < MIN_DATAPOINTS_PER_NEURON * active:
                warnings.warn(
                    f"{side} has {self.count} datapoints for {active} neurons "
                    f"(< {MIN_DATAPOINTS_PER_NEURON} per neuron): canonical correlations are "
                    "biased upward",
                    SampleSizeWarning,
                    stacklevel=4,
                )

    def _whitenings(
        self, keep_x: float | int | None, keep_y: float | int | None, cutoff: SvccaCutoff
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(d, k) whitening of each side, reduced to SVCCA's leading directions if asked."""
        self._require_data()
        self._check_sample_size()
        return _side_by_side(
            functools.partial(self._reduced_whitening, "x", keep_x, cutoff),
            functools.partial(self._reduced_whitening, "y", keep_y, cutoff),
            device=self.scatter_xy.device,
            large=min(self.scatter_xy.shape) >= MIN_NEURONS_SIDE_BY_SIDE,
        )

    def _reduced_whitening(
        self, side: Literal["x", "y"], keep: float | int | None, cutoff: SvccaCutoff
    ) -> torch.Tensor:
        if keep is None:
            return self._side(side).whitening()
        return self.spectrum(side).truncated(keep, cutoff).whitening()

    def cca(
        self,
        *,
        keep_x: float | int | None = None,
        keep_y: float | int | None = None,
        cutoff: SvccaCutoff = "variance",
    ) -> CCAResult:
        """Canonical correlations and weights; ``keep_*`` reduce each side as SVCCA does."""
        return _solve_cca(*self._whitenings(keep_x, keep_y, cutoff), self.scatter_xy)

    def _correlations(
        self,
        keep_x: float | int | None = None,
        keep_y: float | int | None = None,
        cutoff: SvccaCutoff = "variance",
    ) -> torch.Tensor:
        """The correlations of :meth:`cca` alone (singular values without vectors)."""
        return _solve_correlations(*self._whitenings(keep_x, keep_y, cutoff), self.scatter_xy)

    def canonical_correlations(self) -> torch.Tensor:
        """(m,) canonical correlations, descending, m = min(rank x, rank y)."""
        return self._correlations()

    @_nan_on_linalg_error
    def mean_cca(self) -> float:
        """Mean of all canonical correlations."""
        return _mean(self._correlations())

    @_nan_on_linalg_error
    def svcca(self, *, keep: float | int = 0.99, cutoff: SvccaCutoff = "variance") -> float:
        """SVCCA similarity (see the module docstring for ``keep`` and ``cutoff``)."""
        return _mean(self._correlations(keep, keep, cutoff))

    @_nan_on_linalg_error
    def pwcca(self, *, reference_code: bool = False) -> float:
        """PWCCA similarity with weights from x (paper definition) or as the reference code."""
        if reference_code:
            return self._pwcca_reference_code()
        result = self.cca()
        if not result.num_directions_x:
            return 0.0
        # <h_i, x_j> = a_iᵀ Cxx e_j with a_i = x_weights[:, i]
        projections = result.x_weights.T @ self.scatter_xx
        return _weighted_mean(result.correlations, projections.abs().sum(dim=1))

    @_one_thread
    def _pwcca_reference_code(self) -> float:
        """PWCCA as the released ``pwcca.compute_pwcca`` computes it, from moments.

        The released function whitens symmetrically, takes the left singular vectors ``u`` of
        the smaller side as un-whitened directions, adds the neuron means back, orthonormalizes
        them by QR and projects the *un-centered* activations on them. When x has more neurons
        than y it fails; the y-side branch it intends is used here instead.
        """
        self._require_data()
        self._check_sample_size()
        sx, sy = self.spectrum("x"), self.spectrum("y")
        symmetric_x = sx.whitening() @ sx.eigenvectors.T
        symmetric_y = sy.whitening() @ sy.eigenvectors.T
        u, s, vh = torch.linalg.svd(symmetric_x @ self.scatter_xy @ symmetric_y)
        if self.scatter_xx.shape[0] <= self.scatter_yy.shape[0]:
            directions, scatter, mean = u, self.scatter_xx, self.mean_x
        else:
            directions, scatter, mean = vh.T, self.scatter_yy, self.mean_y
        # Gram of the directions' time courses (Xc u + 1 mᵀ); its Cholesky factor is QR's R.
        gram = directions.T @ scatter @ directions + self.count * torch.outer(mean, mean)
        upper = torch.linalg.cholesky(gram, upper=True)
        cross = directions.T @ scatter + self.count * torch.outer(mean, mean)
        projections = torch.linalg.solve_triangular(upper.T, cross, upper=False)
        weights = projections.abs().sum(dim=1)[: s.numel()]
        return _weighted_mean(s.clamp(0, 1), weights)

    @_nan_on_linalg_error
    def linear_cka(self) -> float:
        """Linear CKA similarity."""
        self._require_data()
        denominator = torch.linalg.matrix_norm(self.scatter_xx) * torch.linalg.matrix_norm(
            self.scatter_yy
        )
        if denominator == 0:
            warnings.warn(
                "x or y has no varying neuron (constant activations, e.g. a dead layer): "
                "linear CKA is undefined (NaN)",
                ConstantInputWarning,
                stacklevel=3,
            )
            return math.nan
        value = torch.linalg.matrix_norm(self.scatter_xy) ** 2 / denominator
        return float(value.clamp(0, 1))

    def similarity(self, measure: Measure) -> float:
        """The named measure with its default settings."""
        return getattr(self, _check_measure(measure))()


def _svd_failed(wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    warnings.warn("SVD did not converge; returning NaN correlations", RuntimeWarning, stacklevel=4)
    return wx.new_full((min(wx.shape[1], wy.shape[1]),), math.nan)


def _whitened_cross(wx: torch.Tensor, scatter_xy: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    """(kx, ky) ``Wxᵀ Cxy Wy``, whose singular values are the canonical correlations.

    Large ones are computed as two halves of columns side by side (see :func:`_side_by_side`).
    """
    half = wy.shape[1] // 2
    left, right = _side_by_side(
        lambda: _matmul(wx.T, _matmul(scatter_xy, wy[:, :half])),
        lambda: _matmul(wx.T, _matmul(scatter_xy, wy[:, half:])),
        device=wy.device,
        large=min(wx.shape[1], half) >= MIN_NEURONS_SIDE_BY_SIDE,
    )
    return torch.cat([left, right], dim=1)


def _solve_cca(wx: torch.Tensor, wy: torch.Tensor, scatter_xy: torch.Tensor) -> CCAResult:
    kx, ky = wx.shape[1], wy.shape[1]
    try:
        with _serial():
            u, s, vh = _svd(_whitened_cross(wx, scatter_xy, wy))
    except torch.linalg.LinAlgError:
        nan = _svd_failed(wx, wy)
        m = nan.numel()
        return CCAResult(nan, wx[:, :m] * math.nan, wy[:, :m] * math.nan, kx, ky)
    return CCAResult(s.clamp(0, 1), wx @ u, wy @ vh.T, kx, ky)


def _solve_correlations(
    wx: torch.Tensor, wy: torch.Tensor, scatter_xy: torch.Tensor
) -> torch.Tensor:
    try:
        with _serial():
            return _svdvals(_whitened_cross(wx, scatter_xy, wy)).clamp(0, 1)
    except torch.linalg.LinAlgError:
        return _svd_failed(wx, wy)


def _mean(values: torch.Tensor) -> float:
    return float(values.mean().clamp(0, 1)) if values.numel() else 0.0


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> float:
    if not values.numel():
        return 0.0  # no canonical correlation (a constant input), as for the plain mean
    total = weights.sum()
    if not total > 0:
        return math.nan
    return float((values * weights).sum().div(total).clamp(0, 1))


def _check_measure(measure: str) -> str:
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose from {sorted(MEASURES)}")
    return measure


def check_measures(measures: Iterable[str]) -> list[str]:
    """Validate a collection of measure names; return them as a list without duplicates.

    Raises:
        TypeError: If ``measures`` is a single string rather than a collection.
        ValueError: If it is empty or names an unknown measure.
    """
    if isinstance(measures, str):
        raise TypeError(f"measures must be a collection of names, e.g. [{measures!r}]")
    names = list(dict.fromkeys(measures))
    if not names:
        raise ValueError(f"measures must name at least one of {sorted(MEASURES)}")
    return [_check_measure(name) for name in names]


# -- functions on full matrices -------------------------------------------------------------


def cca(x: ArrayLike, y: ArrayLike, *, rtol: float = DEFAULT_RTOL) -> CCAResult:
    """Canonical correlation analysis of ``x`` (n, dx) and ``y`` (n, dy).

    Returns:
        A :class:`CCAResult` with the correlations (descending) and the canonical weights.

    Example:
        >>> x = torch.randn(200, 3, dtype=torch.float64)
        >>> result = cca(x, x @ torch.randn(3, 3, dtype=torch.float64))
        >>> bool(torch.allclose(result.correlations, torch.ones(3, dtype=torch.float64)))
        True
    """
    return PairMoments.from_data(x, y, rtol=rtol).cca()


def canonical_correlations(
    x: ArrayLike, y: ArrayLike, *, rtol: float = DEFAULT_RTOL
) -> torch.Tensor:
    """All canonical correlations of ``x`` (n, dx) and ``y`` (n, dy), descending, float64.

    Example:
        >>> canonical_correlations(torch.randn(100, 4), torch.randn(100, 2)).shape
        torch.Size([2])
    """
    return cca(x, y, rtol=rtol).correlations


def mean_cca(x: ArrayLike, y: ArrayLike, *, rtol: float = DEFAULT_RTOL) -> float:
    """Mean of all canonical correlations of ``x`` (n, dx) and ``y`` (n, dy), in [0, 1].

    Example:
        >>> x = torch.randn(100, 4)
        >>> round(mean_cca(x, 2 * x + 1), 6)
        1.0
    """
    return PairMoments.from_data(x, y, rtol=rtol).mean_cca()


def svcca(
    x: ArrayLike,
    y: ArrayLike,
    *,
    keep: float | int = 0.99,
    cutoff: SvccaCutoff = "variance",
    rtol: float = DEFAULT_RTOL,
) -> float:
    """SVCCA similarity of ``x`` (n, dx) and ``y`` (n, dy), in [0, 1]; symmetric.

    Args:
        x: Activations (num_datapoints, num_neurons).
        y: Activations of the same datapoints (num_datapoints, num_neurons_y).
        keep: Int: number of leading singular directions kept per input. Float in (0, 1]: the
            fewest directions reaching that fraction of the variance (``cutoff="variance"``,
            squared singular values) or of the singular-value sum (``"singular_values"``).
        cutoff: What a float ``keep`` is a fraction of.
        rtol: Relative tolerance below which directions are dropped as degenerate.

    Example:
        >>> x = torch.randn(500, 8)
        >>> round(svcca(x, x @ torch.linalg.qr(torch.randn(8, 8))[0]), 6)
        1.0
    """
    return PairMoments.from_data(x, y, rtol=rtol).svcca(keep=keep, cutoff=cutoff)


def pwcca(
    x: ArrayLike, y: ArrayLike, *, reference_code: bool = False, rtol: float = DEFAULT_RTOL
) -> float:
    """Projection-weighted CCA similarity of ``x`` (n, dx) to ``y`` (n, dy), in [0, 1].

    The weights come from ``x``: ``αᵢ = Σⱼ |⟨hᵢ, xⱼ⟩|`` with ``hᵢ`` x's unit-norm canonical
    variates and ``xⱼ`` its centered neurons (Morcos et al. 2018). Asymmetric: put the
    representation whose structure should weigh the correlations first. Because the weights
    add up ``x``'s individual neurons, PWCCA is invariant to isotropic scaling, translation and
    neuron permutations of ``x`` but not to rotations of it; ``y`` may undergo any invertible
    linear map.

    Args:
        x: Activations (num_datapoints, num_neurons) that supply the weights.
        y: Activations of the same datapoints (num_datapoints, num_neurons_y).
        reference_code: Reproduce the released ``pwcca.compute_pwcca`` (which projects
            un-whitened, un-centered directions, and takes the side with fewer neurons).
        rtol: Relative tolerance below which directions are dropped as degenerate.

    Example:
        >>> x = torch.randn(500, 6)
        >>> round(pwcca(x, 3 * x - 1), 6)
        1.0
    """
    return PairMoments.from_data(x, y, rtol=rtol).pwcca(reference_code=reference_code)


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA similarity of ``x`` (n, dx) and ``y`` (n, dy), in [0, 1]; symmetric.

    Example:
        >>> x = torch.randn(100, 5)
        >>> round(linear_cka(x, 0.001 * x), 6)
        1.0
    """
    return PairMoments.from_data(x, y).linear_cka()


def _unbiased_hsic_terms(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012) of two (m, m) Gram matrices, m >= 4."""
    m = k.shape[0]
    k = k - torch.diag_embed(k.diagonal())
    l_ = l_ - torch.diag_embed(l_.diagonal())
    ones_k, ones_l = k.sum(dim=1), l_.sum(dim=1)
    value = (
        (k * l_).sum()
        + ones_k.sum() * ones_l.sum() / ((m - 1) * (m - 2))
        - 2.0 / (m - 2) * (ones_k @ ones_l)
    )
    return value / (m * (m - 3))


def debiased_linear_cka(x: ArrayLike, y: ArrayLike, *, batch_size: int | None = None) -> float:
    """Linear CKA from the unbiased HSIC estimator, averaged over minibatches of rows.

    Following Nguyen, Raghu & Kornblith 2021: ``Σ_b HSIC₁(K_b, L_b) / sqrt(Σ_b HSIC₁(K_b, K_b)
    Σ_b HSIC₁(L_b, L_b))`` with linear kernels of consecutive row blocks of ``batch_size``
    (None: one block of all rows). Every block needs at least 4 rows. Unlike linear CKA, it can
    be slightly negative for unrelated inputs; the result is clamped to [0, 1].

    Args:
        x: Activations (num_datapoints, num_neurons).
        y: Activations of the same datapoints (num_datapoints, num_neurons_y).
        batch_size: Rows per block; the last block may be shorter but must have >= 4 rows.

    Example:
        >>> x = torch.randn(64, 5)
        >>> round(debiased_linear_cka(x, x, batch_size=16), 6)
        1.0
    """
    xm, ym = _as_matrix(x, "x"), _as_matrix(y, "y")
    _check_pair(xm, ym)
    n = xm.shape[0]
    size = n if batch_size is None else batch_size
    if size < 4 or n < 4:
        raise ValueError(f"batch_size must be >= 4 rows for the unbiased HSIC, got {size} (n={n})")
    if n % size and n % size < 4:
        raise ValueError(
            f"the last minibatch has {n % size} rows (n={n}, batch_size={size}); "
            "each needs >= 4: choose a batch_size that divides n or leaves >= 4 rows"
        )
    xy = xx = yy = xm.new_zeros(())
    for rows in torch.arange(n, device=xm.device).split(size):
        k, l_ = xm[rows] @ xm[rows].T, ym[rows] @ ym[rows].T
        xy = xy + _unbiased_hsic_terms(k, l_)
        xx = xx + _unbiased_hsic_terms(k, k)
        yy = yy + _unbiased_hsic_terms(l_, l_)
    denominator = (xx * yy).sqrt()
    if not denominator > 0:
        return math.nan
    return float((xy / denominator).clamp(0, 1))


def random_baseline(
    x: ArrayLike, y: ArrayLike, measure: Measure, *, repeats: int = 3, seed: int = 0
) -> float:
    """Mean similarity of ``x`` with row-shuffled copies of ``y``: the noise floor of a measure.

    Unrelated representations do not score 0 with finite data (CCA finds chance correlations);
    this is the level that "no relation" reaches with these shapes.

    Args:
        x: Activations (num_datapoints, num_neurons).
        y: Activations of the same datapoints (num_datapoints, num_neurons_y).
        measure: One of ``MEASURES``.
        repeats: Number of independent shuffles averaged.
        seed: Seed of the private generator for the shuffles (the global RNG is untouched).
    """
    _check_measure(measure)
    xm, ym = _as_matrix(x, "x"), _as_matrix(y, "y")
    _check_pair(xm, ym)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    generator = torch.Generator().manual_seed(seed)
    values = [
        MEASURES[measure](xm, ym[torch.randperm(ym.shape[0], generator=generator).to(ym.device)])
        for _ in range(repeats)
    ]
    return float(np.mean(values))


MEASURES: dict[str, Callable[..., float]] = {
    "mean_cca": mean_cca,
    "svcca": svcca,
    "pwcca": pwcca,
    "linear_cka": linear_cka,
}
"""Similarity functions by name; each takes ``(x, y)`` of shape (n, d) and returns [0, 1]."""


def similarities(x: ArrayLike, y: ArrayLike, measures: Iterable[Measure]) -> dict[str, float]:
    """Several measures of one pair, sharing the moments and eigendecompositions.

    Example:
        >>> x = torch.randn(200, 4)
        >>> sorted(similarities(x, x, ["svcca", "linear_cka"]))
        ['linear_cka', 'svcca']
    """
    names = check_measures(measures)
    moments = PairMoments.from_data(x, y)
    return {m: moments.similarity(m) for m in names}
