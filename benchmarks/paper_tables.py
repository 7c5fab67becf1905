"""The paper's comparisons at Fashion-MNIST scale, measured on this machine → docs/results.md.

1. Levels (Table 2): the `ablation_{2,3,4}level_{ar,mar}` presets (one flat transformer over 784
   pixels, 28→4→1, 28→4→2→1; the pixel head counts as a level), each trained for the same
   wall-clock budget: GFLOPs per image, training images/s, test bits/dim, FID.
2. AR against MAR (Table 5): `fractalar_fmnist` and `fractalmar_fmnist`, same budget: bits/dim, FID,
   precision/recall, sample grids.
3. Channel order (Table 6): `fractalmar_rgb32` on the RGB photo crops generating RGB, GRB or BGR:
   bits/dim and FID with the RGB extractor (EfficientNet-Lite0).
4. Guidance: FID, classifier score, precision/recall and class accuracy of the shipped model over a
   cfg × temperature sweep, with the recommended setting.

Every budget is an argument and is printed in the results. The run is resumable: each model is
trained in its own folder (`--resume` semantics), each evaluation is cached as JSON, and sample
files are resumable, so re-running the same command continues where it stopped. The defaults
(6 min of training per model, 200 samples per model, 500 per guidance setting) take about two
hours on 2 CPU cores:

    OMP_NUM_THREADS=2 python benchmarks/paper_tables.py --out runs/paper_tables

A quick end-to-end check (tiny budgets, not results) writes elsewhere:

    python benchmarks/paper_tables.py --minutes 0.05 --samples 20 --sweep-samples 20 --nll-images 20 --ref-images 300 \
        --sweep-cfg 1,2 --sweep-temperature 1 --out /tmp/pt --results /tmp/pt/results.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from fractalgm import FractalGen, get_preset
from fractalgm.data import load_dataset
from fractalgm.evaluate import Reference, dataset_bpd, generate_samples_npz, get_extractor, load_samples_npz, sample_quality
from fractalgm.evaluate.report import plot_guidance, quality_table
from fractalgm.evaluate.flops import level_table
from fractalgm.training.config import TrainConfig
from fractalgm.training.trainer import Trainer
from fractalgm.viz.grid import save_grid

LEVEL_PRESETS = [f"ablation_{n}level_{k}" for n in (2, 3, 4) for k in ("ar", "mar")]
ORDERS = ("rgb", "grb", "bgr")
ALL_SECTIONS = ("levels", "armar", "channels", "guidance")
SECTION_TITLES = {"levels": "1. Levels (Table 2)", "armar": "2. AR against MAR (Table 5)",
                  "channels": "3. Channel order (Table 6)", "guidance": "4. Guidance"}


# ---------------------------------------------------------------------------- training
def train(run: Path, config, train_set, args) -> tuple[FractalGen, dict]:
    """Train `config` for the wall-clock budget in `run` (resuming an interrupted run); (EMA model, log stats)."""
    done = run / "done.json"
    if not done.exists():
        tcfg = TrainConfig(batch_size=args.batch_size, blr=args.blr, minutes=args.minutes, seed=args.seed,
                           log_every=10, eval_every=10**9, save_every=50, device="cpu")
        torch.manual_seed(args.seed)
        trainer = Trainer(FractalGen(config), train_set, run, tcfg)
        if (run / "train_state.pt").exists():
            trainer.resume()
        trainer.fit()
        if trainer.stop.requested:  # a signal ended the training early: keep it resumable, not done
            raise SystemExit(f"stopped by a signal; re-run the same command to resume {run}")
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        speeds = [r["images_per_s"] for r in logs if "images_per_s" in r]
        done.write_text(json.dumps({"steps": trainer.step, "train_seconds": trainer.elapsed,
                                    "images_seen": trainer.step * args.batch_size,
                                    "train_images_per_s": statistics.median(speeds) if speeds else None,
                                    "final_loss": logs[-1].get("loss"), "torch_threads": torch.get_num_threads()},
                                   indent=2))
    return FractalGen.from_pretrained(run / "model").eval(), json.loads(done.read_text())


# ---------------------------------------------------------------------------- evaluation
def evaluate(name: str, run: Path, model: FractalGen, test, reference: Reference, extractor, args, samples: int,
             labels=None, cfg_scale: float = 1.0, temperature: float = 1.0, nll: bool = True) -> dict:
    """Sample quality of `samples` images (cached in run/eval_<setting>.json) and, with `nll`, test bits/dim."""
    tag = f"cfg{cfg_scale:g}_temp{temperature:g}_n{samples}"
    cache = run / f"eval_{tag}.json"
    if cache.exists():
        row = json.loads(cache.read_text())
    else:
        row = {"name": name, "cfg": cfg_scale, "temperature": temperature}
        num_iter = steps_per_level(args.num_iter, len(model.config.levels))
        path = run / f"samples_{tag}.npz"
        t0 = time.time()
        if not path.exists():
            generate_samples_npz(model, path, samples, batch_size=args.sample_batch,
                                 conditional=model.config.num_classes > 0, label_list=labels, seed=args.seed,
                                 num_iter=num_iter, cfg_scale=cfg_scale, temperature=temperature)
            row["sample_seconds"] = time.time() - t0
        images, sample_labels = load_samples_npz(path)
        row["samples_file"] = str(path)
        row.update(sample_quality(images, sample_labels, extractor, reference, num_classes=model.config.num_classes))
        row.pop("class_accuracy_per_class", None)
        cache.write_text(json.dumps(row, indent=2))
    return {**row, **(split_bpd(name, run, model, test, args) if nll else {})}


def split_bpd(name: str, run: Path, model: FractalGen, test, args) -> dict:
    """bits/dim on the first `--nll-images` test images, cached in run/bpd_<images>_<passes>.json."""
    n = min(args.nll_images, len(test))
    cache = run / f"bpd_{n}_p{args.passes}.json"
    if not cache.exists():
        r = dataset_bpd(model, test.images[:n], batch_size=50, passes=args.passes, seed=args.seed,
                        desc=f"{name}: bits/dim")
        cache.write_text(json.dumps({"bpd": r["bpd"], "bpd_stderr": r["stderr"], "bpd_kind": r["kind"],
                                     "bpd_images": n}, indent=2))
    return json.loads(cache.read_text())


def steps_per_level(text: str | None, levels: int) -> list[int] | None:
    """`--num-iter` fitted to a model's depth: cut, or padded with its last value."""
    if not text:
        return None
    steps = [int(v) for v in text.split(",")]
    return (steps + steps[-1:] * levels)[:levels]


def grid(images_path: Path, out: Path, per_class: int = 4):
    images, labels = load_samples_npz(images_path)
    if labels is not None:
        keep = torch.cat([(labels == c).nonzero()[:per_class, 0] for c in labels.unique()])
        images = images[keep]
    save_grid(images[:10 * per_class], out, nrow=per_class, by_column=labels is not None, scale=2)


def gflops(config) -> float:
    return sum(r["gflops"] for r in level_table(config))


def fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


# ---------------------------------------------------------------------------- sections
def levels_section(args, fm, ref, ext, figs: Path) -> list[str]:
    rows = []
    for preset in LEVEL_PRESETS:
        cfg = get_preset(preset)
        run = Path(args.out) / preset
        model, log = train(run, cfg, fm["train"], args)
        row = evaluate(preset, run, model, fm["test"], ref, ext, args, args.samples, cfg_scale=args.cfg)
        rows.append({**row, **log, "gflops": gflops(cfg), "params": sum(p.numel() for p in model.parameters())})
    out = ["## 1. Levels (Table 2)", "",
           f"Each model trained for {args.minutes:g} min of wall clock (batch {args.batch_size}, blr {args.blr:g}), "
           f"then scored: bits/dim on the first {args.nll_images} test images, FID ({ext.name}) of {args.samples} "
           f"class-balanced samples (cfg {args.cfg:g}) against {ref.source}.", "",
           "| preset | levels | params | GFLOPs/img (fwd) | train img/s | steps | test bits/dim | FID | precision | recall |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        levels = len(get_preset(r["name"]).levels) + 1
        out.append(f"| `{r['name']}` | {levels} | {r['params']:,} | {r['gflops']:.2f} | {fmt(r['train_images_per_s'], '.1f')} | "
                   f"{r['steps']} | {r['bpd']:.3f} ± {r['bpd_stderr']:.3f} | {r['fid']:.2f} | {r['precision']:.3f} | "
                   f"{r['recall']:.3f} |")
    out += ["", "bits/dim: " + "; ".join(sorted({r["bpd_kind"] for r in rows})) + ".", ""] + levels_verdict(rows)
    _levels_plot(rows, figs / "levels.png")
    out += [f"![levels: cost against quality]({figs.name}/levels.png)", ""]
    return out


def levels_verdict(rows) -> list[str]:
    """Does 'more levels are cheaper and better' hold in these measurements? Said per generator kind."""
    out = []
    for kind in ("ar", "mar"):
        mine = sorted((r for r in rows if r["name"].endswith("_" + kind)), key=lambda r: r["name"])
        if len(mine) < 2:
            continue
        def monotone(key, lower_is_better=True):
            vals = [r[key] for r in mine]
            return all((b < a) if lower_is_better else (b > a) for a, b in zip(vals, vals[1:]))
        cheaper = monotone("gflops")
        bpd, fid_ = monotone("bpd"), monotone("fid")
        verdict = "holds" if cheaper and bpd and fid_ else "does not fully hold"
        out.append(f"* {kind.upper()}, 2 → 3 → 4 levels: GFLOPs/img "
                   + " → ".join(f"{r['gflops']:.2f}" for r in mine) + ", bits/dim "
                   + " → ".join(f"{r['bpd']:.3f}" for r in mine) + ", FID " + " → ".join(f"{r['fid']:.1f}" for r in mine)
                   + f": each extra level is {'always' if cheaper else 'not always'} cheaper, "
                   f"{'always' if bpd else 'not always'} better in bits/dim and {'always' if fid_ else 'not always'} "
                   f"better in FID; the paper's claim {verdict} here at this budget.")
    return out + [""]


def _levels_plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((axes[0], "bpd", "test bits/dim"), (axes[1], "fid", "FID")):
        for kind, marker in (("ar", "s"), ("mar", "o")):
            pts = [(r["gflops"], r[key], r["name"]) for r in rows if r["name"].endswith("_" + kind)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=kind.upper())
            for x, y, n in pts:
                ax.annotate(n.split("_")[1], (x, y), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training-forward GFLOPs per image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def armar_section(args, fm, ref, ext, figs: Path) -> list[str]:
    rows = []
    for preset in ("fractalar_fmnist", "fractalmar_fmnist"):
        run = Path(args.out) / preset
        model, log = train(run, get_preset(preset), fm["train"], args)
        row = evaluate(preset, run, model, fm["test"], ref, ext, args, args.samples, cfg_scale=args.cfg)
        grid(Path(row["samples_file"]), figs / f"{preset}.png")
        rows.append({**row, **log})
    out = ["## 2. AR against MAR (Table 5)", "",
           f"Same budget ({args.minutes:g} min each), same scoring as above.", "",
           "| preset | steps | test bits/dim | FID | classifier score | precision | recall | density | coverage | class accuracy |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| `{r['name']}` | {r['steps']} | {r['bpd']:.3f} ± {r['bpd_stderr']:.3f} ({r['bpd_kind']}) | "
                   f"{r['fid']:.2f} | {r['is']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | "
                   f"{r['coverage']:.3f} | {fmt(r.get('class_accuracy'), '.1%')} |")
    out += [""] + [f"![{r['name']}]({figs.name}/{r['name']}.png) " for r in rows] + [""]
    return out


def channels_section(args, figs: Path) -> list[str]:
    train_set = load_dataset("photos", "train", image_size=32)
    test = load_dataset("photos", "test", image_size=32)
    held = load_dataset("photos", "train", image_size=32, seed=1)  # other crops of the training photos
    ext = get_extractor("efficientnet-lite0")
    ref = Reference.from_images(held.images[:args.ref_images], ext,
                                f"{min(args.ref_images, len(held))} other crops of the training photos")
    classes = sorted(set(train_set.labels.tolist()))
    rows = []
    for order in ORDERS:
        cfg = get_preset("fractalmar_rgb32").replace(channel_order=order, num_classes=train_set.num_classes)
        run = Path(args.out) / f"channels_{order}"
        model, log = train(run, cfg, train_set, args)
        row = evaluate(order.upper(), run, model, test, ref, ext, args, args.samples, labels=classes, cfg_scale=args.cfg)
        row["grid"] = f"channels_{order}.png"
        grid(Path(row["samples_file"]), figs / row["grid"])
        rows.append({**row, **log})
    out = ["## 3. Channel order (Table 6)", "",
           f"`fractalmar_rgb32` on 32×32 crops of the scikit-image photos ({len(train_set)} training crops of "
           f"{len(classes)} photos, labels = photo), {args.minutes:g} min each; bits/dim on {min(args.nll_images, len(test))} "
           f"crops of the held-out test photo; FID ({ext.name}) of {args.samples} samples against {ref.source}.", "",
           "| generation order | steps | test bits/dim | FID | precision | recall |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['steps']} | {r['bpd']:.3f} ± {r['bpd_stderr']:.3f} | {r['fid']:.2f} | "
                   f"{r['precision']:.3f} | {r['recall']:.3f} |")
    out += ["", *channels_verdict(rows), ""]
    return out + [" ".join(f"![{r['name']}]({figs.name}/{r['grid']})" for r in rows), ""]


def channels_verdict(rows) -> list[str]:
    """Which order is best, and is its lead larger than the measurement noise (2 standard errors)?"""
    best = min(rows, key=lambda r: r["bpd"])
    out = []
    for r in rows:
        if r is best:
            continue
        gap, noise = r["bpd"] - best["bpd"], 2 * (r["bpd_stderr"] ** 2 + best["bpd_stderr"] ** 2) ** 0.5
        out.append(f"{best['name']} is {gap:.3f} bits/dim below {r['name']} "
                   f"({'more' if gap > noise else 'less'} than 2 standard errors, {noise:.3f})")
    lines = [f"* Lowest bits/dim: {best['name']}; " + "; ".join(out) + " (unpaired). Lowest FID: "
             f"{min(rows, key=lambda r: r['fid'])['name']}."]
    if max(r["precision"] for r in rows) == 0:
        lines.append("* No order's samples reach the real crops' manifold yet (precision 0 for every order): at this "
                     "budget the gaps say how fast each order learns, not what it converges to.")
    return lines


def guidance_section(args, fm, ref, ext, figs: Path) -> list[str]:
    model = FractalGen.from_pretrained(args.guidance_model).eval()
    run = Path(args.out) / f"guidance_{Path(args.guidance_model).name}"
    run.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in [float(v) for v in args.sweep_temperature.split(",")]:
        for c in [float(v) for v in args.sweep_cfg.split(",")]:
            rows.append(evaluate(args.guidance_model, run, model, fm["test"], ref, ext, args, args.sweep_samples,
                                 cfg_scale=c, temperature=t, nll=False))
    plot_guidance(rows, figs / "guidance.png", title=f"{args.guidance_model} ({ext.name})")
    best = min(rows, key=lambda r: r["fid"])
    return ["## 4. Guidance", "", f"The shipped model `{args.guidance_model}`, {args.sweep_samples} class-balanced samples "
            f"per setting, against {ref.source}.", "", quality_table(rows), "",
            f"Recommended (lowest FID): **cfg {best['cfg']:g}, temperature {best['temperature']:g}** "
            f"(FID {best['fid']:.2f}, class accuracy {fmt(best.get('class_accuracy'), '.1%')}).", "",
            f"![guidance sweep]({figs.name}/guidance.png)", ""]


def budgets(args, sections) -> str:
    parts = []
    if set(sections) & {"levels", "armar", "channels"}:
        parts.append(f"training {args.minutes:g} min of wall clock per model (batch {args.batch_size}); bits/dim on "
                     f"{args.nll_images} test images ({args.passes} random-masking passes for MAR, AR exact)")
    if set(sections) & {"levels", "armar", "channels"}:
        parts.append(f"{args.samples} samples per model (MAR steps per level {args.num_iter})")
    if "guidance" in sections:
        parts.append(f"{args.sweep_samples} samples per guidance setting")
    parts.append(f"FID reference: up to {args.ref_images} real images")
    return "; ".join(parts) + "."


def training_threads(out) -> str:
    """The torch thread counts the cached models were trained with (their done.json), e.g. "2"."""
    found = {json.loads(p.read_text()).get("torch_threads") for p in Path(out).glob("*/done.json")}
    return "/".join(sorted(str(t) for t in found if t is not None)) or "unrecorded"


# ---------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/paper_tables", help="run folders, caches and samples")
    p.add_argument("--results", default="docs/results.md", help="the markdown written (figures beside it)")
    p.add_argument("--sections", default="levels,armar,channels,guidance")
    p.add_argument("--minutes", type=float, default=6.0, help="training wall clock per model")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="the default recipe's")
    p.add_argument("--blr", type=float, default=TrainConfig.blr, help="the default recipe's (lr 2e-3 at batch 32)")
    p.add_argument("--samples", type=int, default=200, help="samples per model for FID and PRDC in sections 1–3 "
                   "(the flat 2-level MAR alone needs ~4 min per 50 on 2 cores)")
    p.add_argument("--sweep-samples", type=int, default=500, help="samples per setting of the guidance sweep")
    p.add_argument("--sample-batch", type=int, default=50)
    p.add_argument("--num-iter", default="16,8", help="MAR steps per level when sampling")
    p.add_argument("--cfg", type=float, default=1.5, help="guidance of the samples in sections 1–3")
    p.add_argument("--nll-images", type=int, default=1000)
    p.add_argument("--passes", type=int, default=2, help="random-masking passes of the MAR estimate")
    p.add_argument("--ref-images", type=int, default=10000, help="reference images for FID / PRDC")
    p.add_argument("--guidance-model", default="fmnist-ar")
    p.add_argument("--sweep-cfg", default="1,1.5,2,3,4")
    p.add_argument("--sweep-temperature", default="0.9,1.0")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sections = args.sections.split(",")
    unknown = set(sections) - set(ALL_SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {','.join(ALL_SECTIONS)}")
    results = Path(args.results)
    figs = results.with_suffix("")
    figs.mkdir(parents=True, exist_ok=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    fm = {s: load_dataset("fashion_mnist", s) for s in ("train", "test")}
    ext = get_extractor("fmnist-classifier")
    ref = Reference.from_images(fm["test"].images[:args.ref_images], ext,
                                f"the first {min(args.ref_images, len(fm['test']))} Fashion-MNIST test images")
    body = []
    if "levels" in sections:
        body += levels_section(args, fm, ref, ext, figs)
    if "armar" in sections:
        body += armar_section(args, fm, ref, ext, figs)
    if "channels" in sections:
        body += channels_section(args, figs)
    if "guidance" in sections:
        body += guidance_section(args, fm, ref, ext, figs)
    head = ["# Results: the paper's comparisons at Fashion-MNIST scale", "",
            f"Measured by `python benchmarks/paper_tables.py {' '.join(argv if argv is not None else os.sys.argv[1:])}` "
            f"on {platform.machine()} with {os.cpu_count()} CPU cores, torch {torch.__version__}; models trained "
            f"with {training_threads(args.out)} torch threads. The last run of the command took "
            f"{(time.time() - t0) / 60:.1f} min, reusing the models and scores cached by earlier runs.", "",
            "**Budgets:** " + budgets(args, sections) + " Numbers from different extractors are not comparable; "
            "FIDs on a few hundred samples are biased upwards (compare settings at equal sample counts only); "
            "precision/recall/density/coverage use as many real images (a fixed random subset) as samples.", ""]
    missing = [s for s in ALL_SECTIONS if s not in sections]
    if missing:
        head += [f"Not measured in this run: {', '.join(SECTION_TITLES[s] for s in missing)} "
                 f"(`--sections {','.join(missing)}`).", ""]
    results.write_text("\n".join(head + body) + "\n")
    print(f"wrote {results} ({(time.time() - t0) / 60:.1f} min)")


if __name__ == "__main__":
    main()
