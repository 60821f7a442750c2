"""Similarity measures against an independent float64 reference, real reference values and
their mathematical properties."""

import math
import multiprocessing
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from cca_monitor import similarity as sim

REFERENCE_TOL = 1e-8
TUTORIAL_TOL = 2e-6
STREAM_TOL = 1e-10
PROPERTY_TOL = 1e-7

SHAPES = [(200, 5, 7), (500, 20, 20), (1000, 40, 25), (300, 1, 4)]
SHAPE_IDS = [f"n{n}-dx{dx}-dy{dy}" for n, dx, dy in SHAPES]
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["float32", "float64"]

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "svcca_tutorial"


# -- independent slow reference: orthonormal bases of the centered data ------------------------


def _orthonormal_basis(
    a: np.ndarray, rtol: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U, S, Vt of the centered matrix, keeping singular values above rtol * largest."""
    centered = a - a.mean(axis=0)
    u, s, vt = np.linalg.svd(centered, full_matrices=False)
    kept = s > rtol * s[0]
    return u[:, kept], s[kept], vt[kept]


def ref_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    qx, _, _ = _orthonormal_basis(x)
    qy, _, _ = _orthonormal_basis(y)
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def ref_svcca(x: np.ndarray, y: np.ndarray, keep: int) -> float:
    ux, sx, _ = _orthonormal_basis(x)
    uy, sy, _ = _orthonormal_basis(y)
    scores_x, scores_y = ux[:, :keep] * sx[:keep], uy[:, :keep] * sy[:keep]
    return float(ref_correlations(scores_x, scores_y).mean())


def ref_pwcca(x: np.ndarray, y: np.ndarray) -> float:
    qx, _, _ = _orthonormal_basis(x)
    qy, _, _ = _orthonormal_basis(y)
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    variates = qx @ u  # unit-norm canonical variates of x, (n, m)
    alpha = np.abs(variates.T @ (x - x.mean(axis=0))).sum(axis=1)
    return float((alpha * rho).sum() / alpha.sum())


def ref_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum()))


def _u_centered(gram: np.ndarray) -> np.ndarray:
    m = gram.shape[0]
    gram = gram - np.diag(np.diag(gram))
    rows = gram.sum(axis=1, keepdims=True)
    out = gram - rows / (m - 2) - rows.T / (m - 2) + gram.sum() / ((m - 1) * (m - 2))
    np.fill_diagonal(out, 0.0)
    return out


def ref_debiased_cka(x: np.ndarray, y: np.ndarray, batch: int) -> float:
    xy = xx = yy = 0.0
    for start in range(0, x.shape[0], batch):
        k = _u_centered(x[start : start + batch] @ x[start : start + batch].T)
        l_ = _u_centered(y[start : start + batch] @ y[start : start + batch].T)
        scale = 1.0 / (k.shape[0] * (k.shape[0] - 3))
        xy, xx, yy = (
            xy + scale * (k * l_).sum(),
            xx + scale * (k * k).sum(),
            yy + scale * (l_ * l_).sum(),
        )
    return float(xy / np.sqrt(xx * yy))


def _pair(
    n: int, dx: int, dy: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated x, y: a shared latent plus noise, so the measures are far from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 4, generator=g, dtype=torch.float64)
    x = latent @ torch.randn(4, dx, generator=g, dtype=torch.float64) + torch.randn(
        n, dx, generator=g, dtype=torch.float64
    )
    y = latent @ torch.randn(4, dy, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        n, dy, generator=g, dtype=torch.float64
    )
    return x.to(dtype), y.to(dtype)


@pytest.fixture
def seed() -> int:
    """A fresh seed per test run, printed on failure by pytest's repr of locals."""
    return int(np.random.SeedSequence().entropy % 2**31)


# -- against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("n", "dx", "dy"), SHAPES, ids=SHAPE_IDS)
class TestAgainstReference:
    def test_canonical_correlations(self, n, dx, dy, dtype, seed):
        x, y = _pair(n, dx, dy, dtype, seed)
        ours = sim.canonical_correlations(x, y).numpy()
        reference = ref_correlations(x.double().numpy(), y.double().numpy())
        np.testing.assert_allclose(ours, reference, atol=REFERENCE_TOL)
        assert np.all(np.diff(ours) <= 0)

    def test_principal_angles(self, n, dx, dy, dtype, seed):
        x, y = _pair(n, dx, dy, dtype, seed)
        xc, yc = (a.double().numpy() - a.double().numpy().mean(0) for a in (x, y))
        cosines = np.sort(np.cos(scipy.linalg.subspace_angles(xc, yc)))[::-1]
        np.testing.assert_allclose(
            sim.canonical_correlations(x, y).numpy(), cosines, atol=REFERENCE_TOL
        )

    def test_mean_cca(self, n, dx, dy, dtype, seed):
        x, y = _pair(n, dx, dy, dtype, seed)
        reference = ref_correlations(x.double().numpy(), y.double().numpy()).mean()
        assert sim.mean_cca(x, y) == pytest.approx(reference, abs=REFERENCE_TOL)

    def test_svcca_fixed_keep(self, n, dx, dy, dtype, seed):
        x, y = _pair(n, dx, dy, dtype, seed)
        keep = max(1, min(dx, dy) // 2)
        reference = ref_svcca(x.double().numpy(), y.double().numpy(), keep)
        assert sim.svcca(x, y, keep=keep) == pytest.approx(reference, abs=REFERENCE_TOL)

    def test_pwcca(self, n, dx, dy, dtype, seed):
        x, y = _pair(n, dx, dy, dtype, seed)
        reference = ref_pwcca(x.double().numpy(), y.double().numpy())
        assert sim.pwcca(x, y) == pytest.approx(reference, abs=REFERENCE_TOL)

    def test_linear_cka(self, n, dx, dy, dtype, seed):
        x, y = _pair(n, dx, dy, dtype, seed)
        reference = ref_linear_cka(x.double().numpy(), y.double().numpy())
        assert sim.linear_cka(x, y) == pytest.approx(reference, abs=REFERENCE_TOL)

    def test_cca_weights_give_unit_variates(self, n, dx, dy, dtype, seed):
        x, y = _pair(n, dx, dy, dtype, seed)
        result = sim.cca(x, y)
        hx = (x.double() - x.double().mean(0)) @ result.x_weights
        hy = (y.double() - y.double().mean(0)) @ result.y_weights
        m = result.correlations.numel()
        torch.testing.assert_close(hx.T @ hx, torch.eye(m, dtype=torch.float64), atol=1e-8, rtol=0)
        torch.testing.assert_close((hx * hy).sum(0), result.correlations, atol=1e-8, rtol=0)


@pytest.mark.parametrize("batch", [4, 10, 32], ids=["b4", "b10", "b32"])
def test_debiased_cka_matches_u_centering(batch, seed):
    x, y = _pair(96, 6, 9, torch.float64, seed)
    reference = ref_debiased_cka(x.numpy(), y.numpy(), batch)
    assert sim.debiased_linear_cka(x, y, batch_size=batch) == pytest.approx(
        max(reference, 0.0), abs=REFERENCE_TOL
    )


# -- real activations from the reference tutorials ---------------------------------------------

TUTORIAL_CASES = {
    "mnist": (
        "mnist_model_0_lay04.npy",
        "mnist_model_1_lay04.npy",
        {
            "first": [0.946246, 0.920247, 0.905424, 0.883260, 0.847350],
            "last": 0.090288,
            "count": 10,
            "mean_cca": 0.705726,
            "svcca": {5: 0.763900, 10: 0.705726, 0.99: 0.778751},
            "pwcca": 0.807445,
            "pwcca_reference_code": 0.737201,
            "linear_cka": 0.437452,
        },
    ),
    "svhn": (
        "svhn_model_0_lay06.npy",
        "svhn_model_1_lay06.npy",
        {
            "first": [0.991482, 0.985717, 0.983119, 0.979539, 0.976916],
            "last": 0.003290,
            "count": 200,
            "mean_cca": 0.548182,
            "svcca": {5: 0.930477, 10: 0.855116, 20: 0.856715, 0.99: 0.549979},
            "pwcca": 0.665171,
            "pwcca_reference_code": 0.712649,
            "linear_cka": 0.872379,
        },
    ),
}


@pytest.fixture(params=sorted(TUTORIAL_CASES), ids=sorted(TUTORIAL_CASES))
def tutorial(request):
    if not DATA_DIR.is_dir():
        pytest.skip(f"real activations not found at {DATA_DIR} (shared data folder absent)")
    x_file, y_file, expected = TUTORIAL_CASES[request.param]
    return np.load(DATA_DIR / x_file), np.load(DATA_DIR / y_file), expected


@pytest.mark.filterwarnings("ignore::cca_monitor.similarity.SampleSizeWarning")
def test_tutorial_reference_values(tutorial):
    x, y, expected = tutorial
    rho = sim.canonical_correlations(x, y).numpy()
    np.testing.assert_allclose(rho[:5], expected["first"], atol=TUTORIAL_TOL)
    assert rho[-1] == pytest.approx(expected["last"], abs=TUTORIAL_TOL)
    assert rho.size == expected["count"]
    assert sim.mean_cca(x, y) == pytest.approx(expected["mean_cca"], abs=TUTORIAL_TOL)
    for keep, value in expected["svcca"].items():
        assert sim.svcca(x, y, keep=keep) == pytest.approx(value, abs=TUTORIAL_TOL), keep
    assert sim.pwcca(x, y) == pytest.approx(expected["pwcca"], abs=TUTORIAL_TOL)
    assert sim.pwcca(x, y, reference_code=True) == pytest.approx(
        expected["pwcca_reference_code"], abs=TUTORIAL_TOL
    )
    assert sim.linear_cka(x, y) == pytest.approx(expected["linear_cka"], abs=TUTORIAL_TOL)


# -- streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("splits", [[100], [1, 99], [37, 13, 50], [5] * 20], ids=str)
def test_streaming_equals_full_matrices(splits, seed):
    x, y = _pair(sum(splits), 6, 4, torch.float32, seed)
    x = x + 1000.0  # a large common offset must not cost precision
    moments = sim.PairMoments()
    for rows in torch.arange(x.shape[0]).split(splits):
        moments.update(x[rows], y[rows])
    full = sim.PairMoments.from_data(x, y)
    torch.testing.assert_close(
        moments.canonical_correlations(), full.canonical_correlations(), atol=STREAM_TOL, rtol=0
    )
    for measure in sim.MEASURES:
        assert moments.similarity(measure) == pytest.approx(
            full.similarity(measure), abs=STREAM_TOL
        )


def test_merge_equals_one_accumulator(seed):
    x, y = _pair(120, 5, 5, torch.float64, seed)
    first, second = (
        sim.PairMoments.from_data(x[:50], y[:50]),
        sim.PairMoments.from_data(x[50:], y[50:]),
    )
    merged = first.merge(second)
    assert merged.count == 120
    assert merged.pwcca() == pytest.approx(sim.pwcca(x, y), abs=STREAM_TOL)
    assert first.count == 50, "merge must not modify its inputs"


def test_merge_rejects_other_shapes():
    a = sim.PairMoments.from_data(torch.randn(20, 3), torch.randn(20, 2))
    b = sim.PairMoments.from_data(torch.randn(20, 4), torch.randn(20, 2))
    with pytest.raises(ValueError, match="different neuron counts"):
        a.merge(b)
    with pytest.raises(ValueError, match="neuron counts"):
        a.update(torch.randn(5, 4), torch.randn(5, 2))


def test_empty_moments_raise():
    with pytest.raises(ValueError, match="no datapoints"):
        sim.PairMoments().mean_cca()


# -- properties ------------------------------------------------------------------------------------


@pytest.mark.parametrize("measure", sorted(sim.MEASURES), ids=sorted(sim.MEASURES))
def test_identical_inputs_give_one(measure, seed):
    x, _ = _pair(400, 12, 3, torch.float64, seed)
    assert sim.MEASURES[measure](x, x) == pytest.approx(1.0, abs=PROPERTY_TOL)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]


TRANSFORMS = {
    "rotation": lambda a, s: a @ _orthogonal(a.shape[1], s),
    "scaling": lambda a, s: 7.5 * a,
    "translation": lambda a, s: a + torch.arange(a.shape[1], dtype=a.dtype) * 100.0,
    "invertible": lambda a, s: (
        a
        @ (
            torch.eye(a.shape[1], dtype=a.dtype)
            + torch.randn(
                a.shape[1], a.shape[1], generator=torch.Generator().manual_seed(s), dtype=a.dtype
            )
        )
    ),
    "permutation": lambda a, s: a[
        :, torch.randperm(a.shape[1], generator=torch.Generator().manual_seed(s))
    ],
}
ALL = ["rotation", "scaling", "translation", "invertible", "permutation"]
INVARIANT = {  # (measure, transformed side) -> transforms it is invariant to
    ("mean_cca", "x"): ALL,
    ("svcca_all", "x"): ALL,
    ("svcca", "x"): ["rotation", "scaling", "translation", "permutation"],
    # PWCCA weighs x's neurons by an L1 sum: only neuron permutations, isotropic scaling and
    # translation of x keep it; y only enters through the correlations.
    ("pwcca", "x"): ["scaling", "translation", "permutation"],
    ("pwcca", "y"): ALL,
    ("linear_cka", "x"): ["rotation", "scaling", "translation", "permutation"],
}
MEASURE_FNS = {**sim.MEASURES, "svcca_all": lambda x, y: sim.svcca(x, y, keep=1.0)}
SYMMETRIC = {"mean_cca", "svcca_all", "svcca", "linear_cka"}
INVARIANCE_CASES = [
    (m, side, t)
    for (m, side), ts in INVARIANT.items()
    for t in ts
    for side in ([side, "y"] if m in SYMMETRIC else [side])
]


@pytest.mark.parametrize(
    ("measure", "side", "transform"),
    INVARIANCE_CASES,
    ids=[f"{m}-{s}-{t}" for m, s, t in INVARIANCE_CASES],
)
def test_invariance(measure, side, transform, seed):
    x, y = _pair(500, 8, 6, torch.float64, seed)
    fn = MEASURE_FNS[measure]
    before = fn(x, y)
    if side == "x":
        after = fn(TRANSFORMS[transform](x, seed), y)
    else:
        after = fn(x, TRANSFORMS[transform](y, seed))
    assert after == pytest.approx(before, abs=PROPERTY_TOL)


def test_pwcca_not_invariant_to_rotating_x(seed):
    x, y = _pair(500, 8, 6, torch.float64, seed)
    assert abs(sim.pwcca(x @ _orthogonal(8, seed), y) - sim.pwcca(x, y)) > 1e-5


@pytest.mark.parametrize("measure", ["pwcca", "linear_cka"])
def test_not_invariant_to_general_linear_maps(measure, seed):
    """The documented limit of the neuron-weighted measures: a test that this is not vacuous."""
    x, y = _pair(500, 8, 6, torch.float64, seed)
    unstretched = sim.MEASURES[measure](x, y)
    changes = []
    for neuron in range(8):  # one stretched neuron can happen to move the measure little
        stretch = torch.ones(8, dtype=torch.float64)
        stretch[neuron] = 50.0
        changes.append(abs(sim.MEASURES[measure](x * stretch, y) - unstretched))
    assert max(changes) > 1e-2


@pytest.mark.parametrize("measure", ["mean_cca", "svcca", "linear_cka"])
def test_symmetric(measure, seed):
    x, y = _pair(300, 7, 5, torch.float64, seed)
    fn = sim.MEASURES[measure]
    assert fn(x, y) == pytest.approx(fn(y, x), abs=PROPERTY_TOL)


def test_pwcca_is_asymmetric_with_both_orders(seed):
    x, y = _pair(600, 12, 5, torch.float64, seed)
    forward, backward = sim.pwcca(x, y), sim.pwcca(y, x)
    assert forward == pytest.approx(ref_pwcca(x.numpy(), y.numpy()), abs=REFERENCE_TOL)
    assert backward == pytest.approx(ref_pwcca(y.numpy(), x.numpy()), abs=REFERENCE_TOL)
    assert abs(forward - backward) > 1e-4
    for reference_order in [(x, y), (y, x)]:
        assert 0.0 <= sim.pwcca(*reference_order, reference_code=True) <= 1.0


@pytest.mark.parametrize("measure", sorted(sim.MEASURES), ids=sorted(sim.MEASURES))
def test_values_in_unit_interval_and_independent_inputs_differ(measure, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2000, 10, generator=g), torch.randn(2000, 10, generator=g)
    value = sim.MEASURES[measure](x, y)
    assert 0.0 <= value < 0.2, "different models must have distance > 0"
    assert value == pytest.approx(sim.random_baseline(x, y, measure), abs=0.1)


def test_random_baseline_is_near_chance_and_leaves_global_rng(seed):
    x, y = _pair(400, 5, 5, torch.float64, seed)
    state = torch.get_rng_state()
    floor = sim.random_baseline(x, y, "mean_cca", repeats=2)
    assert torch.equal(state, torch.get_rng_state())
    assert floor < sim.mean_cca(x, y)
    with pytest.raises(ValueError, match="unknown measure"):
        sim.random_baseline(x, y, "cosine")


def test_svcca_cutoff_conventions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 6, generator=g, dtype=torch.float64) * torch.tensor(
        [10.0, 5, 2, 1, 0.5, 0.1], dtype=torch.float64
    )
    spectrum = sim.PairMoments.from_data(x, x).spectrum("x")
    variance = spectrum.eigenvalues / spectrum.eigenvalues.sum()
    k_variance = spectrum.truncated(0.95, "variance").rank
    k_mass = spectrum.truncated(0.95, "singular_values").rank
    assert variance[:k_variance].sum() >= 0.95 > variance[: k_variance - 1].sum()
    assert k_mass > k_variance
    assert spectrum.truncated(3).rank == 3
    assert spectrum.truncated(100).rank == 6


# -- awkward inputs ------------------------------------------------------------------------------


def test_non_finite_values_name_the_input():
    x, y = torch.randn(50, 3), torch.randn(50, 3)
    y[3, 1], y[7, 2] = math.nan, math.inf
    with pytest.raises(ValueError, match=r"y contains 2 non-finite values"):
        sim.svcca(x, y)


def test_too_few_datapoints_raise_and_few_warn():
    with pytest.raises(ValueError, match="more datapoints than neurons"):
        sim.mean_cca(torch.randn(20, 20), torch.randn(20, 5))
    with pytest.warns(sim.SampleSizeWarning, match="< 10 per neuron"):
        sim.mean_cca(torch.randn(50, 10), torch.randn(50, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sim.mean_cca(torch.randn(500, 10), torch.randn(500, 2))


def test_dead_neurons_do_not_count_against_datapoints():
    x = torch.cat([torch.randn(30, 2), torch.zeros(30, 40)], dim=1)
    assert 0.0 <= sim.mean_cca(x, torch.randn(30, 2)) <= 1.0


@pytest.mark.parametrize("measure", sorted(sim.MEASURES), ids=sorted(sim.MEASURES))
def test_dead_neurons_change_nothing(measure, seed):
    x, y = _pair(400, 6, 5, torch.float64, seed)
    dead = torch.cat(
        [x, torch.full((400, 2), 3.0, dtype=x.dtype), torch.zeros(400, 1, dtype=x.dtype)], 1
    )
    fn = sim.MEASURES[measure]
    assert fn(dead, y) == pytest.approx(fn(x, y), abs=PROPERTY_TOL)
    assert fn(y, dead) == pytest.approx(fn(y, x), abs=PROPERTY_TOL)


@pytest.mark.parametrize("measure", ["canonical", "mean_cca", "svcca_all"])
def test_duplicate_neurons_change_nothing_for_cca(measure, seed):
    """Duplicates do not change the span, so CCA measures are unchanged. (PWCCA, CKA and a
    variance-fraction SVCCA weigh neurons and rightly count a duplicate twice.)"""
    x, y = _pair(400, 6, 5, torch.float64, seed)
    duplicated = torch.cat([x, x[:, :2], 2 * x[:, 3:4]], dim=1)
    if measure == "canonical":
        torch.testing.assert_close(
            sim.canonical_correlations(duplicated, y),
            sim.canonical_correlations(x, y),
            atol=PROPERTY_TOL,
            rtol=0,
        )
    else:
        fn = MEASURE_FNS[measure]
        assert fn(duplicated, y) == pytest.approx(fn(x, y), abs=PROPERTY_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_inputs_are_upcast(dtype, seed):
    x, y = _pair(300, 5, 4, torch.float64, seed)
    low_x, low_y = x.to(dtype), y.to(dtype)
    expected = ref_correlations(low_x.double().numpy(), low_y.double().numpy())
    np.testing.assert_allclose(
        sim.canonical_correlations(low_x, low_y).numpy(), expected, atol=REFERENCE_TOL
    )


def test_large_offset_float32(seed):
    g = torch.Generator().manual_seed(seed)
    x = (1000 + torch.randn(2000, 8, generator=g)).float()
    assert sim.svcca(x, x) == pytest.approx(1.0, abs=1e-9)
    assert sim.linear_cka(x, 0.001 * x) == pytest.approx(1.0, abs=1e-9)
    assert sim.svcca(x, 0.001 * x) == pytest.approx(1.0, abs=1e-9)
    reference = ref_correlations(x.double().numpy(), x.double().numpy()[:, ::-1] ** 1.0)
    np.testing.assert_allclose(
        sim.canonical_correlations(x, x.flip(1)).numpy(), reference, atol=REFERENCE_TOL
    )


def test_numpy_and_torch_inputs_agree(seed):
    x, y = _pair(200, 4, 4, torch.float32, seed)
    assert sim.pwcca(x.numpy(), y.numpy()) == sim.pwcca(x, y)


@pytest.mark.parametrize(
    ("x", "y", "error", "match"),
    [
        (torch.randn(10), torch.randn(10, 2), ValueError, r"x must be 2-D.*shape \(10,\)"),
        (torch.randn(10, 2, 2), torch.randn(10, 2), ValueError, "to_datapoints"),
        ([[1.0, 2.0]], torch.randn(1, 2), TypeError, "x must be a torch.Tensor"),
        (torch.randn(10, 2), torch.randn(11, 2), ValueError, "same datapoints"),
        (torch.ones(10, 2, dtype=torch.bool), torch.randn(10, 2), TypeError, "real numbers"),
    ],
    ids=["1-d", "3-d", "list", "row-mismatch", "bool"],
)
def test_bad_input_errors(x, y, error, match):
    with pytest.raises(error, match=match):
        sim.svcca(x, y)


@pytest.mark.parametrize(
    ("keep", "error", "match"),
    [
        (0, ValueError, ">= 1"),
        (1.5, ValueError, r"\(0, 1\]"),
        (0.0, ValueError, r"\(0, 1\]"),
        ("all", TypeError, "int or a float"),
        (True, TypeError, "int or a float"),
    ],
    ids=["zero", "above-one", "zero-float", "str", "bool"],
)
def test_bad_keep(keep, error, match):
    with pytest.raises(error, match=match):
        sim.svcca(torch.randn(50, 3), torch.randn(50, 3), keep=keep)


def test_bad_cutoff_and_measure():
    with pytest.raises(ValueError, match="cutoff"):
        sim.svcca(torch.randn(50, 3), torch.randn(50, 3), cutoff="mass")
    with pytest.raises(ValueError, match="unknown measure"):
        sim.similarities(torch.randn(50, 3), torch.randn(50, 3), ["svcca", "cosine"])


def test_debiased_cka_batch_errors():
    x = torch.randn(18, 3)
    with pytest.raises(ValueError, match=">= 4 rows"):
        sim.debiased_linear_cka(x, x, batch_size=3)
    with pytest.raises(ValueError, match="last minibatch has 2 rows"):
        sim.debiased_linear_cka(x, x, batch_size=8)


def test_inputs_not_modified(seed):
    x, y = _pair(100, 4, 3, torch.float64, seed)
    x_copy, y_copy = x.clone(), y.clone()
    sim.similarities(x, y, list(sim.MEASURES))
    assert torch.equal(x, x_copy)
    assert torch.equal(y, y_copy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(seed):
    x, y = _pair(500, 20, 10, torch.float32, seed)
    for measure, fn in sim.MEASURES.items():
        assert fn(x.cuda(), y.cuda()) == pytest.approx(fn(x, y), abs=1e-8), measure


# -- reuse and fast paths --------------------------------------------------------------------------


@pytest.mark.parametrize("measure", sorted(sim.MEASURES), ids=sorted(sim.MEASURES))
def test_representation_reused_against_many(measure, seed):
    x, y = _pair(600, 9, 7, torch.float64, seed)
    final = sim.Representation(x)
    first = sim.PairMoments.between(final, sim.Representation(y))
    second = sim.PairMoments.between(final, sim.Representation(y.float() + 1.0))
    assert first.similarity(measure) == pytest.approx(
        sim.PairMoments.from_data(x, y).similarity(measure), abs=STREAM_TOL
    )
    assert second.similarity(measure) == pytest.approx(
        sim.PairMoments.from_data(x, y.float() + 1.0).similarity(measure), abs=STREAM_TOL
    )
    assert first.spectrum("x") is second.spectrum("x"), "the reference is decomposed once"


def test_between_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same datapoints"):
        sim.PairMoments.between(
            sim.Representation(torch.randn(9, 2)), sim.Representation(torch.randn(8, 2))
        )
    with pytest.raises(ValueError, match="share rtol"):
        sim.PairMoments.between(
            sim.Representation(torch.randn(9, 2)), sim.Representation(torch.randn(9, 2), rtol=1e-6)
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_products_over_many_chunks(dtype, monkeypatch, seed):
    monkeypatch.setattr(sim, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(sim, "MIN_CHUNK_ROWS", 64)  # 64 rows per chunk
    x, y = _pair(1000, 6, 5, dtype, seed)
    x = x + 500.0  # a large offset takes the centered path for float64 too
    reference = ref_correlations(x.double().numpy(), y.double().numpy())
    np.testing.assert_allclose(
        sim.canonical_correlations(x, y).numpy(), reference, atol=REFERENCE_TOL
    )


def test_cholesky_whitening_only_when_no_direction_is_dropped(seed):
    x, _ = _pair(500, 6, 2, torch.float64, seed)
    scatter = (x - x.mean(0)).T @ (x - x.mean(0))
    whitening = sim._cholesky_whitening(scatter, sim.DEFAULT_RTOL)
    torch.testing.assert_close(
        whitening.T @ scatter @ whitening, torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0
    )
    duplicated = torch.cat([x, x[:, :1]], dim=1)
    singular = (duplicated - duplicated.mean(0)).T @ (duplicated - duplicated.mean(0))
    assert sim._cholesky_whitening(singular, sim.DEFAULT_RTOL) is None
    scales = torch.logspace(0, 3, 6, dtype=torch.float64)
    assert sim._cholesky_whitening(scatter * torch.outer(scales, scales), 1e-3) is None


@pytest.mark.parametrize("offset", [0.0, 500.0], ids=["uncentered", "centered"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_products_split_over_cores(dtype, offset, monkeypatch, seed):
    monkeypatch.setattr(sim, "MIN_ROWS_PER_TASK", 64)
    monkeypatch.setattr(sim, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(sim, "MIN_CHUNK_ROWS", 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # three row ranges, each in its own task
    try:
        x, y = _pair(1000, 6, 5, dtype, seed)
        x = x + offset
        ours = sim.canonical_correlations(x, y).numpy()
        assert torch.get_num_threads() == 3, "the thread count is restored"
    finally:
        torch.set_num_threads(threads)
    reference = ref_correlations(x.double().numpy(), y.double().numpy())
    np.testing.assert_allclose(ours, reference, atol=REFERENCE_TOL)


def _layouts(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    wide = torch.randn(300, 11, dtype=dtype)
    return {
        "contiguous": torch.randn(300, 6, dtype=dtype),
        "column-major": torch.randn(6, 300, dtype=dtype).T,
        "columns-of-a-buffer": wide[:, 3:9],
        "rows-of-a-matrix": torch.randn(500, 6, dtype=dtype)[100:400],
        "strided": wide[:, ::2],
    }


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=DTYPE_IDS + ["bfloat16"])
def test_matmul_equals_torch_for_every_layout(dtype):
    layouts = _layouts(dtype)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    if dtype == torch.float32:
        tolerance = {"rtol": 1e-5, "atol": 1e-4}  # sums of 300 float32 products
    for name, a in layouts.items():
        for other_name, b in layouts.items():
            if a.shape[0] != b.shape[0]:
                continue
            expected = a.T @ b
            ours = sim._matmul(a.T, b)
            assert ours.dtype == dtype
            torch.testing.assert_close(ours, expected, **tolerance, msg=f"{name} x {other_name}")
        torch.testing.assert_close(sim._matmul(a.T, a), a.T @ a, **tolerance, msg=f"{name}ᵀ {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("measure", sorted(sim.MEASURES), ids=sorted(sim.MEASURES))
def test_inputs_that_require_grad_are_measured_without_a_graph(measure, dtype, seed):
    x, y = _pair(300, 6, 5, dtype, seed)
    expected = sim.MEASURES[measure](x, y)
    x.requires_grad_(True)
    assert sim.MEASURES[measure](x, y) == pytest.approx(expected, abs=1e-12)


def test_blas_layout_accepts_what_numpy_multiplies_in_place():
    layouts = _layouts(torch.float64)
    taken = {name: sim._blas_layout(a) for name, a in layouts.items()}
    assert taken == {
        "contiguous": True,
        "column-major": True,
        "columns-of-a-buffer": True,
        "rows-of-a-matrix": True,
        "strided": False,
    }
    assert not sim._blas_layout(torch.empty(0, 4, dtype=torch.float64))


@pytest.mark.parametrize("measure", ["mean_cca", "svcca", "pwcca"])
def test_both_sides_decomposed_side_by_side(measure, monkeypatch, seed):
    monkeypatch.setattr(sim, "MIN_NEURONS_SIDE_BY_SIDE", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, y = _pair(300, 7, 6, torch.float64, seed)
        ours = sim.MEASURES[measure](x, y)
        assert torch.get_num_threads() == 2, "the thread count is restored"
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(sim, "MIN_NEURONS_SIDE_BY_SIDE", 10**6)
    assert ours == pytest.approx(sim.MEASURES[measure](x, y), abs=1e-13)


def test_blas_threads_are_one_inside_and_restored_after():
    libraries = sim._blas_libraries()
    if not libraries:
        pytest.skip("numpy's BLAS is not visible to threadpoolctl here")
    before = [library.num_threads for library in libraries]
    with sim._serial():
        assert [library.num_threads for library in libraries] == [1] * len(libraries)
        with sim._serial():
            pass
        assert [library.num_threads for library in libraries] == [1] * len(libraries)
    assert [library.num_threads for library in libraries] == before
    sim.mean_cca(torch.randn(20000, 8, dtype=torch.float64), torch.randn(20000, 8))
    assert [library.num_threads for library in libraries] == before


def test_decompositions_by_numpy_equal_torch(seed):
    x, _ = _pair(400, 9, 2, torch.float64, seed)
    scatter = (x - x.mean(0)).T @ (x - x.mean(0))
    values, vectors = sim._eigh(scatter)
    expected_values, _ = torch.linalg.eigh(scatter)
    torch.testing.assert_close(values, expected_values)
    torch.testing.assert_close(vectors * values @ vectors.T, scatter)
    matrix = torch.randn(9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    u, s, vh = sim._svd(matrix)
    assert u.shape == (9, 7)
    assert vh.shape == (7, 7)
    torch.testing.assert_close(s, torch.linalg.svdvals(matrix))
    torch.testing.assert_close(sim._svdvals(matrix), torch.linalg.svdvals(matrix))
    torch.testing.assert_close(u * s @ vh, matrix)


def test_thread_count_restored_after_an_error():
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="non-finite"):
        sim.mean_cca(torch.full((10000, 3), math.nan), torch.randn(10000, 3))
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("measure", sorted(sim.MEASURES), ids=sorted(sim.MEASURES))
def test_no_linalg_error_escapes(measure, monkeypatch):
    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("did not converge")

    def fail_in_numpy(*args, **kwargs):
        raise np.linalg.LinAlgError("did not converge")

    for name in ["eigh", "svd", "svdvals", "cholesky_ex", "matrix_norm"]:
        monkeypatch.setattr(torch.linalg, name, fail)
    for name in ["eigh", "svd"]:
        monkeypatch.setattr(np.linalg, name, fail_in_numpy)
    x, y = _pair(300, 5, 4, torch.float64, 0)
    with pytest.warns(RuntimeWarning, match="returning NaN"):
        assert math.isnan(sim.MEASURES[measure](x, y))


# ---------------------------------------------------------------------------------------------
# float32 products (gram_precision)


def _recorded_product_dtypes(monkeypatch) -> list[torch.dtype]:
    """Record the precision every chunk of centered rows is multiplied in."""
    dtypes = []
    original = sim._centered_rows

    def recording(parts, pairs, dtype, start, stop):
        dtypes.append(dtype)
        return original(parts, pairs, dtype, start, stop)

    monkeypatch.setattr(sim, "_centered_rows", recording)
    return dtypes


@pytest.mark.parametrize("offset", [0.0, 300.0], ids=["small-offsets", "large-offsets"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("measure", sorted(sim.MEASURES), ids=sorted(sim.MEASURES))
def test_float32_products_stay_close_to_the_exact_measures(measure, dtype, offset, seed):
    x, y = _pair(3000, 12, 9, dtype, seed)
    x = x + offset
    exact = sim.MEASURES[measure](x, y)
    with sim.gram_precision("float32"):
        fast = sim.MEASURES[measure](x, y)
    assert fast == pytest.approx(exact, abs=1e-5)


def test_float32_products_are_float32_in_every_task(monkeypatch, seed):
    monkeypatch.setattr(sim, "MIN_ROWS_PER_TASK", 64)
    dtypes = _recorded_product_dtypes(monkeypatch)
    x, y = _pair(1000, 6, 5, torch.float64, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two row ranges in two worker threads
    try:
        with sim.gram_precision("float32"):
            sim.mean_cca(x, y)
    finally:
        torch.set_num_threads(threads)
    assert dtypes == [torch.float32, torch.float32]
    dtypes.clear()
    sim.mean_cca(x + 300.0, y)  # the default again: a centered product in float64
    assert dtypes
    assert set(dtypes) == {torch.float64}


def test_gram_precision_is_restored_after_an_error():
    with pytest.raises(RuntimeError, match="inside"), sim.gram_precision("float32"):
        raise RuntimeError("inside")
    assert sim._product_dtype.get() == torch.float64


def test_gram_precision_rejects_other_values():
    with pytest.raises(ValueError, match="'float64' or 'float32'"), sim.gram_precision("half"):
        pass


@pytest.mark.parametrize("measure", sorted(sim.MEASURES), ids=sorted(sim.MEASURES))
def test_a_constant_input_warns(measure, seed):
    x, _ = _pair(200, 4, 3, torch.float64, seed)
    constant = torch.full((200, 3), 2.5, dtype=torch.float64)
    with pytest.warns(sim.ConstantInputWarning, match="no varying neuron"):
        value = sim.MEASURES[measure](x, constant)
    if measure == "linear_cka":
        assert math.isnan(value)
    else:
        assert value == 0.0


def test_map_over_ranges_covers_the_range_in_order_one_task_per_core(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parts = sim.map_over_ranges(10, lambda start, stop: (start, stop), min_per_task=3)
        single = sim.map_over_ranges(5, lambda start, stop: (start, stop), min_per_task=3)
        nested = sim.map_over_ranges(
            10,
            lambda start, stop: sim.map_over_ranges(
                stop - start, lambda a, b: (a, b), min_per_task=1
            ),
            min_per_task=1,
        )
        assert torch.get_num_threads() == 2, "the thread count is restored"
    finally:
        torch.set_num_threads(threads)
    assert parts == [(0, 5), (5, 10)]
    assert single == [(0, 5)], "too little work to split"
    assert nested == [[(0, 5)], [(0, 5)]], "tasks started inside a task run in it"
    on_gpu = sim.map_over_ranges(
        10, lambda start, stop: (start, stop), min_per_task=1, device=torch.device("meta")
    )
    assert on_gpu == [(0, 10)]


def test_map_over_ranges_runs_tasks_in_the_callers_context():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with sim.gram_precision("float32"):
            seen = sim.map_over_ranges(
                4, lambda start, stop: sim._product_dtype.get(), min_per_task=1
            )
    finally:
        torch.set_num_threads(threads)
    assert seen == [torch.float32, torch.float32]


def test_a_prepared_representation_shares_its_scatter_with_every_comparison(monkeypatch, seed):
    x, y = _pair(300, 6, 5, torch.float64, seed)
    final = sim.Representation(x).prepare()
    scatter = final._side.scatter
    asked = []
    products = sim._scatter_products
    monkeypatch.setattr(
        sim, "_scatter_products", lambda reps, pairs: asked.append(pairs) or products(reps, pairs)
    )
    moments = sim.PairMoments.between(final, sim.Representation(y))
    assert asked == [[(0, 1), (1, 1)]], "only the cross product and the other side's scatter"
    assert moments.scatter_xx is scatter
    assert moments.mean_cca() == pytest.approx(sim.mean_cca(x, y), abs=1e-13)


def test_a_side_decomposed_from_two_threads_at_once_is_decomposed_once(monkeypatch, seed):
    x, y = _pair(300, 6, 5, torch.float64, seed)
    final = sim.Representation(x).prepare()
    calls = []
    whitening = sim._cholesky_whitening

    def slow_whitening(scatter, rtol):
        calls.append(scatter)
        time.sleep(0.2)  # both threads ask while the first one computes
        return whitening(scatter, rtol)

    monkeypatch.setattr(sim, "_cholesky_whitening", slow_whitening)
    others = [sim.Representation(y), sim.Representation(y + 1.0)]
    with ThreadPoolExecutor(2) as pool:
        values = list(
            pool.map(lambda other: sim.PairMoments.between(final, other).mean_cca(), others)
        )
    assert sum(c is final._side.scatter for c in calls) == 1
    assert values[0] == pytest.approx(sim.mean_cca(x, y), abs=1e-13)
    assert values[1] == pytest.approx(values[0], abs=1e-12), "mean CCA ignores offsets"


def _parallel_mean_cca_in_child(queue):
    # numpy inputs: torch's own threads are not fork-safe, only the tasks' threads are tested
    torch.set_num_threads(2)
    x = np.random.default_rng(0).standard_normal((20000, 8))
    queue.put(sim.mean_cca(x, x + np.random.default_rng(1).standard_normal((20000, 8))))


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")
def test_a_forked_child_runs_parallel_tasks_on_its_own_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # the parent's worker threads exist before the fork
        assert sim.map_over_ranges(2, lambda start, stop: start, min_per_task=1) == [0, 1]
    finally:
        torch.set_num_threads(threads)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_parallel_mean_cca_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        pytest.fail("the child hung waiting for worker threads it does not have")
    assert child.exitcode == 0
    assert 0.0 < queue.get(timeout=5) < 1.0
