"""Conditional generation: known pixels are kept exactly and condition the rest, at every level."""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import build, gen, random_images, tiny_config
from test_model import perturb, single_level

from fractalgm import make_scoring, masks
from fractalgm.viz.animate import Recorder
from fractalgm.config import LevelConfig
from fractalgm.models import Conditions, LevelSpec, MARGenerator, PixelHead
from fractalgm.models.mar import cosine_schedule
from fractalgm.sampling import Known, SamplePlan

KINDS = [("mar", "mar"), ("ar", "ar"), ("mar", "ar"), ("ar", "mar"), ("mar", "mar", "mar")]


def model_for(kinds, channels=3):
    return perturb(build(tiny_config(kinds, channels=channels, guiding_pixel=True)))


def mask_cases(C: int, B: int = 3, S: int = 8) -> dict[str, torch.Tensor]:
    g = gen(5)
    cases = {
        "box": masks.box(S, 2, 3, 3, 4),
        "bottom": masks.half(S, "bottom"),
        "top": masks.half(S, "top"),
        "left": masks.half(S, "left"),
        "outpaint": masks.outpaint(S, 1),
        "uncrop": masks.uncrop(S, 3),
        "pixels": torch.rand(B, 1, S, S, generator=g) < 0.5,
        "per_image": torch.stack([masks.box(S, 0, 0, 4, 4)[0], masks.half(S, "right")[0],
                                  masks.uncrop(S, 2)[0]]),
    }
    if C == 3:
        cases["channels"] = torch.rand(B, C, S, S, generator=g) < 0.5
    return cases


def rows_sampled_by_head(model, monkeypatch) -> list[int]:
    """Record how many pixels the bottom pixel head generates per call."""
    level = model
    while not isinstance(level.next_fractal, PixelHead):
        level = level.next_fractal
    head, calls = level.next_fractal, []
    original = head.sample

    def counting(cond, opts, known=None, known_mask=None):
        calls.append(cond.size(0) // 2 if opts.guided else cond.size(0))
        return original(cond, opts, known, known_mask)

    monkeypatch.setattr(head, "sample", counting)
    return calls


# ---------------------------------------------------------------------------- known values are kept
@pytest.mark.filterwarnings("ignore:.*cannot see")  # AR levels: tested below
@pytest.mark.parametrize("kinds", KINDS, ids="-".join)
@pytest.mark.parametrize("C", [1, 3])
def test_known_values_are_kept_exactly(kinds, C):
    model = model_for(kinds, C)
    images = random_images(model.config, 3, seed=1)
    labels = torch.tensor([1, 4, 7])
    for name, known in mask_cases(C).items():
        for opts in ({}, dict(cfg_scale=2.5, cfg_schedule="linear", temperature=0.8, num_iter=3)):
            out = model.inpaint(images, known, labels if opts else None, generator=gen(0), **opts)
            keep = known.expand_as(images)
            assert out.dtype == torch.uint8 and out.shape == images.shape
            assert torch.equal(out[keep], images[keep]), (name, opts)
            assert not torch.equal(out, images), name  # something was generated


@pytest.mark.parametrize("kinds", KINDS, ids="-".join)
def test_all_known_returns_the_input(kinds):
    model = model_for(kinds)
    images = random_images(model.config, 2)
    assert torch.equal(model.inpaint(images, torch.ones(1, 1, 8, 8, dtype=torch.bool), generator=gen(0)), images)


@pytest.mark.parametrize("kinds", KINDS, ids="-".join)
@pytest.mark.parametrize("C", [1, 3])
def test_nothing_known_is_sample(kinds, C):
    """Same seed ⇒ the same images as `sample`: the conditional path draws the same random numbers."""
    model = model_for(kinds, C)
    images, labels = random_images(model.config, 2), torch.tensor([3, 5])
    none = torch.zeros(2, C, 8, 8, dtype=torch.bool)
    for opts in ({}, dict(cfg_scale=3.0, cfg_schedule="linear", num_iter=[4, 3, 2][:len(kinds)])):
        assert torch.equal(model.inpaint(images, none, labels, generator=gen(9), **opts),
                           model.sample(labels, generator=gen(9), **opts))


@pytest.mark.filterwarnings("ignore:.*cannot see")
@pytest.mark.parametrize("kinds", KINDS, ids="-".join)
def test_hidden_values_do_not_leak(kinds):
    """Only known values enter the generation: changing the others changes nothing (same seed)."""
    model = model_for(kinds)
    a, b = random_images(model.config, 2, seed=1), random_images(model.config, 2, seed=2)
    known = masks.box(8, 1, 2, 5, 4)
    b = torch.where(known, a, b)
    assert not torch.equal(a, b)
    assert torch.equal(model.inpaint(a, known, generator=gen(0)), model.inpaint(b, known, generator=gen(0)))


@pytest.mark.filterwarnings("ignore:.*cannot see")
@pytest.mark.parametrize("kinds", [("mar", "mar"), ("ar", "ar"), ("mar", "mar", "mar")], ids="-".join)
def test_only_unknown_pixels_are_generated(kinds, monkeypatch):
    """Entirely known patches are never generated at any level: the pixel head sees only unknown pixels."""
    model = model_for(kinds, channels=1)
    calls = rows_sampled_by_head(model, monkeypatch)
    images = random_images(model.config, 3)
    known = mask_cases(1)["pixels"]
    model.inpaint(images, known, generator=gen(0))
    assert sum(calls) == int((~known).sum())
    calls.clear()
    model.inpaint(images, masks.box(8, 2, 2, 3, 3), generator=gen(0))
    assert sum(calls) == 3 * 9


def test_known_channels_are_teacher_forced(monkeypatch):
    """C = 3 with some channels of a pixel known: the head generates that pixel, keeping them."""
    model = model_for(("mar", "mar"))
    calls = rows_sampled_by_head(model, monkeypatch)
    images = random_images(model.config, 2)
    known = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    known[:, 0] = True  # red known everywhere (the first channel generated: nothing hidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.inpaint(images, known, generator=gen(0))
    assert torch.equal(out[:, 0], images[:, 0]) and sum(calls) == 2 * 64


# ---------------------------------------------------------------------------- the schedules
def test_mar_order_and_schedule_cover_the_unknown_tokens_only():
    torch.manual_seed(0)
    L, M, cfg = 16, 4, 3.0
    g = MARGenerator(LevelSpec(LevelConfig(4, 1, 8, 1, 2, "mar", 0.0, 0.0), channels=1, cond_dim=8)).eval()
    full = torch.zeros(M, L, dtype=torch.bool)
    full[1, :5] = True  # rows with 16, 11, 16 − 7 and 0 unknown tokens
    full[2, torch.randperm(L, generator=gen(1))[:7]] = True
    full[3] = True
    values = torch.randint(0, 256, (M, L, 1, 1, 1), generator=gen(2))
    known = Known(values * full.view(M, L, 1, 1, 1), full.view(M, L, 1, 1, 1))
    record = []

    def child(sub_conds, opts, index):
        rows, pos = index
        assert sub_conds.middle.size(0) == 2 * rows.numel()  # both CFG halves of the rows being generated
        record.append((rows.clone(), pos.clone(), opts.cfg_scale))
        return torch.full((rows.numel(), 1, 1, 1), 7, dtype=torch.long)

    canvas = g.sample(Conditions(torch.randn(2 * M, 8)),
                      SamplePlan(cfg_scale=cfg, generator=gen(0), num_iter=(64,), schedule="linear"), child, known)
    assert torch.equal(canvas[full], values[full]) and (canvas[~full] == 7).all()
    for b in range(M):
        U = int((~full[b]).sum())
        counts = [int((rows == b).sum()) for rows, _, _ in record]
        counts = [c for c in counts if c]
        masked = cosine_schedule(U, 64)
        after = masked[:-1] + [0] if masked else []  # the last step reveals all that remain
        assert counts == [a - b for a, b in zip([U] + after, after)]  # the cosine schedule over U
        pos = torch.cat([p[r == b] for r, p, _ in record]).tolist()
        assert sorted(pos) == (~full[b]).nonzero()[:, 0].tolist()  # each unknown token once, known never
        scales = [float(s[r == b][0]) for r, _, s in record if (r == b).any()]
        assert scales == pytest.approx([1 + (cfg - 1) * (U - m) / U for m in masked])  # linear CFG over U


def test_ar_teacher_forces_known_patches():
    """AR inpainting: a fully known patch is written, not generated; its values condition later steps."""
    model = model_for(("ar", "ar"), channels=1)
    images = random_images(model.config, 2, seed=3)
    known = masks.half(8, "bottom")  # top half known: everything known comes first in raster order
    other = images.clone()
    other[:, :, :2] = 255 - other[:, :, :2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = model.inpaint(images, known, generator=gen(0))
        b = model.inpaint(other, known, generator=gen(0))
    assert not torch.equal(a[:, :, 4:], b[:, :, 4:])  # the generated half depends on the known half


def one_missing(missing: int) -> torch.Tensor:
    known = torch.ones(1, 1, 4, dtype=torch.bool)
    known[..., missing] = False
    return known.view(1, 1, 2, 2)


@pytest.mark.parametrize("kind,missing", [("ar", 3), ("mar", 3), ("mar", 0)])
def test_inpainting_samples_the_models_conditional(kind, missing):
    """2×2 images, one unknown pixel: completions follow p(v | the three known pixels), from the likelihood."""
    model = perturb(build(single_level(kind, size=2)), std=0.5)
    base = torch.tensor([40, 200, 90, 10], dtype=torch.uint8)
    candidates = base.repeat(256, 1)
    candidates[:, missing] = torch.arange(256)
    candidates = candidates.view(256, 1, 2, 2)
    if kind == "ar":  # exact NLL: only the last pixel's term depends on v
        logp = -model.nll(candidates).nats
    else:  # the missing pixel predicted with the three others revealed (a fixed mask, weight L/1)
        mask = torch.zeros(256, 4, dtype=torch.bool)
        mask[:, missing] = True
        logp = -model.nll(candidates, scoring=make_scoring("fixed", masks=[mask])).nats / 4
    probs = torch.softmax(logp.double(), 0)
    N = 20_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.inpaint(base.view(1, 1, 2, 2).expand(N, -1, -1, -1), one_missing(missing), generator=gen(11))
    counts = torch.bincount(out.view(N, 4)[:, missing].long(), minlength=256).double()
    expected = N * probs
    keep = expected > 5
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    df = int(keep.sum()) - 1
    assert chi2 < df + 6 * (2 * df) ** 0.5, (chi2, df)


def test_ar_cannot_see_later_known_pixels():
    """The first raster pixel of an AR model is drawn before any known pixel is seen: exactly the pixel
    `sample` draws with the same seed. `inpaint` says so with a warning, `hidden_known` per image."""
    model = perturb(build(single_level("ar", size=2)), std=0.5)
    images = torch.tensor([40, 200, 90, 10], dtype=torch.uint8).view(1, 1, 2, 2).expand(50, -1, -1, -1)
    known = one_missing(0)
    assert masks.hidden_known(model.config, known).tolist() == [True]
    assert masks.hidden_known(model.config, one_missing(3)).tolist() == [False]
    with pytest.warns(UserWarning, match="cannot see"):
        out = model.inpaint(images, known, generator=gen(3))
    assert torch.equal(out[:, :, 0, 0], model.sample(num_images=50, generator=gen(3))[:, :, 0, 0])


def test_hidden_known_per_level_and_channel():
    mar, ar = model_for(("mar", "mar")), model_for(("mar", "ar"))
    top, bottom = masks.half(8, "top"), masks.half(8, "bottom")  # top: the top half is generated
    assert not masks.hidden_known(mar.config, top).any() and not masks.hidden_known(mar.config, bottom).any()
    # level 1 (AR) runs over 2×2 patches: a box cutting patches leaves known pixels after generated ones
    assert not masks.hidden_known(ar.config, bottom).any() and not masks.hidden_known(ar.config, top).any()
    assert masks.hidden_known(ar.config, masks.box(8, 0, 0, 1, 8)).all()
    only_blue = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    only_blue[:, 2] = True  # blue is generated last ("rgb"): red and green cannot see it
    assert masks.hidden_known(mar.config, only_blue).all()
    images = random_images(mar.config, 1)
    with pytest.warns(UserWarning, match="channel order 'rgb'"):
        out = mar.inpaint(images, only_blue, generator=gen(0))
    assert torch.equal(out[:, 2], images[:, 2])


# ---------------------------------------------------------------------------- labels and errors
def test_class_conditional_editing():
    """Inpainting with another label: known pixels stay, the label (and guidance) changes the rest."""
    model = model_for(("mar", "mar"))
    images = random_images(model.config, 2)
    known = masks.half(8, "right")
    a = model.inpaint(images, known, torch.tensor([1, 1]), cfg_scale=4.0, generator=gen(0))
    b = model.inpaint(images, known, torch.tensor([2, 2]), cfg_scale=4.0, generator=gen(0))
    keep = known.expand_as(images)
    assert torch.equal(a[keep], images[keep]) and torch.equal(b[keep], images[keep])
    assert not torch.equal(a, b)


def test_bad_masks_and_inputs_are_refused():
    model = model_for(("mar", "mar"))
    images = random_images(model.config, 2)
    box = masks.box(8, 1, 1, 3, 3)
    with pytest.raises(TypeError, match="bool tensor"):
        model.inpaint(images, box.float())
    with pytest.raises(TypeError, match="bool tensor"):
        model.inpaint(images, box.to(torch.uint8))
    with pytest.raises(TypeError, match="bool tensor"):
        model.inpaint(images, box.numpy())
    for shape in [(8, 8), (2, 8, 8), (2, 2, 8, 8), (3, 1, 8, 8), (2, 1, 4, 4)]:
        with pytest.raises(ValueError, match="expected"):
            model.inpaint(images, torch.ones(shape, dtype=torch.bool))
    with pytest.raises(ValueError, match="entirely known"):
        model.inpaint(images, torch.ones(1, 1, 8, 8, dtype=torch.bool), torch.tensor([3, 4]))
    with pytest.raises(TypeError, match="uint8"):
        model.inpaint(images.float(), box)
    with pytest.raises(ValueError, match="shape"):
        model.inpaint(images[:, :1], box)
    with pytest.raises(ValueError, match="labels"):
        model.inpaint(images, box, torch.tensor([1]))
    with pytest.raises(ValueError, match="needs labels"):
        model.inpaint(images, box, cfg_scale=2.0)
    with pytest.raises(ValueError, match="temperature"):
        model.inpaint(images, box, temperature=0)


# ---------------------------------------------------------------------------- mask helpers
def test_mask_helpers_mark_the_region_to_generate():
    def generated(known):
        assert known.dtype == torch.bool and known.shape == (1, 1, 8, 8)
        return (~known[0, 0]).nonzero().tolist()

    assert generated(masks.box(8, 2, 3, 2, 4)) == [[y, x] for y in (2, 3) for x in range(3, 7)]
    assert generated(masks.box(8, 6, 6, 5, 5)) == [[y, x] for y in (6, 7) for x in (6, 7)]  # clipped
    for side, (ys, xs) in {"left": (range(8), range(4)), "right": (range(8), range(4, 8)),
                           "top": (range(4), range(8)), "bottom": (range(4, 8), range(8))}.items():
        assert generated(masks.half(8, side)) == [[y, x] for y in ys for x in xs]
    assert int(masks.outpaint(8, 2).sum()) == 16 and masks.outpaint(8, 2)[0, 0, 2:6, 2:6].all()
    assert int(masks.uncrop(8, 2).sum()) == 4 and masks.uncrop(8, 2)[0, 0, 3:5, 3:5].all()
    assert masks.uncrop(8, 8).all() and not masks.outpaint(8, 4).any()
    for bad in [lambda: masks.box(8, 8, 0, 1, 1), lambda: masks.box(8, 0, 0, 0, 2), lambda: masks.half(8, "middle"),
                lambda: masks.outpaint(8, 5), lambda: masks.uncrop(8, 9)]:
        with pytest.raises(ValueError):
            bad()


def test_mask_png_round_trip(tmp_path):
    from PIL import Image

    known = masks.box(8, 1, 2, 3, 4)
    masks.to_png(known, tmp_path / "m.png")
    assert torch.equal(masks.from_png(tmp_path / "m.png"), known)
    masks.to_png(known, tmp_path / "w.png", white_is_known=True)
    assert torch.equal(masks.from_png(tmp_path / "w.png", white_is_known=True), known)
    assert torch.equal(masks.from_png(tmp_path / "m.png", size=16), masks.box(16, 2, 4, 6, 8))  # nearest resize
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 0))  # transparent white counts as black: known
    rgba.putpixel((0, 0), (255, 255, 255, 255))
    rgba.save(tmp_path / "a.png")
    assert (~masks.from_png(tmp_path / "a.png")).nonzero().tolist() == [[0, 0, 0, 0]]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read"):
        masks.from_png(tmp_path / "bad.png")


# ---------------------------------------------------------------------------- recording the process
@pytest.mark.filterwarnings("ignore:.*cannot see")
@pytest.mark.parametrize("kinds", [("mar", "mar"), ("ar", "ar"), ("mar", "mar", "mar")], ids="-".join)
def test_recording_shows_every_step_depth_first(kinds):
    model = model_for(kinds, channels=1)
    labels = torch.tensor([1, 2])
    rec = Recorder()
    out = model.sample(labels, cfg_scale=2.0, generator=gen(0), record=rec)
    assert torch.equal(out, model.sample(labels, cfg_scale=2.0, generator=gen(0)))  # recording changes nothing
    # one frame per step of every level, the lower levels' steps before the step that called them
    per_call = {("mar", "mar"): [1] * 4 + [0], ("ar", "ar"): [1] * 4 + [0],
                ("mar", "mar", "mar"): ([2] * 4 + [1]) * 4 + [0]}[kinds]
    assert rec.steps == [None] + per_call * model.config.levels[0].seq_len
    frames = rec.records
    assert frames[0][1].all() and not frames[-1][1].any() and torch.equal(frames[-1][0], out)
    for (c0, u0), (c1, u1) in zip(frames, frames[1:]):
        assert (u0 | ~u1).all()  # what is generated stays generated, with its final value
        assert torch.equal(c1[~u1], out[~u1])
    assert [int((~u1 & u0).sum()) for (_, u0), (_, u1) in zip(frames, frames[1:])] == \
        [2 * (lv == len(kinds) - 1) for lv in rec.steps[1:]]  # each deepest step fills one pixel per image


def test_recording_inpainting_starts_from_the_known_pixels():
    model = model_for(("mar", "mar"), channels=3)
    images = random_images(model.config, 2)
    known = masks.box(8, 2, 2, 4, 4)
    rec = Recorder(levels=[0])
    out = model.inpaint(images, known, generator=gen(0), record=rec)
    start, unknown = rec.records[0]
    assert torch.equal(unknown, ~known.expand_as(images)) and torch.equal(start[~unknown], images[~unknown])
    assert rec.steps[0] is None and set(rec.steps[1:]) == {0}
    assert len(rec) == 1 + 4  # U = 4 unknown 2×2 patches: four level-0 steps
    assert rec.frames(fill=128)[0][unknown].eq(128).all() and torch.equal(rec.frames()[-1], out)
