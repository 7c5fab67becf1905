"""Training-step and sampling speed of this tree against a baseline commit, measured in one run.

Two worker processes, one importing the baseline (a detached git worktree, 653b0ee by default) and
one importing this tree, each with its own PYTHONPATH, take the same measurements in turns: every
round runs each task on both sides, alternating which side goes first, so machine load (the CPU
may be shared) hits both alike. Each round also measures the bf16 matmul peak, so the achieved
share of it is taken under the same conditions. Reported per task: images/s (median over rounds ×
steps), new/old ratio, and for training the FLOP rate and its share of the peak.

* train: forward + backward + grad clip (3.0) + AdamW (the reference's groups) + EMA, under bf16
  autocast (as `fractalgm train` on CPU), seeds fixed per step so both sides see the same data and
  top-level masks; FLOPs (matrix products, fwd + bwd) are counted for each side's own steps.
* sample: `model.sample(labels, num_iter, cfg)` in fp32 (as `fractalgm sample`), same seeds.
* profile (after the rounds): one training step of each side under `torch.profiler`, with time
  per level (forward and backward ranges hooked onto each level's blocks and the pixel head) and
  the top operators. A table and JSON go to benchmarks/results/.

    python benchmarks/speed.py                   # full: both presets, batch 16/64, sampling 16/80
    python benchmarks/speed.py --quick           # batch 16 only, fewer rounds (a few minutes)
    python benchmarks/speed.py --tasks train --presets fractalmar_fmnist --batches 64
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "653b0ee"
PRESETS = "fractalmar_fmnist,fractalar_fmnist"


# ============================================================================ worker (one per side)
class Worker:
    """Builds models once per preset and answers measurement requests read from stdin."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.cache = {}

    def setup(self, preset: str):
        if preset not in self.cache:
            import fractalgm
            from fractalgm import FractalGen, get_preset
            try:  # this tree's layout, or the flat one of the baseline
                from fractalgm.runtime import autocast_context
                from fractalgm.training.optim import EMA, param_groups
            except ImportError:
                from fractalgm.train import EMA, autocast_context, param_groups

            torch = self.torch
            torch.manual_seed(0)
            model = FractalGen(get_preset(preset))
            opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
            ctx, _ = autocast_context("bf16", torch.device("cpu"))
            self.cache[preset] = (model, opt, EMA(model, 0.999), ctx, Path(fractalgm.__file__).parent)
        return self.cache[preset]

    def batch(self, model, B: int, seed: int):
        g = self.torch.Generator().manual_seed(seed)
        cfg = model.config
        x = self.torch.randint(0, 256, (B, cfg.channels, cfg.image_size, cfg.image_size), generator=g,
                               dtype=self.torch.uint8)
        return x, self.torch.randint(0, cfg.num_classes, (B,), generator=g)

    def train_step(self, preset: str, B: int, seed: int):
        model, opt, ema, ctx, _ = self.setup(preset)
        torch = self.torch
        x, y = self.batch(model, B, seed)
        torch.manual_seed(seed)
        model.train()
        with ctx:
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model, 1000)

    def train(self, preset: str, batch: int, steps: int, count_flops: bool = False) -> dict:
        times, flops = [], []
        self.train_step(preset, batch, 10_000)  # warm-up (allocator, autocast caches)
        for s in range(steps):
            t0 = time.perf_counter()
            self.train_step(preset, batch, s)
            times.append(time.perf_counter() - t0)
        if count_flops:  # the same seeds replay the same masks: count each timed step's products
            from torch.utils.flop_counter import FlopCounterMode

            model, _, _, ctx, _ = self.setup(preset)
            for s in range(steps):
                x, y = self.batch(model, batch, s)
                self.torch.manual_seed(s)
                with FlopCounterMode(display=False) as counter:
                    with ctx:
                        loss = model(x, y)
                    loss.backward()
                model.zero_grad(set_to_none=True)
                flops.append(counter.get_total_flops())
        return {"times": times, "flops": flops}

    def sample(self, preset: str, batch: int, cfg: float, num_iter: int, reps: int, fast: bool = False) -> dict:
        model = self.setup(preset)[0].eval()
        labels = self.torch.arange(batch) % max(model.config.num_classes, 1)
        times, digest = [], hashlib.sha256()
        for r in range(reps):
            t0 = time.perf_counter()
            images = model.sample(labels, num_iter=num_iter, generator=self.torch.Generator().manual_seed(r),
                                  **guidance(model, cfg), **fast_path(model.sample, fast))
            times.append(time.perf_counter() - t0)
            digest.update(images.numpy().tobytes())
        return {"times": times, "sha256": digest.hexdigest()}

    def shipped(self, name: str, images: int, batch: int, cfg: float, fast: bool = False) -> dict:
        """`images` class-conditional samples of a shipped model in batches, as `sample --out X.npz`.

        A tree without `generate_samples_npz` (the baseline) runs its loop: batch i seeded
        `1_000_003·0 + i`, labels cycling over the classes, one batch after the other.
        """
        from fractalgm import FractalGen

        torch = self.torch
        model = FractalGen.from_pretrained(name).eval()
        options = {**guidance(model, cfg), **fast_path(model.sample, fast)}
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            try:
                from fractalgm.evaluate.samples import generate_samples_npz, load_samples_npz
            except ImportError:
                x = torch.cat([model.sample(torch.arange(i * batch, min(images, (i + 1) * batch)) % 10,
                                            generator=torch.Generator().manual_seed(i), **options)
                               for i in range(-(-images // batch))])
            else:
                x = load_samples_npz(generate_samples_npz(model, Path(tmp) / "s.npz", images, batch_size=batch,
                                                          progress=False, **options))[0]
            seconds = time.perf_counter() - t0
        return {"times": [seconds], "sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest()}

    def peak(self, n: int = 1024, reps: int = 8) -> dict:
        """bf16 (and fp32) matmul GFLOP/s of an n³ product: the best of `reps`."""
        out = {}
        for name, dtype in (("bf16", self.torch.bfloat16), ("fp32", self.torch.float32)):
            a, b = self.torch.randn(n, n, dtype=dtype), self.torch.randn(n, n, dtype=dtype)
            a @ b
            best = min(_timed(lambda: a @ b) for _ in range(reps))
            out[name] = 2 * n**3 / best / 1e9
        return out

    def profile(self, preset: str, batch: int, top: int = 15) -> dict:
        """One training step under the profiler, with per-level ranges."""
        model = self.setup(preset)[0]
        self.train_step(preset, batch, 10_001)
        return self._profiled(model, lambda: self.train_step(preset, batch, 0), True, top)

    def profile_sample(self, preset: str, batch: int, cfg: float, num_iter: int, top: int = 15) -> dict:
        """One `sample` call under the profiler (forward ranges only)."""
        model = self.setup(preset)[0]
        return self._profiled(model, lambda: self.sample(preset, batch, cfg, num_iter, 1), False, top)

    def _profiled(self, model, fn, backward: bool, top: int) -> dict:
        from torch.profiler import ProfilerActivity, profile

        hooks = _level_hooks(model, backward)
        try:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                wall = _timed(fn)
        finally:
            for h in hooks:
                h.remove()
        events = prof.key_averages()
        levels = {e.key: e.cpu_time_total / 1e3 for e in events if e.key.startswith("level ")}
        ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
        return {"wall_ms": wall * 1e3, "levels_ms": levels,
                "top_ops_self_ms": [[e.key, e.self_cpu_time_total / 1e3, e.count] for e in ops[:top]]}


def guidance(model, scale: float) -> dict:
    """The guidance keyword of the tree under test: `cfg_scale` now, `cfg` before the rename."""
    import inspect

    return {"cfg_scale" if "cfg_scale" in inspect.signature(model.sample).parameters else "cfg": scale}


def fast_path(fn, fast: bool) -> dict:
    """`fast=True` where the tree under test has the fast path (the baseline runs its only, exact path)."""
    import inspect

    params = inspect.signature(fn).parameters
    return {"fast": True} if fast and "fast" in params else {}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _level_hooks(model, backward: bool = True) -> list:
    """Profiler ranges 'level k forward/backward' around every block of level k and the pixel head.

    Levels are found by module name, so this works on any tree that keeps the reference's names:
    `next_fractal` once per level down, `generator.blocks.i`, the head last. Sampling calls the
    head's `sample`, not its forward, so there (backward=False) its blocks are hooked instead.
    """
    import torch

    def ranges(module, label):
        stack = []

        def enter(name):
            def hook(*_):
                stack.append(torch.ops.profiler._record_function_enter_new(name, None))
            return hook

        def leave(*_):
            torch.ops.profiler._record_function_exit._RecordFunction(stack.pop())

        hooks = [module.register_forward_pre_hook(enter(f"level {label} forward")), module.register_forward_hook(leave)]
        if backward:
            hooks += [module.register_full_backward_pre_hook(enter(f"level {label} backward")),
                      module.register_full_backward_hook(leave)]
        return hooks

    hooks = []
    for name, module in model.named_modules():
        parts = name.split(".")
        depth = parts.count("next_fractal")
        parent = model.get_submodule(".".join(parts[:-2])) if len(parts) >= 2 else None
        is_block = len(parts) >= 2 and parts[-2] == "blocks"
        head = type(parent).__name__ == "PixelHead" if is_block else False
        if is_block and len(parts) >= 3 and parts[-3] == "generator":
            count = len(model.get_submodule(name.rsplit(".", 1)[0]))
            hooks += ranges(module, f"{depth} ({type(module).__name__} ×{count})")
        elif is_block and head and not backward:
            hooks += ranges(module, f"{depth} (pixel-head blocks)")
        elif backward and type(module).__name__ == "PixelHead" and not name.endswith("guiding_pixel_loss"):
            hooks += ranges(module, f"{depth} (pixel head)")
    return hooks


def worker_main(threads: int):
    w = Worker(threads)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            res = getattr(w, req.pop("op"))(**req)
        except Exception as e:  # reported to the parent, which stops with the message
            res = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


# ============================================================================ parent
def ensure_baseline(path: Path, commit: str) -> Path:
    if not (path / "src" / "fractalgm").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit], check=True)
    return path


class Side:
    def __init__(self, name: str, tree: Path, threads: int):
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        self.name, self.tree = name, tree
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=tempfile.gettempdir())

    def ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        res = json.loads(self.proc.stdout.readline())
        if "error" in res:
            raise RuntimeError(f"{self.name} worker ({self.tree}): {res['error']}")
        return res

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=PRESETS)
    p.add_argument("--batches", default="16,64", help="training batch sizes")
    p.add_argument("--sample-batches", default="16,80")
    p.add_argument("--cfgs", default="1.0,1.5")
    p.add_argument("--num-iter", type=int, default=8, help="MAR steps per level when sampling (AR: always L)")
    p.add_argument("--tasks", default="train,sample,profile", help="train, sample, shipped (a shipped model's "
                   "batched sampling, as `sample --out X.npz`), profile")
    p.add_argument("--fast", action="store_true", help="also sample on the new tree's fast path (against old exact)")
    p.add_argument("--shipped", default="fmnist-ar:1000:100:1.5", help="shipped task: NAME:IMAGES:BATCH:CFG")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline-commit", default=BASELINE)
    p.add_argument("--baseline", type=Path, help="a checkout of the baseline (default: a git worktree in $TMPDIR)")
    p.add_argument("--quick", action="store_true", help="batch 16 only, 2 rounds, sampling at batch 16")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/speed_<host>_<threads>t.json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.threads)
    if args.quick:
        args.batches, args.sample_batches, args.rounds = "16", "16", 2
    tasks = set(args.tasks.split(","))
    presets = args.presets.split(",")
    base = ensure_baseline(args.baseline or Path(tempfile.gettempdir()) / f"fractalgm-baseline-{args.baseline_commit}",
                           args.baseline_commit)
    sides = [Side("old", base, args.threads), Side("new", REPO, args.threads)]
    plan = []
    if "train" in tasks:
        plan += [("train", dict(preset=pr, batch=int(b), steps=args.steps)) for pr in presets
                 for b in args.batches.split(",")]
    paths = [False, True] if args.fast else [False]
    if "sample" in tasks:
        plan += [("sample", dict(preset=pr, batch=int(b), cfg=float(c), num_iter=args.num_iter, reps=1, fast=f))
                 for pr in presets for b in args.sample_batches.split(",") for c in args.cfgs.split(",")
                 for f in paths]
    if "shipped" in tasks:
        name, n, b, c = args.shipped.split(":")
        if not Path(name).is_dir():  # this tree's shipped folder: both sides load the same weights
            name = str(REPO / "src" / "fractalgm" / "pretrained" / name)
        plan += [("shipped", dict(name=name, images=int(n), batch=int(b), cfg=float(c), fast=f)) for f in paths]
    results = {(op, json.dumps(kw, sort_keys=True)): {"old": [], "new": [], "flops": {}} for op, kw in plan}
    peaks = {"old": [], "new": []}
    t_start = time.time()
    try:
        for r in range(args.rounds):
            for i, (op, kw) in enumerate(plan):
                order = sides if (r + i) % 2 == 0 else sides[::-1]
                for side in order:
                    res = side.ask(op=op, **kw, **({"count_flops": True} if op == "train" and r == 0 else {}))
                    entry = results[(op, json.dumps(kw, sort_keys=True))]
                    entry[side.name] += res["times"]
                    if "sha256" in res:
                        entry.setdefault("sha256", {}).setdefault(side.name, set()).add(res["sha256"])
                    if res.get("flops"):
                        entry["flops"][side.name] = res["flops"]
                print(f"round {r + 1}/{args.rounds}  {op} {kw}  done ({time.time() - t_start:.0f}s)", flush=True)
            for side in order:
                peaks[side.name].append(max(side.ask(op="peak").values()))  # bf16 is emulated on AVX2
        profiles = {}
        if "profile" in tasks:
            for pr in presets:
                for b in args.batches.split(",") if "train" in tasks else []:
                    profiles[f"train {pr} b{b}"] = {s.name: s.ask(op="profile", preset=pr, batch=int(b)) for s in sides}
                if "sample" in tasks:
                    b, c = int(args.sample_batches.split(",")[0]), float(args.cfgs.split(",")[-1])
                    profiles[f"sample {pr} b{b} cfg {c}"] = {
                        s.name: s.ask(op="profile_sample", preset=pr, batch=b, cfg=c, num_iter=args.num_iter)
                        for s in sides}
    finally:
        for s in sides:
            s.close()
    report = summarise(results, peaks, profiles, args)
    out = args.out or REPO / "benchmarks" / "results" / f"speed_{os.uname().nodename}_{args.threads}t.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def summarise(results, peaks, profiles, args) -> dict:
    # the best peak is what the core can do; under load each round's peak (and each step) is lower,
    # so the share against it is conservative; the share against the median peak is also kept
    peak, peak_median = max(peaks["old"] + peaks["new"]), median(peaks["old"] + peaks["new"])
    rows = []
    for (op, key), entry in results.items():
        kw = json.loads(key)
        row = {"task": op, **kw}
        for side in ("old", "new"):
            t = entry[side]
            row[f"{side}_s"] = median(t)
            row[f"{side}_images_per_s"] = kw.get("images", kw["batch"]) / median(t)
            flops = entry["flops"].get(side)
            if flops:  # times are rounds × steps with the same seeds each round
                rates = [flops[i % len(flops)] / ti for i, ti in enumerate(t)]
                row[f"{side}_gflops_per_step"] = statistics.mean(flops) / 1e9
                row[f"{side}_gflop_per_s"] = median(rates) / 1e9
                row[f"{side}_peak_share"] = median(rates) / 1e9 / peak
                row[f"{side}_peak_share_vs_median_peak"] = median(rates) / 1e9 / peak_median
        row["speedup"] = row["old_s"] / row["new_s"]
        if "sha256" in entry and not kw.get("fast"):  # the exact path: the same images as the baseline
            row["same_images_as_old"] = entry["sha256"]["old"] == entry["sha256"]["new"]
        rows.append(row)
    print(f"\nmatmul peak (1024³, the faster of bf16 and fp32, best of 8 per round): best {peak:.1f}, median {peak_median:.1f} GFLOP/s "
          f"({args.threads} thread(s)); %peak below is against the best")
    print(f"{'task':7s} {'preset / model':18s} {'batch':>5s} {'cfg':>4s} {'path':5s} {'old img/s':>9s} "
          f"{'new img/s':>9s} {'speedup':>7s}  {'old %peak':>9s} {'new %peak':>9s}  same images")
    for r in rows:
        share = "".join(f"{100 * r[k]:9.1f} " if k in r else f"{'':9s} " for k in ("old_peak_share", "new_peak_share"))
        path = "fast" if r.get("fast") else "exact" if r["task"] != "train" else ""
        print(f"{r['task']:7s} {Path(r.get('preset', r.get('name'))).name:18s} {r['batch']:5d} {r.get('cfg', ''):>4} {path:5s} "
              f"{r['old_images_per_s']:9.2f} {r['new_images_per_s']:9.2f} {r['speedup']:6.2f}×  {share} "
              f"{r.get('same_images_as_old', '')}")
    for name, sides in profiles.items():
        print(f"\nprofile: {name} (ms; a level's range covers its blocks / head, not embeddings or masks)")
        levels = sorted(set(sides["old"]["levels_ms"]) | set(sides["new"]["levels_ms"]))
        print(f"  {'':40s} {'old':>8s} {'new':>8s}")
        print(f"  {'wall (under the profiler)':40s} {sides['old']['wall_ms']:8.1f} {sides['new']['wall_ms']:8.1f}")
        for lv in levels:
            print(f"  {lv:40s} {sides['old']['levels_ms'].get(lv, 0):8.1f} {sides['new']['levels_ms'].get(lv, 0):8.1f}")
        for side in ("old", "new"):
            ops = ", ".join(f"{k.removeprefix('aten::')} {ms:.0f}" for k, ms, _ in sides[side]["top_ops_self_ms"][:8])
            print(f"  top ops {side} (self ms): {ops}")
    import torch

    return {"baseline": args.baseline_commit, "threads": args.threads, "torch": torch.__version__,
            "machine": os.uname().machine, "cpu_count": os.cpu_count(), "rounds": args.rounds,
            "steps": args.steps, "num_iter": args.num_iter, "matmul_peak_gflop_per_s": peak,
            "matmul_peak_median_gflop_per_s": peak_median,
            "cpu": _cpu_name(), "peaks": peaks, "rows": rows, "profiles": profiles,
            "note": "old and new measured in turns in one run; the machine may have been shared"}


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return os.uname().machine


if __name__ == "__main__":
    main()

