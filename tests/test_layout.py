"""Tests for cca_monitor.layout: every rank and mode, element order, row cap, errors.

How the measures behave on each mode is tested in test_layout_measures.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional

from cca_monitor.layout import (
    DEFAULT_MAX_ROWS,
    check_layout_arguments,
    conv_similarity,
    datapoints_per_example,
    dft_frequency_blocks,
    match_spatial,
    per_frequency,
    per_frequency_similarity,
    per_timestep,
    sequence_to_datapoints,
    to_datapoints,
)


def _arange(*shape: int) -> torch.Tensor:
    """A float tensor whose elements are all distinct, so that any reordering shows."""
    return torch.arange(float(torch.Size(shape).numel())).reshape(shape)


SHAPE_CASES = [
    # (input shape, kind, conv_mode, expected output shape)
    ((6, 5), "auto", "positions", (6, 5)),
    ((6, 5), "auto", "flatten", (6, 5)),
    ((4, 3, 7), "auto", "positions", (28, 3)),
    ((4, 3, 7), "conv", "avgpool", (4, 3)),
    ((4, 3, 7), "auto", "flatten", (4, 21)),
    ((2, 3, 4, 5), "auto", "positions", (40, 3)),
    ((2, 3, 4, 5), "auto", "avgpool", (2, 3)),
    ((2, 3, 4, 5), "conv", "flatten", (2, 60)),
    ((2, 3, 4, 5, 6), "auto", "positions", (240, 3)),
    ((2, 3, 4, 5, 6), "auto", "avgpool", (2, 3)),
    ((2, 3, 4, 5, 6), "auto", "flatten", (2, 360)),
    ((4, 7, 3), "sequence", "positions", (28, 3)),
    ((4, 7, 3), "sequence", "flatten", (28, 3)),
]


@pytest.mark.parametrize(
    ("shape", "kind", "conv_mode", "expected"),
    SHAPE_CASES,
    ids=[f"{len(c[0])}d-{c[1]}-{c[2]}" for c in SHAPE_CASES],
)
def test_output_shape(shape, kind, conv_mode, expected):
    assert to_datapoints(_arange(*shape), kind=kind, conv_mode=conv_mode).shape == expected


@pytest.mark.parametrize(
    "shape", [(4, 3, 7), (2, 3, 4, 5), (2, 3, 4, 5, 6)], ids=["conv1d", "conv2d", "conv3d"]
)
def test_positions_order_matches_manual_permute(shape):
    x = _arange(*shape)
    dims = (0, *range(2, len(shape)), 1)
    expected = x.permute(dims).reshape(-1, shape[1])
    torch.testing.assert_close(to_datapoints(x), expected, rtol=0, atol=0)


def test_positions_row_index_is_example_then_h_then_w():
    n, c, h, w = 2, 3, 4, 5
    x = _arange(n, c, h, w)
    out = to_datapoints(x)
    for example, row, col in [(0, 0, 0), (1, 2, 3), (0, 3, 4), (1, 0, 1)]:
        torch.testing.assert_close(out[(example * h + row) * w + col], x[example, :, row, col])


def test_avgpool_is_spatial_mean():
    x = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(to_datapoints(x, conv_mode="avgpool"), x.mean(dim=(2, 3)))


def test_flatten_is_per_example_reshape():
    x = _arange(3, 4, 2, 2)
    torch.testing.assert_close(to_datapoints(x, conv_mode="flatten"), x.reshape(3, 16))


def test_sequence_rows_are_example_then_time():
    x = _arange(2, 3, 4)
    out = sequence_to_datapoints(x)
    assert out.shape == (6, 4)
    torch.testing.assert_close(out[1 * 3 + 2], x[1, 2])
    torch.testing.assert_close(to_datapoints(x, kind="sequence"), out)


def test_dense_is_returned_unchanged():
    x = torch.randn(5, 3)
    out = to_datapoints(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, x, rtol=0, atol=0)


@pytest.mark.parametrize("conv_mode", ["positions", "avgpool", "flatten"])
def test_input_unchanged_and_result_contiguous(conv_mode):
    x = torch.randn(3, 4, 5, 6).transpose(2, 3)
    before = x.clone()
    out = to_datapoints(x, conv_mode=conv_mode, max_rows=7)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    assert out.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("conv_mode", ["positions", "avgpool", "flatten"])
def test_dtype_and_device_kept(dtype, conv_mode):
    out = to_datapoints(torch.ones(2, 3, 4, 4, dtype=dtype), conv_mode=conv_mode, max_rows=5)
    assert out.dtype == dtype
    assert out.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor_stays_on_cuda():
    out = to_datapoints(torch.randn(4, 3, 8, 8, device="cuda"), max_rows=10)
    assert out.device.type == "cuda"
    assert out.shape == (10, 3)


# ---------------------------------------------------------------------------------------------
# row cap


def test_row_cap_keeps_rows_of_the_uncapped_result_in_order():
    x = _arange(4, 3, 5, 5)
    full = to_datapoints(x)
    capped = to_datapoints(x, max_rows=17, seed=3)
    assert capped.shape == (17, 3)
    # rows of `full` are distinct and increasing in their first element, so membership and
    # order can be read off the first column
    positions = torch.searchsorted(full[:, 0].contiguous(), capped[:, 0].contiguous())
    torch.testing.assert_close(full[positions], capped, rtol=0, atol=0)
    assert bool((positions[1:] > positions[:-1]).all())


def test_row_cap_same_rows_for_every_input_of_a_shape():
    index = _kept_rows(num_rows=8 * 36, max_rows=50, seed=5)
    for draw in range(2):
        x = torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(draw))
        capped = to_datapoints(x, max_rows=50, seed=5)
        torch.testing.assert_close(capped, to_datapoints(x)[index], rtol=0, atol=0)
        torch.testing.assert_close(to_datapoints(x, max_rows=50, seed=5), capped, rtol=0, atol=0)


def _kept_rows(num_rows: int, max_rows: int, seed: int) -> torch.Tensor:
    """Which rows the cap keeps, read off an input whose rows are their own index."""
    index_input = torch.arange(float(num_rows)).unsqueeze(1)
    return to_datapoints(index_input, max_rows=max_rows, seed=seed)[:, 0].long()


def test_row_cap_depends_on_seed():
    assert not torch.equal(_kept_rows(1000, 20, seed=0), _kept_rows(1000, 20, seed=1))
    assert torch.equal(_kept_rows(1000, 20, seed=1), _kept_rows(1000, 20, seed=1))


def test_row_cap_leaves_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    to_datapoints(torch.ones(100, 2), max_rows=10, seed=7)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


@pytest.mark.parametrize("max_rows", [None, 12, 100], ids=["none", "equal", "above"])
def test_row_cap_not_reached_keeps_everything(max_rows):
    x = torch.randn(12, 3)
    torch.testing.assert_close(to_datapoints(x, max_rows=max_rows), x, rtol=0, atol=0)


def test_row_cap_applies_to_sequences_and_pooled():
    assert to_datapoints(torch.randn(10, 20, 4), kind="sequence", max_rows=30).shape == (30, 4)
    pooled = to_datapoints(torch.randn(40, 3, 2, 2), conv_mode="avgpool", max_rows=30)
    assert pooled.shape == (30, 3)


@pytest.mark.parametrize(
    ("shape", "kind", "conv_mode"),
    [
        ((4, 3, 5), "auto", "positions"),
        ((4, 3, 5, 6), "auto", "positions"),
        ((3, 2, 3, 4, 2), "conv", "positions"),
        ((4, 3, 5, 6), "auto", "avgpool"),
        ((4, 3, 5, 6), "auto", "flatten"),
        ((4, 7, 3), "sequence", "positions"),
        ((9, 3), "auto", "positions"),
    ],
    ids=["conv1d", "conv2d", "conv3d", "avgpool", "flatten", "sequence", "dense"],
)
def test_rows_selects_those_rows_of_the_whole_layout(shape, kind, conv_mode):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))
    full = to_datapoints(x, kind=kind, conv_mode=conv_mode)
    assert full.shape[0] == shape[0] * datapoints_per_example(x, kind=kind, conv_mode=conv_mode)
    rows = torch.randperm(full.shape[0], generator=torch.Generator().manual_seed(1))[:5]
    chosen = to_datapoints(x, kind=kind, conv_mode=conv_mode, rows=rows)
    torch.testing.assert_close(chosen, full[rows], rtol=0, atol=0)
    assert chosen.is_contiguous()


@pytest.mark.parametrize(
    ("rows", "error", "match"),
    [
        (torch.tensor([True, False, True]), TypeError, "int32 or int64 tensor"),
        ([0, 1], TypeError, "int32 or int64 tensor"),
        (torch.tensor([[0, 1]]), ValueError, "1-D"),
        (torch.tensor([-1]), ValueError, r"in \[0, 100\)"),
        (torch.tensor([100]), ValueError, r"in \[0, 100\)"),
    ],
    ids=["bool-mask", "list", "2-d", "negative", "too-large"],
)
@pytest.mark.parametrize("shape", [(4, 5, 5, 5), (100, 3)], ids=["conv", "dense"])
def test_bad_rows_are_rejected_the_same_way_for_every_layout(shape, rows, error, match):
    with pytest.raises(error, match=match):
        to_datapoints(torch.randn(*shape), rows=rows)


def test_rows_and_max_rows_are_exclusive():
    with pytest.raises(ValueError, match="either max_rows or rows"):
        to_datapoints(torch.randn(4, 3), max_rows=2, rows=torch.tensor([0, 1]))


def test_default_max_rows_value():
    assert DEFAULT_MAX_ROWS == 8192


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("shape", [(), (5,), (1, 2, 3, 4, 5, 6)], ids=["0d", "1d", "6d"])
def test_unsupported_rank_names_the_shape(shape):
    with pytest.raises(ValueError, match=r"shape \(" + ", ".join(map(str, shape))):
        to_datapoints(torch.zeros(shape))


def test_conv_kind_rejects_dense():
    with pytest.raises(ValueError, match=r"shape \(4, 3\) with kind='conv'"):
        to_datapoints(torch.zeros(4, 3), kind="conv")


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5)], ids=["2d", "4d"])
def test_sequence_kind_requires_rank_three(shape):
    with pytest.raises(ValueError, match="batch-first"):
        to_datapoints(torch.zeros(shape), kind="sequence")


def test_sequence_to_datapoints_rejects_other_ranks():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        sequence_to_datapoints(torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "dense"}, ValueError, "kind must be one of"),
        ({"conv_mode": "spatial"}, ValueError, "conv_mode must be one of"),
        ({"max_rows": 0}, ValueError, "max_rows must be >= 1"),
        ({"max_rows": 2.5}, TypeError, "max_rows must be an int"),
        ({"max_rows": True}, TypeError, "max_rows must be an int"),
        ({"seed": "0"}, TypeError, "seed must be an int"),
    ],
    ids=["kind", "conv_mode", "max_rows-zero", "max_rows-float", "max_rows-bool", "seed"],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        to_datapoints(torch.zeros(4, 3), **kwargs)
    with pytest.raises(error, match=match):
        check_layout_arguments(**kwargs)


def test_non_tensor_rejected():
    with pytest.raises(TypeError, match="activation must be a torch.Tensor, got list"):
        to_datapoints([[1.0, 2.0]])


# ---------------------------------------------------------------------------------------------
# per time step


def test_per_timestep_splits_along_time():
    x = _arange(2, 3, 4)
    steps = per_timestep(x)
    assert len(steps) == 3
    for t, step in enumerate(steps):
        assert step.is_contiguous()
        torch.testing.assert_close(step, x[:, t], rtol=0, atol=0)


def test_per_timestep_rows_are_the_examples_of_the_pooled_layout():
    x = _arange(2, 3, 4)
    pooled = sequence_to_datapoints(x)
    for t, step in enumerate(per_timestep(x)):
        torch.testing.assert_close(step, pooled[t::3], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (torch.zeros(2, 3), ValueError, r"batch-first \(N, T, H\) tensor, got shape \(2, 3\)"),
        (torch.zeros(2, 3, 4, 5), ValueError, r"got shape \(2, 3, 4, 5\)"),
        ([[1.0]], TypeError, "sequence must be a torch.Tensor, got list"),
    ],
    ids=["2d", "4d", "list"],
)
def test_per_timestep_rejects(value, error, match):
    with pytest.raises(error, match=match):
        per_timestep(value)


# ---------------------------------------------------------------------------------------------
# dft


@pytest.mark.parametrize("spatial", [(5,), (3, 4), (2, 3, 2)], ids=["conv1d", "conv2d", "conv3d"])
def test_dft_keys_are_the_frequency_grid_in_row_major_order(spatial):
    blocks = dft_frequency_blocks(torch.randn(6, 2, *spatial))
    assert list(blocks) == list(itertools.product(*map(range, spatial)))
    assert all(block.shape == (6, 4) and block.is_contiguous() for block in blocks.values())


def test_dft_block_halves_are_real_and_imaginary_parts():
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    coefficients = torch.fft.fft2(x)
    block = dft_frequency_blocks(x)[(2, 1)]
    torch.testing.assert_close(block[:, :3], coefficients[:, :, 2, 1].real)
    torch.testing.assert_close(block[:, 3:], coefficients[:, :, 2, 1].imag)


def test_dft_conjugate_frequencies_and_zero_imaginary_half():
    x = torch.randn(4, 3, 4, 6, dtype=torch.float64)
    blocks = dft_frequency_blocks(x)
    torch.testing.assert_close(blocks[(1, 2)][:, :3], blocks[(3, 4)][:, :3])
    torch.testing.assert_close(blocks[(1, 2)][:, 3:], -blocks[(3, 4)][:, 3:])
    for self_conjugate in [(0, 0), (2, 0), (0, 3), (2, 3)]:
        assert torch.count_nonzero(blocks[self_conjugate][:, 3:]) == 0


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
    ids=str,
)
def test_dft_dtype(dtype, expected):
    blocks = dft_frequency_blocks(torch.ones(2, 3, 2, 2, dtype=dtype))
    assert {block.dtype for block in blocks.values()} == {expected}


def test_dft_leaves_the_input_unchanged():
    x = torch.randn(3, 2, 4, 4)
    before = x.clone()
    dft_frequency_blocks(x)
    torch.testing.assert_close(x, before, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (torch.zeros(4, 3), ValueError, r"rank 3 to 5, got shape \(4, 3\)"),
        (torch.zeros(1, 2, 3, 4, 5, 6), ValueError, r"got shape \(1, 2, 3, 4, 5, 6\)"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.complex64), TypeError, "must be real"),
        ("x", TypeError, "activation must be a torch.Tensor, got str"),
    ],
    ids=["2d", "6d", "complex", "str"],
)
def test_dft_rejects(value, error, match):
    with pytest.raises(error, match=match):
        dft_frequency_blocks(value)


def test_per_frequency_passes_matching_blocks():
    x, y = torch.randn(5, 2, 3, 4), torch.randn(5, 3, 3, 4)
    x_blocks, y_blocks = dft_frequency_blocks(x), dft_frequency_blocks(y)
    pairs = per_frequency(x, y, lambda a, b: (a, b))
    assert list(pairs) == list(x_blocks)
    for frequency, (a, b) in pairs.items():
        torch.testing.assert_close(a, x_blocks[frequency], rtol=0, atol=0)
        torch.testing.assert_close(b, y_blocks[frequency], rtol=0, atol=0)


def test_per_frequency_similarity_is_the_plain_mean_over_frequencies():
    x = torch.randn(5, 2, 3, 4)

    def first_value(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a[0, 0])

    expected = sum(float(block[0, 0]) for block in dft_frequency_blocks(x).values()) / 12
    assert per_frequency_similarity(x, x, first_value) == pytest.approx(expected)


@pytest.mark.parametrize("function", [per_frequency, per_frequency_similarity])
@pytest.mark.parametrize(
    ("x_shape", "y_shape", "match"),
    [
        ((6, 2, 4, 4), (6, 2, 2, 2), "conv_mode='dft' .* same spatial size.*'interpolate'"),
        ((6, 2, 4, 4), (5, 2, 4, 4), r"same examples.*batch sizes 6 and 5"),
        ((6, 2, 4), (6, 2, 4, 4), "same number of spatial dimensions"),
        ((6, 8), (6, 2, 4, 4), r"x must be a channels-first .* got shape \(6, 8\)"),
    ],
    ids=["spatial", "examples", "rank", "dense"],
)
def test_per_frequency_rejects_mismatched_pairs(function, x_shape, y_shape, match):
    with pytest.raises(ValueError, match=match):
        function(torch.zeros(x_shape), torch.zeros(y_shape), lambda a, b: 0.0)


@pytest.mark.parametrize("function", [per_frequency, per_frequency_similarity, conv_similarity])
def test_pair_functions_reject_non_callable(function):
    with pytest.raises(TypeError, match="must be callable"):
        function(torch.zeros(6, 2, 4, 4), torch.zeros(6, 2, 4, 4), "svcca")


# ---------------------------------------------------------------------------------------------
# interpolate


def test_match_spatial_upsamples_the_smaller_map():
    x, y = torch.randn(3, 2, 6, 6), torch.randn(3, 5, 3, 3)
    x_rows, y_rows = match_spatial(x, y)
    upsampled = functional.interpolate(y, size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x_rows, to_datapoints(x), rtol=0, atol=0)
    torch.testing.assert_close(y_rows, to_datapoints(upsampled), rtol=0, atol=0)
    swapped_y, swapped_x = match_spatial(y, x)
    torch.testing.assert_close(swapped_x, x_rows, rtol=0, atol=0)
    torch.testing.assert_close(swapped_y, y_rows, rtol=0, atol=0)


def test_match_spatial_rows_are_example_then_position():
    x, y = torch.randn(2, 3, 4, 5), torch.randn(2, 1, 4, 5)
    x_rows, y_rows = match_spatial(x, y)
    for example, h, w in [(0, 0, 0), (1, 2, 3), (1, 3, 4)]:
        row = (example * 4 + h) * 5 + w
        torch.testing.assert_close(x_rows[row], x[example, :, h, w])
        torch.testing.assert_close(y_rows[row], y[example, :, h, w])


def test_match_spatial_takes_the_larger_size_per_dimension():
    x, y = torch.randn(2, 3, 8, 4), torch.randn(2, 1, 4, 8)
    x_rows, y_rows = match_spatial(x, y)
    assert x_rows.shape == (2 * 64, 3)
    assert y_rows.shape == (2 * 64, 1)
    expected = functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x_rows, to_datapoints(expected), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("small", "large", "mode"),
    [((3,), (6,), "linear"), ((2, 2, 2), (4, 4, 4), "trilinear")],
    ids=["conv1d", "conv3d"],
)
def test_match_spatial_other_ranks(small, large, mode):
    x, y = torch.randn(2, 3, *large), torch.randn(2, 4, *small)
    _, y_rows = match_spatial(x, y)
    expected = functional.interpolate(y, size=large, mode=mode, align_corners=False)
    torch.testing.assert_close(y_rows, to_datapoints(expected), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "match"),
    [
        ((6, 2, 4, 4), (5, 2, 2, 2), r"same examples.*batch sizes 6 and 5"),
        ((6, 2, 4), (6, 2, 4, 4), "same number of spatial dimensions"),
        ((6, 2, 4, 4), (6, 9), r"y must be a channels-first .* got shape \(6, 9\)"),
    ],
    ids=["examples", "rank", "dense"],
)
def test_match_spatial_rejects(x_shape, y_shape, match):
    with pytest.raises(ValueError, match=match):
        match_spatial(torch.zeros(x_shape), torch.zeros(y_shape))


# ---------------------------------------------------------------------------------------------
# conv_similarity


def _shapes(a: torch.Tensor, b: torch.Tensor) -> tuple:
    return tuple(a.shape), tuple(b.shape)


@pytest.mark.parametrize(
    ("mode", "y_size", "expected"),
    [
        ("positions", (4, 4), ((32, 2), (32, 3))),
        ("avgpool", (2, 2), ((2, 2), (2, 3))),
        ("flatten", (2, 2), ((2, 32), (2, 12))),
        ("interpolate", (2, 2), ((32, 2), (32, 3))),
    ],
    ids=["positions", "avgpool", "flatten", "interpolate"],
)
def test_conv_similarity_hands_the_mode_layout_to_the_measure(mode, y_size, expected):
    x, y = torch.randn(2, 2, 4, 4), torch.randn(2, 3, *y_size)
    seen = []
    conv_similarity(x, y, lambda a, b: seen.append(_shapes(a, b)) or 0.0, conv_mode=mode)
    assert seen == [expected]


def test_conv_similarity_dft_is_per_frequency_similarity():
    x, y = torch.randn(5, 2, 3, 3), torch.randn(5, 3, 3, 3)

    def ratio(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a.abs().sum() / b.abs().sum())

    expected = per_frequency_similarity(x, y, ratio)
    assert conv_similarity(x, y, ratio, conv_mode="dft") == expected


def test_conv_similarity_positions_needs_equal_spatial_sizes():
    with pytest.raises(ValueError, match="conv_mode='positions' .* use conv_mode='interpolate'"):
        conv_similarity(torch.zeros(6, 2, 4, 4), torch.zeros(6, 2, 2, 2), lambda a, b: 0.0)


def test_conv_similarity_rejects_unknown_mode():
    with pytest.raises(
        ValueError, match="conv_mode must be one of .*'dft', 'interpolate'.*got 'fft'"
    ):
        conv_similarity(
            torch.zeros(6, 2, 4, 4), torch.zeros(6, 2, 4, 4), lambda a, b: 0.0, conv_mode="fft"
        )


@pytest.mark.parametrize("mode", ["dft", "interpolate"])
def test_pair_modes_are_not_single_matrix_layouts(mode):
    with pytest.raises(ValueError, match="conv_mode must be one of"):
        to_datapoints(torch.zeros(2, 3, 4, 4), conv_mode=mode)
