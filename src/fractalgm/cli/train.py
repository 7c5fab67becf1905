"""`fractalgm train`: parse, check, call `Trainer`. The training flags are generated from `TrainConfig`.

Every flag is left unset unless given, so `--resume` can take the rest from the run's
`train_config.json` (model config, training config, data and preset): `fractalgm train --out r
--resume` continues a run with nothing repeated, and `--steps N --resume` extends it.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from ..checks import FRACTION, NON_NEGATIVE, parse_device
from ..training.config import BUDGETS, TrainConfig
from .common import add_dataclass_flags, refuse_unused
from .data_args import add_data_args, add_recipe_arg, apply_recipe, data_rules, open_for_model

# the options that are not TrainConfig fields, with their defaults (saved under "run" in train_config.json)
RUN_DEFAULTS = {"preset": "fractalar_fmnist_lite", "data": "fashion_mnist", "data_dir": None, "image_size": None,
                "channels": None, "skip_bad": False, "recipe": None, "grad_checkpointing": False, "r_weight": None,
                "label_drop": None, "unconditional": False}
MODEL_OPTIONS = ("preset", "r_weight", "label_drop", "unconditional")
# changing these on --resume keeps the run one exact schedule; changing others starts a new one
BENIGN_ON_RESUME = {"steps", "epochs", "minutes", "log_every", "eval_every", "save_every", "val_images",
                    "sample_labels", "final_eval", "device"}


def add_parser(sub) -> argparse.ArgumentParser:
    from ..presets import list_presets

    t = sub.add_parser("train", help="train a preset on a dataset", description=(
        "Train a model. Writes metrics.jsonl, loss.png, sample grids, an EMA model folder and a resumable "
        "train_state.pt into --out. SIGTERM/SIGINT stop after the current step with a save (a second one "
        "exits at once). Example: fractalgm train --minutes 20 --out runs/fmnist"))
    t.add_argument("--out", required=True, help="run folder (refused if it holds a run, unless --resume or "
                   "--overwrite)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its train_state.pt; "
                   "options not given are read from its train_config.json (default: off)")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out (default: off)")
    m = t.add_argument_group("model and data (read from train_config.json on --resume)")
    m.add_argument("--preset", default=argparse.SUPPRESS, choices=list_presets(), metavar="PRESET",
                   help=f"model preset, one of: {', '.join(list_presets())} (default: {RUN_DEFAULTS['preset']})")
    add_data_args(m, default=False)
    add_recipe_arg(m)
    m.add_argument("--grad-checkpointing", action="store_true", default=argparse.SUPPRESS,
                   help="recompute activations in the backward pass to save memory (default: off)")
    m.add_argument("--r-weight", type=NON_NEGATIVE.parse, default=argparse.SUPPRESS, help="training weight of the "
                   "first generated channel (the reference trains RGB models with 5) (default: the preset's)")
    m.add_argument("--label-drop", type=FRACTION.parse, default=argparse.SUPPRESS, help="probability of dropping "
                   "a label in training, for CFG; in [0, 1] (default: the preset's, 0.1)")
    m.add_argument("--unconditional", action="store_true", default=argparse.SUPPRESS,
                   help="ignore labels (num_classes = 0) (default: off)")
    add_dataclass_flags(t, TrainConfig, "training (the fields of fractalgm.training.TrainConfig)",
                        types={"device": parse_device})
    t.set_defaults(fn=run)
    return t


def _saved(out: Path) -> dict:
    path = out / "train_config.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path} ({e}); resume needs it, or start over with --overwrite") from e


def resolve_options(args: argparse.Namespace) -> tuple[TrainConfig, dict, dict]:
    """(TrainConfig, run options, saved model config or {}) from flags, then the saved run, then defaults."""
    given = {k: v for k, v in vars(args).items() if k not in ("fn", "command")}
    saved = _saved(Path(args.out)) if args.resume else {}
    names = {f.name for f in fields(TrainConfig)}
    train = dict(saved.get("train", {}))
    if any(b in given for b in BUDGETS):  # a new budget replaces the saved one
        for b in BUDGETS:
            train.pop(b, None)
    explicit = {k: given[k] for k in names if k in given}
    if args.resume and saved:
        changed = [f"--{k.replace('_', '-')} {train.get(k)} → {v}" for k, v in explicit.items()
                   if k not in BENIGN_ON_RESUME and k in train and train[k] != v]
        if changed:
            print("note: changed on resume (the run no longer follows one schedule): " + ", ".join(changed),
                  file=sys.stderr)
    train.update(explicit)
    run = {**RUN_DEFAULTS, **saved.get("run", {}), **{k: given[k] for k in RUN_DEFAULTS if k in given}}
    if run["recipe"] and not args.resume:  # on resume the saved config already holds the recipe's values
        apply_recipe(run["recipe"], train, run, set(given))
    tcfg = TrainConfig.from_dict(train)
    tcfg.require_budget()
    return tcfg, run, (saved.get("model") or {}) if args.resume else {}


def _model_config(run: dict, num_classes: int):
    from ..presets import get_preset

    cfg = get_preset(run["preset"])
    overrides = {"num_classes": num_classes} if cfg.num_classes != num_classes else {}
    if run["grad_checkpointing"]:
        overrides["grad_checkpointing"] = True
    if run["r_weight"] is not None:
        overrides["r_weight"] = run["r_weight"]
    if run["label_drop"] is not None:
        overrides["label_drop_prob"] = run["label_drop"]
    if run["unconditional"]:
        overrides["num_classes"] = 0
    return cfg.replace(**overrides) if overrides else cfg


def run(args):
    import torch

    from ..config import FractalConfig
    from ..data import check_images
    from ..models import FractalGen
    from ..training.runfolder import check_can_start
    from ..training.trainer import Trainer

    out = Path(args.out)
    check_can_start(out, args.resume, args.overwrite)  # before anything slow
    tcfg, run_options, saved_model = resolve_options(args)
    refuse_unused(args, data_rules(argparse.Namespace(**run_options)) + [
        ("label_drop", run_options["unconditional"], "an unconditional model (--unconditional) has no labels to drop")])
    shape = FractalConfig.from_dict(saved_model) if saved_model else _model_config(run_options, 0)
    data = argparse.Namespace(**run_options)
    train_set = open_for_model(data, "train", shape.channels, shape.image_size)
    val_set = open_for_model(data, "val", shape.channels, shape.image_size)
    cfg = _model_config(run_options, train_set.num_classes)
    if saved_model:
        stored = FractalConfig.from_dict(saved_model)
        given = [f"--{k.replace('_', '-')}" for k in MODEL_OPTIONS if k in vars(args)]
        if given and stored.replace(grad_checkpointing=False) != cfg.replace(grad_checkpointing=False):
            raise ValueError(f"{' '.join(given)} describe another model than the run in {out} was trained with; "
                             "drop them to resume it, or start a new run with another --out")
        cfg = stored.replace(grad_checkpointing=bool(run_options["grad_checkpointing"]))
    check_images(train_set, cfg.channels, cfg.image_size)
    torch.manual_seed(tcfg.seed)
    trainer = Trainer(FractalGen(cfg), train_set, out, tcfg, val_set=val_set, overwrite=args.overwrite,
                      run_options=run_options)
    say = print if trainer.main else (lambda *a, **k: None)
    shown = 0

    def notes():
        nonlocal shown
        for note in trainer.notes[shown:]:
            print(f"note: {note}", file=sys.stderr)
        shown = len(trainer.notes)

    if args.resume:
        trainer.resume()
        notes()
        say(f"resumed {out} at step {trainer.step}")
    n = sum(p.numel() for p in trainer.model.parameters())
    say(f"training {run_options['preset']} ({n:,} parameters) on {train_set.name} ({len(train_set):,} images) "
        f"on {trainer.device} × {trainer.world} process(es); run folder {out}")
    try:
        last = trainer.fit()
    finally:
        notes()
    trainer.leave_process_group()
    if last.get("stopped"):
        say(last["message"])
        return last
    say(json.dumps(last))
    say(f"model folder: {out / 'model'} (load with FractalGen.from_pretrained)")
    return last
