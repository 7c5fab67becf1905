"""Request bodies of the HTTP API (validated by pydantic; they document `/openapi.json`).

Everything here is model-independent: finite numbers, signs, known names. What depends on the
model (its classes, its levels' token counts) is checked in `tasks.build_spec`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MASK_PRESETS = ("half_left", "half_right", "half_top", "half_bottom", "outpaint", "uncrop")


class SamplingParams(BaseModel):
    """What to generate and how: the knobs of `FractalGen.sample`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a model name from GET /api/models (never a path)")
    label: int | None = Field(None, ge=0, description="class id; null for unconditional samples")
    cfg: float = Field(1.0, ge=0, le=50, allow_inf_nan=False, description="classifier-free guidance (1 = off; "
                       "other values need a label)")
    cfg_schedule: Literal["constant", "linear"] = "constant"
    temperature: float = Field(1.0, gt=0, le=10, allow_inf_nan=False, description="logits are divided by it")
    seed: int = Field(0, ge=0, le=2**62, description="first seed; same seed, same images")
    seeds: int = Field(1, ge=1, description="number of consecutive seeds, one grid column each")
    num_images: int = Field(1, ge=1, description="images per seed")
    num_iter: list[int] | None = Field(None, description="MAR steps per level (default: one per token, ≤ 64); "
                                       "AR levels ignore it")


class InpaintParams(SamplingParams):
    """Sampling knobs plus the image to complete and, unless a mask file is uploaded, a preset mask."""

    source: Literal["testset", "upload"] = Field("testset", description="a test-set image (`index`) or the "
                                                 "uploaded `image` file")
    index: int | None = Field(None, ge=0, description="test-set index when source = testset")
    preset: Literal[MASK_PRESETS] | None = Field(None, description="mask preset when no mask file is uploaded")
    preset_pixels: int = Field(4, ge=0, description="border width for outpaint, crop side for uncrop")


class JobCreated(BaseModel):
    id: str
    events: str = Field(description="server-sent events: queued…, frame…, then done | failed | cancelled")
    status: str = Field(description="GET: the job's state and, when done, its result")
    queued_before: int = Field(description="jobs waiting before this one")
