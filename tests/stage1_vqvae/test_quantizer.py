"""Quantizers against independent references: brute-force search, gradient routing, EMA, restarts."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from vqgen.engine.errors import UsageError
from vqgen.stage1_vqvae.quantizer import QuantizerConfig, build_quantizer, kmeans

VARIANTS = [dict(kind=k, cosine=c, lookup_dim=d) for k in ("ema", "straight_through")
            for c in (False, True) for d in (None, 3)]


def brute_force(q, z: torch.Tensor) -> torch.Tensor:
    """argmin over explicit pairwise distances, in the quantizer's lookup space."""
    flat = q._normalise(q.in_proj(rearrange(z, "b d h w -> (b h w) d")))
    return torch.cdist(flat, q._codes()).argmin(1).reshape(z.shape[0], *z.shape[2:])


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_nearest_code_equals_brute_force(variant: dict) -> None:
    q = build_quantizer(QuantizerConfig(codebook_size=64, dim=6, **variant)).eval()
    z = torch.randn(4, 6, 5, 7)
    with torch.no_grad():
        assert torch.equal(q(z).indices, brute_force(q, z))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_lookup_and_codebook_vectors_match_forward(variant: dict) -> None:
    q = build_quantizer(QuantizerConfig(codebook_size=16, dim=6, **variant)).eval()
    z = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        out = q(z)
        torch.testing.assert_close(q.lookup(out.indices), out.quantized)
        vectors = q.codebook_vectors()
        assert vectors.shape == (16, 6) and vectors.dtype == torch.float32
        torch.testing.assert_close(rearrange(q.lookup(out.indices), "b d h w -> b h w d"), vectors[out.indices])


@pytest.mark.parametrize("kind", ["ema", "straight_through"])
def test_straight_through_gradient_is_identity(kind: str) -> None:
    q = build_quantizer(QuantizerConfig(codebook_size=8, dim=4, kind=kind))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    (grad,) = torch.autograd.grad((q(z).quantized * upstream).sum(), z)
    torch.testing.assert_close(grad, upstream)


def test_codebook_learns_only_from_codebook_term_and_encoder_only_from_commitment() -> None:
    q = build_quantizer(QuantizerConfig(codebook_size=8, dim=4, kind="straight_through"))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    book_from_commit, z_from_commit = torch.autograd.grad(out.commitment_loss, [q.codebook, z],
                                                          retain_graph=True, allow_unused=True)
    book_from_book, z_from_book = torch.autograd.grad(out.codebook_loss, [q.codebook, z],
                                                      retain_graph=True, allow_unused=True)
    assert book_from_commit is None or not book_from_commit.any()
    assert z_from_book is None or not z_from_book.any()
    assert book_from_book.abs().sum() > 0 and z_from_commit.abs().sum() > 0
    torch.testing.assert_close(out.loss, out.codebook_loss + 0.25 * out.commitment_loss)


def test_ema_moves_in_train_mode_only_and_has_no_gradient() -> None:
    q = build_quantizer(QuantizerConfig(codebook_size=8, dim=4, kind="ema"))
    assert not any(p.requires_grad for p in q.parameters())
    z = torch.randn(16, 4, 2, 2)
    before = q.codebook.clone()
    q.eval()(z)
    assert torch.equal(q.codebook, before)
    q.train()(z)
    assert not torch.equal(q.codebook, before)


def test_ema_converges_to_the_means_of_assigned_vectors() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    q = build_quantizer(QuantizerConfig(codebook_size=3, dim=2, kind="ema", decay=0.9, kmeans_init=True)).train()
    data = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2)
    z = rearrange(data, "(b n) d -> b d n 1", b=1)
    for _ in range(100):
        q(z)
    found = q.codebook[torch.cdist(centres, q.codebook).argmin(1)]
    torch.testing.assert_close(found, centres, atol=0.05, rtol=0)


def test_dead_codes_are_restarted_onto_encoder_outputs() -> None:
    torch.manual_seed(0)
    q = build_quantizer(QuantizerConfig(codebook_size=16, dim=2, kind="ema", restart_threshold=0.5)).train()
    q.codebook.fill_(100.0)
    q.codebook[0] = 0.0
    q.embed_avg.copy_(q.codebook)
    z = torch.randn(1, 2, 8, 8)
    for _ in range(80):
        q(z)
    assert q(z).usage.item() == pytest.approx(1 / 16)
    dead = q.usage_ema < 0.5
    assert q.restart_dead_codes() == int(dead.sum()) == 15
    flat = rearrange(z, "b d h w -> (b h w) d")
    assert torch.cdist(q.codebook[dead], flat).min(1).values.max() < 1e-6  # restarted codes are data points
    assert q(z).usage.item() > 0.5


def test_kmeans_init_places_codes_on_clusters_once() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    data = centres.repeat_interleave(32, 0) + 0.05 * torch.randn(128, 2)
    found = kmeans(data, 4, iters=10)
    assert torch.cdist(centres, found).min(1).values.max() < 0.2
    q = build_quantizer(QuantizerConfig(codebook_size=4, dim=2, kind="straight_through", kmeans_init=True)).train()
    z = rearrange(data, "(b n) d -> b d n 1", b=2)
    loss_after_init = q(z).commitment_loss
    assert bool(q.initialized) and loss_after_init < 0.05
    state = q.state_dict()
    again = build_quantizer(QuantizerConfig(codebook_size=4, dim=2, kind="straight_through", kmeans_init=True))
    again.load_state_dict(state)
    again.train()(z + 100)  # an initialised codebook is not re-clustered
    assert torch.equal(again.codebook, q.codebook)


def test_statistics_stay_fp32_under_autocast() -> None:
    q = build_quantizer(QuantizerConfig(codebook_size=32, dim=8, kind="ema")).train()
    reference = build_quantizer(QuantizerConfig(codebook_size=32, dim=8, kind="ema")).train()
    reference.load_state_dict(q.state_dict())
    z = torch.randn(4, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert torch.equal(out.indices, reference(z).indices)
    assert q.codebook.dtype == q.cluster_size.dtype == q.embed_avg.dtype == torch.float32
    assert out.loss.dtype == torch.float32


def test_perplexity_and_usage() -> None:
    q = build_quantizer(QuantizerConfig(codebook_size=4, dim=2, kind="straight_through")).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10]]))
    uniform = rearrange(q.codebook.detach().repeat(3, 1), "(b n) d -> b d n 1", b=1)
    out = q(uniform)
    assert out.perplexity.item() == pytest.approx(4.0) and out.usage.item() == 1.0
    single = torch.zeros(1, 2, 5, 1)
    out = q(single)
    assert out.perplexity.item() == pytest.approx(1.0) and out.usage.item() == 0.25


@pytest.mark.parametrize("field, value, message", [
    ("codebook_size", 1, "codebook_size=1 is not allowed; must be >= 2"),
    ("beta", -1.0, "beta=-1.0 is not allowed"),
    ("decay", 1.0, "decay=1.0 is not allowed; must be in \\(0, 1\\)"),
    ("lookup_dim", 0, "lookup_dim=0 is not allowed"),
])
def test_config_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        QuantizerConfig(**{"codebook_size": 8, "dim": 4, field: value})


def test_straight_through_reads_its_usage_debiased_so_codes_in_use_are_not_restarted() -> None:
    """Four codes used 1 or 2 times a batch (1.5 on average), a fifth never: after three batches the raw
    usage average is ~1.5 * (1 - 0.99**3) < 0.05, far below the threshold 1.0; read debiased it is ~1.5."""
    decay, passes = 0.99, 3
    q = build_quantizer(QuantizerConfig(codebook_size=5, dim=2, kind="straight_through", decay=decay,
                                        restart_threshold=1.0)).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [-50.0, -50.0]]))
    books = q.codebook.detach().clone()
    raw = torch.zeros(5, dtype=torch.float64)  # the usage average by hand, from the counts fed in
    for t in range(passes):
        uses = torch.tensor([1 + (k + t) % 2 for k in range(4)])  # 1 or 2 uses of each code, alternating
        which = torch.arange(4).repeat_interleave(uses)  # (6,) the code each vector is a copy of
        z = rearrange(books[which] + 0.01, "(b n) d -> b d n 1", b=1)
        assert torch.equal(q(z).indices.flatten(), which)
        raw = decay * raw + (1 - decay) * torch.bincount(which, minlength=5).double()
    torch.testing.assert_close(q.usage_ema.double(), raw)
    assert (raw < 0.05).all()  # read raw, every code would look dead
    debiased = raw / (1 - decay ** passes)
    assert (debiased[:4] > 1.2).all() and debiased[4] == 0
    assert q.restart_dead_codes() == 1  # the unused code alone
    assert torch.equal(q.codebook[:4], books[:4])
    assert torch.cdist(q.codebook[4:].detach(), books[:4] + 0.01).min() < 1e-6  # moved onto an encoder output
