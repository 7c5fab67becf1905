"""`fractalgm nll`: bits/dim of a model on a dataset split (exact for AR; MAR: estimate or --exact)."""
from __future__ import annotations

import json

from ..checks import POSITIVE_INT, SEED
from .common import add_model_args, check_output_file, load_model, model_rules, refuse_unused, write_text_atomic
from .data_args import add_data_args, data_rules


def add_parser(sub):
    n = sub.add_parser("nll", help="bits/dim on a dataset split", description=(
        "Negative log-likelihood in bits/dim. AR models are exact; MAR models give the random-masking "
        "estimate (--passes) or, with --exact, the exact value under a fixed order."))
    add_model_args(n)
    add_data_args(n)
    n.add_argument("--split", default="test", choices=["train", "val", "test", "train_full"],
                   help="dataset split (default: test)")
    n.add_argument("--limit", type=POSITIVE_INT.parse, help="only the first N images, N ≥ 1 (default: all)")
    n.add_argument("--batch-size", type=POSITIVE_INT.parse, default=100, help="images per batch (default: 100)")
    n.add_argument("--passes", type=POSITIVE_INT.parse, default=1,
                   help="random-masking passes per image, MAR models (default: 1)")
    n.add_argument("--exact", action="store_true", help="exact NLL under a fixed order, MAR models (default: off)")
    n.add_argument("--order", default="random", choices=["random", "raster"],
                   help="the fixed order of --exact (default: random)")
    n.add_argument("--conditional", action="store_true", help="class-conditional NLL (default: unconditional)")
    n.add_argument("--seed", type=SEED.parse, default=0, help="seed of the masks and orders (default: 0)")
    n.add_argument("--json", help="also write the result to this file (default: none)")
    n.set_defaults(fn=run)


def run(args):
    from ..data import check_images
    from ..evaluate.bpd import dataset_bpd
    from .data_args import open_for_model

    if args.json:
        check_output_file(args.json, "--json")
    refuse_unused(args, model_rules(args) + data_rules(args) + [
        ("passes", args.exact, "--exact scores each image once, under one fixed order"),
        ("order", not args.exact, "the order is fixed only with --exact (random masking has none)")])
    model = load_model(args)
    all_ar = all(lv.kind == "ar" for lv in model.config.levels)
    refuse_unused(args, [
        ("passes", all_ar, "this model's levels are all AR: its NLL is exact, one pass"),
        ("order", all_ar, "AR levels always score in raster order"),
        ("seed", all_ar or (args.exact and args.order == "raster"), "this NLL draws no random masks or orders"),
        ("conditional", model.config.num_classes == 0, "this model is unconditional (no classes)")])
    data = open_for_model(args, args.split, model.config.channels, model.config.image_size)
    check_images(data, model.config.channels, model.config.image_size)
    n = min(len(data), args.limit) if args.limit else len(data)
    r = dataset_bpd(model, data, conditional=args.conditional, limit=n, batch_size=args.batch_size,
                    passes=args.passes, exact=args.exact, order=args.order, seed=args.seed)
    result = {"bpd": r["bpd"], "stderr": r["stderr"], "masking_stderr": r["masking_stderr"], "images": n,
              "split": args.split, "kind": r["kind"], "conditional": args.conditional,
              "model": args.preset or args.model}
    print(f"{r['bpd']:.4f} ± {r['stderr']:.4f} bits/dim over {n} {args.split} images ({r['kind']})")
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2))
    return result
