"""Transformer building blocks shared by the generators and the pixel heads.

Two families, as in the reference:
* `ViTBlock` (timm-style pre-LN block: LayerNorm, MHSA with biases, GELU MLP) used by MAR levels
  (bidirectional) and pixel heads (causal);
* `LlamaBlock` (LlamaGen-style: RMSNorm, bias-free attention with 2-D RoPE, SwiGLU) used by AR
  levels, with a KV cache for one-token-at-a-time sampling.
Attention runs through `F.scaled_dot_product_attention`. Module names match the reference so its
state_dicts load unchanged.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from .dropout import Dropout
from .dropout import dropout as fast_dropout

# cuDNN attention failed on H200 (torch 2.11) for many short sequences; the other kernels are exact
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_MAX_CUDA_BATCH = 32768  # CUDA grids cap one dimension at 65535: split bigger batches


def attention(q, k, v, causal: bool = False, mask=None, dropout: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, N, d).

    On CPU, low-precision inputs run in fp32 (autocast is switched off around it: CPU autocast
    would otherwise run SDPA in bf16 again), where PyTorch's CPU kernels are several times faster
    than in bf16; see `_cpu_attention`. On CUDA, cuDNN is avoided and very large batches (lower
    levels see thousands of short sequences) are split into chunks.
    """
    if q.device.type == "cpu":
        return _cpu_attention(q, k, v, causal, mask, dropout)
    if q.device.type == "cuda":
        with sdpa_kernel(_CUDA_BACKENDS):
            if q.size(0) <= _MAX_CUDA_BATCH:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
            return torch.cat([F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, dropout_p=dropout,
                                                             is_causal=causal)
                              for qc, kc, vc in zip(q.split(_MAX_CUDA_BATCH), k.split(_MAX_CUDA_BATCH),
                                                    v.split(_MAX_CUDA_BATCH))])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)


def _cpu_attention(q, k, v, causal: bool, mask, dropout: float) -> torch.Tensor:
    """CPU attention in (at least) fp32, returned in v's dtype (q and k may already be fp32).

    * One key and no dropout (a C = 1 pixel head's single token): the softmax weight is exactly 1,
      so the output is `v`, bit for bit what the kernel returns.
    * No dropout: SDPA's fused CPU (flash) kernel.
    * Dropout: SDPA would fall back to its unfused math path with PyTorch's slow CPU Bernoulli
      sampler; the same math runs here with `fast dropout` on the attention weights.
    """
    dtype = v.dtype
    if q.size(-2) == 1 and k.size(-2) == 1 and mask is None and dropout == 0.0:
        return v
    with torch.autocast("cpu", enabled=False) if torch.is_autocast_enabled("cpu") else nullcontext():
        q, k, v = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in (q, k, v))
        if dropout == 0.0:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        else:
            scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)
            if causal:
                n, s = scores.shape[-2:]  # top-left aligned, as SDPA's is_causal
                scores = scores.masked_fill(torch.ones(n, s, dtype=torch.bool, device=q.device).triu(1),
                                            float("-inf"))
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            out = fast_dropout(scores.softmax(-1), dropout) @ v
    return out.to(dtype)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpointing: bool, *args) -> torch.Tensor:
    """Apply `blocks` in turn, recomputing activations in backward when `checkpointing`."""
    for block in blocks:
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, *args, use_reentrant=False)
        else:
            x = block(x, *args)
    return x


# ---------------------------------------------------------------------------- timm-style ViT block
class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, N, D = x.shape
        return self.proj_drop(self.proj(self.heads(x, causal).reshape(B, N, D)))

    def heads(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """The attention output per head, (B, N, H, d), before the output projection."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        p = self.attn_drop if self.training else 0.0
        return attention(q, k, v, causal, dropout=p).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class ViTBlock(nn.Module):
    """Pre-LN transformer block (LayerNorm eps 1e-6, MLP ratio 4); `causal` for the pixel heads."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 causal: bool = False):
        super().__init__()
        self.causal = causal
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, proj_drop)

    def forward(self, x):
        x = x + self.attn(self.norm1(x), self.causal)
        return x + self.mlp(self.norm2(x))

    def forward_at(self, x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """`forward(x)[where]` (T, D) for a bool mask (B, N), computing the projection and MLP only there.

        Attention still reads every token; only the per-token work after it is restricted. Those are
        the same row-wise operations on fewer rows, so the outputs are `forward`'s.
        """
        out = self.attn.heads(self.norm1(x), self.causal)[where]  # (T, H, d)
        y = x[where] + self.attn.proj(out.flatten(1))
        return y + self.mlp(self.norm2(y))


# ---------------------------------------------------------------------------- LlamaGen-style AR block
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def swiglu_hidden(dim: int, multiple_of: int = 256) -> int:
    """LlamaGen's FFN width: round_up(floor(2·4·dim/3), 256) (1024 → 2816, 512 → 1536)."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class FeedForward(nn.Module):
    def __init__(self, dim: int, drop: float):
        super().__init__()
        hidden = swiglu_hidden(dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = Dropout(drop)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rope_2d_table(grid: int, head_dim: int, num_cond: int = 1, base: float = 10000.0) -> torch.Tensor:
    """(num_cond + grid², head_dim/2, 2) cos/sin table of LlamaGen's 2-D RoPE.

    Pair j < head_dim/4 rotates by row·ω_j, pair head_dim/4 + j by column·ω_j, ω_j = base^(-4j/head_dim).
    The leading condition rows are all zeros (cos = sin = 0), as in the reference: the condition
    token's query and key become zero, so it acts only through its value.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    f = torch.outer(torch.arange(grid, dtype=torch.float32), freqs)  # (G, d/4)
    grid_f = torch.cat([f[:, None, :].expand(-1, grid, -1), f[None, :, :].expand(grid, -1, -1)], dim=-1)
    table = torch.stack([torch.cos(grid_f), torch.sin(grid_f)], dim=-1).flatten(0, 1)  # (G², d/2, 2)
    return torch.cat([torch.zeros(num_cond, half, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, N, H, d) by table (N, d/2, 2), in fp32; returns `dtype` (x's)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    t = table.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * t[..., 0] - xs[..., 1] * t[..., 1],
                       xs[..., 1] * t[..., 0] + xs[..., 0] * t[..., 1]], dim=-1)
    return out.flatten(3).to(dtype or x.dtype)


class KVCache:
    """Keys and values of the tokens decoded so far, one (rows, H, S, d) buffer pair per block."""

    def __init__(self, rows: int, num_heads: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.zeros(rows, num_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor):
        n = k.size(2)
        self.k[:, :, pos:pos + n] = k
        self.v[:, :, pos:pos + n] = v
        return self.k[:, :, :pos + n], self.v[:, :, :pos + n]


class LlamaAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float, resid_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_drop = attn_drop
        self.resid_dropout = Dropout(resid_drop)

    def forward(self, x, rope, cache: KVCache | None = None, pos: int = 0):
        B, N, D = x.shape
        q, k, v = self.wqkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).unbind(2)
        # CPU attention runs in fp32 anyway: rotated low-precision q, k stay fp32 rather than round-trip
        wide = torch.promote_types(q.dtype, torch.float32) if cache is None and x.device.type == "cpu" else None
        q, k = apply_rope(q, rope, wide), apply_rope(k, rope, wide)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
        p = self.attn_drop if self.training else 0.0
        if cache is None:
            out = attention(q, k, v, True, dropout=p)
        else:  # decoding N new tokens at positions pos..pos+N-1 against everything cached so far
            k, v = cache.update(pos, k, v)
            # one new token sees every cached one: no mask needed (an all-True mask adds exact zeros)
            mask = None if N == 1 else torch.ones(N, pos + N, dtype=torch.bool, device=x.device).tril(pos)
            out = attention(q, k.to(q.dtype), v.to(q.dtype), mask=mask)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(B, N, D)))


class LlamaBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, drop: float = 0.1):
        super().__init__()
        self.attention_norm = RMSNorm(dim)
        self.attention = LlamaAttention(dim, num_heads, attn_drop, drop)
        self.ffn_norm = RMSNorm(dim)
        self.feed_forward = FeedForward(dim, drop)

    def forward(self, x, rope, cache: KVCache | None = None, pos: int = 0):
        h = x + self.attention(self.attention_norm(x), rope, cache, pos)
        return h + self.feed_forward(self.ffn_norm(h))


def init_weights(module: nn.Module):
    """Reference initialisation: Xavier-uniform Linear weights, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)
