"""Every similarity measure on every layout mode of conv and recurrent activations.

For each measure of ``cca_monitor.similarity.MEASURES`` and each conv mode (``positions``,
``avgpool``, ``flatten``, ``dft``, ``interpolate``) and recurrent mode (time steps as datapoints,
one result per time step): identical inputs give 1, an unrelated input gives clearly less, the
layouts have the expected shapes, and a permutation of the channels (hidden units) changes
nothing. The DFT mode is checked against a direct DFT and against translation-invariant
constructions whose per-frequency results are known.

Sizes keep more than 10 datapoints per neuron in every mode, and a ``SampleSizeWarning`` fails
the test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.nn import functional

from cca_monitor.layout import (
    conv_similarity,
    dft_frequency_blocks,
    match_spatial,
    per_frequency,
    per_frequency_similarity,
    per_timestep,
    sequence_to_datapoints,
    to_datapoints,
)
from cca_monitor.similarity import MEASURES, canonical_correlations, mean_cca

pytestmark = pytest.mark.filterwarnings("error::cca_monitor.similarity.SampleSizeWarning")

MEASURE_NAMES = sorted(MEASURES)
CONV_MODES = ["positions", "avgpool", "flatten", "dft", "interpolate"]
SEQUENCE_MODES = ["timesteps", "per_timestep"]

# conv maps: the widest layouts keep N / (C_OTHER * H * W) = 12.5 datapoints per neuron (flatten)
# and N / (2 * C_OTHER) = 100 (dft)
N, C, H, W = 1000, 3, 4, 4
SMALL = (2, 2)
"""Spatial size of the second map in ``interpolate`` mode, upsampled to (H, W)."""
C_OTHER = 5
"""Channels of the second map, so that the two sides differ in width."""
# sequences: N_SEQ / HIDDEN = 50 datapoints per neuron at every time step
N_SEQ, STEPS, HIDDEN = 300, 4, 6

IDENTITY_ATOL = 1e-6
PERMUTATION_ATOL = 1e-9
EXACT_ATOL = 1e-9
UNRELATED_MAX = 0.5
"""Unrelated random inputs score at most about 0.26 at these sizes (PWCCA of flatten layouts)."""
INDEPENDENT_FREQUENCY_MAX = 0.3


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _conv(seed: int, channels: int = C, size: tuple[int, int] = (H, W)) -> torch.Tensor:
    return _randn(seed, N, channels, *size)


def _other_size(mode: str) -> tuple[int, int]:
    """The second map's spatial size: smaller in interpolate mode, equal otherwise."""
    return SMALL if mode == "interpolate" else (H, W)


def _related(x: torch.Tensor, mode: str, seed: int) -> torch.Tensor:
    """A second map that depends on ``x`` partly: mixed channels plus noise (resized if needed)."""
    mixed = torch.einsum("dc,nchw->ndhw", _randn(seed, C_OTHER, C), x)
    mixed = functional.adaptive_avg_pool2d(mixed, _other_size(mode))
    return mixed + _randn(seed + 1, *mixed.shape)


def _permuted_channels(x: torch.Tensor, seed: int) -> torch.Tensor:
    order = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))
    return x[:, order]


# ---------------------------------------------------------------------------------------------
# conv modes x measures


@pytest.mark.parametrize("mode", CONV_MODES)
@pytest.mark.parametrize("measure", MEASURE_NAMES)
def test_conv_identical_inputs_give_one(measure, mode):
    x = _conv(0)
    assert conv_similarity(x, x, MEASURES[measure], conv_mode=mode) == pytest.approx(
        1.0, abs=IDENTITY_ATOL
    )


@pytest.mark.parametrize("mode", CONV_MODES)
@pytest.mark.parametrize("measure", MEASURE_NAMES)
def test_conv_unrelated_input_gives_clearly_less(measure, mode):
    x, z = _conv(0), _conv(1, C_OTHER, _other_size(mode))
    value = conv_similarity(x, z, MEASURES[measure], conv_mode=mode)
    assert 0.0 <= value < UNRELATED_MAX


@pytest.mark.parametrize("mode", CONV_MODES)
@pytest.mark.parametrize("measure", MEASURE_NAMES)
@pytest.mark.parametrize("side", ["x", "y"])
def test_conv_channel_permutation_changes_nothing(measure, mode, side):
    x = _conv(0)
    y = _related(x, mode, seed=2)
    fn = MEASURES[measure]
    before = conv_similarity(x, y, fn, conv_mode=mode)
    if side == "x":
        after = conv_similarity(_permuted_channels(x, 3), y, fn, conv_mode=mode)
    else:
        after = conv_similarity(x, _permuted_channels(y, 3), fn, conv_mode=mode)
    assert 0.05 < before < 0.95  # a related pair, so that a wrong permutation would show
    assert after == pytest.approx(before, abs=PERMUTATION_ATOL)


@pytest.mark.parametrize("measure", MEASURE_NAMES)
def test_interpolate_recovers_an_upsampled_copy(measure):
    small = _conv(4, C, SMALL)
    large = functional.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    for x, y in [(small, large), (large, small)]:
        value = conv_similarity(x, y, MEASURES[measure], conv_mode="interpolate")
        assert value == pytest.approx(1.0, abs=IDENTITY_ATOL)


def _conv_layouts(mode: str, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Every matrix a measure sees when comparing ``x`` and ``y`` in ``mode``."""
    if mode == "dft":
        return [*dft_frequency_blocks(x).values(), *dft_frequency_blocks(y).values()]
    if mode == "interpolate":
        return list(match_spatial(x, y))
    return [to_datapoints(x, conv_mode=mode), to_datapoints(y, conv_mode=mode)]


CONV_SHAPES = {
    "positions": [(N * H * W, C), (N * H * W, C_OTHER)],
    "avgpool": [(N, C), (N, C_OTHER)],
    "flatten": [(N, C * H * W), (N, C_OTHER * H * W)],
    "dft": [(N, 2 * C)] * (H * W) + [(N, 2 * C_OTHER)] * (H * W),
    "interpolate": [(N * H * W, C), (N * H * W, C_OTHER)],
}


@pytest.mark.parametrize("mode", CONV_MODES)
def test_conv_layout_shapes_and_sample_size(mode):
    x, y = _conv(0), _conv(1, C_OTHER, _other_size(mode))
    matrices = _conv_layouts(mode, x, y)
    assert [tuple(m.shape) for m in matrices] == CONV_SHAPES[mode]
    for matrix in matrices:
        assert matrix.shape[0] > 10 * matrix.shape[1]


# ---------------------------------------------------------------------------------------------
# recurrent modes x measures


def _sequence_similarities(mode: str, measure: str, x: torch.Tensor, y: torch.Tensor) -> list:
    """One value for time steps as datapoints, one per time step otherwise."""
    fn = MEASURES[measure]
    if mode == "timesteps":
        return [fn(sequence_to_datapoints(x), sequence_to_datapoints(y))]
    return [fn(a, b) for a, b in zip(per_timestep(x), per_timestep(y), strict=True)]


def _sequence(seed: int) -> torch.Tensor:
    return _randn(seed, N_SEQ, STEPS, HIDDEN)


@pytest.mark.parametrize("mode", SEQUENCE_MODES)
@pytest.mark.parametrize("measure", MEASURE_NAMES)
def test_sequence_identical_gives_one_and_unrelated_less(measure, mode):
    x, z = _sequence(0), _sequence(1)
    identical = _sequence_similarities(mode, measure, x, x)
    unrelated = _sequence_similarities(mode, measure, x, z)
    assert len(identical) == (1 if mode == "timesteps" else STEPS)
    assert identical == pytest.approx([1.0] * len(identical), abs=IDENTITY_ATOL)
    assert all(0.0 <= value < UNRELATED_MAX for value in unrelated)


@pytest.mark.parametrize("mode", SEQUENCE_MODES)
@pytest.mark.parametrize("measure", MEASURE_NAMES)
def test_sequence_hidden_unit_permutation_changes_nothing(measure, mode):
    x = _sequence(0)
    y = x @ _randn(2, HIDDEN, HIDDEN) + _sequence(3)
    order = torch.randperm(HIDDEN, generator=torch.Generator().manual_seed(4))
    before = _sequence_similarities(mode, measure, x, y)
    assert _sequence_similarities(mode, measure, x[..., order], y) == pytest.approx(
        before, abs=PERMUTATION_ATOL
    )
    assert _sequence_similarities(mode, measure, x, y[..., order]) == pytest.approx(
        before, abs=PERMUTATION_ATOL
    )


def test_sequence_layout_shapes_and_sample_size():
    x = _sequence(0)
    assert tuple(sequence_to_datapoints(x).shape) == (N_SEQ * STEPS, HIDDEN)
    steps = per_timestep(x)
    assert [tuple(step.shape) for step in steps] == [(N_SEQ, HIDDEN)] * STEPS
    assert N_SEQ > 10 * HIDDEN


def test_per_timestep_results_follow_the_time_step():
    """Only the time steps where y copies x give 1."""
    x, z = _sequence(0), _sequence(1)
    y = z.clone()
    y[:, 1] = x[:, 1]
    values = _sequence_similarities("per_timestep", "mean_cca", x, y)
    assert values[1] == pytest.approx(1.0, abs=IDENTITY_ATOL)
    assert all(value < UNRELATED_MAX for t, value in enumerate(values) if t != 1)


# ---------------------------------------------------------------------------------------------
# dft: direct reference and translation-invariant constructions


def _direct_dft(x: np.ndarray, frequency: tuple[int, int]) -> np.ndarray:
    """``sum_h sum_w x[..., h, w] exp(-2 pi i (u h / H + v w / W))`` by an explicit loop."""
    u, v = frequency
    height, width = x.shape[-2:]
    total = np.zeros(x.shape[:-2], dtype=np.complex128)
    for h, w in itertools.product(range(height), range(width)):
        total += x[..., h, w] * np.exp(-2j * np.pi * (u * h / height + v * w / width))
    return total


@pytest.mark.parametrize(
    "frequency", [(0, 0), (1, 2), (3, 4), (2, 0), (0, 3)], ids=lambda f: f"{f[0]}-{f[1]}"
)
def test_dft_block_matches_direct_loop(frequency):
    x = _randn(5, 3, 2, 4, 5)  # H != W, so swapped frequency axes would show
    expected = _direct_dft(x.numpy(), frequency)
    block = dft_frequency_blocks(x)[frequency]
    np.testing.assert_allclose(block.numpy(), np.hstack([expected.real, expected.imag]), atol=1e-12)


def test_dft_blocks_match_numpy_fft2_at_every_frequency():
    x = _randn(6, 4, 3, 5, 4)
    reference = np.fft.fft2(x.numpy())
    blocks = dft_frequency_blocks(x)
    assert list(blocks) == list(itertools.product(range(5), range(4)))
    for (u, v), block in blocks.items():
        coefficients = reference[:, :, u, v]
        np.testing.assert_allclose(
            block.numpy(), np.hstack([coefficients.real, coefficients.imag]), atol=1e-12
        )


def _conjugate(frequency: tuple[int, int]) -> tuple[int, int]:
    return (-frequency[0] % H, -frequency[1] % W)


SHARED_FREQUENCIES = {(0, 1), (0, 3), (1, 2), (3, 2), (2, 2)}
"""Closed under conjugation, so the mixed map below is real; (2, 2) is its own conjugate."""


@pytest.mark.parametrize("measure", MEASURE_NAMES)
def test_per_frequency_one_exactly_where_the_frequencies_are_shared(measure):
    """y has x's Fourier coefficients on SHARED_FREQUENCIES and independent ones elsewhere."""
    x, z = _conv(0), _conv(1)
    mask = torch.zeros(H, W, dtype=torch.bool)
    for frequency in SHARED_FREQUENCIES:
        mask[frequency] = True
    y = torch.fft.ifft2(torch.where(mask, torch.fft.fft2(x), torch.fft.fft2(z))).real
    values = per_frequency(x, y, MEASURES[measure])
    for frequency, value in values.items():
        if frequency in SHARED_FREQUENCIES:
            assert value == pytest.approx(1.0, abs=IDENTITY_ATOL), frequency
        else:
            assert 0.0 <= value < INDEPENDENT_FREQUENCY_MAX, frequency
    expected_mean = sum(values.values()) / (H * W)
    assert per_frequency_similarity(x, y, MEASURES[measure]) == pytest.approx(expected_mean)


@pytest.mark.parametrize("measure", MEASURE_NAMES)
def test_dft_ignores_a_circular_shift_that_positions_does_not(measure):
    x = _conv(0)
    shifted = x.roll(shifts=(1, 2), dims=(2, 3))
    fn = MEASURES[measure]
    assert conv_similarity(x, shifted, fn, conv_mode="dft") == pytest.approx(1.0, abs=IDENTITY_ATOL)
    assert conv_similarity(x, shifted, fn, conv_mode="positions") < UNRELATED_MAX


def _shift_closed_pair(num_examples: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y = circular convolution of x plus noise, with every circular shift of each pair.

    Closing the set under circular shifts makes it exactly translation invariant: the sample
    covariance of the flatten layout is block diagonal in the Fourier basis.
    """
    base = _randn(7, num_examples, channels, H, W)
    kernel = _randn(8, channels, channels, 3, 3)
    filtered = functional.conv2d(functional.pad(base, (1, 1, 1, 1), mode="circular"), kernel)
    noisy = filtered + 2.0 * _randn(9, *base.shape)
    shifts = list(itertools.product(range(H), range(W)))
    x = torch.cat([base.roll(shift, dims=(2, 3)) for shift in shifts])
    y = torch.cat([noisy.roll(shift, dims=(2, 3)) for shift in shifts])
    return x, y


def test_per_frequency_mean_cca_equals_flatten_for_translation_invariant_data():
    x, y = _shift_closed_pair(num_examples=40, channels=2)  # flatten: 640 rows, 32 neurons
    flatten = mean_cca(to_datapoints(x, conv_mode="flatten"), to_datapoints(y, conv_mode="flatten"))
    per_frequency_mean = per_frequency_similarity(x, y, mean_cca)
    assert 0.1 < flatten < 0.95
    assert per_frequency_mean == pytest.approx(flatten, abs=EXACT_ATOL)


def test_flatten_correlations_are_the_union_over_frequencies():
    """One frequency of each conjugate pair, plus the self-conjugate ones, give flatten's CCA."""
    x, y = _shift_closed_pair(num_examples=40, channels=2)
    correlations = per_frequency(x, y, canonical_correlations)
    for frequency, values in correlations.items():
        torch.testing.assert_close(values, correlations[_conjugate(frequency)])
    representatives = [f for f in correlations if f <= _conjugate(f)]
    pooled = torch.cat([correlations[f] for f in representatives]).sort().values
    flatten = canonical_correlations(
        to_datapoints(x, conv_mode="flatten"), to_datapoints(y, conv_mode="flatten")
    )
    torch.testing.assert_close(pooled, flatten.sort().values, rtol=0, atol=1e-8)
