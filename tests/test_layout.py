"""Tests for cca_monitor.layout: every rank and mode, element order, row cap, errors."""

from __future__ import annotations

import pytest
import torch

from cca_monitor.layout import (
    DEFAULT_MAX_ROWS,
    check_layout_arguments,
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
