"""The tuning trials behind the default CPU preset and recipe (docs/tuning.md), reproducible one by one.

Each trial is a real `fractalgm train --minutes M` run on Fashion-MNIST (validation on 500 held-out
training images, never the test set) of one architecture with one set of flags. Architectures that
are not presets are registered for the run only. Results are appended to
benchmarks/results/tuning.jsonl; `--table` prints them as the markdown table of docs/tuning.md.

    OMP_NUM_THREADS=2 python benchmarks/tune.py --minutes 6 w64_b16_lr2e-3 w64_b8_lr2e-3
    python benchmarks/tune.py --table

Run trials alone: two jobs on 2 cores slow each other several-fold, and a time budget then buys fewer steps.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fractalgm import presets
from fractalgm.cli import main
from fractalgm.config import FractalConfig, LevelConfig, PixelHeadConfig

RESULTS = Path(__file__).parent / "results" / "tuning.jsonl"


def _ar(levels, head=(64, 1, 4), dropout=0.0) -> FractalConfig:
    return FractalConfig(levels=tuple(LevelConfig(*lv, "ar", attn_dropout=0.0, proj_dropout=dropout) for lv in levels),
                         head=PixelHeadConfig(*head), channels=1, num_classes=10, num_conds=1, r_weight=1.0)


# AR 28→4→1 variants: (top level), (pixel level) as (size, patch, width, depth, heads); head (width, depth, heads)
ARCHS = {
    "cur": ("fractalar_fmnist: 256×6 / 128×3, head 64×1, dropout 0.1",
            _ar(((28, 4, 256, 6, 4), (4, 1, 128, 3, 4)), dropout=0.1)),
    "w64": ("fractalar_fmnist_lite: 256×6 / 64×2, head 32×1, no dropout",
            _ar(((28, 4, 256, 6, 4), (4, 1, 64, 2, 4)), head=(32, 1, 4))),
    "w128": ("256×6 / 128×2, head 64×1, no dropout", _ar(((28, 4, 256, 6, 4), (4, 1, 128, 2, 4)))),
    "w96": ("192×6 / 96×2, head 64×1, no dropout", _ar(((28, 4, 192, 6, 4), (4, 1, 96, 2, 4)))),
    "s128": ("128×4 / 64×2, head 32×1, no dropout", _ar(((28, 4, 128, 4, 4), (4, 1, 64, 2, 4)), head=(32, 1, 4))),
}


def _trial(arch: str, batch: int, lr: str, *extra: str) -> tuple[str, list[str]]:
    return arch, ["--batch-size", str(batch), "--lr", lr, *extra]


TRIALS = {
    "cur_lr1e-3": _trial("cur", 32, "1e-3"),
    "w64_lr1e-3": _trial("w64", 32, "1e-3"),
    "w64_lr2e-3": _trial("w64", 32, "2e-3"),
    "w64_b32_lr4e-3": _trial("w64", 32, "4e-3"),
    "w64_b16_lr2e-3": _trial("w64", 16, "2e-3"),
    "w64_b16_lr4e-3": _trial("w64", 16, "4e-3"),
    "w64_b8_lr2e-3": _trial("w64", 8, "2e-3"),
    "w128_b16_lr2e-3": _trial("w128", 16, "2e-3"),
    "w96_lr1e-3": _trial("w96", 32, "1e-3"),
    "s128_lr2e-3": _trial("s128", 32, "2e-3"),
}
COMMON = ["--ema-decay", "0.995", "--eval-every", "100000", "--save-every", "100000", "--val-images", "500",
          "--log-every", "50"]


def run(name: str, minutes: float, out_root: Path) -> dict:
    arch, flags = TRIALS[name]
    preset = f"tune_{arch}"
    presets._PRESETS[preset] = lambda c=ARCHS[arch][1]: c
    out = out_root / f"{name}_{minutes:g}m"
    t0 = time.time()
    main(["train", "--preset", preset, "--minutes", str(minutes), "--out", str(out), "--overwrite", *COMMON, *flags])
    last = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        last.update(json.loads(line))
    row = {"trial": name, "arch": arch, "minutes": minutes, "flags": flags, "val_bpd": last.get("val_bpd"),
           "steps": last.get("step"), "images": last.get("step", 0) * int(flags[1]), "wall_s": time.time() - t0}
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def table(rows: list[dict]) -> str:
    lines = ["| trial | architecture | flags | budget | steps | images | val bpd | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["minutes"], r["val_bpd"] or 99)):
        lines.append(f"| `{r['trial']}` | {ARCHS[r['arch']][0]} | `{' '.join(r['flags'])}` | {r['minutes']:g} min | "
                     f"{r['steps']} | {r['images']:,} | {r['val_bpd']:.3f} | {r.get('note', '')} |")
    return "\n".join(lines)


def cli():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("trials", nargs="*", help=f"trial names: {', '.join(TRIALS)}")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--out", type=Path, default=Path("runs/tune"), help="parent folder of the run folders")
    p.add_argument("--table", action="store_true", help="print the recorded trials as markdown")
    args = p.parse_args()
    if unknown := [t for t in args.trials if t not in TRIALS]:
        p.error(f"unknown trial(s) {', '.join(unknown)}; known: {', '.join(TRIALS)}")
    for name in args.trials:
        print(json.dumps(run(name, args.minutes, args.out)))
    if args.table:
        print(table([json.loads(line) for line in RESULTS.read_text().splitlines()]))


if __name__ == "__main__":
    cli()
