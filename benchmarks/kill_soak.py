"""Kill soak: interrupt a real `fractalgm train` subprocess with SIGKILL, again and again, and prove nothing is lost.

One uninterrupted reference run, then the same run killed `--kills` times, half at random moments
and half while a save is being written (detected by its temporary file appearing), each time resumed
with `fractalgm train --out RUN --resume` (or `--overwrite` when no save existed yet). After every
kill it checks that `train_state.pt` and the model folder load; at the end, that the resumed run
equals the reference bit for bit (weights, EMA, optimizer moments, the model folder and the metrics
log without its timing fields) and that no temporary copy is left. Writes JSON:

    python benchmarks/kill_soak.py --kills 20 --json benchmarks/results/kill_soak.json

Figures: kills, corrupt checkpoints (target 0), steps lost (re-done work), leftover bytes (target 0),
divergence from the uninterrupted run (tensors that differ; target 0).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TIMING = ("images_per_s", "elapsed_s")
SAVE_MARKERS = (".train_state.pt.tmp-*", ".model.tmp-*", ".model.old-*")


def train_cmd(out: Path, args) -> list[str]:
    return [sys.executable, "-m", "fractalgm", "train", "--preset", "tiny_fmnist", "--out", str(out),
            "--steps", str(args.steps), "--save-every", str(args.save_every), "--batch-size", str(args.batch_size),
            "--val-images", "8", "--log-every", "1", "--eval-every", str(args.eval_every), "--amp", "none",
            "--device", "cpu", "--no-final-eval"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def logged_step(run: Path) -> int:
    try:
        text = (run / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return -1
    best = -1
    for line in text.splitlines():
        try:
            best = max(best, json.loads(line).get("step", -1))
        except json.JSONDecodeError:  # a line torn by the kill
            pass
    return best


def saved_step(run: Path) -> int | None:
    try:
        return torch.load(run / "train_state.pt", map_location="cpu", weights_only=True)["step"]
    except FileNotFoundError:
        return None


def folder_loads(run: Path) -> list[str]:
    """What is broken in the run folder right after a kill (empty: nothing)."""
    from fractalgm import FractalGen

    problems = []
    if (run / "train_state.pt").exists():
        try:
            torch.load(run / "train_state.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure is a corrupt checkpoint
            problems.append(f"train_state.pt: {type(e).__name__}: {e}")
        try:
            FractalGen.from_pretrained(run / "model")
        except Exception as e:  # noqa: BLE001
            leftover = list(run.glob(".model.old-*"))  # killed between the renames: the resume restores it
            if not leftover:
                problems.append(f"model: {type(e).__name__}: {e}")
    return problems


def wait_until(proc, condition, timeout: float) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.001)
    return False


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def saving(run: Path) -> bool:
    return any(True for pattern in SAVE_MARKERS for _ in run.glob(pattern))


def compare(a: Path, b: Path) -> dict:
    """Tensors that differ between two finished runs, and whether their logs agree."""
    from fractalgm import FractalGen

    sa = torch.load(a / "train_state.pt", map_location="cpu", weights_only=True)
    sb = torch.load(b / "train_state.pt", map_location="cpu", weights_only=True)
    differ, max_abs = [], 0.0

    def check(name, x, y):
        nonlocal max_abs
        if not torch.equal(x, y):
            differ.append(name)
            if x.shape == y.shape and x.is_floating_point():
                max_abs = max(max_abs, float((x - y).abs().max()))

    for part in ("model", "ema"):
        for k in sa[part]:
            check(f"{part}.{k}", sa[part][k], sb[part][k])
    for i, moments in sa["opt"]["state"].items():
        for k, v in moments.items():
            check(f"opt.{i}.{k}", v, sb["opt"]["state"][i][k])
    ma, mb = FractalGen.from_pretrained(a / "model"), FractalGen.from_pretrained(b / "model")
    for (k, x), y in zip(ma.state_dict().items(), mb.state_dict().values()):
        check(f"model_folder.{k}", x, y)

    def log(run):
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    return {"tensors_differing": len(differ), "first_differing": differ[:5], "max_abs_difference": max_abs,
            "log_identical": log(a) == log(b), "steps": [sa["step"], sb["step"]]}


def soak(args) -> dict:
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-soak-"))
    reference, run = work / "reference", work / "soak"
    for p in (reference, run):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.time()
    subprocess.run(train_cmd(reference, args), check=True, capture_output=True, env=env())
    kills, corrupt, lost, events = 0, 0, 0, []
    while kills < args.kills:
        kept_before = saved_step(run)
        cmd = train_cmd(run, args) + (["--resume"] if kept_before is not None else
                                      ["--overwrite"] if run.exists() else [])
        prev, base = logged_step(run), kept_before or 0
        ino = _inode(run / "metrics.jsonl")

        def progressed():  # this life has trained a step (the resume may first cut the log back)
            return (_inode(run / "metrics.jsonl") != ino or logged_step(run) > prev) and logged_step(run) > base

        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
        mode = "during save" if kills % 2 == 1 else "start-up" if rng.random() < 0.25 else "random"
        if mode == "during save":  # wait for training, then for a save's temporary file to appear
            hit = wait_until(proc, progressed, 120) and wait_until(proc, lambda: saving(run), 60)
        elif mode == "start-up":  # imports, data loading, the resume itself
            time.sleep(rng.uniform(0.0, args.startup))
            hit = proc.poll() is None
        else:  # a random moment while training: a step, a log line or a save
            hit = wait_until(proc, progressed, 120)
            time.sleep(rng.uniform(0.0, args.max_delay))
            hit = hit and proc.poll() is None
        if not hit:
            proc.wait()
            if saved_step(run) == args.steps:
                break  # the run finished before it could be killed again
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        reached, kept = logged_step(run), saved_step(run)
        problems = folder_loads(run)
        corrupt += bool(problems)
        lost_now = max(reached - (kept or 0), 0) if reached != prev else 0  # steps trained, then lost
        lost += lost_now
        events.append({"kill": kills, "mode": mode, "logged_step": reached, "saved_step": kept,
                       "steps_lost": lost_now, "problems": problems})
    final = subprocess.run(train_cmd(run, args) + (["--resume"] if saved_step(run) is not None else ["--overwrite"]),
                           capture_output=True, text=True, env=env())
    if final.returncode != 0:
        raise SystemExit(f"the final resume failed:\n{final.stderr[-3000:]}")
    from fractalgm.training.runfolder import leftover_bytes

    result = {"kills": kills, "kills_during_save": sum(e["mode"] == "during save" for e in events),
              "corrupt_checkpoints": corrupt, "steps_lost": lost, "leftover_bytes": leftover_bytes(run),
              "divergence": compare(reference, run), "steps": args.steps, "save_every": args.save_every,
              "batch_size": args.batch_size, "seconds": round(time.time() - t0, 1), "events": events}
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (default: 20)")
    p.add_argument("--steps", type=int, default=120, help="training steps of the run (default: 120)")
    p.add_argument("--save-every", type=int, default=3, help="save interval in steps (default: 3)")
    p.add_argument("--eval-every", type=int, default=100000, help="validation interval (default: never)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    p.add_argument("--max-delay", type=float, default=2.0, help="random kills land up to this many seconds "
                   "after training (re)starts (default: 2)")
    p.add_argument("--startup", type=float, default=4.0, help="start-up kills land up to this many seconds "
                   "after the launch (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times (default: 0)")
    p.add_argument("--workdir", help="keep the runs here (default: a temporary folder, removed)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    result = soak(args)
    d = result["divergence"]
    print(f"kills {result['kills']} ({result['kills_during_save']} during saves) · corrupt checkpoints "
          f"{result['corrupt_checkpoints']} · steps lost {result['steps_lost']} · leftover bytes "
          f"{result['leftover_bytes']} · divergence {d['tensors_differing']} tensors (log identical: "
          f"{d['log_identical']}) · {result['seconds']} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
