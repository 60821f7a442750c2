"""Tests for cca_monitor.capture: layer selection, hooks, and the out-of-band probe forward."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from cca_monitor.capture import (
    ActivationRecorder,
    capture_activations,
    default_layer_names,
    resolve_layer_names,
    unwrap_model,
)
from cca_monitor.layout import to_datapoints


class ConvNet(nn.Module):
    """Conv -> BatchNorm -> in-place ReLU -> dropout -> linear, with a frozen-able block."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 5, 3, padding=1),
        )
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(5 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x).flatten(1)))


class Noisy(nn.Module):
    """Draws from the global generator in every forward, also in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.randn_like(x)


class SharedLayerNet(nn.Module):
    """Uses one Linear twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(self.shared(x)))


class TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x[:, :1] * 3


class DictOut(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"double": x * 2, "first": x[:, :1]}


class Wrapper(nn.Module):
    """Calls an inner module and sums its (tuple or dict) output into a tensor."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        parts = out.values() if isinstance(out, dict) else out
        return sum(part.sum() for part in parts)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(5, 2)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.a(left) + self.b(right)


class Branchy(nn.Module):
    """Only one of its two layers runs."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


class Failing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.layer(x)
        raise RuntimeError("boom")


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def _all_hooks(model: nn.Module) -> list[object]:
    hooks: list[object] = []
    for module in model.modules():
        hooks += [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return hooks


def _record(model: nn.Module, *inputs: object, **recorder_kwargs: object) -> ActivationRecorder:
    """Run ``model`` on each input inside a recorder and return the recorder."""
    with ActivationRecorder(model, **recorder_kwargs) as recorder:
        for x in inputs:
            model(x)
    return recorder


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


# ---------------------------------------------------------------------------------------------
# layer names


def test_default_layer_names_lists_conv_linear_recurrent_in_order():
    model = nn.Sequential(
        nn.Conv1d(2, 2, 1),
        nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU()),
        nn.Conv3d(2, 2, 1),
        nn.ConvTranspose2d(2, 2, 1),
        nn.LSTM(2, 2),
        nn.GRU(2, 2),
        nn.RNN(2, 2),
        nn.Flatten(),
        nn.Linear(2, 2),
    )
    assert default_layer_names(model) == ["0", "1.0", "2", "3", "4", "5", "6", "8"]


def test_default_layer_names_skips_attention_internals_and_root():
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(4, 2), "proj": nn.Linear(4, 4)})
    assert default_layer_names(model) == ["proj"]
    assert default_layer_names(nn.Linear(2, 2)) == []


def test_resolve_none_gives_defaults():
    assert resolve_layer_names(ConvNet(), None) == ["features.0", "features.3", "head"]


def test_resolve_keeps_model_order_and_removes_duplicates():
    names = resolve_layer_names(ConvNet(), ["head", "features.0", "head", "features.*"])
    assert names == ["features.0", "features.1", "features.2", "features.3", "head"]


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (["features.?"], ["features.0", "features.1", "features.2", "features.3"]),
        (["*.0", "dropout"], ["features.0", "dropout"]),
        (["features"], ["features"]),
        (
            ["*"],
            ["features", "features.0", "features.1", "features.2", "features.3", "dropout", "head"],
        ),
    ],
    ids=["question-mark", "star-prefix", "container", "everything-but-root"],
)
def test_resolve_glob(layers, expected):
    assert resolve_layer_names(ConvNet(), layers) == expected


def test_resolve_unknown_name_lists_available_names():
    with pytest.raises(ValueError, match=r"'feature.0' matches no submodule.*'features.0'.*'head'"):
        resolve_layer_names(ConvNet(), ["features.0", "feature.0"])


def test_resolve_truncates_long_name_lists():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(100)])
    with pytest.raises(ValueError, match=r"'29', \.\.\. \(70 more\)\.$") as info:
        resolve_layer_names(model, ["missing"])
    assert "'30'" not in str(info.value)


@pytest.mark.parametrize(
    ("layers", "error", "match"),
    [
        ([], ValueError, "layers is empty"),
        ("head", TypeError, r"got the string 'head'; write layers=\['head'\]"),
        (["head", 3], TypeError, r"entries must be strings, got \[3\]"),
        ({"head"}, TypeError, "must be a sequence of names or None, got set"),
    ],
    ids=["empty", "string", "non-string-entry", "set"],
)
def test_resolve_rejects_bad_selection(layers, error, match):
    with pytest.raises(error, match=match):
        resolve_layer_names(ConvNet(), layers)


def test_resolve_none_without_default_layers():
    with pytest.raises(ValueError, match=r"has none.*available: '0', '1'"):
        resolve_layer_names(nn.Sequential(nn.ReLU(), nn.Tanh()), None)


def test_unwrap_model():
    net = nn.Linear(2, 2)
    assert unwrap_model(net) is net
    assert unwrap_model(nn.DataParallel(nn.DataParallel(net))) is net


# ---------------------------------------------------------------------------------------------
# ActivationRecorder


def test_recorder_records_layout_matrices(images):
    model = ConvNet().eval()
    with ActivationRecorder(model, conv_mode="positions", max_rows=None) as recorder:
        model(images)
    acts = recorder.activations
    assert list(acts) == ["features.0", "features.3", "head"]
    assert acts["features.0"].shape == (8 * 36, 4)
    assert acts["features.3"].shape == (8 * 36, 5)
    assert acts["head"].shape == (8, 3)
    expected = to_datapoints(model.features[0](images).detach())
    torch.testing.assert_close(acts["features.0"], expected)
    assert recorder.errors == {}
    assert recorder.layers == ["features.0", "features.3", "head"]


@pytest.mark.parametrize(
    ("conv_mode", "shape"),
    [("positions", (288, 4)), ("avgpool", (8, 4)), ("flatten", (8, 144))],
    ids=["positions", "avgpool", "flatten"],
)
def test_recorder_conv_modes(images, conv_mode, shape):
    model = ConvNet().eval()
    with ActivationRecorder(model, ["features.0"], conv_mode=conv_mode, max_rows=None) as rec:
        model(images)
    assert rec.activations["features.0"].shape == shape


def test_recorder_row_cap_and_seed(images):
    model = ConvNet().eval()
    runs = []
    for seed in (0, 0, 1):
        with ActivationRecorder(model, ["features.0"], max_rows=50, seed=seed) as rec:
            model(images)
        runs.append(rec.activations["features.0"])
    assert runs[0].shape == (50, 4)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.equal(runs[0], runs[2])


def test_hooks_removed_on_success(images):
    model = ConvNet()
    with ActivationRecorder(model):
        assert len(_all_hooks(model)) == 3 + 2  # one per layer, two on the root
        model(images)
    assert _all_hooks(model) == []


def test_hooks_removed_on_exception(images):
    model = ConvNet()
    with pytest.raises(RuntimeError, match="inside"):
        _forward_then_fail(model, images)
    assert _all_hooks(model) == []


def _forward_then_fail(model: nn.Module, x: torch.Tensor) -> None:
    with ActivationRecorder(model):
        model(x)
        raise RuntimeError("inside")


def test_inplace_relu_does_not_change_recorded_output():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True))
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(2))
    with ActivationRecorder(model, ["0"]) as rec:
        model(x)
    recorded = rec.activations["0"]
    assert bool((recorded < 0).any())
    torch.testing.assert_close(recorded, model[0](x).detach())


def test_activations_detached_on_cpu_without_grad():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    with ActivationRecorder(model, ["0"]) as rec:
        model(torch.randn(5, 4)).sum().backward()
    act = rec.activations["0"]
    assert not act.requires_grad
    assert act.grad_fn is None
    assert act.device == torch.device("cpu")


def test_several_forward_calls_concatenate_rows():
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(10, 4)
    with ActivationRecorder(model, ["0"]) as rec:
        model(x[:6])
        model(x[6:])
    torch.testing.assert_close(rec.activations["0"], model(x).detach())
    torch.testing.assert_close(rec.activations["0"], model(x).detach())  # cached, same


def test_reentering_starts_fresh():
    model = nn.Sequential(nn.Linear(4, 3))
    recorder = ActivationRecorder(model, ["0"])
    with recorder:
        model(torch.randn(5, 4))
    with recorder:
        model(torch.randn(2, 4))
    assert recorder.activations["0"].shape == (2, 3)


def test_recorder_not_reentrant():
    model = nn.Sequential(nn.Linear(4, 3))
    recorder = ActivationRecorder(model, ["0"])
    with recorder, pytest.raises(RuntimeError, match="already active"), recorder:
        pass
    assert _all_hooks(model) == []


@pytest.mark.parametrize(
    ("output_index", "expected_columns"), [(0, 4), (1, 1), (-1, 1)], ids=["first", "second", "last"]
)
def test_tuple_output_selection(output_index, expected_columns):
    model = Wrapper(TupleOut())
    x = torch.randn(5, 4)
    with ActivationRecorder(model, ["inner"], output_index=output_index) as rec:
        model(x)
    expected = TupleOut()(x)[output_index]
    torch.testing.assert_close(rec.activations["inner"], expected)
    assert rec.activations["inner"].shape == (5, expected_columns)


def test_dict_output_selected_by_key():
    model = Wrapper(DictOut())
    x = torch.randn(5, 4)
    with ActivationRecorder(model, ["inner"], output_index="double") as rec:
        model(x)
    torch.testing.assert_close(rec.activations["inner"], x * 2)


@pytest.mark.parametrize(
    ("inner", "output_index", "match"),
    [
        (DictOut(), 0, r"output_index=0 is not a key of the layer's dict output; keys: \['double'"),
        (TupleOut(), 2, "output_index=2 does not select an element of the layer's tuple output"),
        (TupleOut(), "double", "output_index='double' does not select an element"),
    ],
    ids=["dict-int", "tuple-out-of-range", "tuple-str"],
)
def test_bad_output_selection_is_reported_not_raised(inner, output_index, match):
    model = Wrapper(inner)
    with pytest.warns(RuntimeWarning, match="Layer 'inner' is not recorded: " + match):
        rec = _record(model, torch.randn(5, 4), layers=["inner"], output_index=output_index)
    assert rec.activations == {}
    assert list(rec.errors) == ["inner"]


def test_invalid_recorder_arguments():
    model = ConvNet()
    with pytest.raises(ValueError, match="conv_mode must be one of"):
        ActivationRecorder(model, conv_mode="spatial")
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        ActivationRecorder(model, max_rows=0)
    with pytest.raises(TypeError, match="output_index must be an int or a str, got 1.5"):
        ActivationRecorder(model, output_index=1.5)
    with pytest.raises(ValueError, match="matches no submodule"):
        ActivationRecorder(model, ["nope"])


def test_flatten_with_changing_spatial_size_is_reported():
    model = nn.Sequential(nn.Conv2d(3, 2, 1))
    small, large = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 5, 5)
    with pytest.warns(RuntimeWarning, match=r"number of neurons changed.*\(32 then 50\)"):
        rec = _record(model, small, large, small, conv_mode="flatten")
    assert rec.activations == {}
    assert "0" in rec.errors


# ---------------------------------------------------------------------------------------------
# recurrent layers


def _lstm_pair(**kwargs: object) -> tuple[nn.LSTM, nn.LSTM]:
    time_first = nn.LSTM(3, 5, **kwargs)
    batch_first = nn.LSTM(3, 5, batch_first=True, **kwargs)
    batch_first.load_state_dict(time_first.state_dict())
    return time_first, batch_first


@pytest.mark.parametrize("max_rows", [None, 17], ids=["all-rows", "capped"])
def test_lstm_batch_first_or_not_gives_same_rows(max_rows):
    time_first, batch_first = _lstm_pair(num_layers=2)
    x = torch.randn(4, 7, 3)  # (N, T, H)
    model_t, model_b = nn.Sequential(time_first), nn.Sequential(batch_first)
    with ActivationRecorder(model_t, max_rows=max_rows) as rec_t:
        model_t(x.transpose(0, 1))
    with ActivationRecorder(model_b, max_rows=max_rows) as rec_b:
        model_b(x)
    rows_t, rows_b = rec_t.activations["0"], rec_b.activations["0"]
    assert rows_t.shape == ((4 * 7, 5) if max_rows is None else (17, 5))
    torch.testing.assert_close(rows_t, rows_b)
    if max_rows is None:
        output, _ = batch_first(x)
        torch.testing.assert_close(rows_b[2 * 7 + 3], output[2, 3].detach())


@pytest.mark.parametrize("cell", [nn.GRU, nn.RNN], ids=["gru", "rnn"])
def test_gru_and_rnn_output_sequence(cell):
    model = nn.Sequential(cell(3, 6))
    with ActivationRecorder(model) as rec:
        model(torch.randn(7, 4, 3))  # (T, N, H)
    assert rec.activations["0"].shape == (28, 6)


def test_unbatched_recurrent_output_is_one_example():
    model = nn.Sequential(nn.GRU(3, 6))
    with ActivationRecorder(model) as rec:
        model(torch.randn(7, 3))
    assert rec.activations["0"].shape == (7, 6)


def test_recurrent_hidden_state_selection_is_reported():
    model = nn.Sequential(nn.GRU(3, 6))
    with pytest.warns(RuntimeWarning, match="output sequence only"):
        rec = _record(model, torch.randn(7, 4, 3), output_index=1)
    assert "0" in rec.errors


def test_packed_sequence_is_reported():
    model = nn.Sequential(nn.LSTM(3, 4))
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 3]))
    with pytest.warns(RuntimeWarning, match="PackedSequence outputs are not supported"):
        rec = _record(model, packed)
    assert rec.activations == {}
    assert "PackedSequence" in rec.errors["0"]


# ---------------------------------------------------------------------------------------------
# modules run more than once per forward


def test_module_called_twice_is_reported_and_others_kept():
    model = SharedLayerNet()
    with pytest.warns(RuntimeWarning, match="Layer 'shared' is not recorded") as caught:
        rec = _record(model, torch.randn(5, 4), torch.randn(5, 4))
    assert len(caught) == 1  # once per layer, not once per forward
    assert list(rec.activations) == ["out"]
    assert rec.activations["out"].shape == (10, 2)
    assert "more than once" in rec.errors["shared"]


def test_separate_forward_calls_are_not_repetition():
    model = nn.Sequential(nn.Linear(4, 4))
    with ActivationRecorder(model) as rec:
        for _ in range(3):
            model(torch.randn(2, 4))
    assert rec.errors == {}
    assert rec.activations["0"].shape == (6, 4)


def test_direct_submodule_calls_are_not_checked():
    model = ConvNet().eval()
    with ActivationRecorder(model, ["head"]) as rec:
        model.head(torch.randn(2, 180))
        model.head(torch.randn(3, 180))
    assert rec.errors == {}
    assert rec.activations["head"].shape == (5, 3)


def test_forward_that_raises_resets_call_counting():
    model = Failing()
    with ActivationRecorder(model) as rec:
        with pytest.raises(RuntimeError, match="boom"):
            model(torch.randn(2, 3))
        model.layer(torch.randn(2, 3))
    assert rec.errors == {}
    assert rec.activations["layer"].shape == (4, 3)


# ---------------------------------------------------------------------------------------------
# capture_activations


def test_capture_returns_float_cpu_matrices(images):
    acts = capture_activations(ConvNet(), images)
    assert {name: tuple(a.shape) for name, a in acts.items()} == {
        "features.0": (288, 4),
        "features.3": (288, 5),
        "head": (8, 3),
    }
    assert all(a.dtype == torch.float32 and a.device.type == "cpu" for a in acts.values())


def test_capture_matches_eval_forward(images):
    model = ConvNet().train()
    acts = capture_activations(model, images, ["head"])
    model.eval()
    torch.testing.assert_close(acts["head"], model(images).detach())


def test_capture_restores_every_training_flag(images):
    model = ConvNet().train()
    model.features[1].eval()  # a frozen BatchNorm inside a model in train mode
    before = _modes(model)
    capture_activations(model, images)
    assert _modes(model) == before
    assert model.training
    assert not model.features[1].training


def test_capture_restores_eval_mode(images):
    model = ConvNet().eval()
    capture_activations(model, images)
    assert not any(_modes(model).values())


def test_capture_restores_modes_and_removes_hooks_on_exception():
    model = Failing().train()
    with pytest.raises(RuntimeError, match="boom"):
        capture_activations(model, torch.randn(2, 3))
    assert model.training
    assert model.layer.training
    assert _all_hooks(model) == []


def test_capture_leaves_batchnorm_statistics_untouched(images):
    model = ConvNet().train()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    capture_activations(model, images * 5 + 3)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, buffers[name], rtol=0, atol=0, msg=name)


def test_capture_restores_cpu_rng_state(images):
    model = nn.Sequential(Noisy(), nn.Linear(4, 3))
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    capture_activations(model, torch.randn(6, 4, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_capture_on_cuda_restores_cuda_rng_state():
    model = nn.Sequential(Noisy(), nn.Linear(4, 3)).cuda()
    torch.cuda.manual_seed_all(3)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(3)
    acts = capture_activations(model, torch.randn(6, 4))
    torch.testing.assert_close(torch.rand(4, device="cuda"), expected, rtol=0, atol=0)
    assert acts["1"].device.type == "cpu"


def test_capture_runs_without_grad(images):
    grad_enabled = []
    model = ConvNet()
    model.head.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    capture_activations(model, images)
    assert grad_enabled == [False]
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("batch_size", [1, 3, 8, 100], ids=["1", "3", "8", "100"])
def test_capture_in_minibatches_equals_one_batch(images, batch_size):
    model = ConvNet()
    whole = capture_activations(model, images, max_rows=None)
    batched = capture_activations(model, images, batch_size=batch_size, max_rows=None)
    for name in whole:
        torch.testing.assert_close(batched[name], whole[name])


@pytest.mark.parametrize("batch_size", [1, 3, 4], ids=["b1", "b3", "b4"])
def test_row_cap_keeps_the_same_rows_whatever_the_minibatches(images, batch_size):
    model = ConvNet()
    whole = capture_activations(model, images, ["features.0"], max_rows=10)
    batched = capture_activations(model, images, ["features.0"], max_rows=10, batch_size=batch_size)
    assert whole["features.0"].shape == (10, 4)
    torch.testing.assert_close(batched["features.0"], whole["features.0"])


def test_slices_of_a_probe_concatenate_to_the_whole_capture(images):
    model = ConvNet()
    whole = capture_activations(model, images, ["features.0", "head"], max_rows=10)
    total = images.shape[0]
    slices = [
        capture_activations(
            model, part, ["features.0", "head"], max_rows=10, probe_offset=start, probe_total=total
        )
        for start, part in zip(range(0, total, 3), images.split(3), strict=True)
    ]
    for layer, values in whole.items():
        torch.testing.assert_close(torch.cat([part[layer] for part in slices]), values)


def test_capture_sequence_and_mapping_probes():
    model = TwoInputs()
    left, right = torch.randn(6, 3), torch.randn(6, 5)
    from_tuple = capture_activations(model, (left, right), batch_size=4)
    from_dict = capture_activations(model, {"left": left, "right": right})
    assert from_tuple["a"].shape == from_dict["a"].shape == (6, 2)
    torch.testing.assert_close(from_tuple["b"], from_dict["b"])


def test_capture_unwraps_data_parallel(images):
    acts = capture_activations(nn.DataParallel(ConvNet()), images, ["head"])
    assert list(acts) == ["head"]


def test_capture_upcasts_half_precision_outputs():
    model = nn.Sequential(nn.Linear(4, 3)).to(torch.bfloat16)
    acts = capture_activations(model, torch.randn(5, 4, dtype=torch.bfloat16))
    assert acts["0"].dtype == torch.float32


def test_capture_uses_autocast_context():
    entered = []

    @contextlib.contextmanager
    def context():
        entered.append(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield

    model = nn.Sequential(nn.Linear(4, 3))
    acts = capture_activations(model, torch.randn(6, 4), batch_size=2, autocast_context=context)
    assert entered == [True, True, True]
    assert acts["0"].dtype == torch.float32


def test_capture_moves_probe_to_requested_device():
    seen = []
    model = nn.Sequential(nn.Linear(4, 3))
    model[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].device))
    capture_activations(model, torch.randn(2, 4), device=torch.device("cpu"))
    assert seen == [torch.device("cpu")]


def test_capture_model_without_parameters_runs_on_cpu():
    acts = capture_activations(nn.Sequential(nn.Flatten()), torch.randn(2, 3, 2), ["0"])
    assert acts["0"].shape == (2, 6)


def test_capture_warns_about_layers_that_did_not_run():
    with pytest.warns(RuntimeWarning, match=r"\['unused'\] did not run"):
        acts = capture_activations(Branchy(), torch.randn(4, 3))
    assert list(acts) == ["used"]


@pytest.mark.parametrize(
    ("probe", "kwargs", "error", "match"),
    [
        ("abc", {}, TypeError, "probe must be a tensor, a sequence of tensors or a mapping"),
        (5, {}, TypeError, "a mapping of tensors, got int"),
        ([], {}, TypeError, "at least one tensor"),
        ([torch.ones(2, 4), 3], {}, TypeError, r"only tensors, got \['Tensor', 'int'\]"),
        ([torch.ones(2, 4), torch.ones(3, 4)], {}, ValueError, r"got shapes \[\(2, 4\), \(3, 4\)"),
        (torch.ones(0, 4), {}, ValueError, "non-empty"),
        (torch.tensor(1.0), {}, ValueError, "batch first"),
        (torch.ones(2, 4), {"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        (torch.ones(2, 4), {"batch_size": 2.0}, TypeError, "batch_size must be an int or None"),
        (torch.ones(2, 4), {"layers": "0"}, TypeError, "got the string '0'"),
    ],
    ids=[
        "string",
        "int",
        "empty-list",
        "non-tensor-entry",
        "batch-mismatch",
        "zero-examples",
        "scalar",
        "batch-size-zero",
        "batch-size-float",
        "layers-string",
    ],
)
def test_capture_rejects_bad_input(probe, kwargs, error, match):
    with pytest.raises(error, match=match):
        capture_activations(nn.Sequential(nn.Linear(4, 3)), probe, **kwargs)


class _CompiledInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.compile(
            nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), backend="eager"
        )

    def forward(self, x):
        return self.body(x)


def test_compiled_model_is_unwrapped_and_captured():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    probe = torch.randn(40, 4)
    compiled = torch.compile(net, backend="eager")
    compiled(probe)
    captured = capture_activations(compiled, probe)
    assert list(captured) == ["0", "2"]
    torch.testing.assert_close(captured["0"], net[0](probe).detach())


def test_compiled_submodule_is_captured_every_time():
    model = _CompiledInside()
    model(torch.randn(5, 4))
    for _ in range(2):  # a second capture must not reuse a graph without the hooks
        probe = torch.randn(30, 4)
        captured = capture_activations(model, probe)
        assert list(captured) == ["body._orig_mod.0", "body._orig_mod.2"]
        expected = model.body._orig_mod[0](probe).detach()
        torch.testing.assert_close(captured["body._orig_mod.0"], expected)


def test_python_and_numpy_random_streams_are_restored():
    import random

    import numpy as np

    class Noisy(nn.Module):
        def forward(self, x):
            return x + random.random() + float(np.random.rand())

    model = nn.Sequential(nn.Linear(3, 3), Noisy())
    random.seed(1)
    np.random.seed(1)
    capture_activations(model, torch.randn(5, 3))
    assert (random.random(), np.random.rand()) == (
        random.Random(1).random(),
        np.random.RandomState(1).rand(),
    )


def test_linear_on_tokens_uses_features_as_neurons():
    """A Linear on (N, T, H) inputs: N*T datapoints of out_features neurons, not T neurons."""
    model = nn.Sequential(nn.Linear(16, 8))
    tokens = torch.randn(30, 7, 16)
    captured = capture_activations(model, tokens)
    assert captured["0"].shape == (30 * 7, 8)
    torch.testing.assert_close(captured["0"], model(tokens).detach().reshape(-1, 8))
