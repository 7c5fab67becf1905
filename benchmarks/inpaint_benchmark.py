"""Do completions use the known pixels? Measured on Fashion-MNIST test images.

Half of each test image is masked (bottom half, then right half) and completed by the model
*without* its label. A small CNN trained on Fashion-MNIST (cached) then classifies the completions;
if the model uses the known half, they are classified as the source image's true class far more
often than unconditional samples are (chance, 10 %). References: the originals, the masked inputs
with the hole filled black (what the visible half alone tells the classifier) and class-conditional
samples. Bits/dim under the model (unconditional, random-masking estimate) of completions vs the
originals says whether completions are as likely as real images.

    OMP_NUM_THREADS=1 python benchmarks/inpaint_benchmark.py --model runs/fmnist-mar/model \
        [--images 200] [--sides bottom,right] [--out runs/inpaint_benchmark]

Writes results.json and examples.png (original | masked | completion, first image of each class).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from fractalgm import FractalGen, masks
from fractalgm.viz.animate import paint_unknown
from fractalgm.data import load_dataset
from fractalgm.viz.grid import save_grid

CACHE = Path.home() / ".cache" / "fractalgm" / "fmnist_classifier.safetensors"


class Classifier(nn.Module):
    """conv32-pool-conv64-pool-fc128, trained 6 epochs (about 2 CPU minutes)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(64 * 7 * 7, 128), nn.Linear(128, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 - 0.5
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.dropout(F.relu(self.fc1(x.flatten(1))), 0.3, self.training))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.eval()
        return torch.cat([self(x).argmax(1) for x in images.split(500)])


def classifier(train, test, epochs: int = 6) -> tuple[Classifier, float]:
    """The cached classifier, or train one (a few CPU minutes) and cache it."""
    net = Classifier()
    if CACHE.exists():
        net.load_state_dict(load_file(CACHE))
    else:
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        steps = epochs * math.ceil(len(train) / 128)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
        g = torch.Generator().manual_seed(0)
        for epoch in range(epochs):
            net.train()
            for idx in torch.randperm(len(train), generator=g).split(128):
                x = train.images[idx]
                if torch.rand(1, generator=g) < 0.5:
                    x = x.flip(-1)
                loss = F.cross_entropy(net(x), train.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            print(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        save_file(net.state_dict(), CACHE)
    acc = (net.predict(test.images) == test.labels).float().mean().item()
    return net, acc


def per_class(test, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n/10 test images of every class (class-balanced, deterministic)."""
    idx = torch.cat([(test.labels == c).nonzero()[:, 0][: n // 10] for c in range(10)])
    return test.images[idx], test.labels[idx]


def batched(fn, n: int, batch: int) -> torch.Tensor:
    return torch.cat([fn(slice(i, min(i + batch, n))) for i in range(0, n, batch)])


def summary(net, images, labels, bpd) -> dict:
    hits = (net.predict(images) == labels).float()
    return {"accuracy": hits.mean().item(), "accuracy_se": (hits.std() / math.sqrt(len(hits))).item(),
            "bpd": bpd.mean().item(), "bpd_se": (bpd.std() / math.sqrt(len(bpd))).item()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/fmnist-mar/model")
    p.add_argument("--images", type=int, default=200, help="test images (a multiple of 10: class-balanced)")
    p.add_argument("--sides", default="bottom,right", help="halves to mask")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--nll-passes", type=int, default=4, help="random-masking passes of the bpd estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/inpaint_benchmark")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = FractalGen.from_pretrained(args.model).eval()
    train, test = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    t0 = time.time()
    net, test_acc = classifier(train, test)
    print(f"classifier: {test_acc:.2%} on the {len(test)} Fashion-MNIST test images ({time.time() - t0:.0f} s)")
    x, y = per_class(test, args.images)
    N, B, S = len(x), args.batch_size, model.config.image_size
    gen = torch.Generator().manual_seed(args.seed)

    def bpd(images):
        return batched(lambda s: model.nll(images[s], passes=args.nll_passes, generator=gen).bpd, N, B)

    def timed(name, fn):
        t = time.time()
        images = batched(fn, N, B)
        print(f"{name}: {N} images in {time.time() - t:.0f} s")
        return images

    rows = {"original": summary(net, x, y, bpd(x))}
    examples = []
    for side in args.sides.split(","):
        known = masks.half(S, side).expand(N, -1, -1, -1)
        filled = torch.where(known, x, torch.zeros_like(x))  # the visible half, hole black (background)
        rows[f"{side} half masked, hole black"] = summary(net, filled, y, bpd(filled))
        done = timed(f"inpaint ({side} half masked)",
                     lambda s: model.inpaint(x[s], known[s], generator=gen))
        assert torch.equal(done[known.expand_as(x)], x[known.expand_as(x)])
        rows[f"{side} half completed"] = summary(net, done, y, bpd(done))
        first = torch.stack([(y == c).nonzero()[0, 0] for c in range(10)])
        examples += [x[first], paint_unknown(x[first], ~known[first]), done[first]]
    uncond = timed("unconditional samples", lambda s: model.sample(num_images=s.stop - s.start, generator=gen))
    rows["unconditional samples"] = summary(net, uncond, y, bpd(uncond))
    cond = timed("class-conditional samples", lambda s: model.sample(y[s], generator=gen))
    rows["class-conditional samples (true label)"] = summary(net, cond, y, bpd(cond))

    print(f"\n{N} Fashion-MNIST test images ({N // 10} per class); classifier test accuracy {test_acc:.2%}; "
          f"bpd: unconditional, {args.nll_passes} random-masking passes")
    print(f"{'':42s} {'true class':>16s} {'bits/dim':>16s}")
    for name, r in rows.items():
        print(f"{name:42s} {r['accuracy']:8.1%} ± {r['accuracy_se']:.1%} {r['bpd']:9.3f} ± {r['bpd_se']:.3f}")
    result = {"model": args.model, "images": N, "classifier_test_accuracy": test_acc, "nll_passes": args.nll_passes,
              "seed": args.seed, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    save_grid(torch.stack(examples, 1).flatten(0, 1), out / "examples.png", nrow=len(examples), scale=3)
    print(f"wrote {out / 'results.json'} and {out / 'examples.png'}")


if __name__ == "__main__":
    torch.set_num_threads(1)  # the machine may be busy: more threads spin-wait (see tests/conftest.py)
    main()
