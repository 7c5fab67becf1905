"""The model root: level 0 of the recursion plus the class condition, and the public verbs.

`FractalGen` holds level 0's generator and child itself (the reference's key names put them at the
root) and adds the class embedding and the fake latent used for "no label". Everything else lives
with its owner: input checks in `models.inputs`, known-pixel masks in `masks`, sampling options and
the canvas in `sampling`, scoring and NLL estimation in `likelihood`, files in `checkpoint`.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..config import FractalConfig
from ..likelihood import NLLResult, Rows, Term, TokenScoring, TrainingMasks, estimate_nll, score, training_loss
from ..masks import check_known, warn_if_hidden
from ..runtime import fast_context
from ..sampling import Known, make_plan, start_canvas
from .contract import Conditions, resolve_specs
from .fractal import build_child, build_generator, generate_level, score_level
from .inputs import check_images, check_labels, sample_count


class FractalGen(nn.Module):
    """A fractal generative model.

    Images at the boundary are uint8 (B, C, H, W); labels int64 (B,) or None (unconditional).
    """

    def __init__(self, config: FractalConfig):
        super().__init__()
        self.config = config
        specs, head = resolve_specs(config)
        self.spec = specs[0]
        self.generator = build_generator(self.spec)
        self.next_fractal = build_child(specs[1:], head)
        D = config.levels[0].width
        if config.num_classes > 0:
            self.class_emb = nn.Embedding(config.num_classes, D)
            nn.init.normal_(self.class_emb.weight, std=0.02)
        self.fake_latent = nn.Parameter(torch.randn(1, D) * 0.02)

    @classmethod
    def from_pretrained(cls, folder_or_name, device=None, dtype=torch.float32) -> "FractalGen":
        """Load a model folder (config.json + model.safetensors) or a shipped model by short name."""
        from ..io.checkpoint import load_pretrained
        return load_pretrained(folder_or_name, cls, device=device, dtype=dtype)

    def save_pretrained(self, folder, dtype=None):
        """Write config.json + model.safetensors atomically (optionally cast, e.g. to bfloat16)."""
        from ..io.checkpoint import save_pretrained
        return save_pretrained(self, folder, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return self.fake_latent.device

    # ------------------------------------------------------------------ training / likelihood
    def forward(self, images: torch.Tensor, labels=None, scoring: TokenScoring | None = None) -> torch.Tensor:
        """The training objective (reference §7): pooled channel-weighted CE of every head, in nats.

        Labels are dropped to the fake latent with `label_drop_prob` in training mode.
        """
        return training_loss(self._terms(images, labels, scoring or TrainingMasks(), drop_labels=self.training))

    def nll(self, images: torch.Tensor, labels=None, *, passes: int = 1, exact: bool = False,
            order: str = "random", generator: torch.Generator | None = None,
            scoring: TokenScoring | None = None) -> NLLResult:
        """Per-image negative log-likelihood in nats (uint8 images; labels=None → unconditional).

        AR levels are exact. MAR levels use the reference's random-masking estimator averaged over
        `passes` (mean and standard error), or with `exact=True` the exact NLL under one fixed order
        per sequence (`order="random"`, drawn with `generator`, or `"raster"`). `scoring` overrides
        all of this with explicit masks (see `fractalgm.likelihood`).
        """
        return estimate_nll(lambda s: score(self, images, labels, s), self.config.num_dims, self.config.is_exact,
                            passes=passes, exact=exact, order=order, generator=generator, scoring=scoring)

    def _terms(self, images: torch.Tensor, labels, scoring: TokenScoring, drop_labels: bool = False) -> list[Term]:
        check_images(self.config, images)
        B = images.size(0)
        labels = check_labels(self.config, labels, self.device, B)
        cond = self._class_condition(labels, B, drop_labels, scoring.generator)
        conds = Conditions.repeated(cond, self.spec.num_conds)
        return score_level(self.spec, self.generator, self.next_fractal, images.long(), conds,
                           Rows.of_images(B, images.device), scoring)

    def _class_condition(self, labels: torch.Tensor | None, batch: int, drop: bool = False,
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

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, labels=None, *, num_images: int | None = None, num_iter: int | Sequence[int] | None = None,
               cfg_scale: float = 1.0, cfg_schedule: str = "constant", temperature: float = 1.0,
               filter_threshold: float = 1e-4, generator: torch.Generator | None = None,
               record: Callable | None = None, images: torch.Tensor | None = None,
               known: torch.Tensor | None = None, fast: bool = False) -> torch.Tensor:
        """Generate uint8 images (B, C, H, W).

        Args:
            labels: int64 (B,) class labels, or None for unconditional samples (then `num_images`).
            num_iter: MAR steps per level (one int for all levels, or one per level); AR ignores it.
            cfg_scale: classifier-free guidance scale (1 = none; needs labels).
            cfg_schedule: "constant" or "linear" (top level only; lower levels get the step's scale).
            temperature: logits are divided by it (reference τ ↔ 1/τ here).
            filter_threshold: the reference's guidance filter τ_f (only used with cfg_scale ≠ 1).
            generator: a torch.Generator; same seed ⇒ same images.
            record: a callable `record(level, canvas, unknown)`, e.g. `fractalgm.viz.Recorder()`,
                called with level None for the starting canvas, then after every step of every
                level, depth first (the paper's Figure 3; in `inpaint`, AR steps over known patches
                draw nothing and are skipped): canvas uint8 (B, C, H, W) so far and `unknown` bool
                of the same shape. Both are live buffers: copy what you keep.
            images, known: complete these uint8 images, keeping the values where the bool mask
                `known` is True (`inpaint`).
            fast: the fast path (see `SamplePlan.fast`): the same distribution with faster numerics
                (float32 Gumbel draws, bf16 where the hardware has it), so not the same images.
        """
        if (images is None) != (known is None):
            raise ValueError("pass both images and known (the values to keep), or neither")
        if images is not None:
            check_images(self.config, images)
            B = images.size(0)
            images = images.to(self.device)
            labels = check_labels(self.config, labels, self.device, B)
            mask = check_known(known, images)
            if labels is not None:
                full = mask.flatten(1).all(1)
                if full.any():
                    raise ValueError(f"image(s) {full.nonzero()[:, 0].tolist()} are entirely known: nothing would "
                                     f"be generated, so their label cannot change them. Mask the region to edit "
                                     f"(e.g. fractalgm.masks.box) or pass labels=None")
            warn_if_hidden(self.config, mask, stacklevel=4)
            known = Known.of(images, mask)
        else:
            labels = check_labels(self.config, labels, self.device)
            B = sample_count(labels, num_images)
        plan = make_plan(self.config, labels is not None, num_iter=num_iter, cfg_scale=cfg_scale,
                         cfg_schedule=cfg_schedule, temperature=temperature, filter_threshold=filter_threshold,
                         generator=generator, fast=fast)
        view = start_canvas(self.config, B, known, record, self.device)
        was_training = self.training
        self.eval()
        try:
            cond = self._class_condition(labels, B)
            if plan.guided:  # the unconditional half: the fake latent for every row
                cond = torch.cat([cond, self.fake_latent.expand(B, -1)])
            conds = Conditions.repeated(cond, self.spec.num_conds)
            with fast_context(self.device) if fast else nullcontext():
                out = generate_level(self.spec, self.generator, self.next_fractal, conds, plan, known, view)
        finally:
            self.train(was_training)
        return out.to(torch.uint8)

    def inpaint(self, images: torch.Tensor, known: torch.Tensor, labels=None, **options) -> torch.Tensor:
        """Complete uint8 images (B, C, H, W): keep the `known` values exactly, sample the others.

        `known` is a bool mask (B or 1, 1 or C, H, W), True = keep (see `fractalgm.masks`). Unknown
        values are sampled conditioned on the known ones, through the whole hierarchy:
        * MAR levels reveal entirely known patches from the start and generate only the others, in
          a random order with the cosine schedule over their number (the linear CFG schedule over
          the fraction of them revealed). A partly known patch is masked at its level until it is
          generated (so patches generated before it do not see its known pixels); its own
          generation, one level down, sees them all. Its guiding pixel (if any) is sampled.
        * AR levels go in raster order, teacher-forcing known patches: a patch cannot see known
          patches *after* it. The pixel head likewise sees only earlier channels.
          `fractalgm.masks.hidden_known` says which images are affected, and a warning is issued
          when any is.
        Labels make it class-conditional: inpainting with another label edits the class. The
        sampling options are those of `sample` (num_iter, cfg, cfg_schedule, temperature,
        filter_threshold, generator, record); nothing known ⇒ exactly `sample`'s images.
        """
        return self.sample(labels, images=images, known=known, **options)

