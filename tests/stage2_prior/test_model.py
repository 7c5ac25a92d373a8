"""The gated PixelCNN prior: causality by gradient probes, masked-conv references, conditioning,
round trip, likelihood units and the errors a user can meet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vqgen.engine.errors import UsageError, VQGenError
from vqgen.stage2_prior.config import PRESETS, PriorConfig
from vqgen.stage2_prior.layers import HorizontalConv, VerticalConv
from vqgen.stage2_prior.model import GatedPixelCNN


def dependency(model: GatedPixelCNN, grid: tuple[int, int], labels: torch.Tensor | None) -> torch.Tensor:
    """(H*W, H*W) boolean: [p, q] is True when the logits at position p have a gradient from the
    embedded code at position q (positions in raster order)."""
    embedded: list[torch.Tensor] = []

    def make_leaf(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        embedded.append(output.detach().requires_grad_())
        return embedded[-1]

    hook = model.embedding.register_forward_hook(make_leaf)
    logits = model(torch.randint(0, model.config.codebook_size, (1, *grid)), labels)  # (1, K, H, W)
    hook.remove()
    rows = []
    for p in range(grid[0] * grid[1]):
        (grad,) = torch.autograd.grad(logits[0, :, p // grid[1], p % grid[1]].sum(), embedded[0], retain_graph=True)
        rows.append(grad[0].abs().sum(-1).flatten() > 0)  # (H*W,)
    return torch.stack(rows)


def strictly_earlier(n: int) -> torch.Tensor:
    """[p, q] is True when q comes before p in raster order."""
    return torch.ones(n, n, dtype=torch.bool).tril(-1)


@pytest.mark.parametrize("grid, classes, skips, attention", [((8, 8), 0, True, 0), ((6, 10), 3, True, 0),
                                                             ((6, 10), 3, False, 0), ((6, 10), 3, True, 3)])
def test_no_look_ahead_and_no_blind_spot(grid: tuple[int, int], classes: int, skips: bool, attention: int) -> None:
    config = PriorConfig.tiny(grid_height=grid[0], grid_width=grid[1], layers=8, num_classes=classes, skips=skips,
                              attention_every=attention)
    model = GatedPixelCNN(config).double()
    depends = dependency(model, grid, torch.tensor([1]) if classes else None)
    earlier = strictly_earlier(grid[0] * grid[1])
    assert not (depends & ~earlier).any(), "a position sees itself or a later position"
    assert depends[earlier].all(), "a position is blind to an earlier position"


def test_any_loaded_weights_are_causal(tmp_path: Path) -> None:
    """No mask is applied to the convolutions' weights, and attention's mask is applied in forward, so even
    random weights, saved and loaded, cannot look ahead."""
    model = GatedPixelCNN(PriorConfig.tiny(grid_height=4, grid_width=5, layers=5, attention_every=2))
    model.load_state_dict({k: torch.randn_like(v) for k, v in model.state_dict().items()})
    model.save_pretrained(tmp_path / "prior")
    loaded = GatedPixelCNN.from_pretrained(tmp_path / "prior").double()
    assert not (dependency(loaded, (4, 5), None) & ~strictly_earlier(20)).any()


@pytest.mark.parametrize("kernel", [3, 5])
def test_stack_convolutions_equal_masked_convolutions(kernel: int) -> None:
    """The padded-and-cropped convolutions equal the textbook ones: centred convolutions whose
    weights below the centre row, right of the centre column, or (mask A) on it are zero."""
    x, half = torch.randn(2, 3, 6, 7), kernel // 2
    vertical = VerticalConv(3, 4, kernel)
    masked = F.pad(vertical.weight, (0, 0, 0, half))  # (4, 3, kernel, kernel): zero rows below the centre
    torch.testing.assert_close(vertical(x), F.conv2d(x, masked, vertical.bias, padding=half))
    for sees_current in (True, False):
        horizontal = HorizontalConv(3, 4, kernel, sees_current)
        width = horizontal.weight.shape[3]
        zeros = width - 1 if sees_current else width + 1  # zero columns right of the learned ones
        masked = F.pad(horizontal.weight, (0, zeros))  # (4, 3, 1, width + zeros), centred
        reference = F.conv2d(x, masked, horizontal.bias, padding=(0, (width + zeros) // 2))
        torch.testing.assert_close(horizontal(x), reference)


def test_labels_change_the_logits_and_round_trip_keeps_them(tmp_path: Path) -> None:
    model = GatedPixelCNN(PriorConfig.tiny(num_classes=4)).eval()
    codes = torch.randint(0, 16, (2, 7, 7))
    with torch.no_grad():
        zero, three = model(codes, torch.tensor([0, 0])), model(codes, torch.tensor([3, 3]))
    assert not torch.allclose(zero, three)
    model.save_pretrained(tmp_path / "prior")
    again = GatedPixelCNN.from_pretrained(tmp_path / "prior")
    assert again.config == model.config
    with torch.no_grad():
        assert torch.equal(again(codes, torch.tensor([0, 0])), zero)
        assert torch.equal(again(codes, torch.tensor([3, 3])), three)


def test_unconditional_model_and_likelihood_units() -> None:
    model = GatedPixelCNN(PriorConfig.tiny(grid_height=3, grid_width=5))
    codes = torch.randint(0, 16, (4, 3, 5))
    with torch.no_grad():
        assert model(codes).shape == (4, 16, 3, 5)
        bits, nats = model.nll_bits(codes), model.loss(codes)
    assert bits.shape == (4,)
    assert float(bits.mean()) == pytest.approx(float(nats) * 15 / math.log(2), rel=1e-5)


@pytest.mark.parametrize("shape, labels, message", [
    ((1, 7), torch.tensor([0]), r"codes must be an integer tensor \(B, H, W\); got torch.int64 of shape \(1, 7\)"),
    ((1, 7, 7), None, "conditioned on 3 classes; pass labels"),
    ((1, 7, 7), torch.tensor([3]), r"labels must lie in \[0, 3\) for this prior; got 3"),
    ((1, 7, 7), torch.tensor([-1]), r"labels must lie in \[0, 3\) for this prior; got -1"),
    ((2, 7, 7), torch.tensor([0]), r"labels have shape \(1,\) but the codes hold 2 grids"),
])
def test_bad_inputs_are_named(shape: tuple[int, ...], labels: torch.Tensor | None, message: str) -> None:
    model = GatedPixelCNN(PriorConfig.tiny(num_classes=3)).eval()  # values are checked outside training
    with pytest.raises(VQGenError, match=message):
        model.loss(torch.zeros(shape, dtype=torch.long), labels)


def test_codes_outside_the_codebook_and_stray_labels_are_named() -> None:
    model = GatedPixelCNN(PriorConfig.tiny()).eval()
    codes = torch.zeros(1, 7, 7, dtype=torch.long)
    with pytest.raises(VQGenError, match="codes hold code 16 but the prior was built for K=16 codes"):
        model(codes + 16)
    with pytest.raises(VQGenError, match="unconditional"):
        model(codes, torch.tensor([0]))


def test_config_checks_and_presets() -> None:
    with pytest.raises(UsageError, match="kernel=4 is not allowed; must be odd and >= 3"):
        PriorConfig(kernel=4)
    with pytest.raises(UsageError, match="codebook_size=1 is not allowed; must be >= 2"):
        PriorConfig.tiny(codebook_size=1)
    with pytest.raises(UsageError, match="grid_width=0 is not allowed"):
        PriorConfig.small(grid_width=0)
    assert set(PRESETS) == {"tiny", "small", "paper"}
    assert PRESETS["paper"](num_classes=10).num_classes == 10
    assert PriorConfig.paper().layers > PriorConfig.small().layers > PriorConfig.tiny().layers


@pytest.mark.parametrize("layers, classes, skips, attention", [(1, 0, True, 0), (4, 3, True, 0), (1, 0, False, 0),
                                                               (4, 3, False, 0), (4, 3, True, 1), (4, 0, False, 2)])
def test_every_weight_reaches_the_loss(layers: int, classes: int, skips: bool, attention: int) -> None:
    """DDP (without unused-parameter search) needs a gradient for every parameter at every step."""
    model = GatedPixelCNN(PriorConfig.tiny(layers=layers, num_classes=classes, label_dropout=0.1 if classes else 0,
                                           skips=skips, attention_every=attention))
    assert len(model.attention) == len(model.config.attention_after) == ((layers - 1) // attention if attention else 0)
    labels = torch.tensor([0, 2]) if classes else None
    model.loss(torch.randint(0, 16, (2, 7, 7)), labels).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []


def test_attention_gives_a_shallow_prior_the_whole_past() -> None:
    """Two gated layers see a few codes back; one attention layer between them sees every earlier position but
    those its input has not yet heard (the end of the row above, seen a position later), and nothing after."""
    grid, n = (6, 10), 60
    plain = dependency(GatedPixelCNN(PriorConfig.tiny(grid_height=6, grid_width=10, layers=2)).double(), grid, None)
    model = GatedPixelCNN(PriorConfig.tiny(grid_height=6, grid_width=10, layers=2, attention_every=1)).double()
    attending = dependency(model, grid, None)
    earlier = strictly_earlier(n)
    assert not (attending & ~earlier).any()
    assert attending[n - 1, 0] and not plain[n - 1, 0], "the last position hears the first only through attention"
    assert int((earlier & ~attending).sum()) * 10 < int((earlier & ~plain).sum())


def test_attention_config_round_trips_and_checks_its_heads(tmp_path: Path) -> None:
    config = PriorConfig.tiny(layers=7, attention_every=3, attention_heads=2, num_classes=2)
    assert config.attention_after == (2, 5) and PriorConfig.tiny(layers=6, attention_every=3).attention_after == (2,)
    model = GatedPixelCNN(config).eval()
    model.save_pretrained(tmp_path / "prior")
    again = GatedPixelCNN.from_pretrained(tmp_path / "prior")
    codes, labels = torch.randint(0, 16, (2, 7, 7)), torch.tensor([0, 1])
    with torch.no_grad():
        assert again.config == config and torch.equal(again(codes, labels), model(codes, labels))
    with pytest.raises(UsageError, match="attention_heads=3 is not allowed; must be >= 1 and divide channels=8"):
        PriorConfig.tiny(attention_every=2, attention_heads=3)
    PriorConfig.tiny(attention_heads=3)  # heads matter only with attention layers
    with pytest.raises(UsageError, match="attention_every=-1 is not allowed"):
        PriorConfig.tiny(attention_every=-1)
    with pytest.raises(UsageError, match=r"attention_every=6 is not allowed; must be in 0..5 .* never follows the "
                                         "last of the 6 gated layers"):
        PriorConfig.tiny(attention_every=6)  # it would build no attention layer


def test_a_prior_saved_with_the_last_layers_dead_weights_still_loads(tmp_path: Path) -> None:
    """vqgen 0.2 saved a residual map and a vertical label bias in the last layer that reached no output."""
    model = GatedPixelCNN(PriorConfig.tiny(num_classes=3)).eval()
    state = model.state_dict()
    last = f"layers.{model.config.layers - 1}"
    old = {**state, f"{last}.residual.weight": torch.randn(8, 8, 1, 1), f"{last}.residual.bias": torch.randn(8),
           f"{last}.label_bias.weight": torch.cat([torch.randn(3, 16), state[f"{last}.label_bias.weight"]], 1)}
    model.save_pretrained(tmp_path / "prior")
    (tmp_path / "prior" / "model.safetensors").unlink()
    torch.save(old, tmp_path / "prior" / "model.pt")  # as vqgen 0.2 wrote its weights
    codes, labels = torch.randint(0, 16, (2, 7, 7)), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(GatedPixelCNN.from_pretrained(tmp_path / "prior")(codes, labels), model(codes, labels))


def test_the_null_class_is_a_label_only_with_label_dropout() -> None:
    codes = torch.zeros(1, 7, 7, dtype=torch.long)
    with_null = GatedPixelCNN(PriorConfig.tiny(num_classes=3, label_dropout=0.1)).eval()
    assert with_null.config.null_label == 3
    with_null(codes, torch.tensor([3]))
    with pytest.raises(VQGenError, match=r"labels must lie in \[0, 4\) \(3: no class\) for this prior; got 4"):
        with_null(codes, torch.tensor([4]))
    assert PriorConfig.tiny(num_classes=3).null_label is None and PriorConfig.tiny(label_dropout=0.1).null_label is None
    with pytest.raises(UsageError, match=r"label_dropout=1.0 is not allowed; must be in \[0, 1\)"):
        PriorConfig.tiny(label_dropout=1.0)


def test_without_skips_only_the_last_layer_feeds_the_head_and_old_configs_keep_them(tmp_path: Path) -> None:
    model = GatedPixelCNN(PriorConfig.tiny(skips=False))
    assert [layer.skip is not None for layer in model.layers] == [False] * 5 + [True]
    model.save_pretrained(tmp_path / "prior")
    assert GatedPixelCNN.from_pretrained(tmp_path / "prior").config.skips is False
    config_file = tmp_path / "prior" / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["skips"]  # as vqgen 0.3 wrote a prior's config: every layer had its skip connection
    config_file.write_text(json.dumps(saved))
    assert GatedPixelCNN.load_config(tmp_path / "prior").skips is True


def test_under_bf16_autocast_class_biases_keep_the_gates_in_bf16() -> None:
    """An fp32 label bias added to a bf16 convolution output would lift every gate, and the maps that read
    it, to fp32 (and a cast back per convolution)."""
    model = GatedPixelCNN(PriorConfig.tiny(num_classes=3))
    seen: list[torch.dtype] = []
    for layer in model.layers[:2]:
        layer.residual.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))
        layer.register_forward_hook(lambda module, inputs, output: seen.append(output.gated.dtype))  # to the skips
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 16, (2, 7, 7)), torch.tensor([0, 2]))
    assert seen == [torch.bfloat16] * 4


def test_attention_trains_under_bf16_autocast() -> None:
    model = GatedPixelCNN(PriorConfig.tiny(num_classes=3, attention_every=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(torch.randint(0, 16, (2, 7, 7)), torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.attention.parameters())
