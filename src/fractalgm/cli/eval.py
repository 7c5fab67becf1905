"""`fractalgm eval`: likelihood, sample quality over a guidance sweep, and cost, in one report.

    fractalgm eval --model fmnist-mar --num-samples 1000 --cfg 1,1.5,2,3 --temperature 1.0 --out eval/

writes eval/eval.json, eval/eval.md (tables), eval/guidance.png (FID, IS, precision, recall against
cfg, one line per temperature) and the samples of each setting as ADM-format .npz (resumable).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..checks import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, NumberList
from .common import add_model_args, load_model
from .generation import add_fast_arg


def add_parser(subparsers):
    e = subparsers.add_parser("eval", help="bits/dim, FID/IS/precision/recall over a guidance sweep, cost",
                              description=__doc__.split("\n\n")[0])
    add_model_args(e)
    e.add_argument("--out", default="eval", help="output folder: eval.json, eval.md, guidance.png, samples "
                   "(default: eval)")
    src = e.add_argument_group("samples")
    src.add_argument("--samples", help="evaluate this ADM-format .npz (arr_0 uint8 NHWC, arr_1 labels) instead "
                     "of generating (default: generate)")
    src.add_argument("--num-samples", type=POSITIVE_INT.parse, default=1000, help="samples per setting (default 1000)")
    src.add_argument("--batch-size", type=POSITIVE_INT.parse, default=100, help="images per sampling batch (default 100)")
    src.add_argument("--unconditional", action="store_true", help="sample without labels (default: off)")
    src.add_argument("--cfg", type=NumberList(NON_NEGATIVE).parse, default=(1.0,),
                     help="guidance scale(s), e.g. 1,1.5,2,3 (default: 1)")
    src.add_argument("--temperature", type=NumberList(POSITIVE).parse, default=(1.0,),
                     help="temperature(s), e.g. 0.9,1.0 (default: 1)")
    src.add_argument("--cfg-schedule", default="constant", choices=["constant", "linear"],
                     help="guidance over the steps (default: constant)")
    src.add_argument("--num-iter", type=NumberList(POSITIVE_INT).parse, metavar="N[,N…]",
                     help="MAR steps per level, e.g. 16,8 (default: one per token, ≤ 64)")
    src.add_argument("--filter-threshold", type=FRACTION.parse, default=1e-4,
                     help="the guidance filter threshold, in [0, 1] (default: 1e-4)")
    src.add_argument("--seed", type=SEED.parse, default=0, help="random seed (default: 0)")
    add_fast_arg(src)
    ref = e.add_argument_group("reference and features")
    ref.add_argument("--extractor", help="fmnist-classifier, efficientnet-lite0 or inception-v3 (default: the "
                     "classifier for 28×28 grayscale, else efficientnet-lite0)")
    ref.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (for --extractor "
                     "inception-v3) (default: none)")
    ref.add_argument("--ref-stats", help="reference statistics .npz (mu, sigma; the ADM/reference format) "
                     "instead of computing them from --data (default: none)")
    ref.add_argument("--save-ref-stats", help="also write the reference statistics computed from --data here "
                     "(default: none)")
    ref.add_argument("--data", help="reference / likelihood dataset (default fashion_mnist; see `fractalgm nll`)")
    ref.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files (default: the Debian package's)")
    ref.add_argument("--split", default="test", help="dataset split (default: test)")
    ref.add_argument("--ref-images", type=POSITIVE_INT.parse, help="only the first N reference images (default all)")
    nll = e.add_argument_group("likelihood")
    nll.add_argument("--nll-images", type=NON_NEGATIVE_INT.parse, default=1000,
                     help="test images for bits/dim (0: skip; default 1000)")
    nll.add_argument("--passes", type=POSITIVE_INT.parse, default=4,
                     help="random-masking passes for MAR (estimate ± stderr; default 4)")
    nll.add_argument("--exact", action="store_true", help="also the exact NLL of MAR under a fixed random order "
                     "(one forward per token; default: off)")
    nll.add_argument("--nll-batch-size", type=POSITIVE_INT.parse, default=100, help="images per batch (default 100)")
    e.add_argument("--no-cost", action="store_true", help="skip the cost measurement (default: measure it)")
    e.set_defaults(fn=run)
    return e


def _settings(args) -> list[tuple[float, float]]:
    cfgs, temps = list(args.cfg), list(args.temperature)
    if args.samples and len(cfgs) * len(temps) > 1:
        raise ValueError("--samples evaluates one file: give a single --cfg and --temperature (they label it)")
    return [(c, t) for t in temps for c in cfgs]


def _refuse_unused_flags(args, model=None):
    """Flags that the others (or, once loaded, the model) leave without effect: refused, not ignored."""
    from .common import model_rules, refuse_unused

    if model is None:
        from_file = "--samples evaluates that file: nothing is sampled"
        stats_only = args.ref_stats and not args.data
        no_nll = "--nll-images 0 skips the likelihood"
        refuse_unused(args, model_rules(args) + [
            *((dest, bool(args.samples), from_file) for dest in ("num_samples", "batch_size", "unconditional",
                                                                 "cfg_schedule", "filter_threshold", "fast")),
            ("num_iter", bool(args.samples) and args.no_cost, f"{from_file} and --no-cost measures no sampling"),
            ("inception_weights", args.extractor != "inception-v3", "they are the weights of --extractor inception-v3"),
            ("save_ref_stats", stats_only, "the reference statistics come from --ref-stats (add --data to compute "
                                           "them)"),
            ("ref_images", stats_only, "the reference statistics come from --ref-stats (add --data to compute them)"),
            *((dest, bool(stats_only and not args.nll_images), "no dataset is read: the reference is --ref-stats "
               "and --nll-images is 0") for dest in ("split", "data_dir")),
            *((dest, not args.nll_images, no_nll) for dest in ("passes", "exact", "nll_batch_size"))])
        return
    conditional = model.config.num_classes > 0 and not args.unconditional
    unguided = all(c == 1 for c in args.cfg)
    refuse_unused(args, [
        ("passes", model.config.is_exact, "this model's likelihood is exact: one pass"),
        ("exact", model.config.is_exact, "this model's likelihood is always exact"),
        ("unconditional", model.config.num_classes == 0, "this model has no classes"),
        ("cfg", not conditional and not unguided, "guidance needs labels: these samples are unconditional"),
        *((dest, unguided, "guidance is off (--cfg 1)") for dest in ("cfg_schedule", "filter_threshold")),
        ("num_iter", all(lv.kind == "ar" for lv in model.config.levels),
         "every level of this model is AR and takes one step per token")])


def run(args):
    from ..data import check_images, load_dataset
    from ..evaluate.bpd import dataset_bpd
    from ..evaluate.extractors import default_extractor, get_extractor
    from ..evaluate.quality import Reference, sample_quality
    from ..evaluate.report import plot_guidance, write_markdown
    from ..evaluate.samples import generate_samples_npz, load_samples_npz

    settings = _settings(args)
    _refuse_unused_flags(args)
    model = load_model(args)
    _refuse_unused_flags(args, model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    name = args.extractor or default_extractor(cfg.channels, cfg.image_size)
    extractor = get_extractor(name, device=model.device, **({"weights": args.inception_weights}
                                                            if name == "inception-v3" else {}))
    data = None
    if args.data or not args.ref_stats or args.nll_images:
        data = load_dataset(args.data or "fashion_mnist", args.split, data_dir=args.data_dir,
                            image_size=cfg.image_size)
        check_images(data, cfg.channels, cfg.image_size)
    report = {"model": args.preset or args.model, "extractor": extractor.name, "fast": args.fast, "settings": []}

    if args.nll_images:
        n = min(args.nll_images, len(data))
        report["likelihood"] = {"estimate" if not model.config.is_exact else "exact": _strip(dataset_bpd(
            model, data.images[:n], batch_size=args.nll_batch_size, passes=args.passes, seed=args.seed))}
        if args.exact and not model.config.is_exact:
            report["likelihood"]["exact"] = _strip(dataset_bpd(model, data.images[:n], batch_size=args.nll_batch_size,
                                                               exact=True, seed=args.seed))
        report["likelihood"]["split"] = args.split

    ref_images = None
    if data is not None and (args.data or not args.ref_stats):
        ref_images = data.images[:args.ref_images] if args.ref_images else data.images
        reference = Reference.from_images(ref_images, extractor, f"{data.name} {args.split} ({len(ref_images)} images)",
                                          progress=True)
        if args.save_ref_stats:
            reference.stats.save(args.save_ref_stats)
        if args.ref_stats:  # FID against the given statistics, PRDC against the data's features
            reference = Reference.from_stats(args.ref_stats, extractor, reference.features)
    else:
        reference = Reference.from_stats(args.ref_stats, extractor)
    report["reference"] = reference.source

    conditional = cfg.num_classes > 0 and not args.unconditional
    num_iter = list(args.num_iter) if args.num_iter else None
    for cfg_scale, temperature in settings:
        if args.samples:
            images, labels = load_samples_npz(args.samples)
            path = Path(args.samples)
        else:
            fast = "_fast" if args.fast else ""
            path = out / f"samples_cfg{cfg_scale:g}_temp{temperature:g}_n{args.num_samples}_seed{args.seed}{fast}.npz"
            if not path.exists():
                generate_samples_npz(model, path, args.num_samples, batch_size=args.batch_size, conditional=conditional,
                                     seed=args.seed, num_iter=num_iter, cfg_scale=cfg_scale if conditional else 1.0,
                                     cfg_schedule=args.cfg_schedule, temperature=temperature,
                                     filter_threshold=args.filter_threshold, fast=args.fast)
            images, labels = load_samples_npz(path)
        row = {"cfg": cfg_scale, "temperature": temperature, "samples_file": str(path),
               **sample_quality(images, labels, extractor, reference, num_classes=cfg.num_classes)}
        report["settings"].append(row)
        print(_summary(row))
    best = min(report["settings"], key=lambda r: r["fid"])
    report["recommended"] = {"cfg": best["cfg"], "temperature": best["temperature"], "by": "lowest FID",
                             "fid": best["fid"]}
    if not args.no_cost:
        from ..evaluate.cost import measure_cost

        report["cost"] = measure_cost(model, sampling={"num_iter": num_iter, "cfg_scale": best["cfg"],
                                                       "temperature": best["temperature"], "fast": args.fast})
    (out / "eval.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    write_markdown(report, out / "eval.md")
    if len(settings) > 1:
        plot_guidance(report["settings"], out / "guidance.png", title=f"{report['model']} ({extractor.name})")
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}" + (f" and {out / 'guidance.png'}" if len(settings) > 1 else ""))
    return report


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "bpd_per_image"}


def _summary(row: dict) -> str:
    parts = [f"cfg {row['cfg']:g} temperature {row['temperature']:g}: FID {row['fid']:.3f}",
             f"{'IS' if row['extractor'] == 'inception-v3' else 'classifier score'} {row['is']:.3f}"]
    if "precision" in row:
        parts.append(f"precision {row['precision']:.3f} recall {row['recall']:.3f} density {row['density']:.3f} "
                     f"coverage {row['coverage']:.3f}")
    if "class_accuracy" in row:
        parts.append(f"class accuracy {row['class_accuracy']:.1%}")
    return ", ".join(parts) + f" [{row['extractor']}, {row['samples']} samples]"
