"""Model configuration: one `LevelConfig` per fractal level, a `PixelHeadConfig`, and `FractalConfig`.

Levels are data: any list of image sizes where each divides the previous and the last one is 1 gives
a valid hierarchy (e.g. 28→4→1, 64→4→1, 256→16→4→1). Each level has its own width, depth, heads and
generator kind. Invalid configs fail at construction with a message that says what to change.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

GENERATOR_KINDS = ("ar", "mar")
CHANNEL_NAMES = {1: "l", 3: "rgb"}  # pixel-head codebook names; "rgb" matches the reference keys
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LevelConfig:
    """One generator level: splits an `image_size` square into (image_size/patch_size)² tokens.

    For `ar` levels the reference fixes attention-probability dropout to 0 and uses `proj_dropout`
    on the residual and feed-forward paths; the paper presets set these values explicitly.
    """

    image_size: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    kind: str = "mar"
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.grid**2

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def one_step_per_token(self) -> bool:
        """A causal (AR) level samples each token in a step of its own; a MAR level reveals several per step."""
        return self.kind == "ar"


@dataclass(frozen=True)
class PixelHeadConfig:
    """The last level: a tiny causal transformer over the C channel values of one pixel."""

    width: int = 64
    depth: int = 1
    num_heads: int = 4


@dataclass(frozen=True)
class FractalConfig:
    """A whole fractal model.

    Args:
        levels: generator levels, outermost first; `levels[i+1].image_size == levels[i].patch_size`
            and the last level has `patch_size == 1`.
        head: the per-pixel head.
        channels: 1 (grayscale) or 3 (RGB).
        channel_order: order in which the pixel head generates channels, e.g. "rgb", "grb", "bgr".
        num_classes: class-embedding rows; 0 makes an unconditional-only model.
        label_drop_prob: probability of replacing a label by the fake latent in training (for CFG).
        num_conds: condition tokens a MAR level reads from a MAR parent (1 = middle only, 5 = middle
            and the four neighbours). A MAR level under an AR parent reads 1 (AR has no neighbours).
        guiding_pixel: MAR levels below the top first generate the patch's mean colour.
        r_weight: training weight of the first generated channel (reference CLI default 5).
        pixel_mean, pixel_std: per-channel normalisation of [0, 1] pixel values (ImageNet for RGB).
        guide_head: size of the guiding-pixel heads (fixed 128/3/4 in the reference).
        guide_r_weight: their first-channel training weight (fixed 5 in the reference).
    """

    levels: tuple[LevelConfig, ...]
    head: PixelHeadConfig = field(default_factory=PixelHeadConfig)
    channels: int = 3
    channel_order: str | None = None
    num_classes: int = 1000
    label_drop_prob: float = 0.1
    num_conds: int = 5
    guiding_pixel: bool = False
    r_weight: float = 1.0
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    guide_head: PixelHeadConfig = field(default_factory=lambda: PixelHeadConfig(128, 3, 4))
    guide_r_weight: float = 5.0
    grad_checkpointing: bool = False

    def __post_init__(self):
        levels = tuple(lv if isinstance(lv, LevelConfig) else LevelConfig(**lv) for lv in self.levels)
        object.__setattr__(self, "levels", levels)
        for name in ("head", "guide_head"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, PixelHeadConfig(**value))
        if self.channels not in CHANNEL_NAMES:
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        names = CHANNEL_NAMES[self.channels]
        order = (self.channel_order or names).lower()
        if sorted(order) != sorted(names):
            raise ValueError(f"channel_order must be a permutation of {names!r} for {self.channels}-channel "
                             f"images, got {self.channel_order!r}")
        object.__setattr__(self, "channel_order", order)
        if (self.pixel_mean is None) != (self.pixel_std is None):
            raise ValueError("give both pixel_mean and pixel_std (one value per channel), or neither for the defaults")
        if self.pixel_mean is None:
            mean = IMAGENET_MEAN if self.channels == 3 else (sum(IMAGENET_MEAN) / 3,)
            std = IMAGENET_STD if self.channels == 3 else (sum(IMAGENET_STD) / 3,)
            object.__setattr__(self, "pixel_mean", mean)
            object.__setattr__(self, "pixel_std", std)
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))
        self.validate()

    def validate(self):
        if not self.levels:
            raise ValueError("a fractal model needs at least one generator level")
        for i, lv in enumerate(self.levels):
            where = f"level {i} ({lv.image_size}→{lv.patch_size})"
            if lv.kind not in GENERATOR_KINDS:
                raise ValueError(f"{where}: kind must be one of {GENERATOR_KINDS}, got {lv.kind!r}")
            if lv.patch_size < 1 or lv.image_size < lv.patch_size or lv.image_size % lv.patch_size:
                raise ValueError(f"{where}: patch_size must divide image_size")
            if lv.seq_len < 1:
                raise ValueError(f"{where}: the level must have at least one token")
            for attr in ("width", "depth", "num_heads"):
                if getattr(lv, attr) < 1:
                    raise ValueError(f"{where}: {attr} must be positive, got {getattr(lv, attr)}")
            if lv.width % lv.num_heads:
                raise ValueError(f"{where}: num_heads={lv.num_heads} must divide width={lv.width}")
            if lv.kind == "ar" and lv.head_dim % 4:
                raise ValueError(f"{where}: AR levels use 2-D RoPE and need a head dim divisible by 4, "
                                 f"got {lv.head_dim} (width {lv.width} / {lv.num_heads} heads)")
            for attr in ("attn_dropout", "proj_dropout"):
                if not 0.0 <= getattr(lv, attr) < 1.0:
                    raise ValueError(f"{where}: {attr} must be in [0, 1)")
            nxt = self.levels[i + 1].image_size if i + 1 < len(self.levels) else 1
            if lv.patch_size != nxt:
                raise ValueError(f"{where}: patch_size must equal the next level's image_size ({nxt}); "
                                 "the last level must have patch_size 1")
        for name, head in (("head", self.head), ("guide_head", self.guide_head)):
            if min(head.width, head.depth, head.num_heads) < 1 or head.width % head.num_heads:
                raise ValueError(f"{name}: need positive sizes and num_heads dividing width, got {head}")
        if not 1 <= self.num_conds <= 5:
            raise ValueError(f"num_conds must be between 1 and 5 (middle + 4 neighbours), got {self.num_conds}")
        if self.num_classes < 0:
            raise ValueError("num_classes must be >= 0 (0 = unconditional)")
        if not 0.0 <= self.label_drop_prob <= 1.0:
            raise ValueError("label_drop_prob must be in [0, 1]")
        if len(self.pixel_mean) != self.channels or len(self.pixel_std) != self.channels:
            raise ValueError("pixel_mean and pixel_std need one value per channel")
        if min(self.pixel_std) <= 0:
            raise ValueError("pixel_std must be positive")
        if self.r_weight <= 0 or self.guide_r_weight <= 0:
            raise ValueError("r_weight and guide_r_weight must be positive")

    # ------------------------------------------------------------------ derived geometry
    @property
    def image_size(self) -> int:
        return self.levels[0].image_size

    @property
    def num_dims(self) -> int:
        """Sub-pixel values per image (C·H·W), the denominator of bits/dim."""
        return self.channels * self.image_size**2

    @property
    def is_exact(self) -> bool:
        """True when every level is AR: the likelihood needs no masking estimate."""
        return all(lv.kind == "ar" for lv in self.levels)

    def cond_tokens(self, index: int) -> int:
        """Condition tokens read by level `index` (AR levels and MAR levels under AR read 1)."""
        if self.levels[index].kind == "ar":
            return 1
        if index > 0 and self.levels[index - 1].kind == "ar":
            return 1
        return self.num_conds

    def has_guiding_pixel(self, index: int) -> bool:
        """The reference gives guiding pixels to MAR levels below the top only."""
        return self.guiding_pixel and index > 0 and self.levels[index].kind == "mar"

    def cond_dim(self, index: int) -> int:
        """Width of the conditions entering level `index` (the class embedding width at the top)."""
        return self.levels[max(index - 1, 0)].width

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        d = asdict(self)
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FractalConfig":
        d = dict(d)
        version = d.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"config format_version {version} is newer than this fractalgm ({FORMAT_VERSION}); upgrade")
        for key in ("pixel_mean", "pixel_std"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        d["levels"] = tuple(LevelConfig(**lv) for lv in d["levels"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "FractalConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "FractalConfig":
        return replace(self, **changes)

    @classmethod
    def from_reference_lists(
        cls,
        img_size_list: Sequence[int],
        embed_dim_list: Sequence[int],
        num_blocks_list: Sequence[int],
        num_heads_list: Sequence[int],
        generator_type_list: Sequence[str],
        *,
        class_num: int = 1000,
        attn_dropout: float = 0.1,
        proj_dropout: float = 0.1,
        **kwargs,
    ) -> "FractalConfig":
        """Build a config from the reference's parallel `*_list` arguments (its `FractalGen.__init__`).

        AR levels get the reference's hard-coded dropouts (attention 0, residual/FFN 0.1).
        """
        lists = (img_size_list, embed_dim_list, num_blocks_list, num_heads_list, generator_type_list)
        if len({len(x) for x in lists}) != 1 or len(img_size_list) < 2:
            raise ValueError("the reference lists must have equal length >= 2 (levels + pixel level)")
        levels = []
        for i in range(len(img_size_list) - 1):
            kind = generator_type_list[i]
            ar = kind == "ar"
            levels.append(LevelConfig(
                image_size=img_size_list[i], patch_size=img_size_list[i + 1], width=embed_dim_list[i],
                depth=num_blocks_list[i], num_heads=num_heads_list[i], kind=kind,
                attn_dropout=0.0 if ar else attn_dropout, proj_dropout=0.1 if ar else proj_dropout))
        head = PixelHeadConfig(embed_dim_list[-1], num_blocks_list[-1], num_heads_list[-1])
        return cls(levels=tuple(levels), head=head, num_classes=class_num, **kwargs)
