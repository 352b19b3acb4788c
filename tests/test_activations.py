import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from hf_topafa.sae import activations


def test_paper_worked_example():
    """The paper's example: the target is ||pre @ decoder|| per row.

    decoder row norms are sqrt(5), 5, sqrt(61). Contributions (pre_i * norm_i)^2 and the cumulative
    norms of the sorted contributions:
      row 0: [125, 400, 549] -> sorted 549, 400, 125 -> 23.43, 30.81, 32.77; target ||[32, 44]|| = 54.41
      row 1: [5, 25, 61]     -> sorted 61, 25, 5     -> 7.81, 9.27, 9.54;   target ||[9, 12]||  = 15
      row 2: [5, 2500, 244]  -> sorted 2500, 244, 5  -> 50.00, 52.38, 52.43; target ||[41, 54]|| = 67.80
    Every cumulative norm stays below its target (the decoder rows are far from orthogonal, so the
    dense norm exceeds the code norm), hence the nearest is the last prefix: k = 3 for every row.
    """
    pre = torch.tensor([[5.0, 4.0, 3.0], [1.0, 1.0, 1.0], [1.0, 10.0, 2.0]])
    decoder = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    target = torch.linalg.vector_norm(pre @ decoder, dim=-1)
    assert torch.allclose(target, torch.tensor([math.hypot(32, 44), 15.0, math.hypot(41, 54)]))
    norms = torch.linalg.vector_norm(decoder, dim=-1)
    acts, k = activations.topafa(pre, norms, target)
    assert k.tolist() == [3, 3, 3]
    assert torch.equal(acts, pre)
    ref_acts, ref_k = activations.topafa_reference(pre, norms, target)
    assert torch.equal(ref_k, k) and torch.equal(ref_acts, acts)


def test_nearest_prefix_picks_smaller_and_larger_k():
    # unit decoder norms: contributions are pre^2 = [16, 9, 1]; cumulative norms 4, 5, 5.099
    pre = torch.tensor([[4.0, 3.0, 1.0]] * 4)
    norms = torch.ones(3)
    # target 4.4: |4 - 4.4| = 0.4 < |5 - 4.4| = 0.6 -> k = 1; target 4.6 -> k = 2;
    # target 4.5 is equally near 4 and 5 -> the smaller k = 1; target 100 -> all three.
    target = torch.tensor([4.4, 4.6, 4.5, 100.0])
    acts, k = activations.topafa(pre, norms, target)
    assert k.tolist() == [1, 2, 1, 3]
    assert acts[0].tolist() == [4.0, 0.0, 0.0]
    assert acts[1].tolist() == [4.0, 3.0, 0.0]


def test_all_zero_preactivations_give_k1_and_empty_code():
    pre = torch.zeros(2, 5)
    acts, k = activations.topafa(pre, torch.ones(5), torch.tensor([3.0, 0.0]))
    assert k.tolist() == [1, 1]
    assert torch.count_nonzero(acts) == 0


def test_ties_at_the_cut_keep_the_lower_index():
    # contributions [1, 4, 4, 4]; target 2.1 -> k = 1 (norm 2); the three tied 4s: index 1 wins.
    pre = torch.tensor([[1.0, 2.0, 2.0, 2.0]])
    acts, k = activations.topafa(pre, torch.ones(4), torch.tensor([2.1]), candidates=2)
    assert k.tolist() == [1]
    assert acts.tolist() == [[0.0, 2.0, 0.0, 0.0]]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    d_sae=st.integers(1, 80),
    candidates=st.integers(1, 90),
    scale=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**16),
)
def test_fast_path_equals_reference(n, d_sae, candidates, scale, seed):
    g = torch.Generator().manual_seed(seed)
    pre = torch.relu(torch.randn(n, d_sae, generator=g, dtype=torch.float64))
    norms = torch.rand(d_sae, generator=g, dtype=torch.float64) + 0.5
    target = torch.rand(n, generator=g, dtype=torch.float64) * scale * math.sqrt(d_sae)
    acts, k = activations.topafa(pre, norms, target, candidates=candidates)
    ref_acts, ref_k = activations.topafa_reference(pre, norms, target)
    assert torch.equal(k, ref_k)
    assert torch.equal(acts, ref_acts)
    assert (k >= 1).all() and (k <= d_sae).all()


def test_topafa_gradient_flows_to_kept_features_only():
    pre = torch.tensor([[3.0, 0.5, 2.0, 0.1]], requires_grad=True)
    acts, k = activations.topafa(pre, torch.ones(4), torch.tensor([3.6]))
    assert k.item() == 2  # norms 3, 3.606 -> nearest to 3.6 is k=2
    acts.sum().backward()
    assert pre.grad.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_topk_and_batchtopk():
    pre = torch.tensor([[5.0, 1.0, 3.0, 0.0], [0.5, 0.125, 0.0625, 0.25]])
    assert activations.topk(pre, 2).tolist() == [[5.0, 0.0, 3.0, 0.0], [0.5, 0.0, 0.0, 0.25]]
    acts, smallest = activations.batchtopk(pre, 2)  # keeps the 4 largest of the batch
    assert acts.tolist() == [[5.0, 1.0, 3.0, 0.0], [0.5, 0.0, 0.0, 0.0]]
    assert smallest.item() == 0.5


def test_jumprelu_forward_and_threshold_gradient():
    pre = torch.tensor([[0.30, 0.101, 0.05]], requires_grad=True)
    threshold = torch.tensor([0.2, 0.1, 0.1], requires_grad=True)
    out = activations.jumprelu(pre, threshold, 0.01)
    assert torch.allclose(out, torch.tensor([[0.30, 0.101, 0.0]]))
    out.sum().backward()
    # only feature 1 lies within bandwidth/2 of its threshold: d/dtheta = -(theta / eps) * 1
    assert torch.allclose(threshold.grad, torch.tensor([0.0, -10.0, 0.0]))
    assert pre.grad.tolist() == [[1.0, 1.0, 0.0]]
    l0 = activations.jumprelu_l0(pre.detach(), threshold.detach(), 0.01)
    assert l0.item() == 2.0


@pytest.mark.parametrize("d_sae", [1, 7, 300])
def test_topafa_k_bounds(d_sae):
    pre = torch.relu(torch.randn(50, d_sae, dtype=torch.float64))
    pre = pre + (pre > 0) * 0.5  # keep contributions well above rounding in the cumulative sum
    acts, k = activations.topafa(pre, torch.ones(d_sae), torch.full((50,), 1e6))
    # an unreachable target keeps every positive feature; zero contributions add nothing, so
    # the smallest k reaching the largest cumulative norm is the count of positive features
    assert torch.equal(k, (pre > 0).sum(-1).clamp(min=1))
    assert torch.equal(acts, pre)
