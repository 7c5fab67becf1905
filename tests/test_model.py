"""Model behaviour on tiny CPU configs: shapes, causality, exact likelihoods, sampling, gradients, I/O."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import build, gen, perturb, random_images, tiny_config
from fractalgm import FractalConfig, FractalGen, LevelConfig, PixelHeadConfig, make_scoring, likelihood
from fractalgm.likelihood import truncated_normal_ratio
from fractalgm.models import ARGenerator, Conditions, LevelSpec, MARGenerator, PixelHead
from fractalgm.models.layers import KVCache
from fractalgm.patchify import patchify, unpatchify
from fractalgm.sampling import SamplePlan, guided_logits, sample_categorical

LN256 = math.log(256)

# (kinds, extra config options): every generator kind, mixed hierarchies, C ∈ {1, 3}, guiding pixel,
# 2 and 3 generator levels, channel orders rgb / bgr / grb.
CONFIGS = {
    "ar-ar": (("ar", "ar"), dict()),
    "mar-mar": (("mar", "mar"), dict(channel_order="bgr")),
    "ar-mar-c1": (("ar", "mar"), dict(channels=1)),
    "mar-ar-grb": (("mar", "ar"), dict(channel_order="grb", num_conds=1)),
    "mar-mar-gp-c1": (("mar", "mar"), dict(channels=1, guiding_pixel=True)),
    "ar-mar-gp": (("ar", "mar"), dict(guiding_pixel=True, channel_order="grb")),
    "mar-mar-mar-gp": (("mar", "mar", "mar"), dict(guiding_pixel=True)),
    "ar-ar-ar-c1": (("ar", "ar", "ar"), dict(channels=1)),
    "mar-ar-mar-gp": (("mar", "ar", "mar"), dict(guiding_pixel=True, num_conds=3, channel_order="bgr")),
    "ar-mar-ar": (("ar", "mar", "ar"), dict(num_conds=5)),
}


def config(name, **kw) -> FractalConfig:
    kinds, opts = CONFIGS[name]
    return tiny_config(kinds, **{**opts, **kw})


def num_guides(cfg: FractalConfig) -> int:
    return sum(cfg.has_guiding_pixel(i) for i in range(len(cfg.levels)))


def random_patches(g, rows: int, seed: int = 0) -> torch.Tensor:
    """Random integer patches (rows, L, C, p, p) for generator `g`."""
    p = g.cfg.patch_size
    return torch.randint(0, 256, (rows, g.cfg.seq_len, g.spec.channels, p, p), generator=gen(seed))


# ---------------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_and_dtypes(name):
    cfg = config(name)
    model = build(cfg)
    B, C, S = 2, cfg.channels, cfg.image_size
    images, labels = random_images(cfg, B), torch.tensor([3, 7])

    model.train()
    loss = model(images, labels)
    assert loss.shape == () and loss.dtype == torch.float32 and loss.requires_grad and torch.isfinite(loss)
    terms = likelihood.terms(model, images, labels, make_scoring("train", gen(0)))
    want_names = {"pixel"} | {f"guiding_pixel_level{i}" for i in range(len(cfg.levels)) if cfg.has_guiding_pixel(i)}
    assert {t.name for t in terms} == want_names
    for t in terms:
        assert t.ce.shape == (t.owner.numel(), C) and t.weight.shape == t.owner.shape
    model.eval()

    exact = all(k == "ar" for k in CONFIGS[name][0])
    res = model.nll(images, passes=2, generator=gen(0))
    assert res.nats.shape == (B,) and res.nats.dtype == torch.float64 and torch.isfinite(res.nats).all()
    assert res.exact == exact and res.num_dims == C * S * S
    assert res.bpd.shape == (B,)
    assert torch.allclose(res.bpd, res.nats / (C * S * S * math.log(2)))
    if exact:
        assert res.stderr is None
    else:
        assert res.stderr.shape == (B,) and res.passes == 2
    ex = model.nll(images, exact=True, generator=gen(0))
    assert ex.exact and ex.nats.shape == (B,)
    # at initialisation every sub-pixel (and every guiding-pixel value) costs about ln 256 nats
    values = C * S * S + sum(C * (S // lv.image_size) ** 2 for i, lv in enumerate(cfg.levels)
                             if cfg.has_guiding_pixel(i))
    assert (ex.nats / values - LN256).abs().max() < 0.1

    out = model.sample(labels, generator=gen(0))
    assert out.dtype == torch.uint8 and out.shape == (B, C, S, S)
    out = model.sample(num_images=3, generator=gen(0))
    assert out.shape == (3, C, S, S)
    out = model.sample(labels, cfg_scale=2.0, cfg_schedule="linear", temperature=0.9, generator=gen(0))
    assert out.dtype == torch.uint8 and out.shape == (B, C, S, S)
    assert model.sample(labels[:1], num_iter=2, generator=gen(0)).shape == (1, C, S, S)


@pytest.mark.parametrize("name", ["ar-ar", "mar-mar", "mar-mar-mar-gp", "ar-mar-gp", "mar-ar-mar-gp"])
def test_initial_loss_is_ln256_per_head(name):
    cfg = config(name)
    model = build(cfg)
    images, labels = random_images(cfg, 4), torch.arange(4)
    want = (1 + num_guides(cfg)) * LN256
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.no_grad():
            assert abs(model(images, labels).item() - want) < 0.1, mode


# ---------------------------------------------------------------------------- causality
def test_ar_predict_is_causal():
    model = build(config("ar-ar"))
    g = model.generator
    R, L = 3, g.cfg.seq_len
    tokens, cond = random_patches(g, R), torch.randn(R, g.cond_emb.in_features)
    with torch.no_grad():
        out = g.predict(tokens, None, Conditions(cond)).middle
        assert out.shape == (R, L, g.cfg.width)
        for t in range(L):
            changed = tokens.clone()
            changed[:, t] = (tokens[:, t] + 1 + torch.randint_like(tokens[:, t], 255)) % 256
            out2 = g.predict(changed, None, Conditions(cond)).middle
            # output t conditions token t: it has seen tokens < t only
            assert torch.allclose(out2[:, : t + 1], out[:, : t + 1], atol=1e-6), t
            if t + 1 < L:
                assert (out2[:, t + 1:] - out[:, t + 1:]).abs().amax(-1).min() > 1e-4, t
        # the condition (zero RoPE, value only) reaches every position
        out3 = g.predict(tokens, None, Conditions(torch.randn_like(cond))).middle
        assert (out3 - out).abs().amax(-1).min() > 1e-4


@pytest.mark.parametrize("num_conds,guide", [(5, False), (1, False), (5, True)])
def test_mar_masked_token_values_are_invisible(num_conds, guide):
    cfg = tiny_config(("mar", "mar"), num_conds=num_conds, guiding_pixel=guide)
    model = build(cfg)
    level = model.next_fractal if guide else model  # the guided MAR level is level 1
    g = level.generator
    R, L = 4, g.cfg.seq_len
    tokens = random_patches(g, R)
    mask = torch.rand(R, L, generator=gen(1)) < 0.5
    mask[:, 0], mask[:, 1] = True, False
    each = [torch.randn(R, g.cond_emb.in_features) for _ in range(num_conds)]
    conds = Conditions(each[0], tuple(each[1:]), torch.randn(R, cfg.channels) if guide else None)
    hidden = mask.view(R, L, 1, 1, 1)
    with torch.no_grad():
        maps = g.predict(tokens, mask, conds)
        assert len(maps.tokens) == 5 and all(m.shape == (R, L, g.cfg.width) for m in maps.tokens)
        changed = torch.where(hidden, random_patches(g, R, seed=2), tokens)
        for a, b in zip(maps.tokens, g.predict(changed, mask, conds).tokens):
            assert torch.equal(a, b)
        visible = torch.where(~hidden, (tokens + 1 + random_patches(g, R, seed=3) % 255) % 256, tokens)
        assert (g.predict(visible, mask, conds).middle - maps.middle).abs().amax(-1).min() > 1e-4
        # neighbour maps are shifted copies of the middle one, zero outside the grid
        G = g.cfg.grid
        mid = maps.middle.view(R, G, G, -1)
        top, right, bottom, left = (m.view(R, G, G, -1) for m in maps.neighbours)
        assert torch.equal(top[:, 1:], mid[:, :-1]) and not top[:, 0].any()
        assert torch.equal(bottom[:, :-1], mid[:, 1:]) and not bottom[:, -1].any()
        assert torch.equal(right[:, :, :-1], mid[:, :, 1:]) and not right[:, :, -1].any()
        assert torch.equal(left[:, :, 1:], mid[:, :, :-1]) and not left[:, :, 0].any()


def test_pixel_head_is_causal_in_generation_order():
    for names, order in (("rgb", "grb"), ("rgb", "rgb"), ("rgb", "bgr"), ("l", "l")):
        torch.manual_seed(0)
        head = PixelHead(PixelHeadConfig(16, 2, 2), 8, names, order).eval()
        M, C = 64, len(names)
        values, cond = torch.randint(0, 256, (M, C)), torch.randn(M, 8)
        with torch.no_grad():
            ce = head.cross_entropy(values, cond)
            assert ce.shape == (M, C)
            for k, ch in enumerate(head.order):
                assert names[ch] == order[k]
                changed = values.clone()
                changed[:, ch] = (values[:, ch] + 1 + torch.randint(0, 255, (M,))) % 256
                ce2 = head.cross_entropy(changed, cond)
                assert torch.equal(ce2[:, :k], ce[:, :k]), (order, k)
                assert ((ce2[:, k] - ce[:, k]).abs() > 0).all(), (order, k)
                if k + 1 < C:
                    assert ((ce2[:, k + 1:] - ce[:, k + 1:]).abs() > 0).any()


@pytest.mark.parametrize("name", ["mar-mar", "ar-ar", "ar-mar-c1", "mar-ar-grb"])
def test_exact_scoring_is_sequential(name):
    """Exact mode, raster order: each sub-pixel's cross-entropy depends only on earlier sub-pixels."""
    cfg = config(name)
    model = perturb(build(cfg))
    images = random_images(cfg, 2, seed=3)
    L0, p, L1 = cfg.levels[0].seq_len, cfg.levels[0].patch_size, cfg.levels[1].seq_len
    G0, C = cfg.levels[0].grid, cfg.channels
    order = [cfg.channel_order.index(n) for n in ("rgb" if C == 3 else "l")]  # channel index → generation position

    def pixel_ce(imgs):
        with torch.no_grad():
            terms = likelihood.terms(model, imgs, None, make_scoring("exact", order="raster"))
        (t,) = [t for t in terms if t.name == "pixel"]
        assert torch.equal(t.owner, torch.arange(2).repeat_interleave(L0 * L1))
        return t.ce.view(2, L0, L1, C)  # image, patch (raster), pixel in patch (raster), gen position

    ce = pixel_ce(images)
    for j, s, ch in [(0, 0, 0), (1, 2, C - 1), (L0 // 2, 1, 0), (L0 - 1, L1 - 1, C - 1), (5, 3, C // 2)]:
        y, x = (j // G0) * p + s // p, (j % G0) * p + s % p
        changed = images.clone()
        changed[:, ch, y, x] = (changed[:, ch, y, x].int() + 128) % 256
        ce2 = pixel_ce(changed)
        before = torch.zeros(L0, L1, C, dtype=torch.bool)
        before[:j] = True
        before[j, :s] = True
        before[j, s, : order[ch]] = True
        assert torch.equal(ce2[:, before], ce[:, before]), (j, s, ch)
        assert ((ce2[:, j, s, order[ch]] - ce[:, j, s, order[ch]]).abs() > 0).all()
        if (~before).sum() > 1:  # something later depends on the changed value
            assert (ce2[:, ~before] != ce[:, ~before]).sum() > 1


# ---------------------------------------------------------------------------- AR decoding
def test_ar_kv_cache_decoding_matches_full_pass():
    model = build(config("ar-ar"))
    g = model.generator
    R, L = 3, g.cfg.seq_len
    tokens, cond = random_patches(g, R), torch.randn(R, g.cond_emb.in_features)
    with torch.no_grad():
        full = g.predict(tokens, None, Conditions(cond)).middle
        seq = torch.cat([g.cond_emb(cond).unsqueeze(1), g.patch_emb(g.embed(tokens))], dim=1)  # (R, L+1, D)

        def decode(chunks):
            caches = [KVCache(R, g.cfg.num_heads, L + 1, g.cfg.head_dim, "cpu", torch.float32) for _ in g.blocks]
            outs, pos = [], 0
            for n in chunks:
                x = g.patch_emb_ln(seq[:, pos:pos + n] + g.pos_embed_learned[:, pos:pos + n])
                for block, cache in zip(g.blocks, caches):
                    x = block(x, g.rope[pos:pos + n], cache, pos)
                outs.append(g.norm(x))
                pos += n
            return torch.cat(outs, dim=1)[:, :L]

        one_by_one = decode([1] * L)
        assert (one_by_one - full).abs().max() < 1e-5
        chunked = decode([3, 1, 5] + [1] * (L - 8))
        assert (chunked - full).abs().max() < 1e-5


def brute_force_sample(level, conds, opts: SamplePlan, schedule: str) -> torch.Tensor:
    """AR-only hierarchies: every step re-runs the full causal pass on the canvas (no cache)."""
    g, C = level.generator, level.spec.channels
    L, p = g.cfg.seq_len, g.cfg.patch_size
    M = conds[0].size(0) // 2 if opts.guided else conds[0].size(0)
    canvas = torch.zeros(M, L, C, p, p, dtype=torch.long)
    for s in range(L):
        tokens = canvas
        if opts.guided:
            tokens = torch.cat([tokens, tokens])
        cond = g.predict(tokens, None, Conditions(conds[0])).middle[:, s]
        scale = 1 + (opts.cfg_scale - 1) * (s + 1) / L if schedule == "linear" else opts.cfg_scale
        step = SamplePlan(scale, opts.temperature, opts.filter_threshold, opts.generator)
        if isinstance(level.next_fractal, PixelHead):
            canvas[:, s] = level.next_fractal.sample(cond, step).view(M, C, 1, 1)
        else:
            canvas[:, s] = brute_force_sample(level.next_fractal, [cond], step, "constant")
    return unpatchify(canvas)


@pytest.mark.parametrize("cfg_scale,schedule", [(1.0, "constant"), (3.0, "linear"), (2.0, "constant")])
def test_ar_sample_equals_brute_force(cfg_scale, schedule):
    cfg = tiny_config(("ar", "ar"), channel_order="grb")
    model = perturb(build(cfg))
    labels = torch.tensor([1, 4])
    fast = model.sample(labels, cfg_scale=cfg_scale, cfg_schedule=schedule, temperature=0.9, generator=gen(7))
    with torch.no_grad():
        cond = model.class_emb(labels)
        if cfg_scale != 1.0:
            cond = torch.cat([cond, model.fake_latent.expand(2, -1)])
        slow = brute_force_sample(model, [cond], SamplePlan(cfg_scale, 0.9, 1e-4, gen(7)), schedule)
    assert torch.equal(fast, slow.to(torch.uint8))


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ["mar-mar-mar-gp", "ar-mar-gp", "mar-ar-mar-gp", "ar-ar"])
def test_every_parameter_gets_a_gradient(name):
    cfg = config(name, label_drop_prob=0.5, dropout=0.1)
    model = build(cfg).train()
    images, labels = random_images(cfg, 4), torch.tensor([0, 1, 2, 3])
    for seed in (0, 1):
        torch.manual_seed(seed)
        model(images, labels).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# ---------------------------------------------------------------------------- sampling API
@pytest.mark.parametrize("name", ["mar-mar-gp-c1", "ar-mar-gp"])
def test_sampling_seeds_and_cfg(name):
    model = build(config(name))
    perturb(model)  # at initialisation the heads are near uniform and conditions barely matter
    labels = torch.tensor([2, 5])
    a = model.sample(labels, generator=gen(1))
    assert torch.equal(a, model.sample(labels, generator=gen(1)))
    assert not torch.equal(a, model.sample(labels, generator=gen(2)))
    # cfg = 1 is no guidance, whatever the schedule
    assert torch.equal(a, model.sample(labels, cfg_scale=1.0, generator=gen(1)))
    assert torch.equal(a, model.sample(labels, cfg_scale=1.0, cfg_schedule="linear", generator=gen(1)))
    # the label matters, and so does guidance
    assert not torch.equal(a, model.sample(num_images=2, generator=gen(1)))
    guided = model.sample(labels, cfg_scale=4.0, generator=gen(1))
    assert not torch.equal(a, guided)
    assert torch.equal(guided, model.sample(labels, cfg_scale=4.0, generator=gen(1)))
    assert not torch.equal(guided, model.sample(labels, cfg_scale=4.0, cfg_schedule="linear", generator=gen(1)))
    # unconditional sampling is reproducible too
    assert torch.equal(model.sample(num_images=2, generator=gen(3)), model.sample(num_images=2, generator=gen(3)))


@pytest.mark.parametrize("kind", ["ar", "mar"])
@pytest.mark.parametrize("cfg_scale,temperature", [(1.0, 1.0), (1.0, 0.6), (3.0, 1.5)])
@pytest.mark.parametrize("fast", [False, True])
def test_samples_follow_the_model_distribution(kind, cfg_scale, temperature, fast):
    """1×1 grey images: sample frequencies match softmax((u + cfg·(c − u))/T) built from the likelihoods,
    with the exact draw and with the fast path's Gumbel draw."""
    model = perturb(build(single_level(kind, size=1, num_classes=3)), std=0.5)
    values = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    label = torch.tensor([2])
    c = -model.nll(values, label.expand(256), exact=True).nats  # log p(v | class)
    u = -model.nll(values, exact=True).nats  # log p(v) unconditional
    assert (c - u).abs().max() > 0.5  # the class matters
    probs = torch.softmax((u + cfg_scale * (c - u)) / temperature, 0)
    N = 20_000
    out = model.sample(label.expand(N), cfg_scale=cfg_scale, temperature=temperature, filter_threshold=0.0,
                       generator=gen(11), fast=fast)
    counts = torch.bincount(out.flatten().long(), minlength=256).double()
    expected = N * probs
    keep = expected > 5
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    df = int(keep.sum()) - 1
    assert chi2 < df + 6 * (2 * df) ** 0.5, (chi2, df)
    assert counts[~keep].sum() < 5 * max(1.0, expected[~keep].sum().item())


def test_mar_sampling_conditions_on_revealed_tokens(monkeypatch):
    """Every step sees the tokens revealed so far (and never changes them); every token is revealed once."""
    cfg = tiny_config(("mar", "mar"), guiding_pixel=True)
    model = perturb(build(cfg))
    calls = []
    predict = model.generator.predict

    def recording_predict(tokens, mask, conds, *count):
        calls.append((tokens.clone(), mask.clone()))
        return predict(tokens, mask, conds, *count)

    monkeypatch.setattr(model.generator, "predict", recording_predict)
    labels = torch.tensor([1, 2])
    images = model.sample(labels, cfg_scale=2.0, num_iter=[5, 4], generator=gen(4))
    final = patchify(images.long(), 2)  # (B, L, C, p, p) level-0 tokens of the result
    final = torch.cat([final, final])  # conditional and unconditional halves see the same canvas
    assert len(calls) == 5
    prev = torch.ones_like(calls[0][1])
    for tokens, mask in calls:
        assert ((prev | ~mask)).all()  # revealed tokens stay revealed
        assert torch.equal(tokens[~mask], final[~mask])
        prev = mask
    assert calls[0][1].all() and calls[-1][1].any()


def test_sampling_embeds_the_sampled_guiding_pixel(monkeypatch):
    cfg = tiny_config(("mar", "mar"), guiding_pixel=True)
    model = perturb(build(cfg))
    level = model.next_fractal
    head = level.generator.guiding_pixel_head
    sampled, seen = [], []
    guide_sample, predict = head.sample, level.generator.predict

    def recording_sample(cond, opts):
        out = guide_sample(cond, opts)
        sampled.append(out)
        return out

    def recording_predict(tokens, mask, conds, *count):
        seen.append((len(sampled), conds.guiding_pixel.clone()))
        return predict(tokens, mask, conds, *count)

    monkeypatch.setattr(head, "sample", recording_sample)
    monkeypatch.setattr(level.generator, "predict", recording_predict)
    for cfg_scale in (1.0, 2.0):
        sampled.clear(), seen.clear()
        model.sample(torch.tensor([3, 4]), cfg_scale=cfg_scale, num_iter=[3, 4], generator=gen(2))
        assert len(sampled) == 3 and len(seen) == 3 * 4
        for n, g in seen:
            values = sampled[n - 1]
            assert values.dtype == torch.long and values.min() >= 0 and values.max() <= 255
            want = (values.float() / 255 - torch.tensor(cfg.pixel_mean)) / torch.tensor(cfg.pixel_std)
            if cfg_scale != 1.0:
                want = torch.cat([want, want])
            assert torch.allclose(g, want)


@pytest.mark.parametrize("order,cfg_scale,temperature", [("grb", 1.0, 1.0), ("bgr", 3.0, 0.8), ("l", 2.0, 1.3)])
def test_pixel_head_sampling_matches_its_likelihood(order, cfg_scale, temperature):
    """PixelHead.sample draws each channel from softmax(guided(−CE over the 256 candidates)), same RNG."""
    names = "l" if order == "l" else "rgb"
    torch.manual_seed(0)
    head = perturb(PixelHead(PixelHeadConfig(16, 1, 2), 8, names, order).eval(), std=0.5)
    M, C = 64, len(names)
    opts = SamplePlan(cfg_scale, temperature, 1e-3, None)
    cond = torch.randn(2 * M if opts.guided else M, 8)
    fast = head.sample(cond, SamplePlan(cfg_scale, temperature, 1e-3, gen(5)))
    g = gen(5)
    values = torch.zeros(M, C, dtype=torch.long)
    with torch.no_grad():
        for pos, ch in enumerate(head.order):
            ctx = torch.cat([values, values]) if opts.guided else values
            cand = ctx.repeat_interleave(256, 0)
            cand[:, ch] = torch.arange(256).repeat(ctx.size(0))
            logp = -head.cross_entropy(cand, cond.repeat_interleave(256, 0))[:, pos].view(-1, 256)
            step = SamplePlan(cfg_scale, temperature, 1e-3, g)
            values[:, ch] = sample_categorical(guided_logits(logp, step), g)
    assert torch.equal(fast, values)


def fake_child(record, C=3, p=1):
    def child(sub_conds, step_opts, index):
        rows, positions = index
        record.append(dict(n=rows.numel(), conds=sub_conds.middle.size(0), cfg=float(step_opts.cfg_scale),
                           rows=rows.clone(), positions=positions.clone()))
        return torch.zeros(rows.numel(), C, p, p, dtype=torch.long)
    return child


def plan(cfg=1.0, num_iter=64, schedule="constant", seed=0) -> SamplePlan:
    """A one-level plan for a generator sampled on its own."""
    return SamplePlan(cfg_scale=cfg, generator=gen(seed), num_iter=(num_iter,), schedule=schedule)


def spec(size, kind, token_channels=3, cond_dim=8, width=8) -> LevelSpec:
    return LevelSpec(LevelConfig(size, 1, width, 1, 2, kind, 0.0, 0.0), channels=token_channels, cond_dim=cond_dim)


REFERENCE_SCHEDULE_256_64 = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 2, 2, 3, 3, 3, 3, 3, 3, 4, 3, 4, 4, 4, 4, 4,
                             4, 4, 5, 5, 4, 5, 5, 5, 5, 5, 6, 5, 5, 6, 5, 6, 6, 6, 5, 6, 6, 6, 6, 6, 6, 7, 6, 6, 6, 6,
                             7, 6, 6, 6]


@pytest.mark.parametrize("size,num_iter,expected", [
    (16, 64, REFERENCE_SCHEDULE_256_64),
    (4, 16, [1] * 16),
    (4, 64, [1] * 16),  # T = min(L, num_iter)
    (2, 3, [1, 1, 2]),
])
def test_mar_sampling_schedule(size, num_iter, expected):
    torch.manual_seed(0)
    g = MARGenerator(spec(size, "mar")).eval()
    L, M = size * size, 2
    record = []
    canvas = g.sample(Conditions(torch.randn(M, 8)), plan(num_iter=num_iter), fake_child(record))
    assert canvas.shape == (M, L, 3, 1, 1)
    assert [r["n"] // M for r in record] == expected
    assert all(r["n"] == M * e for r, e in zip(record, expected))
    assert sum(expected) == L
    for b in range(M):  # every position of every sample is generated exactly once
        pos = torch.cat([r["positions"][r["rows"] == b] for r in record])
        assert sorted(pos.tolist()) == list(range(L))


def test_mar_linear_cfg_schedule():
    torch.manual_seed(0)
    g = MARGenerator(spec(16, "mar")).eval()
    L, M, cfg = 256, 2, 3.0
    record = []
    g.sample(Conditions(torch.randn(2 * M, 8)), plan(cfg, 64, "linear"), fake_child(record))
    counts = [r["n"] // M for r in record]
    assert counts == REFERENCE_SCHEDULE_256_64
    assert all(r["conds"] == 2 * r["n"] for r in record)  # conditional and unconditional halves
    still_masked = [L - c for c in itertools.accumulate(counts)]
    still_masked[-1] = 1  # the reference's formula keeps one token "masked" at the last step
    for r, m in zip(record, still_masked):
        assert r["cfg"] == pytest.approx(1 + (cfg - 1) * (L - m) / L)
    assert record[-1]["cfg"] < cfg
    record.clear()
    g.sample(Conditions(torch.randn(2 * M, 8)), plan(cfg, 64, "constant"), fake_child(record))
    assert all(r["cfg"] == cfg for r in record)


def test_ar_sampling_steps_and_linear_cfg():
    torch.manual_seed(0)
    g = ARGenerator(spec(4, "ar", width=16)).eval()
    L, M, cfg = 16, 2, 5.0
    record = []
    canvas = g.sample(Conditions(torch.randn(2 * M, 8)), plan(cfg, 2, "linear"),
                      fake_child(record))  # num_iter is ignored: always L steps
    assert canvas.shape == (M, L, 3, 1, 1)
    assert [r["n"] for r in record] == [M] * L
    assert [r["positions"].tolist() for r in record] == [[s] * M for s in range(L)]
    assert all(r["conds"] == 2 * M for r in record)
    for s, r in enumerate(record):
        assert r["cfg"] == pytest.approx(1 + (cfg - 1) * (s + 1) / L)
    assert record[-1]["cfg"] == pytest.approx(cfg)


def test_guided_logits_filter_and_temperature():
    c = torch.tensor([[4.0, 2.0, -10.0, 0.0, -6.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    u = torch.tensor([[1.0, 3.0, -2.0, 0.5, -30.0], [0.0, 2.0, -1.0, 0.0, 3.0]])
    T, tau, cfg = 0.5, 0.01, 3.0
    out = guided_logits(torch.cat([c, u]), SamplePlan(cfg_scale=cfg, temperature=T, filter_threshold=tau))
    # spec §6.3 on the temperature-scaled logits, written out element by element
    cs, us = (c / T).tolist(), (u / T).tolist()
    want = []
    for cr, ur in zip(cs, us):
        z = sum(math.exp(v) for v in cr)
        row = []
        for k in range(len(cr)):
            uk = ur[k]
            if math.exp(cr[k]) / z < tau:
                uk = max(uk, cr[k] - max(cr) + max(ur))
            row.append(uk + cfg * (cr[k] - uk))
        want.append(row)
    want = torch.tensor(want)
    assert out.shape == (2, 5)
    assert torch.allclose(out, want, atol=1e-5)
    # the filter did something here (index 2 of row 0), but not on the uniform row 1 (p = 0.2 ≥ τ)
    unfiltered = torch.tensor(us) + cfg * (torch.tensor(cs) - torch.tensor(us))
    assert (out[0] - unfiltered[0]).abs().max() > 1
    assert torch.allclose(out[1], unfiltered[1])
    # index 4 of row 0: unlikely under c, and u even lower: c − u is capped at max(c) − max(u)
    floor = cs[0][4] - max(cs[0]) + max(us[0])
    assert out[0, 4].item() == pytest.approx(floor + cfg * (max(cs[0]) - max(us[0])))
    assert out[0, 4].item() < unfiltered[0, 4].item() - 50
    # temperature divides the logits (T < 1 sharpens); no guidance leaves them otherwise untouched
    x = torch.randn(3, 256)
    assert torch.allclose(guided_logits(x, SamplePlan(temperature=2.0)), x / 2)
    assert torch.equal(guided_logits(x, SamplePlan()), x)


# ---------------------------------------------------------------------------- exact likelihoods
def single_level(kind, size=2, channels=1, num_classes=0):
    return FractalConfig(levels=(LevelConfig(size, 1, 16, 1, 2, kind, 0.0, 0.0),), head=PixelHeadConfig(16, 1, 2),
                         channels=channels, num_classes=num_classes, num_conds=5)


@pytest.mark.parametrize("kind", ["ar", "mar"])
def test_one_pixel_model_is_normalised(kind):
    model = perturb(build(single_level(kind, size=1)))
    images = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    nll = model.nll(images, exact=True)
    assert nll.exact
    assert torch.exp(-nll.nats).sum().item() == pytest.approx(1.0, abs=1e-5)


def pixel_nll(head: PixelHead, values: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """-log p(values | cond) from the head's logits, channel by channel in generation order."""
    total = torch.zeros(values.size(0), dtype=torch.float64)
    for pos, ch in enumerate(head.order):
        h = head._hidden(values, cond, pos + 1)[:, pos]
        logp = torch.log_softmax(head._logits(h, pos).double(), -1)
        total -= logp.gather(1, values[:, ch:ch + 1]).squeeze(1)
    return total


def chain_rule_nll(model: FractalGen, images: torch.Tensor, order) -> torch.Tensor:
    """Explicit chain rule for a single-level model: step t conditions token order[t] on order[:t] only
    (every other token is masked for MAR, or zeroed for AR where causality must hide it)."""
    g, head = model.generator, model.next_fractal
    B, L = images.size(0), g.cfg.seq_len
    values = patchify(images.long(), 1).flatten(2)  # (B, L, C)
    tokens = patchify(images.long(), 1)  # (B, L, C, 1, 1)
    conds = Conditions.repeated(model.fake_latent.expand(B, -1), model.config.cond_tokens(0))
    total = torch.zeros(B, dtype=torch.float64)
    for t, pos in enumerate(order):
        known = torch.zeros(L, dtype=torch.bool)
        known[list(order[:t])] = True
        if isinstance(g, ARGenerator):
            assert list(order) == list(range(L))
            out = g.predict(tokens * known.view(1, L, 1, 1, 1), None, conds).middle
        else:
            garbage = torch.where(known.view(1, L, 1, 1, 1), tokens, torch.randint_like(tokens, 256))
            out = g.predict(garbage, (~known).expand(B, L), conds).middle
        total += pixel_nll(head, values[:, pos], out[:, pos])
    return total


@pytest.mark.parametrize("kind,channels", [("ar", 1), ("mar", 1), ("ar", 3), ("mar", 3)])
def test_exact_nll_equals_explicit_chain_rule(kind, channels):
    model = perturb(build(single_level(kind, size=2, channels=channels)))
    images = random_images(model.config, 3, seed=5)
    with torch.no_grad():
        want = chain_rule_nll(model, images, range(4))
        got = model.nll(images, exact=True, order="raster")
    assert got.exact
    assert (got.nats - want).abs().max() < 1e-5
    if kind == "ar":  # AR is exact whatever is asked
        assert (model.nll(images).nats - want).abs().max() < 1e-5


def test_exact_random_order_is_one_of_the_orders():
    model = perturb(build(single_level("mar", size=2)))
    images = random_images(model.config, 3, seed=6)
    with torch.no_grad():
        per_order = torch.stack([chain_rule_nll(model, images, o) for o in itertools.permutations(range(4))])
        got = model.nll(images, exact=True, generator=gen(3)).nats
    assert ((per_order - got).abs().min(0).values < 1e-5).all()
    assert per_order.std(0).min() > 1e-3  # the orders really differ


@pytest.mark.parametrize("kind", ["ar", "mar"])
def test_last_subpixel_conditional_is_normalised(kind):
    """Two levels, 4×4 grey: summing p(x) over the 256 values of the last generated pixel gives p(rest)."""
    cfg = tiny_config((kind, kind), sizes=(4, 2, 1), channels=1, widths=(16, 16), num_classes=0)
    model = perturb(build(cfg))
    base = random_images(cfg, 1, seed=2)
    images = base.repeat(256, 1, 1, 1)
    images[:, 0, 3, 3] = torch.arange(256, dtype=torch.uint8)  # the last pixel in raster-of-raster order
    with torch.no_grad():
        nats = model.nll(images, exact=True, order="raster").nats
        terms = likelihood.terms(model, base, None, make_scoring("exact", order="raster"))
    (t,) = terms
    prefix = t.ce.double().sum() - t.ce[-1].double().sum()  # everything but the last pixel's term
    assert torch.logsumexp(-nats, 0).item() == pytest.approx(-prefix.item(), abs=1e-5)


def test_random_masking_estimator_is_unbiased():
    model = perturb(build(single_level("mar", size=2)))
    images = random_images(model.config, 2, seed=8)
    with torch.no_grad():
        per_order = torch.stack([chain_rule_nll(model, images, o) for o in itertools.permutations(range(4))])
    want = per_order.mean(0)  # the random-order AR model's NLL
    reps = 400
    batch = images.repeat_interleave(reps, 0)
    for shared in (False, True):
        if shared:  # the reference: one count per call for all rows
            est = torch.stack([likelihood.score(model, batch[::reps // 25], None, make_scoring("random", gen(s), shared_count=True)).nats
                               for s in range(64)]).view(64, 2, 25).permute(1, 0, 2).reshape(2, -1)
        else:
            res = model.nll(batch, passes=4, generator=gen(0))
            assert res.stderr.shape == (2 * reps,)
            est = res.nats.view(2, reps)
        mean, se = est.mean(1), est.std(1) / est.size(1) ** 0.5
        assert (est.std(1) > 0.01).all()  # really random
        assert ((mean - want).abs() < 4 * se).all(), (shared, mean, want, se)
        assert (se < 0.1).all()


def test_hierarchical_estimator_matches_exact_random_orders():
    cfg = tiny_config(("mar", "mar"), sizes=(4, 2, 1), channels=1, widths=(16, 16), num_classes=0)
    model = perturb(build(cfg))
    image = random_images(cfg, 1, seed=9)
    batch = image.repeat(300, 1, 1, 1)
    exact = model.nll(batch, exact=True, generator=gen(1)).nats
    est = model.nll(batch, passes=2, generator=gen(2)).nats
    se = (exact.var() / exact.numel() + est.var() / est.numel()).sqrt()
    assert exact.std() > 1e-3
    assert abs(exact.mean() - est.mean()) < 4 * se


# ---------------------------------------------------------------------------- input validation
def test_input_validation():
    cfg = config("mar-mar")
    model = build(cfg)
    images, labels = random_images(cfg, 2), torch.tensor([0, 1])
    with pytest.raises(TypeError):
        model(images, labels.float())
    with pytest.raises(TypeError):
        model(images, labels.view(2, 1))
    with pytest.raises(ValueError, match="labels must be in"):
        model(images, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="labels must be in"):
        model.nll(images, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        model(images, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        model.nll(images, torch.tensor([0]))
    with pytest.raises(TypeError, match="uint8"):
        model(images.float(), labels)
    with pytest.raises(TypeError, match="uint8"):
        model.nll(images.numpy())
    with pytest.raises(ValueError, match="expects"):
        model(images[:, :1], labels)
    with pytest.raises(ValueError, match="expects"):
        model(images[:, :, :4, :4], labels)
    with pytest.raises(ValueError, match="expects"):
        model(images[0], labels)
    with pytest.raises(ValueError, match="expects"):
        build(config("mar-mar-gp-c1")).nll(images)  # 3 channels into a grey model
    with pytest.raises(ValueError, match="passes"):
        model.nll(images, passes=0)
    # sampling
    with pytest.raises(ValueError, match="needs labels"):
        model.sample(num_images=2, cfg_scale=2.0)
    with pytest.raises(ValueError, match="num_images"):
        model.sample()
    with pytest.raises(ValueError, match="num_images"):
        model.sample(num_images=0)
    with pytest.raises(ValueError, match="disagrees"):
        model.sample(labels, num_images=3)
    with pytest.raises(TypeError):
        model.sample(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="labels must be in"):
        model.sample(torch.tensor([11]))
    for bad in (0, [4], [4, 0], [4, 4, 4], -1):
        with pytest.raises(ValueError, match="num_iter"):
            model.sample(labels, num_iter=bad)
    with pytest.raises(ValueError, match="cfg_schedule"):
        model.sample(labels, cfg_schedule="cosine")
    with pytest.raises(ValueError, match="temperature"):
        model.sample(labels, temperature=0.0)
    # unconditional models take no labels
    uncond = build(config("mar-mar", num_classes=0))
    with pytest.raises(ValueError, match="unconditional"):
        uncond.nll(images, labels)
    assert uncond.sample(num_images=1, generator=gen(0)).shape == (1, 3, 8, 8)


def test_scoring_validation():
    model = build(config("mar-mar"))
    images = random_images(model.config, 2)
    with pytest.raises(ValueError, match="scoring mode"):
        make_scoring("bogus")
    with pytest.raises(ValueError, match="needs masks"):
        make_scoring("fixed")
    with pytest.raises(ValueError, match="order"):
        make_scoring("exact", order="zigzag")
    good = [torch.ones(2, 16, dtype=torch.bool), torch.ones(32, 4, dtype=torch.bool)]
    assert likelihood.score(model, images, None, make_scoring("fixed", masks=good)).nats.shape == (2,)
    with pytest.raises(ValueError, match="expected"):
        likelihood.score(model, images, None, make_scoring("fixed", masks=[torch.ones(3, 16, dtype=torch.bool), good[1]]))
    empty = good[0].clone()
    empty[1] = False
    with pytest.raises(ValueError, match="at least one"):
        likelihood.score(model, images, None, make_scoring("fixed", masks=[empty, good[1]]))


# ---------------------------------------------------------------------------- state dict I/O
@pytest.mark.parametrize("name", ["mar-mar-mar-gp", "ar-ar", "mar-ar-grb"])
def test_state_dict_round_trip(name, tmp_path):
    cfg = config(name)
    model = build(cfg, seed=0)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = build(cfg, seed=1)
    images, labels = random_images(cfg, 2), torch.tensor([4, 2])
    before = fresh.nll(images, exact=True, generator=gen(0)).nats
    fresh.load_state_dict(load_file(str(path)), strict=True)
    want = model.nll(images, exact=True, generator=gen(0)).nats
    got = fresh.nll(images, exact=True, generator=gen(0)).nats
    assert not torch.equal(before, want)
    assert torch.equal(got, want)
    assert torch.equal(model.sample(labels, generator=gen(5)), fresh.sample(labels, generator=gen(5)))
    assert torch.equal(model.sample(labels, cfg_scale=2.0, generator=gen(6)), fresh.sample(labels, cfg_scale=2.0, generator=gen(6)))
    # sampling leaves nothing behind in the state dict (the reference's KV-cache leak)
    assert set(fresh.state_dict()) == set(load_file(str(path)))


# ---------------------------------------------------------------------------- training masks
def test_truncated_normal_mask_ratio():
    r = truncated_normal_ratio(200_000, gen(0), "cpu")
    assert r.shape == (200_000,)
    assert r.min() >= 0 and r.max() <= 1
    assert r.mean().item() == pytest.approx(0.8006, abs=2e-3)
    assert r.std().item() == pytest.approx(0.1508, abs=2e-3)
    assert (r < 0.5).float().mean().item() == pytest.approx(0.0454, abs=3e-3)
    assert r.median().item() == pytest.approx(0.831, abs=3e-3)
    assert (r < 0.7).float().mean().item() == pytest.approx(0.23, abs=0.01)


def test_training_masks_follow_the_ratio():
    cfg = tiny_config(("mar",), sizes=(8, 1), widths=(16,), num_classes=0)
    model = build(cfg)
    g = model.generator
    assert g.cfg.seq_len == 64
    pick = make_scoring("train", gen(0)).select(0, False, 4000, 64, "cpu")
    mask, score, src, w = pick.mask, pick.score, pick.source, pick.weight
    assert torch.equal(mask, score) and torch.equal(src, torch.arange(4000))
    count = mask.sum(1).float()
    assert count.min() >= 1
    assert (count / 64).mean().item() == pytest.approx(0.8006 + 0.5 / 64, abs=0.01)  # n = ceil(L·r)
    assert torch.allclose(w, 64 / count)
