"""Train the shipped Fashion-MNIST classifier (extractor (a) of `fractalgm eval`).

Deterministic: fixed seed, one data order, single process. Trains on the 60k training images
(random horizontal flips and ±2-pixel shifts), measures accuracy on the real 10k test set and
writes the weights and their card into the package:

    OMP_NUM_THREADS=2 python benchmarks/train_classifier.py --epochs 6 --threads 2

(~1 minute per epoch on 2 shared CPU cores.)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fractalgm.data import load_dataset
from fractalgm.evaluate.classifier import CARD, WEIGHTS, FashionClassifier


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 pixels (zero padding), per image."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()  # one shift per batch: cheap, still varied
    return padded[:, :, dy:dy + 28, dx:dx + 28]


def accuracy(net: FashionClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (net.predict(images) == labels).float().mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-accuracy", type=float, default=0.92, help="refuse to ship weights below this")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, test = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    train_x = torch.cat([train.images, load_dataset("fashion_mnist", "val").images])
    train_y = torch.cat([train.labels, load_dataset("fashion_mnist", "val").labels])
    net = FashionClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    steps = args.epochs * math.ceil(len(train_x) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        for idx in torch.randperm(len(train_x), generator=g).split(args.batch_size):
            loss = F.cross_entropy(net(augment(train_x[idx], g)), train_y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: last loss {loss.item():.3f}, test accuracy "
              f"{accuracy(net, test.images, test.labels):.2%} ({time.time() - t0:.0f} s)", flush=True)
    acc = accuracy(net, test.images, test.labels)
    if acc < args.min_accuracy:
        sys.exit(f"test accuracy {acc:.2%} is below --min-accuracy {args.min_accuracy:.0%}; weights not written")
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, WEIGHTS)
    card = {"test_accuracy": acc, "test_images": len(test), "train_images": len(train_x), "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "feature_dim": 128,
            "train_seconds": round(time.time() - t0), "torch": torch.__version__,
            "command": "python benchmarks/train_classifier.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    CARD.write_text(json.dumps(card, indent=2) + "\n")
    print(f"test accuracy {acc:.2%}; wrote {WEIGHTS} and {CARD}")


if __name__ == "__main__":
    main()
