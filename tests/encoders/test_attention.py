"""Attention: both execution paths against each other and against a from-scratch reference."""
import math

import pytest
import torch

from multimodal.encoders.attention import Attention, choose_backend, scaled_dot_product


@torch.no_grad()
def reference_attention(x, module, *, causal=False, padding_mask=None):
    """Textbook multi-head attention, one head and one query at a time, in float64."""
    x = x.double()
    B, T, C = x.shape
    H = module.num_heads
    D = C // H
    w_qkv, b_qkv = module.qkv.weight.double(), module.qkv.bias.double()
    q_all, k_all, v_all = (x @ w_qkv.T + b_qkv).split(C, dim=-1)
    out = torch.zeros(B, T, C, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            q, k, v = (t[b, :, h * D : (h + 1) * D] for t in (q_all, k_all, v_all))
            for i in range(T):
                scores = []
                for j in range(T):
                    masked = (causal and j > i) or (padding_mask is not None and bool(padding_mask[b, j]))
                    scores.append(-math.inf if masked else float(q[i] @ k[j]) / math.sqrt(D))
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                out[b, i, h * D : (h + 1) * D] = sum(w / total * v[j] for j, w in enumerate(weights))
    return out @ module.proj.weight.double().T + module.proj.bias.double()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_padding", [False, True])
def test_paths_match_reference(causal, with_padding):
    torch.manual_seed(0)
    module = Attention(16, 4)
    with torch.no_grad():  # biases start at zero; random ones keep them in the comparison
        module.qkv.bias.normal_()
        module.proj.bias.normal_()
    x = torch.randn(2, 6, 16)
    padding = None
    if with_padding:
        padding = torch.zeros(2, 6, dtype=torch.bool)
        padding[1, 4:] = True
    expected = reference_attention(x, module, causal=causal, padding_mask=padding).float()
    for backend in ("fused", "explicit"):
        module.backend = backend
        got = module(x, is_causal=causal, padding_mask=padding)
        valid = slice(None) if padding is None else ~padding  # outputs at padded queries are unspecified
        torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_paths_agree_in_backward():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 8, requires_grad=True) for _ in range(3))
    padding = torch.zeros(2, 33, dtype=torch.bool)
    padding[0, 30:] = True
    grads = {}
    for backend in ("fused", "explicit"):
        out = scaled_dot_product(q, k, v, is_causal=True, padding_mask=padding, backend=backend)
        grads[backend] = torch.autograd.grad(out.square().sum(), (q, k, v))
    for a, b in zip(grads["fused"], grads["explicit"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_auto_choice_follows_measurements():
    cpu = torch.device("cpu")
    assert choose_backend(77, torch.bfloat16, cpu, needs_grad=True) == "explicit"
    assert choose_backend(512, torch.bfloat16, cpu, needs_grad=True) == "explicit"
    assert choose_backend(1214, torch.bfloat16, cpu, needs_grad=True) == "fused"
    assert choose_backend(77, torch.float32, cpu, needs_grad=True) == "explicit"
    assert choose_backend(197, torch.float32, cpu, needs_grad=True) == "fused"
    assert choose_backend(77, torch.float32, cpu, needs_grad=False) == "fused"
    assert choose_backend(77, torch.bfloat16, cpu, needs_grad=False) == "explicit"
    assert choose_backend(1214, torch.bfloat16, cpu, needs_grad=False) == "fused"
    assert choose_backend(77, torch.bfloat16, torch.device("cuda"), needs_grad=True) == "fused"


def test_bf16_paths_close_to_fp32():
    torch.manual_seed(0)
    module = Attention(64, 4)
    x = torch.randn(2, 20, 64)
    expected = module(x)
    for backend in ("fused", "explicit"):
        module.backend = backend
        got = module.to(torch.bfloat16)(x.bfloat16()).float()
        module.float()
        assert (got - expected).abs().max() < 5e-2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="not divisible"):
        Attention(10, 3)
    with pytest.raises(ValueError, match="unknown attention backend"):
        Attention(8, 2, backend="flash")


def test_initialised_as_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(256, 4)
    reference = torch.nn.MultiheadAttention(256, 4, batch_first=True)
    for mine, theirs in ((ours.qkv.weight, reference.in_proj_weight), (ours.proj.weight, reference.out_proj.weight)):
        # std of 65,536+ draws: relative standard error under 0.3%
        assert mine.std().item() == pytest.approx(theirs.std().item(), rel=0.02)
    assert ours.qkv.weight.std().item() == pytest.approx((2 * 256) ** -0.5, rel=0.02)  # Xavier on (3C, C)
    assert not ours.qkv.bias.any() and not ours.proj.bias.any()
