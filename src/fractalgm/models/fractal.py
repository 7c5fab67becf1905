"""The fractal recursion (paper "Fractal Generative Models", Li, Sun, Fan, He 2025).

A `FractalLevel` owns one generator (AR or MAR) over the patches of its input and a child: the next
`FractalLevel`, or the `PixelHead` at the bottom. Training/likelihood passes the scored patches and
their conditions down; sampling runs the generator's loop and asks the child, depth first, for every
patch it decides to generate. `FractalGen` is level 0 plus the class condition and the public API.
Attribute names (`generator`, `next_fractal`, …) follow the reference so its checkpoints load as is.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..config import CHANNEL_NAMES, FractalConfig
from ..likelihood import NLLResult, Scores, Scoring, Term, score_images, training_loss
from ..patchify import normalize, patchify, quantize, unpatchify
from ..sampling import CFG_SCHEDULES, CanvasView, Known, SamplingOptions
from .ar import ARGenerator
from .mar import MARGenerator
from .pixel_head import PixelHead


def channel_weights(first: float, channels: int) -> torch.Tensor:
    """Training weights per generated channel: (w, 1, …, 1)/(w + C − 1), the reference's r_weight."""
    w = torch.ones(channels)
    w[0] = first
    return w / w.sum()


class FractalLevel(nn.Module):
    """Level `index` of the hierarchy: a generator over its patches, and the child that fills them."""

    def __init__(self, config: FractalConfig, index: int = 0):
        super().__init__()
        self.config, self.index = config, index
        lv = config.levels[index]
        C, names, order = config.channels, CHANNEL_NAMES[config.channels], config.channel_order
        token_dim, cond_dim = C * lv.patch_size**2, config.cond_dim(index)
        ckpt = config.grad_checkpointing
        if lv.kind == "ar":
            self.generator = ARGenerator(lv, token_dim, cond_dim, ckpt)
        else:
            guide = (PixelHead(config.guide_head, cond_dim, names, order)
                     if config.has_guiding_pixel(index) else None)
            self.generator = MARGenerator(lv, token_dim, cond_dim, config.cond_tokens(index), guide, C, ckpt)
        last = index + 1 == len(config.levels)
        self.next_fractal = PixelHead(config.head, lv.width, names, order) if last else FractalLevel(config, index + 1)
        self.child_conds = 1 if last else config.cond_tokens(index + 1)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std), persistent=False)
        self.register_buffer("head_weights", channel_weights(config.r_weight, C), persistent=False)
        self.register_buffer("guide_weights", channel_weights(config.guide_r_weight, C), persistent=False)

    @property
    def guide(self) -> PixelHead | None:
        return getattr(self.generator, "guiding_pixel_loss", None)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Integer patches (…, C, p, p) → normalised network inputs (…, C·p²), channel-major."""
        return normalize(tokens, self.pixel_mean, self.pixel_std, tokens.dim() - 3).flatten(-3)

    # ------------------------------------------------------------------ training / likelihood
    def forward(self, x: torch.Tensor, conds: list[torch.Tensor], owner: torch.Tensor,
                weight: torch.Tensor, scoring: Scoring) -> list[Term]:
        """Score images x (M, C, S, S) (integers) under conditions (M, D_c); returns every scored term."""
        terms = []
        if self.guide is not None:  # the patch's mean colour: scored, then embedded as a token
            g = normalize(x, self.pixel_mean, self.pixel_std, 1).mean(-1).mean(-1)  # (M, C)
            ce = self.guide(quantize(g, self.pixel_mean, self.pixel_std, 1), conds[0])
            terms.append(Term(f"guiding_pixel_level{self.index}", ce, owner, weight, self.guide_weights))
            conds = conds + [g]
        tokens = patchify(x, self.generator.cfg.patch_size)  # (M, L, C, p, p)
        mask, score, src, w = self.generator.select(x.size(0), scoring, self.index, x.device)
        maps = self.generator.predict(self.embed(tokens)[src], mask, [c[src] for c in conds])
        sub = tokens[src][score]  # (N, C, p, p) in pooled order: row-major over (row, position)
        sub_conds = [m[score] for m in maps[: self.child_conds]]
        sub_owner = owner[src].unsqueeze(1).expand_as(score)[score]
        sub_weight = (weight[src] * w).unsqueeze(1).expand_as(score)[score]
        if isinstance(self.next_fractal, PixelHead):
            ce = self.next_fractal(sub.flatten(1), sub_conds[0])
            return terms + [Term("pixel", ce, sub_owner, sub_weight, self.head_weights)]
        return terms + self.next_fractal(sub, sub_conds, sub_owner, sub_weight, scoring)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, conds: list[torch.Tensor], opts: SamplingOptions, num_iter: Sequence[int],
                 schedule: str, known: Known | None = None, view: CanvasView | None = None) -> torch.Tensor:
        """Sample (M, C, S, S) integer images; conds have 2M rows when guided (cond half first).

        `known` (M, C, S, S) values are kept exactly and condition the rest; `view` records every
        step into the full canvas. A partly known patch still samples its guiding pixel.
        """
        if self.guide is not None:
            g = normalize(self.guide.sample(conds[0], opts), self.pixel_mean, self.pixel_std, 1)
            conds = conds + [torch.cat([g, g]) if opts.guided else g]
        C, p, grid = self.config.channels, self.generator.cfg.patch_size, self.generator.cfg.grid
        known = None if known is None else known.patches(p)

        def child(sub_conds, step_opts, index):
            sub_conds = sub_conds[: self.child_conds]
            sub = None if known is None else known.take(index)
            if isinstance(self.next_fractal, PixelHead):
                kv, km = (None, None) if sub is None else (sub.values.view(-1, C), sub.mask.view(-1, C))
                patches = self.next_fractal.sample(sub_conds[0], step_opts, kv, km).view(-1, C, 1, 1)
            else:
                patches = self.next_fractal.generate(sub_conds, step_opts, num_iter, "constant", sub,
                                                     None if view is None else view.child(index, grid, p))
            if view is not None:
                view.write(self.index, index, patches, grid)
            return patches

        tokens = self.generator.sample(conds, self.embed, opts, num_iter[self.index], schedule, child, known)
        return unpatchify(tokens)


class FractalGen(FractalLevel):
    """A fractal generative model: level 0 plus the class condition and the public API.

    Images at the boundary are uint8 (B, C, H, W); labels int64 (B,) or None (unconditional).
    """

    def __init__(self, config: FractalConfig):
        super().__init__(config, 0)
        D = config.levels[0].width
        if config.num_classes > 0:
            self.class_emb = nn.Embedding(config.num_classes, D)
            nn.init.normal_(self.class_emb.weight, std=0.02)
        self.fake_latent = nn.Parameter(torch.randn(1, D) * 0.02)

    @classmethod
    def from_pretrained(cls, folder_or_name, device=None, dtype=torch.float32) -> "FractalGen":
        """Load a model folder (config.json + model.safetensors) or a shipped model by short name."""
        from ..checkpoint import load_pretrained
        return load_pretrained(folder_or_name, device=device, dtype=dtype)

    def save_pretrained(self, folder, dtype=None):
        """Write config.json + model.safetensors atomically (optionally cast, e.g. to bfloat16)."""
        from ..checkpoint import save_pretrained
        return save_pretrained(self, folder, dtype=dtype)

    # ------------------------------------------------------------------ inputs
    @property
    def device(self) -> torch.device:
        return self.fake_latent.device

    def check_images(self, images: torch.Tensor):
        cfg = self.config
        want = (cfg.channels, cfg.image_size, cfg.image_size)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise TypeError(f"images must be a uint8 tensor (B, C, H, W), got "
                            f"{getattr(images, 'dtype', type(images).__name__)}")
        if images.dim() != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"images have shape {tuple(images.shape)} but this model expects "
                             f"(B, {want[0]}, {want[1]}, {want[2]})")

    def check_labels(self, labels: torch.Tensor | None, batch: int | None = None) -> torch.Tensor | None:
        if labels is None:
            return None
        labels = torch.as_tensor(labels, device=self.device)
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or labels.dim() != 1:
            raise TypeError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        if self.config.num_classes == 0:
            raise ValueError("this model is unconditional (num_classes = 0); pass labels=None")
        if batch is not None and labels.numel() != batch:
            raise ValueError(f"got {labels.numel()} labels for {batch} images")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.config.num_classes):
            raise ValueError(f"labels must be in [0, {self.config.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return labels.long()

    def class_condition(self, labels: torch.Tensor | None, batch: int, drop: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, D) class embeddings; the fake latent for no label, and for dropped labels when `drop`."""
        fake = self.fake_latent.expand(batch, -1)
        if labels is None:
            return fake
        emb = self.class_emb(labels)
        if drop and self.config.label_drop_prob > 0:
            gen_device = generator.device if generator is not None else labels.device
            keep = torch.rand(batch, generator=generator, device=gen_device).to(labels.device)
            emb = torch.where((keep < self.config.label_drop_prob).unsqueeze(1), fake, emb)
        return emb

    def _top_conds(self, cond: torch.Tensor) -> list[torch.Tensor]:
        return [cond] * self.config.cond_tokens(0)

    # ------------------------------------------------------------------ training / likelihood
    def terms(self, images: torch.Tensor, labels=None, scoring: Scoring | None = None,
              drop_labels: bool = False) -> list[Term]:
        self.check_images(images)
        B = images.size(0)
        labels = self.check_labels(labels, B)
        scoring = scoring or Scoring("train")
        cond = self.class_condition(labels, B, drop_labels, scoring.generator)
        owner = torch.arange(B, device=images.device)
        weight = torch.ones(B, device=images.device)
        return super().forward(images.long(), self._top_conds(cond), owner, weight, scoring)

    def forward(self, images: torch.Tensor, labels=None, scoring: Scoring | None = None) -> torch.Tensor:
        """The training objective (reference §7): pooled channel-weighted CE of every head, in nats.

        Labels are dropped to the fake latent with `label_drop_prob` in training mode.
        """
        return training_loss(self.terms(images, labels, scoring, drop_labels=self.training))

    @torch.no_grad()
    def score(self, images: torch.Tensor, labels=None, scoring: Scoring | None = None) -> Scores:
        """Per-image NLL estimate and reference-style component losses for one scoring pass (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            return score_images(self.terms(images, labels, scoring or Scoring("random")), images.size(0))
        finally:
            self.train(was_training)

    @property
    def is_exact(self) -> bool:
        """True when every level is AR: the likelihood needs no masking estimate."""
        return all(lv.kind == "ar" for lv in self.config.levels)

    def nll(self, images: torch.Tensor, labels=None, *, passes: int = 1, exact: bool = False,
            order: str = "random", generator: torch.Generator | None = None,
            scoring: Scoring | None = None) -> NLLResult:
        """Per-image negative log-likelihood in nats (uint8 images; labels=None → unconditional).

        AR levels are exact. MAR levels use the reference's random-masking estimator averaged over
        `passes` (mean and standard error), or with `exact=True` the exact NLL under one fixed order
        per sequence (`order="random"`, drawn with `generator`, or `"raster"`). `scoring` overrides
        all of this with explicit masks (see `fractalgm.likelihood`).
        """
        if scoring is not None:
            s = self.score(images, labels, scoring)
            return NLLResult(s.nats, None, self.is_exact or scoring.mode == "exact", 1, self.config.num_dims)
        if exact or self.is_exact:
            s = self.score(images, labels, Scoring("exact", generator, order=order))
            return NLLResult(s.nats, None, True, 1, self.config.num_dims)
        if passes < 1:
            raise ValueError("passes must be >= 1")
        runs = torch.stack([self.score(images, labels, Scoring("random", generator)).nats for _ in range(passes)])
        stderr = runs.std(0) / passes**0.5 if passes > 1 else None
        return NLLResult(runs.mean(0), stderr, False, passes, self.config.num_dims)

    def bpd(self, images: torch.Tensor, labels=None, **kwargs) -> torch.Tensor:
        """Per-image bits/dim: NLL / (C·H·W·ln 2)."""
        return self.nll(images, labels, **kwargs).bpd

    # ------------------------------------------------------------------ sampling
    def default_num_iter(self) -> list[int]:
        """One step per token up to 64 per MAR level (the paper's 64-px setting is 64, 16)."""
        return [min(lv.seq_len, 64) for lv in self.config.levels]

    @torch.no_grad()
    def sample(self, labels=None, *, num_images: int | None = None, num_iter: int | Sequence[int] | None = None,
               cfg: float = 1.0, cfg_schedule: str = "constant", temperature: float = 1.0,
               filter_threshold: float = 1e-4, generator: torch.Generator | None = None,
               record: Callable | None = None) -> torch.Tensor:
        """Generate uint8 images (B, C, H, W).

        Args:
            labels: int64 (B,) class labels, or None for unconditional samples (then `num_images`).
            num_iter: MAR steps per level (one int for all levels, or one per level); AR ignores it.
            cfg: classifier-free guidance scale (1 = none; needs labels).
            cfg_schedule: "constant" or "linear" (top level only; lower levels get the step's scale).
            temperature: logits are divided by it (reference τ ↔ 1/τ here).
            filter_threshold: the reference's guidance filter τ_f (only used with cfg ≠ 1).
            generator: a torch.Generator; same seed ⇒ same images.
            record: a callable `record(level, canvas, unknown)`, e.g. `fractalgm.animate.Recorder()`,
                called with level None for the starting canvas, then after every step of every
                level, depth first (the paper's Figure 3; in `inpaint`, AR steps over known patches
                draw nothing and are skipped): canvas uint8 (B, C, H, W) so far and `unknown` bool
                of the same shape. Both are live buffers: copy what you keep.
        """
        labels = self.check_labels(labels)
        if labels is None:
            if num_images is None or num_images < 1:
                raise ValueError("pass labels, or num_images for unconditional samples")
            B = num_images
        else:
            B = labels.numel()
            if num_images not in (None, B):
                raise ValueError(f"num_images={num_images} disagrees with {B} labels")
        return self._sample(B, labels, None, num_iter, cfg, cfg_schedule, temperature, filter_threshold,
                            generator, record)

    def inpaint(self, images: torch.Tensor, known: torch.Tensor, labels=None, *,
                num_iter: int | Sequence[int] | None = None, cfg: float = 1.0, cfg_schedule: str = "constant",
                temperature: float = 1.0, filter_threshold: float = 1e-4, generator: torch.Generator | None = None,
                record: Callable | None = None) -> torch.Tensor:
        """Complete uint8 images (B, C, H, W): keep the `known` values exactly, sample the others.

        `known` is a bool mask (B or 1, 1 or C, H, W), True = keep (see `fractalgm.masks`). Unknown
        values are sampled conditioned on the known ones, through the whole hierarchy:
        * MAR levels reveal entirely known patches from the start and generate only the others, in
          a random order with the cosine schedule over their number (the linear CFG schedule over
          the fraction of them revealed). A partly known patch is masked at its level until it is
          generated (so patches generated before it do not see its known pixels); its own
          generation, one level down, sees them all. Its guiding pixel (if any) is sampled.
        * AR levels go in raster order, teacher-forcing known patches: a patch cannot see known
          patches *after* it. The pixel head likewise sees only earlier channels. `hidden_known`
          says which images are affected, and a warning is issued when any is.
        Labels make it class-conditional: inpainting with another label edits the class. The
        sampling options are those of `sample` (num_iter, cfg, cfg_schedule, temperature,
        filter_threshold, generator, record); nothing known ⇒ exactly `sample`'s images.
        """
        self.check_images(images)
        B = images.size(0)
        images = images.to(self.device)
        labels = self.check_labels(labels, B)
        mask = self.check_known(known, images)
        if labels is not None:
            full = mask.flatten(1).all(1)
            if full.any():
                raise ValueError(f"image(s) {full.nonzero()[:, 0].tolist()} are entirely known: nothing would be "
                                 f"generated, so their label cannot change them. Mask the region to edit "
                                 f"(e.g. fractalgm.masks.box) or pass labels=None")
        hidden = self.hidden_known(mask)
        if hidden.any():
            who = (["AR levels (raster order)"] * any(lv.kind == "ar" for lv in self.config.levels)
                   + [f"the pixel head (channel order {self.config.channel_order!r})"] * (self.config.channels > 1))
            warnings.warn(f"{int(hidden.sum())} of {B} image(s) have known pixels that this model cannot see when "
                          f"generating: {' and '.join(who)} only condition on earlier values; such known values "
                          f"are kept but ignored by what is generated before them", stacklevel=2)
        return self._sample(B, labels, Known.of(images, mask), num_iter, cfg, cfg_schedule, temperature,
                            filter_threshold, generator, record)

    def check_known(self, known: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The `known` mask as bool (B, C, H, W) on the model's device, or a clear error."""
        B, C, H, W = images.shape
        if not isinstance(known, torch.Tensor) or known.dtype != torch.bool:
            raise TypeError(f"known must be a bool tensor (True = keep the value), got "
                            f"{getattr(known, 'dtype', type(known).__name__)}; e.g. known = mask > 0")
        if known.dim() != 4 or known.shape[0] not in (1, B) or known.shape[1] not in (1, C) \
                or tuple(known.shape[2:]) != (H, W):
            raise ValueError(f"known has shape {tuple(known.shape)}; expected ({B} or 1, 1 or {C}, {H}, {W}) "
                             f"to match the images {tuple(images.shape)}")
        return known.to(self.device).expand(B, C, H, W)

    def hidden_known(self, known: torch.Tensor) -> torch.Tensor:
        """(B,) True where a known value comes after a value to generate in an order that cannot look
        ahead (raster order at AR levels, channel order in the pixel head): it is kept, but what is
        generated before it does not see it. Always False for MAR models with C = 1."""
        C = self.config.channels
        mask = known.bool().expand(-1, C, -1, -1)
        B = mask.size(0)

        def looks_ahead(todo: torch.Tensor, has: torch.Tensor) -> torch.Tensor:  # (N, T) along the order
            generated_before = (todo.long().cumsum(1) - todo.long()) > 0
            return (has & generated_before).any(1)

        hidden = torch.zeros(B, dtype=torch.bool, device=mask.device)
        for lv in self.config.levels:
            if lv.kind == "ar":  # every sub-image of side S is one sequence of its tokens
                seqs = patchify(patchify(mask, lv.image_size).flatten(0, 1), lv.patch_size).flatten(2)
                hidden |= looks_ahead(~seqs.all(-1), seqs.any(-1)).view(B, -1).any(1)
        order = [CHANNEL_NAMES[C].index(c) for c in self.config.channel_order]  # generation order
        by_channel = mask[:, order].permute(0, 2, 3, 1).reshape(-1, C)
        return hidden | looks_ahead(~by_channel, by_channel).view(B, -1).any(1)

    @torch.no_grad()
    def _sample(self, B: int, labels: torch.Tensor | None, known: Known | None, num_iter=None, cfg: float = 1.0,
                cfg_schedule: str = "constant", temperature: float = 1.0, filter_threshold: float = 1e-4,
                generator: torch.Generator | None = None, record: Callable | None = None) -> torch.Tensor:
        """Check the sampling options, build the top conditions and run the hierarchy."""
        if labels is None and cfg != 1.0:
            raise ValueError("classifier-free guidance needs labels (cfg must be 1 without them)")
        if cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {cfg_schedule!r}")
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        if num_iter is None:
            num_iter = self.default_num_iter()
        elif isinstance(num_iter, int):
            num_iter = [num_iter] * len(self.config.levels)
        if len(num_iter) != len(self.config.levels) or min(num_iter) < 1:
            raise ValueError(f"num_iter needs one positive entry per level ({len(self.config.levels)})")
        view = None
        if record is not None:
            S, C = self.config.image_size, self.config.channels
            canvas = torch.zeros(B, C, S, S, dtype=torch.uint8, device=self.device)
            unknown = torch.ones(B, C, S, S, dtype=torch.bool, device=self.device)
            if known is not None:
                canvas, unknown = known.values.to(torch.uint8), ~known.mask
            view = CanvasView(canvas, unknown, record)
            record(None, canvas, unknown)
        was_training = self.training
        self.eval()
        try:
            cond = self.class_condition(labels, B)
            if cfg != 1.0:
                cond = torch.cat([cond, self.fake_latent.expand(B, -1)])
            opts = SamplingOptions(float(cfg), float(temperature), float(filter_threshold), generator)
            images = self.generate(self._top_conds(cond), opts, list(num_iter), cfg_schedule, known, view)
        finally:
            self.train(was_training)
        return images.to(torch.uint8)
