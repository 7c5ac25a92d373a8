"""Samplers: incremental logits equal the full model's at every step, the same generator gives the
same codes naive or incremental, temperature and top_k do what they say, bad options are named."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from einops import rearrange

from vqgen.engine.errors import UsageError
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import (GuidedSampler, IncrementalSampler, SamplingOptions, generate, log_probs,
                                        sample, sample_naive)

K = 16
GRIDS = [((8, 8), 3), ((8, 8), 0), ((6, 10), 2), ((6, 10), 0), ((5, 1), 0)]


def model_for(grid: tuple[int, int], classes: int, device: str = "cpu", skips: bool = True,
              attention: int = 0) -> GatedPixelCNN:
    torch.manual_seed(0)
    config = PriorConfig.tiny(grid_height=grid[0], grid_width=grid[1], num_classes=classes, layers=7,
                              first_kernel=5, codebook_size=K, skips=skips, attention_every=attention)
    return GatedPixelCNN(config).to(device).eval()


def check_every_step(model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
    """At each position, the sampler's logits equal the full model's on the same prefix."""
    sampler = IncrementalSampler(model, codes, labels)
    with torch.no_grad():
        full = model(codes, labels)  # (B, K, H, W): position (i, j) depends on the codes before it only
        for i in range(codes.shape[1]):
            for j in range(codes.shape[2]):
                torch.testing.assert_close(sampler.logits(i, j), full[:, :, i, j], atol=1e-5, rtol=1e-5)
                sampler.commit(i, j, codes[:, i, j])


@pytest.mark.parametrize("grid, classes, skips, attention", [*((g, c, True, 0) for g, c in GRIDS),
                                                             ((6, 10), 2, False, 0), ((6, 10), 2, True, 2),
                                                             ((5, 1), 0, False, 3)])
def test_incremental_logits_equal_full_logits_at_every_step(grid: tuple[int, int], classes: int, skips: bool,
                                                            attention: int) -> None:
    model = model_for(grid, classes, skips=skips, attention=attention)
    labels = torch.tensor([0, 1, 2, 1]) % classes if classes else None
    check_every_step(model, torch.randint(0, K, (4, *grid)), labels)


@pytest.mark.parametrize("attention", [0, 2])
def test_incremental_logits_with_the_default_kernels_and_trained_looking_weights(attention: int) -> None:
    """The first layer at its default 7-wide kernel, and weights far from their initialisation."""
    torch.manual_seed(1)
    model = GatedPixelCNN(PriorConfig.tiny(grid_height=5, grid_width=6, num_classes=2,
                                           attention_every=attention)).eval()
    model.load_state_dict({k: torch.randn_like(v) * 0.3 for k, v in model.state_dict().items()})
    check_every_step(model, torch.randint(0, K, (3, 5, 6)), torch.tensor([0, 1, 1]))


@pytest.mark.parametrize("grid, classes", GRIDS)
def test_same_generator_gives_the_same_codes(grid: tuple[int, int], classes: int) -> None:
    model = model_for(grid, classes)
    labels = 1 if classes else None
    fast = sample(model, 6, labels, generator=torch.Generator().manual_seed(3), progress=False)
    slow = sample_naive(model, 6, labels, generator=torch.Generator().manual_seed(3), progress=False)
    assert fast.shape == (6, *grid) and fast.dtype == torch.long
    assert torch.equal(fast, slow)
    assert torch.equal(fast, sample(model, 6, labels, generator=torch.Generator().manual_seed(3), progress=False))
    assert not torch.equal(fast, sample(model, 6, labels, generator=torch.Generator().manual_seed(4),
                                        progress=False))


def test_top_k_one_is_greedy_decoding() -> None:
    model = model_for((4, 5), 0)
    codes = sample(model, 3, options=SamplingOptions(top_k=1), generator=torch.Generator().manual_seed(0), progress=False)
    other_seed = sample(model, 3, options=SamplingOptions(top_k=1), generator=torch.Generator().manual_seed(1), progress=False)
    assert torch.equal(codes, other_seed)
    with torch.no_grad():
        assert torch.equal(model(codes).argmax(1), codes)


def test_top_k_draws_only_among_the_k_most_likely_codes() -> None:
    model = model_for((4, 5), 2)
    codes = sample(model, 32, 1, SamplingOptions(top_k=3), generator=torch.Generator().manual_seed(0), progress=False)
    with torch.no_grad():
        top = model(codes, torch.ones(32, dtype=torch.long)).topk(3, dim=1).indices  # (B, 3, H, W)
    assert (top == codes[:, None]).any(1).all()
    assert len(codes.unique()) > 3  # three codes per position, not three overall


def test_temperature_concentrates_and_labels_steer() -> None:
    model = model_for((4, 4), 2)
    cold = sample(model, 64, 0, SamplingOptions(temperature=0.05), generator=torch.Generator().manual_seed(0), progress=False)
    hot = sample(model, 64, 0, SamplingOptions(temperature=5.0), generator=torch.Generator().manual_seed(0), progress=False)
    zeros = torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        assert model.nll_bits(cold, zeros).mean() < model.nll_bits(hot, zeros).mean()
    other = sample(model, 64, 1, SamplingOptions(temperature=0.05), generator=torch.Generator().manual_seed(0), progress=False)
    assert not torch.equal(cold, other)


def test_an_int_label_is_shared_and_a_tensor_gives_one_per_grid() -> None:
    model = model_for((3, 4), 3)
    with torch.no_grad():  # labels that matter: at initialisation the logits are nearly uniform
        for layer in model.layers:
            layer.label_bias.weight.mul_(10)
    shared = sample(model, 4, 2, generator=torch.Generator().manual_seed(0), progress=False)
    same = sample(model, 4, torch.full((4,), 2), generator=torch.Generator().manual_seed(0), progress=False)
    mixed = sample(model, 4, torch.tensor([2, 2, 0, 0]), generator=torch.Generator().manual_seed(0),
                   progress=False)
    assert torch.equal(shared, same)
    assert not torch.equal(shared, mixed)


@pytest.mark.parametrize("classes, kwargs, message", [
    (3, dict(temperature=0.0), "temperature=0.0 is not allowed; must be > 0"),
    (3, dict(temperature=-1.0), "temperature=-1.0 is not allowed; must be > 0"),
    (3, dict(top_k=17), r"top_k=17 is not allowed; must be in 1..16 \(the prior's K\)"),
    (3, dict(top_k=0), "top_k=0 is not allowed; must be in 1..K"),
    (3, dict(top_p=0.0), r"top_p=0.0 is not allowed; must be in \(0, 1\]"),
    (3, dict(top_p=1.5), r"top_p=1.5 is not allowed; must be in \(0, 1\]"),
    (3, dict(guidance=-0.5), "guidance=-0.5 is not allowed; must be >= 0"),
    (3, dict(guidance=2.0), "guidance=2 needs a prior trained with label dropout"),
    (0, dict(guidance=2.0), "guidance=2 needs a class-conditional prior"),
    (3, dict(guidance_schedule="cosine"), "guidance_schedule='cosine' is not allowed; must be one of constant, linear"),
    (3, dict(guidance_interval=0.0), r"guidance_interval=0.0 is not allowed; must be in \(0, 1\]"),
])
def test_bad_sampling_options_are_named(classes: int, kwargs: dict, message: str) -> None:
    model = model_for((3, 3), classes)
    for sampler in (sample, sample_naive):
        with pytest.raises(UsageError, match=message):
            sampler(model, 2, 0 if classes else None, SamplingOptions(**kwargs), progress=False)


@pytest.mark.parametrize("classes, labels, grid, message", [
    (3, 5, None, "--label=5 is outside the prior's classes 0..2"),
    (3, torch.tensor([0, -1]), None, "--label=-1 is outside the prior's classes 0..2"),
    (3, torch.tensor([0, 1, 2]), None, r"labels have shape \(3,\); pass one int or 2 labels"),
    (3, None, None, r"conditioned on 3 classes; pass --label \(0..2\)"),
    (0, 1, None, "this prior is unconditional; --label cannot be used"),
    (0, None, (0, 4), "--grid=0x4 is not allowed; must be HxW with H, W >= 1"),
])
def test_bad_labels_and_grids_are_named(classes: int, labels: object, grid: tuple[int, int] | None,
                                        message: str) -> None:
    model = model_for((3, 3), classes)
    for sampler in (sample, sample_naive):
        with pytest.raises(UsageError, match=message):
            sampler(model, 2, labels, progress=False, grid=grid)


@pytest.fixture
def full_fp32_on_cuda() -> Iterator[None]:
    """cuDNN convolutions default to TF32 (10-bit mantissa) while the sampler's matrix products run in
    fp32; an equality claim needs both in fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sampling_on_cuda_matches_the_full_model_there(full_fp32_on_cuda: None) -> None:
    model = model_for((6, 10), 2, "cuda")
    check_every_step(model, torch.randint(0, K, (4, 6, 10), device="cuda"), torch.tensor([0, 1, 1, 0], device="cuda"))
    fast = sample(model, 4, 1, generator=torch.Generator("cuda").manual_seed(0), progress=False)
    slow = sample_naive(model, 4, 1, generator=torch.Generator("cuda").manual_seed(0), progress=False)
    assert fast.device.type == "cuda" and torch.equal(fast, slow)
    with pytest.raises(UsageError, match="the generator is on cpu but the prior is on cuda"):
        sample(model, 4, 1, generator=torch.Generator(), progress=False)


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    model = GatedPixelCNN(PriorConfig.tiny(grid_height=5, grid_width=6, num_classes=2, dropout=0.5))
    codes, labels = torch.randint(0, K, (3, 5, 6)), torch.tensor([0, 1, 1])
    assert not torch.equal(model(codes, labels), model(codes, labels))
    check_every_step(model.eval(), codes, labels)


def guided_model(grid: tuple[int, int] = (5, 6), attention: int = 0) -> GatedPixelCNN:
    """A class-conditional prior with a null class, its weights far from initialisation."""
    torch.manual_seed(2)
    config = PriorConfig.tiny(grid_height=grid[0], grid_width=grid[1], num_classes=3, label_dropout=0.1,
                              first_kernel=5, layers=5, attention_every=attention)
    model = GatedPixelCNN(config).eval()
    model.load_state_dict({k: torch.randn_like(v) * 0.3 for k, v in model.state_dict().items()})
    return model


@pytest.mark.parametrize("options", [SamplingOptions(guidance=0.0), SamplingOptions(guidance=1.5),
                                     SamplingOptions(guidance=3.0, guidance_schedule="linear"),
                                     SamplingOptions(guidance=2.0, guidance_interval=0.4)],
                         ids=["0", "1.5", "3-linear", "2-first0.4"])
@pytest.mark.parametrize("attention", [0, 2])
def test_guided_incremental_logits_equal_guided_full_logits(options: SamplingOptions, attention: int) -> None:
    """uncond + s_t * (cond - uncond) at every step t, the cached sampler running both halves as one batch."""
    model = guided_model(attention=attention)
    codes, labels = torch.randint(0, K, (3, 5, 6)), torch.tensor([0, 2, 1])
    null = torch.full_like(labels, model.config.null_label)
    sampler = GuidedSampler(IncrementalSampler, model, codes, labels, options)
    with torch.no_grad():
        conditional, unconditional = model(codes, labels), model(codes, null)
        for i in range(5):
            for j in range(6):
                scale = options.scale_at(i * 6 + j, 30)
                guided = unconditional + scale * (conditional - unconditional)  # (B, K, H, W)
                torch.testing.assert_close(sampler.logits(i, j), guided[:, :, i, j], atol=1e-5, rtol=1e-5)
                sampler.commit(i, j, codes[:, i, j])


def test_guidance_schedules_ramp_over_the_raster_order_or_stop_after_the_interval() -> None:
    linear = SamplingOptions(guidance=3.0, guidance_schedule="linear")
    assert [linear.scale_at(t, 5) for t in range(5)] == [1.0, 1.5, 2.0, 2.5, 3.0]
    first = SamplingOptions(guidance=3.0, guidance_interval=0.5)
    assert [first.scale_at(t, 6) for t in range(6)] == [3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    assert SamplingOptions(guidance=3.0, guidance_schedule="linear").scale_at(0, 1) == 1.0
    assert not linear.uniform and not first.uniform and SamplingOptions(guidance=2.0).uniform
    assert SamplingOptions(guidance=1.0, guidance_schedule="linear").uniform  # scale 1 at every position


def test_guidance_one_is_plain_and_zero_is_the_null_class() -> None:
    model = guided_model()
    def draw_with(labels: object, guidance: float, sampler=sample) -> torch.Tensor:
        return sampler(model, 8, labels, SamplingOptions(guidance=guidance),
                       generator=torch.Generator().manual_seed(5), progress=False)
    assert torch.equal(draw_with(1, 1.0), draw_with(1, 1.0, sample_naive))
    assert torch.equal(draw_with(2, 0.0), draw_with(0, 0.0))  # unconditional: the label no longer matters
    assert not torch.equal(draw_with(2, 0.0), draw_with(2, 1.0))
    assert torch.equal(draw_with(1, 2.5), draw_with(1, 2.5, sample_naive))
    assert not torch.equal(draw_with(1, 2.5), draw_with(1, 1.0))
    for schedule, interval in (("linear", 1.0), ("constant", 0.5), ("linear", 0.3)):  # 0 is unconditional throughout
        scheduled = SamplingOptions(guidance=0.0, guidance_schedule=schedule, guidance_interval=interval)
        for sampler in (sample, sample_naive):
            assert torch.equal(sampler(model, 8, 2, scheduled, torch.Generator().manual_seed(5), progress=False),
                               draw_with(2, 0.0))


def test_guidance_sharpens_the_class() -> None:
    """Scales above 1 move samples toward codes the conditional prefers over the unconditional."""
    model = guided_model((4, 4))
    labels, null = torch.zeros(256, dtype=torch.long), torch.full((256,), model.config.null_label)
    gaps = []
    for scale in (1.0, 3.0):
        codes = sample(model, 256, 0, SamplingOptions(guidance=scale), generator=torch.Generator().manual_seed(0),
                       progress=False)
        with torch.no_grad():
            gaps.append(float((model.nll_bits(codes, null) - model.nll_bits(codes, labels)).mean()))
    assert gaps[1] > gaps[0] > 0


@pytest.mark.parametrize("grid, classes, attention", [((10, 12), 2, 0), ((3, 4), 0, 0), ((1, 9), 0, 0),
                                                      ((10, 12), 2, 3)])
def test_other_grid_sizes_sample_with_incremental_equal_to_full(grid: tuple[int, int], classes: int,
                                                                attention: int) -> None:
    model = model_for((8, 8), classes, attention=attention)  # trained size 8x8
    labels = torch.tensor([0, 1, 1]) % classes if classes else None
    check_every_step(model, torch.randint(0, K, (3, *grid)), labels)
    fast = sample(model, 3, 1 if classes else None, generator=torch.Generator().manual_seed(0), progress=False,
                  grid=grid)
    slow = sample_naive(model, 3, 1 if classes else None, generator=torch.Generator().manual_seed(0),
                        progress=False, grid=grid)
    assert fast.shape == (3, *grid) and torch.equal(fast, slow)


def test_top_p_keeps_the_smallest_set_of_likeliest_codes_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.05, 0.8, 0.1]]))
    kept = log_probs(logits, SamplingOptions(top_p=0.75)).exp()
    torch.testing.assert_close(kept, torch.tensor([[0.625, 0.375, 0, 0], [0, 0, 1.0, 0]]))
    torch.testing.assert_close(log_probs(logits, SamplingOptions(top_p=1.0)), logits.log_softmax(1))
    both = log_probs(logits, SamplingOptions(top_k=1, top_p=0.9)).exp()  # top-k first, then the nucleus
    torch.testing.assert_close(both, torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]]))
    cold = log_probs(logits, SamplingOptions(temperature=0.5, top_p=0.75)).exp()  # the temperature first
    assert cold[0, 2] == 0 and cold[0, 1] > 0 and torch.allclose(cold.sum(1), torch.ones(2))


def test_top_p_draws_only_from_the_nucleus() -> None:
    model = model_for((4, 5), 2)
    options = SamplingOptions(top_p=0.3)
    codes = sample(model, 32, 1, options, generator=torch.Generator().manual_seed(0), progress=False)
    with torch.no_grad():
        logits = model(codes, torch.ones(32, dtype=torch.long))  # (B, K, H, W)
    flat = rearrange(logits, "b k h w -> (b h w) k")
    allowed = log_probs(flat, options) > float("-inf")  # (N, K)
    assert allowed.gather(1, codes.flatten()[:, None]).all()
    assert allowed.sum(1).float().mean() < K / 2  # it truncates


def kept(logits: torch.Tensor, options: SamplingOptions) -> int:
    return int((log_probs(logits, options) > float("-inf")).sum())


def test_the_temperature_then_top_k_then_top_p_in_that_order() -> None:
    """Cases where another order keeps another number of codes: top-p 0.75 before the temperature 2
    would keep 2 codes of these, after it 3; top-p 0.6 before top-k 2 would keep 2, after it 1."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert kept(logits, SamplingOptions(top_p=0.75)) == 2
    assert kept(logits, SamplingOptions(temperature=2.0, top_p=0.75)) == 3  # flattened first: 0.38, 0.29, 0.21
    assert kept(logits, SamplingOptions(top_p=0.6)) == 2
    assert kept(logits, SamplingOptions(top_k=2, top_p=0.6)) == 1  # renormalised to 0.625, 0.375 first
    hot = log_probs(logits, SamplingOptions(temperature=2.0, top_k=3)).exp()
    torch.testing.assert_close(hot[0, :3], logits[0, :3].div(2).softmax(0))  # tempered, then truncated


class _FixedLogits:
    """A sampler whose logits are fixed per label: CONDITIONAL for real classes, UNCONDITIONAL for the null one."""

    CONDITIONAL = torch.tensor([2.0, 2.1, 0.0] + [-9.0] * (K - 3))
    UNCONDITIONAL = torch.tensor([0.0, 2.5, 0.0] + [-9.0] * (K - 3))

    def __init__(self, model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
        null = labels == model.config.null_label  # (B,)
        self.rows = torch.where(null[:, None], self.UNCONDITIONAL, self.CONDITIONAL)  # (B, K)

    def logits(self, i: int, j: int) -> torch.Tensor:
        return self.rows

    def commit(self, i: int, j: int, drawn: torch.Tensor) -> None:
        pass


def test_guidance_comes_before_truncation() -> None:
    """Guided 2x, the logits are 4.0, 1.7, 0, ...: top-k 1 then keeps code 0, where truncating the
    conditional first would keep code 1 (its own top code)."""
    model = guided_model((2, 2))
    codes = generate(model, 64, 1, SamplingOptions(top_k=1, guidance=2.0), torch.Generator().manual_seed(0),
                     progress=False, sampler=_FixedLogits).codes
    assert (codes == 0).all()
    plain = generate(model, 64, 1, SamplingOptions(top_k=1), torch.Generator().manual_seed(0), progress=False,
                     sampler=_FixedLogits).codes
    assert (plain == 1).all()
