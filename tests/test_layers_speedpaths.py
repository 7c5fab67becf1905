"""The CPU fast paths in models/layers.py and models/dropout.py keep PyTorch's semantics.

Fast dropout draws the same Bernoulli(1 − p) masks from another generator; the CPU attention runs
fp32 outside autocast, shortcuts a single key, and applies dropout to the weights itself; the EMA
update is multi-tensor. Each is checked against the plain PyTorch computation it replaces.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fractalgm import FractalGen, get_preset
from fractalgm.models import dropout as dropout_mod
from fractalgm.models.dropout import Dropout, dropout, dropout_noise, set_fast_dropout
from fractalgm.models.layers import KVCache, LlamaBlock, ViTBlock, _cpu_attention, attention, rope_2d_table
from fractalgm.training.optim import EMA


# ---------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_each_element_with_probability_one_minus_p(p):
    n = 200_000
    kept = dropout(torch.ones(n), p) != 0
    # a binomial count: within 6 standard deviations of n(1 − p)
    assert abs(kept.sum().item() - n * (1 - p)) < 6 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dropout_scales_kept_values_as_torch_does(dtype):
    x = torch.randn(64, 33, dtype=dtype)
    y = dropout(x, 0.1)
    scale = torch.tensor(1 / 0.9, dtype=dtype)
    kept = y != 0
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y[kept], x[kept] * scale, rtol=0, atol=0)


def test_dropout_is_fixed_by_the_torch_seed_and_fresh_per_call():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a, b = dropout(x, 0.3), dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3), a)
    assert not torch.equal(a, b)


def test_dropout_identity_cases_and_bad_p():
    x = torch.randn(10)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros(10))
    with pytest.raises(ValueError):
        dropout(x, 1.5)
    with pytest.raises(ValueError):
        Dropout(-0.1)


def test_dropout_gradient_is_the_noise():
    x = torch.randn(500, requires_grad=True)
    y = dropout(x, 0.2)
    y.sum().backward()
    assert torch.equal(x.grad, torch.where(y != 0, torch.tensor(1 / 0.8), torch.tensor(0.0)))


def test_torch_sampler_can_be_restored():
    x = torch.randn(300)
    previous = set_fast_dropout(False)
    try:
        torch.manual_seed(0)
        ours = dropout(x, 0.25)
        torch.manual_seed(0)
        assert torch.equal(ours, F.dropout(x, 0.25, True))
    finally:
        set_fast_dropout(previous)


def test_noise_is_zero_or_the_rounded_scale():
    noise = dropout_noise((4, 1000), 0.1, torch.bfloat16)
    values = set(noise.unique().tolist())
    assert values == {0.0, torch.tensor(1 / 0.9, dtype=torch.bfloat16).item()}


def test_dropout_module_is_a_drop_in_for_nn_dropout():
    m = Dropout(0.3)
    assert isinstance(m, torch.nn.Dropout) and not list(m.parameters())
    x = torch.randn(100)
    assert m.eval()(x) is x


# ---------------------------------------------------------------------------- attention
def _qkv(B=3, H=2, N=7, S=None, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    S = S or N
    return (torch.randn(B, H, N, d, generator=g, dtype=dtype), torch.randn(B, H, S, d, generator=g, dtype=dtype),
            torch.randn(B, H, S, d, generator=g, dtype=dtype))


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_attention_equals_sdpa_in_fp32(causal):
    q, k, v = _qkv()
    assert torch.equal(attention(q, k, v, causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal))


def test_cpu_attention_runs_fp32_under_autocast():
    q, k, v = (t.bfloat16() for t in _qkv())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, True)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_single_key_shortcut_is_bit_exact(dtype):
    q, k, v = _qkv(N=1, dtype=dtype)
    for causal in (False, True):
        assert torch.equal(attention(q, k, v, causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal))


@pytest.mark.parametrize("causal,mask", [(False, None), (True, None), (False, "bool"), (False, "float")])
def test_dropout_attention_without_drops_equals_sdpa(monkeypatch, causal, mask):
    """With every weight kept (noise 1), the dropout path is SDPA's math."""
    q, k, v = _qkv(N=5, S=5)
    attn_mask = None
    if mask == "bool":
        attn_mask = torch.rand(5, 5, generator=torch.Generator().manual_seed(1)) > 0.3
        attn_mask[:, 0] = True
    elif mask == "float":
        attn_mask = torch.randn(5, 5)
    monkeypatch.setattr(dropout_mod, "dropout_noise",
                        lambda shape, p, dtype, generator=None: torch.ones(shape, dtype=dtype))
    out = _cpu_attention(q, k, v, causal, attn_mask, 0.1)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_dropout_attention_drops_weights_and_keeps_shape():
    q, k, v = _qkv(N=6)
    torch.manual_seed(0)
    a = _cpu_attention(q, k, v, True, None, 0.5)
    torch.manual_seed(0)
    b = _cpu_attention(q, k, v, True, None, 0.5)
    assert a.shape == q.shape and torch.equal(a, b)
    assert not torch.allclose(a, F.scaled_dot_product_attention(q, k, v, is_causal=True))


# ---------------------------------------------------------------------------- blocks
def test_kv_cache_decoding_equals_the_full_causal_pass():
    torch.manual_seed(0)
    block = LlamaBlock(32, 4, 0.0, 0.1).eval()
    rope = rope_2d_table(3, 8)  # 1 condition + 9 tokens
    x = torch.randn(2, 10, 32)
    full = block(x, rope)
    cache = KVCache(2, 4, 10, 8, x.device, x.dtype)
    steps = [block(x[:, s:s + 1], rope[s:s + 1], cache, s) for s in range(10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    # a multi-token chunk (masked within the chunk), then single tokens
    cache = KVCache(2, 4, 10, 8, x.device, x.dtype)
    chunks = [block(x[:, :4], rope[:4], cache, 0)]
    chunks += [block(x[:, s:s + 1], rope[s:s + 1], cache, s) for s in range(4, 10)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-5, atol=1e-5)


def test_vit_block_train_mode_draws_dropout_and_eval_mode_does_not():
    torch.manual_seed(0)
    block = ViTBlock(32, 4, attn_drop=0.1, proj_drop=0.1)
    x = torch.randn(3, 9, 32)
    block.eval()
    assert torch.equal(block(x), block(x))
    block.train()
    torch.manual_seed(1)
    a = block(x)
    torch.manual_seed(1)
    assert torch.equal(block(x), a) and not torch.equal(a, block.eval()(x))


def test_training_step_is_reproducible_from_the_seed():
    torch.manual_seed(0)
    model = FractalGen(get_preset("tiny_fmnist")).train()
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(4)
    losses = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(model(x, y).item())
    assert losses[0] == losses[1] != losses[2]


# ---------------------------------------------------------------------------- EMA
def test_ema_update_equals_the_per_tensor_loop_bit_for_bit():
    torch.manual_seed(0)
    model = FractalGen(get_preset("tiny_fmnist"))
    ema = EMA(model, 0.99)
    ref = {k: v.clone() for k, v in ema.shadow.items()}
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.99, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            ref[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
        ema.update(model, step)
    assert all(torch.equal(ref[k], ema.shadow[k]) for k in ref)


def test_ema_follows_a_bfloat16_model():
    torch.manual_seed(0)
    model = FractalGen(get_preset("tiny_fmnist"))
    ema = EMA(model, 0.5)
    model.bfloat16()
    ema.update(model, 100)
    assert all(v.dtype == torch.float32 for v in ema.shadow.values())
