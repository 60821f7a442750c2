"""Shared setup of the benchmark scripts: thread counts, timing, inputs and the printed table.

Import this module before numpy or torch: it fixes BLAS, OpenMP and torch to ``THREADS``
threads, and unsets ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` (which some machines set for
old OpenBLAS builds, and which slow a current numpy) so that the numpy baseline runs its
native kernel. What was unset and which kernels run is printed with every result.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
THREADS = 2
SETTLE_SECONDS = 0.5
UNSET_OPENBLAS = {
    name: os.environ.pop(name)
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    if name in os.environ
}
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = str(THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

torch.set_num_threads(THREADS)
_LIMITS = threadpool_limits(THREADS)


def cpu_model() -> str:
    """The processor model as lscpu names it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def environment() -> str:
    """One paragraph on the machine, the thread settings and the BLAS kernels in use."""
    kernels = [
        f"{info['internal_api']} {info.get('version')} ({info.get('architecture', '-')}, "
        f"{info['num_threads']} threads)"
        for info in threadpool_info()
    ]
    unset = ", ".join(f"{k}={v}" for k, v in UNSET_OPENBLAS.items()) or "neither was set"
    return (
        f"cpu: {cpu_model()}, {os.cpu_count()} cores; numpy {np.__version__}, torch "
        f"{torch.__version__} (torch threads {torch.get_num_threads()}); "
        f"OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset for this run: {unset}; "
        f"kernels: {'; '.join(kernels)}"
    )


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time and result of one call of ``fn``, started after a pause of ``SETTLE_SECONDS``.

    OpenBLAS's worker threads keep spinning for about 0.2 s after every numpy product and take
    a core from whatever runs next (a torch call right after a numpy one measured 193 ms
    instead of 133 ms), so each timed call starts on quiet cores.
    """
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call of ``fn``."""
    return timed(fn)[0]


def medians_in_order(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median wall time of each function, each timed ``repeats`` times in the order given.

    Put the numpy contenders (baseline, floor) first: once torch has run a product in the
    process, the numpy baseline measured up to 1.7x slower on this machine (0.37 s against
    0.51 to 0.66 s), so it is timed before. Every call is timed by :func:`timed`, after its
    pause. Run on an idle machine: the contenders do not take turns.
    """
    times: dict[str, list[float]] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        times[name] = [seconds(fn) for _ in range(repeats)]
    return {name: statistics.median(values) for name, values in times.items()}


def load() -> str:
    """The 1-minute load average, to judge how quiet the machine was."""
    return f"{os.getloadavg()[0]:.2f}"


def target(label: str, value: float, bound: float, *, at_least: bool) -> str:
    """One line stating a measured ratio against its target."""
    met = value >= bound if at_least else value <= bound
    sign = ">=" if at_least else "<="
    return f"{label}: {value:.2f}x (target {sign} {bound:g}x) {'met' if met else 'NOT MET'}"


def correlated_pair(
    n: int, dx: int, dy: int, *, seed: int = 0, dtype: np.dtype = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Two related layers ``x`` (n, dx), ``y`` (n, dy) with decaying spectra, like activations.

    Both read a shared latent through a mixing matrix whose columns fall off as 1/(1 + i/16),
    plus independent noise, so the covariances have a realistic spread of eigenvalues and the
    canonical correlations span (0, 1).
    """
    rng = np.random.default_rng(seed)
    width = max(dx, dy)
    latent = rng.standard_normal((n, width))
    decay = 1.0 / (1.0 + np.arange(width) / 16.0)
    x = latent @ (rng.standard_normal((width, dx)) * decay[:, None]) + 0.3 * rng.standard_normal(
        (n, dx)
    )
    y = latent @ (rng.standard_normal((width, dy)) * decay[:, None]) + 0.5 * rng.standard_normal(
        (n, dy)
    )
    return np.ascontiguousarray(x, dtype=dtype), np.ascontiguousarray(y, dtype=dtype)


def print_report(
    title: str,
    timings: dict[str, float],
    lines: list[str],
    *,
    repeats: int | None,
    load_before: str,
) -> None:
    """Print the setup, the median times and the target lines of one benchmark."""
    print(f"## {title}")
    print(environment())
    timing = f"median of {repeats} repeats; " if repeats else ""
    print(f"{timing}load average {load_before} before, {load()} after")
    width = max((len(name) for name in timings), default=0)
    for name, value in timings.items():
        print(f"  {name:<{width}}  {value:9.4f} s")
    for line in lines:
        print(f"  {line}")
