"""Run under torchrun by test_data_distributed.py: one real DDP training step on a streaming ImageFolder.

Each rank saves the batch it was fed and the gradient DDP left on the parameters (the optimizer's
zero_grad is disabled so the averaged gradient survives the step).
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fractalgm import FractalGen
from fractalgm.data import open_dataset
from fractalgm.training.config import TrainConfig
from fractalgm.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_data_distributed import deterministic_config  # noqa: E402

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
model = FractalGen(deterministic_config())
data = open_dataset(folder, "train_full", image_size=28, channels=1)
cfg = TrainConfig(steps=1, batch_size=4, lr=1e-3, grad_clip=1e9, amp="none", device="cpu", workers=1,
                  prefetch=2, flip="on")
trainer = Trainer(model, data, out, cfg, progress_bar=False)
trainer.total_steps = 1
trainer.opt.zero_grad = lambda set_to_none=True: None
images, labels = trainer.batch(0, 0)
trainer.train_step()
torch.save({"images": images, "labels": labels,
            "grads": {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}},
           out / f"rank{trainer.rank}.pt")
dist.barrier()
