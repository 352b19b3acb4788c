"""The fast training step equals the straightforward definition: values and gradients."""

import pytest
import torch

from hf_topafa import ACTIVATIONS, SAEConfig, SparseAutoencoder
from hf_topafa.sae import activations, kfree, sparse
from hf_topafa.sae.afa import afa_norm, scaled_feature_norm


def make_sae(activation, d_in=12, d_sae=96, k=5, seed=0, **kwargs):
    if activation in ("topk", "batchtopk"):
        kwargs["k"] = k
    kwargs.setdefault("encoder_bias", True)  # so that every parameter gets a gradient
    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation=activation, **kwargs)
    sae = SparseAutoencoder(cfg).double()
    with torch.no_grad():  # move away from the tied, zero-bias initialisation
        sae.W_enc.add_(0.1 * torch.randn_like(sae.W_enc))
        sae.W_dec.mul_(0.5 + torch.rand(d_sae, 1, dtype=torch.float64))
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.3)
    return sae


def direct_forward(sae, x, dead_mask):
    """The loss written directly: dense pre-activations, dense masks, dense products."""
    cfg = sae.config
    x_n, _, _ = sae.normalize_input(x)
    pre = torch.relu(torch.addmm(sae.b_enc, x_n - sae.b_dec, sae.W_enc))
    if cfg.activation == "topafa":
        target = afa_norm(x_n - sae.b_dec)
        norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
        acts, _ = activations.topafa_reference(pre, norms, target)
    elif cfg.activation == "afa_band":
        norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
        eps = kfree.decoder_coherence_rms(sae.W_dec)
        acts, _ = kfree.band_entry(pre, norms, afa_norm(x_n - sae.b_dec), eps)
    elif cfg.activation == "topk":
        acts = activations.topk(pre, cfg.k)
    elif cfg.activation == "noise_batch":
        norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
        acts, _ = kfree.batch_noise_floor(pre, norms)
    elif cfg.activation == "afa_batch":
        norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
        eps = kfree.decoder_coherence_rms(sae.W_dec)
        acts, _ = kfree.batch_band(pre, norms, afa_norm(x_n - sae.b_dec), eps)
    elif cfg.activation == "latent_noise":  # the threshold the forward's observer just set
        norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
        acts = pre * (pre * norms > sae.threshold)
    else:
        acts, _ = activations.batchtopk(pre, cfg.k)
    recon = acts @ sae.W_dec + sae.b_dec
    if cfg.loss_convention == "paper":
        return paper_loss(sae, x_n, pre, acts, recon, dead_mask), acts, recon
    total = x_n.pow(2).sum()
    mse = (recon - x_n).pow(2).sum() / total
    afa = (scaled_feature_norm(acts, sae.W_dec, sae.b_dec) - afa_norm(x_n)).pow(2).sum() / total
    aux = pre.new_zeros(())
    if dead_mask is not None and dead_mask.any():
        k_aux = min(cfg.aux_k, int(dead_mask.sum()))
        values, indices = (pre * dead_mask).topk(k_aux, dim=-1)
        aux_recon = torch.zeros_like(pre).scatter(-1, indices, values) @ sae.W_dec
        residual = (x_n - recon).detach()
        aux = (aux_recon - residual).pow(2).sum() / residual.pow(2).sum()
    loss = mse + cfg.afa_coef * afa + cfg.aux_coef * aux
    return loss, acts, recon


def paper_loss(sae, x_n, pre, acts, recon, dead_mask):
    """The paper's terms as its code writes them, over the mean squared input element."""
    cfg = sae.config
    scale = x_n.pow(2).mean() if cfg.input_normalization != "layer_norm" else 1.0
    mse = (recon - x_n).pow(2).mean()
    afa = (acts.norm(dim=-1) - x_n.norm(dim=-1)).pow(2).mean()
    aux = pre.new_zeros(())
    if dead_mask is not None and dead_mask.any():
        k_aux = min(cfg.aux_k, int(dead_mask.sum()))
        top = pre[:, dead_mask].topk(k_aux, dim=-1)
        aux_acts = torch.zeros_like(pre[:, dead_mask]).scatter(-1, top.indices, top.values)
        aux = (aux_acts @ sae.W_dec[dead_mask] - (x_n - recon)).pow(2).mean()
    return (mse + cfg.afa_coef * afa + cfg.aux_coef * aux) / scale


def grads_of(sae, loss):
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in sae.named_parameters()}


@pytest.mark.parametrize(
    "activation",
    ["topafa", "topk", "batchtopk", "afa_band", "latent_noise", "noise_batch", "afa_batch"],
)
@pytest.mark.parametrize(
    "dead, aux_route",
    [("none", "-"), ("few", "pairs"), ("few", "dense"), ("many", "pairs"), ("many", "dense")],
)
@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("convention", ["paper", "hf_topafa_v0.1"])
def test_step_equals_direct_definition(activation, dead, aux_route, path, convention, monkeypatch):
    # The density limits pick the routes: 1 forces gathered pairs, 0 dense products.
    monkeypatch.setattr(sparse, "MAX_SPARSE_DENSITY", 1.0 if path == "sparse" else 0.0)
    monkeypatch.setattr(sparse, "MAX_AUX_DENSITY", 1.0 if aux_route == "pairs" else 0.0)
    decoded = []
    monkeypatch.setattr(
        sparse, "decode_pairs", lambda *a, **kw: decoded.append(1) or _decode(*a, **kw)
    )
    sae = make_sae(activation, aux_k=6, loss_convention=convention)
    # rank fewer top-AFA candidates than d_sae, so the sparse route really runs (a fresh SAE
    # ranks 256, more than d_sae = 96, and would fall back to the dense path)
    sae._topafa_candidates = 32
    x = torch.randn(40, 12, dtype=torch.float64) * 2
    dead_mask = {
        "none": None,
        "few": torch.arange(96) % 24 == 0,  # 4 dead < aux_k: every dead feature is used
        "many": torch.arange(96) % 3 == 0,  # 32 dead > aux_k: a top-k among them
    }[dead]
    out = sae(x, dead_mask=dead_mask)
    if path == "sparse":
        assert decoded, "the sparse route was not taken"
    loss, acts, recon = direct_forward(sae, x, dead_mask)
    if activation == "latent_noise":  # its levels keep some positive activations, not all
        assert 0 < int((acts != 0).sum()) < int((sae.pre_activations(x) > 0).sum())
    assert torch.equal(out.feature_acts, acts)
    assert torch.allclose(out.reconstruction, recon, atol=1e-12)
    assert torch.allclose(out.loss, loss, rtol=1e-12, atol=1e-14)
    assert (out.aux_loss > 0) == (dead != "none")
    fast, direct = grads_of(sae, out.loss), grads_of(sae, loss)
    for name in direct:
        assert torch.allclose(fast[name], direct[name], rtol=1e-9, atol=1e-12), name
        assert direct[name].abs().sum() > 0, name  # every parameter is exercised


def test_sparse_path_is_taken_at_small_l0(monkeypatch):
    calls = []
    monkeypatch.setattr(sparse, "decode_pairs", lambda *a: calls.append(1) or _decode(*a))
    sae = make_sae("topk", d_sae=96, k=3)  # 3 / 96 < MAX_SPARSE_DENSITY
    sae(torch.randn(4, 12, dtype=torch.float64))
    assert calls, "TopK with k << d_sae should decode through the active rows only"
    calls.clear()
    sae = make_sae("topk", d_sae=96, k=48)  # half the features: dense products are faster
    sae(torch.randn(4, 12, dtype=torch.float64))
    assert not calls


def test_topafa_route_follows_mean_k_not_candidates(monkeypatch):
    """Top-AFA picks its route on the mean k it keeps (as TopK does on k), while the candidate
    count, sized for the batch's largest k, only sets how many it ranks."""
    calls = []
    monkeypatch.setattr(sparse, "decode_pairs", lambda *a: calls.append(1) or _decode(*a))
    sae = make_sae("topafa")
    x = torch.randn(40, 12, dtype=torch.float64) * 2
    sae(x)  # before any batch: the candidate count (256 > d_sae) picks the dense route
    assert not calls
    mean_k, candidates = sae._topafa_mean_k, sae._topafa_candidates
    assert mean_k < candidates  # candidates cover the largest k, plus a margin
    # a density limit between the two: the mean k is under it, the candidate count over it
    monkeypatch.setattr(sparse, "MAX_SPARSE_DENSITY", (mean_k + candidates) / 2 / 96)
    out = sae(x)
    assert calls, "the sparse route was not taken"
    _, acts, recon = direct_forward(sae, x, None)
    assert torch.equal(out.feature_acts, acts)
    assert torch.allclose(out.reconstruction, recon, atol=1e-12)


_decode = sparse.decode_pairs


def test_encode_pairs_gradient_matches_autograd_including_input():
    torch.manual_seed(1)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    W = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(11, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(5, dtype=torch.float64, requires_grad=True)
    pre = torch.relu((x - b_dec) @ W + b_enc)
    rows = torch.tensor([0, 0, 1, 3, 3, 3, 6])
    cols = torch.tensor([2, 9, 2, 0, 5, 10, 2])
    weights = torch.randn(len(rows), dtype=torch.float64)
    fast = sparse.encode_pairs(x, b_dec, W, b_enc, pre.detach(), rows, cols)
    assert torch.equal(fast, pre.detach()[rows, cols])
    g_fast = torch.autograd.grad((fast * weights).sum(), (x, b_dec, W, b_enc))
    direct = (pre[rows, cols] * weights).sum()
    g_direct = torch.autograd.grad(direct, (x, b_dec, W, b_enc), retain_graph=True)
    for a, b in zip(g_fast, g_direct, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    # with a dense block of columns (the aux-k loss's dead features) riding along
    block_cols = torch.tensor([1, 2, 7])
    block_weights = torch.randn(7, 3, dtype=torch.float64)
    fast, block = sparse.encode_pairs(x, b_dec, W, b_enc, pre.detach(), rows, cols, block_cols)
    assert torch.equal(block, pre.detach()[:, block_cols])
    loss_fast = (fast * weights).sum() + (block * block_weights).sum()
    loss_direct = (pre[rows, cols] * weights).sum() + (pre[:, block_cols] * block_weights).sum()
    g_fast = torch.autograd.grad(loss_fast, (x, b_dec, W, b_enc))
    g_direct = torch.autograd.grad(loss_direct, (x, b_dec, W, b_enc))
    for a, b in zip(g_fast, g_direct, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_decode_pairs_matches_dense_product_and_handles_empty_tokens():
    torch.manual_seed(2)
    W = torch.randn(9, 4, dtype=torch.float64)
    rows = torch.tensor([0, 0, 2, 2, 2])  # token 1 and token 3 have no active feature
    cols = torch.tensor([1, 8, 0, 1, 4])
    values = torch.rand(5, dtype=torch.float64)
    dense = torch.zeros(4, 9, dtype=torch.float64)
    dense[rows, cols] = values
    assert torch.allclose(sparse.decode_pairs(rows, cols, values, W, 4), dense @ W)
    # values, W_dec and a dense block all get the gradients of the direct products
    W.requires_grad_(True)
    values.requires_grad_(True)
    block = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    block_cols = torch.tensor([8, 3])
    g1, g2 = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    out, block_out = sparse.decode_pairs(rows, cols, values, W, 4, block, block_cols)
    fast = torch.autograd.grad((out * g1).sum() + (block_out * g2).sum(), (values, W, block))
    direct_dense = torch.zeros(4, 9, dtype=torch.float64).index_put((rows, cols), values)
    direct = (direct_dense @ W * g1).sum() + (block @ W[block_cols] * g2).sum()
    for a, b in zip(fast, torch.autograd.grad(direct, (values, W, block)), strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_topafa_pairs_match_reference_with_small_candidate_counts():
    g = torch.Generator().manual_seed(3)
    pre = torch.relu(torch.randn(64, 200, generator=g, dtype=torch.float64))
    pre[5] = 0.0  # an all-zero token
    pre[6, :4] = pre[6, 4]  # ties
    norms = torch.rand(200, generator=g, dtype=torch.float64) + 0.5
    target = torch.rand(64, generator=g, dtype=torch.float64) * 12
    ref_acts, ref_k = activations.topafa_reference(pre, norms, target)
    for candidates in (1, 8, 40, 200, 500):
        rows, cols, k = activations.topafa_pairs(pre, norms, target, candidates)
        assert torch.equal(k, ref_k)
        mask = torch.zeros_like(pre, dtype=torch.bool)
        mask[rows, cols] = True
        assert torch.equal(pre * mask, ref_acts)
        assert torch.equal(rows, rows.sort().values)  # sorted by token, as embedding_bag needs


def test_adaptive_candidates_do_not_change_results():
    sae = make_sae("topafa", d_sae=512)
    x = torch.randn(30, 12, dtype=torch.float64)
    first = sae(x)
    assert sae._topafa_candidates < activations.TOPAFA_CANDIDATES  # adapted to the small k
    sae._topafa_candidates = 1  # every token now overflows its candidates and is ranked in full
    second = sae(x)
    assert torch.equal(first.feature_acts, second.feature_acts)
    assert torch.equal(first.k, second.k)


def test_bad_dead_mask_raises():
    sae = make_sae("topafa")
    with pytest.raises(ValueError, match="dead_mask"):
        sae(torch.randn(2, 12, dtype=torch.float64), dead_mask=torch.ones(5, dtype=torch.bool))


def _independent_topafa(pre, norms, target):
    """The rule by hand, token by token in Python floats: sorted contributions (ties: lower
    index first), running sums, k = the first nearest prefix; an independent oracle."""
    contributions = ((pre * norms) ** 2).tolist()
    ks, masks = [], torch.zeros_like(pre, dtype=torch.bool)
    for row, (values, t) in enumerate(zip(contributions, target.tolist(), strict=True)):
        order = sorted(range(len(values)), key=lambda j: (-values[j], j))
        best_k, best_distance, running = 1, None, 0.0
        for count, j in enumerate(order, start=1):
            running += values[j]
            distance = abs(running**0.5 - t)
            if best_distance is None or distance < best_distance:
                best_k, best_distance = count, distance
        ks.append(best_k)
        masks[row, order[:best_k]] = True
    return masks, torch.tensor(ks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_histogram_cut_matches_reference_and_an_independent_oracle(dtype):
    """Many features kept (the trained regime): the histogram cut, not a sort, picks them."""
    g = torch.Generator().manual_seed(4)
    n, d = 48, 600
    pre = torch.relu(torch.randn(n, d, generator=g, dtype=dtype))
    pre[0] = 0.0  # an all-zero token: k = 1, nothing kept
    pre[1, :50] = pre[1, 50]  # ties across the cut
    pre[2] = torch.round(pre[2] * 4) / 4  # coarse values: ties everywhere
    pre[3, ::2] = 0.5
    norms = torch.rand(d, generator=g, dtype=dtype) + 0.5
    total = ((pre * norms) ** 2).sum(-1).sqrt()
    target = total * (0.9 + 0.09 * torch.rand(n, generator=g, dtype=dtype))  # k in the hundreds
    target[4] = total[4] * 2  # short of the target: every positive feature is kept
    target[5] = 0.0
    ref_acts, ref_k = activations.topafa_reference(pre, norms, target)
    assert ref_k.float().mean() > 100  # the dense regime, where the cut is histogrammed
    calls = []
    real = activations._full_sort
    try:
        activations._full_sort = lambda p, *a: calls.append(p.shape[0]) or real(p, *a)
        mask, k = activations.topafa_mask(pre, norms, target, candidates=300)
    finally:
        activations._full_sort = real
    assert sum(calls) < n // 4, "most tokens must be settled without a full sort"
    assert torch.equal(k, ref_k)
    assert torch.equal(pre * mask, ref_acts)
    assert torch.equal(k[4], (pre[4] > 0).sum())
    oracle_mask, oracle_k = _independent_topafa(pre.double(), norms.double(), target.double())
    same = (oracle_k == k).float().mean()
    assert same > 0.95  # float rounding may move a near-tie; the rule itself is the same
    rows = (oracle_k == k).nonzero()[:, 0]
    assert torch.equal(mask[rows], oracle_mask[rows])
    rows, cols, k_pairs = activations.topafa_pairs(pre, norms, target, candidates=300)
    assert torch.equal(k_pairs, ref_k) and torch.equal(rows, rows.sort().values)
    assert torch.equal(torch.zeros_like(mask).index_put_((rows, cols), torch.tensor(True)), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_left_to_the_full_sort_get_its_answer(dtype, monkeypatch):
    """Tokens the histogram cannot settle (short of their target with a last contribution below
    its rounding bound, all-zero tokens) go to the full sort, and k and the kept features are its
    answer, including where its float64 sum ignores the tiny last contribution and keeps one
    feature fewer than there are positive ones."""
    g = torch.Generator().manual_seed(11)
    n, d = 24, 700
    pre = torch.relu(torch.randn(n, d, generator=g, dtype=dtype))
    pre[:, 400:] = 0.0  # many zeros in every row
    pre[:12, 399] = 1e-12  # a tiny last positive feature
    pre[12] = 0.0  # all-zero tokens: k = 1, feature 0
    pre[13] = 0.0
    pre[14, :20] = pre[14, 20]  # ties among the positives
    norms = torch.rand(d, generator=g, dtype=dtype) + 0.5
    total = ((pre * norms) ** 2).sum(-1).sqrt()
    target = total * 1.5  # rows 0-13: short of the target
    target[14:] = total[14:] * (0.8 + 0.15 * torch.rand(n - 14, generator=g, dtype=dtype))
    target[13] = 0.0
    sorted_rows = []
    real = activations._full_sort
    monkeypatch.setattr(
        activations,
        "_full_sort",
        lambda p, *a: sorted_rows.append(p.shape[0]) or real(p, *a),
    )
    mask, k = activations.topafa_mask(pre, norms, target, candidates=300)
    assert sum(sorted_rows) >= 14, "the short and all-zero rows must reach the full sort"
    _, order, full_k = real(pre, norms, target)
    full_mask = torch.zeros_like(mask).scatter_(
        -1, order, torch.arange(d).unsqueeze(0) < full_k.unsqueeze(1)
    )
    assert torch.equal(k, full_k)
    assert torch.equal(mask, full_mask)
    positives = (pre[:12] > 0).sum(-1)
    assert torch.equal(k[:12], positives - 1)  # the tiny one adds nothing to the float64 sum
    assert k[12] == k[13] == 1 and mask[12, 0] and mask[13].sum() == 1


@pytest.mark.parametrize("convention", ["paper", "hf_topafa_v0.1"])
def test_dense_regime_step_equals_direct_definition(convention):
    """A top-AFA SAE keeping hundreds of features: the masked dense route (histogram cut,
    encoder gradient in two products, aux-k block sharing it) against the direct loss."""
    torch.manual_seed(5)
    sae = make_sae("topafa", d_in=16, d_sae=640, aux_k=20, loss_convention=convention)
    with torch.no_grad():
        sae.W_enc.mul_(0.46)  # smaller pre-activations: hundreds of features meet the target
    x = torch.randn(64, 16, dtype=torch.float64) * 2
    dead_mask = torch.arange(640) % 7 == 0  # 92 dead > aux_k = 20: a top-k among them
    out = sae(x, dead_mask=dead_mask)
    assert out.l0.mean() > 100 and sae._topafa_candidates >= activations.TOPAFA_BUCKET_MIN_K
    positive = (sae.pre_activations(x) > 0).sum(-1)
    assert (out.l0 < positive).sum() > 10  # most tokens are cut inside the band, not at the end
    cuts = []
    real = activations._bucket_cut
    try:
        activations._bucket_cut = lambda *a: cuts.append(1) or real(*a)
        out = sae(x, dead_mask=dead_mask)  # now ranked through the histogram cut
    finally:
        activations._bucket_cut = real
    assert cuts, "the histogram cut was not used"
    loss, acts, recon = direct_forward(sae, x, dead_mask)
    assert torch.equal(out.feature_acts, acts)
    assert torch.allclose(out.reconstruction, recon, atol=1e-12)
    assert torch.allclose(out.loss, loss, rtol=1e-12, atol=1e-14)
    fast, direct = grads_of(sae, out.loss), grads_of(sae, loss)
    for name in direct:
        assert torch.allclose(fast[name], direct[name], rtol=1e-9, atol=1e-12), name


def test_histogram_cut_in_row_blocks_equals_one_block(monkeypatch):
    g = torch.Generator().manual_seed(6)
    pre = torch.relu(torch.randn(37, 500, generator=g))
    norms = torch.rand(500, generator=g) + 0.5
    target = ((pre * norms) ** 2).sum(-1).sqrt() * 0.95
    whole = activations.topafa(pre, norms, target, candidates=400)
    monkeypatch.setattr(activations, "_BLOCK_ELEMENTS", 3000)  # 6 rows a block, a short last
    assert len(activations._row_blocks(pre)) == 7
    blocked = activations.topafa(pre, norms, target, candidates=400)
    ref_acts, ref_k = activations.topafa_reference(pre, norms, target)
    for acts, k in (whole, blocked):
        assert torch.equal(k, ref_k) and torch.equal(acts, ref_acts)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("route", ["sparse", "dense"])
@pytest.mark.parametrize("convention", ["paper", "hf_topafa_v0.1"])
def test_a_step_under_bf16_autocast_keeps_float_gradients(
    activation, route, convention, monkeypatch
):
    """A GPU trains under bf16 autocast, whose bf16 products once met a float product in the
    dead-latent block's backward, and raised; CPU autocast makes the same cast. (Its other GPU
    failure, CUDA autocast's float pow summed into a bf16 norm, CPU autocast does not make.)
    Every rule, both routes: a GPU is lent too rarely to find the next one there."""
    monkeypatch.setattr(sparse, "MAX_SPARSE_DENSITY", 1.0 if route == "sparse" else 0.0)
    monkeypatch.setattr(sparse, "MAX_AUX_DENSITY", 0.0)  # the dead-latent block
    sae = make_sae(activation, aux_k=6, loss_convention=convention, matryoshka_levels=2).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(torch.randn(40, 12) * 2, dead_mask=torch.arange(96) % 3 == 0)
    out.loss.backward()
    grad = sae.W_dec.grad
    assert grad.dtype == torch.float32 and bool(torch.isfinite(grad).all())
    assert float(out.aux_loss) > 0 and float(grad.norm()) > 0
