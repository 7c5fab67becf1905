"""Training loop: schedule, parameter groups, exact resume, atomic saves, non-finite loss."""
import json
import math

import pytest
import torch

from fractalgm import FractalGen, get_preset
from fractalgm.data import ImageDataset
from fractalgm.training.optim import EMA, lr_at, param_groups
from fractalgm.training.resume import NonFiniteLoss, SaveError
from fractalgm.training.config import TrainConfig
from fractalgm.training.trainer import Trainer


def tiny_dataset(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(images, labels, 10, "random")


def make_trainer(out, steps=6, **kw):
    torch.manual_seed(0)
    model = FractalGen(get_preset("tiny_fmnist"))
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-3, log_every=2, save_every=100, eval_every=100,
                      amp="none", device="cpu", **kw)
    return Trainer(model, tiny_dataset(), out, cfg, progress_bar=False)


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0.0, 0.1, 1.0) == 0.0
    assert lr_at(0.05, 0.1, 1.0) == pytest.approx(0.5)
    assert lr_at(0.1, 0.1, 1.0) == pytest.approx(1.0)
    assert lr_at(0.55, 0.1, 1.0) == pytest.approx(0.5)
    assert lr_at(1.0, 0.1, 1.0, 0.1) == pytest.approx(0.1)
    lrs = [lr_at(p / 100, 0.1, 1.0) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone after warm-up


def test_param_groups_match_reference_rule():
    model = FractalGen(get_preset("tiny_fmnist"))
    no_decay, decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim <= 1 or names[id(p)].endswith(".bias") for p in no_decay["params"])
    decayed = {names[id(p)] for p in decay["params"]}
    # the reference decays position embeddings, mask tokens, codebooks, the class table, the fake latent
    assert {"fake_latent", "class_emb.weight", "generator.mask_token", "generator.pos_embed_learned"} <= decayed
    assert "next_fractal.next_fractal.l_mlm.bias" not in decayed  # (1, 256) logit bias: a bias
    assert len(no_decay["params"]) + len(decay["params"]) == len(list(model.parameters()))


def test_ema_warm_start_and_copy():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.99)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 0)  # decay min(0.99, 1/10) = 0.1: mostly the new weights
    target = torch.nn.Linear(2, 2)
    ema.copy_to(target)
    assert torch.allclose(target.weight, 0.1 * (model.weight - 1) + 0.9 * model.weight)


def test_resume_is_exact(tmp_path):
    straight = make_trainer(tmp_path / "a")
    straight.fit()
    first = make_trainer(tmp_path / "b")
    first.fit(stop_after=3)
    assert first.step == 3
    second = make_trainer(tmp_path / "b")
    second.resume()
    assert second.step == 3
    second.fit()
    for (k, v), (k2, v2) in zip(straight.model.state_dict().items(), second.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    for k in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[k], second.ema.shadow[k]), k
    loaded = FractalGen.from_pretrained(tmp_path / "b" / "model")
    assert torch.equal(loaded.fake_latent, second.ema.shadow["fake_latent"])


def test_run_folder_contents(tmp_path):
    t = make_trainer(tmp_path)
    t.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(math.isfinite(r["loss"]) and r["lr"] >= 0 for r in records)
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert json.loads((tmp_path / "train_config.json").read_text())["train"]["steps"] == 6
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_failed_save_keeps_previous_state(tmp_path, monkeypatch):
    t = make_trainer(tmp_path, steps=2)
    t.fit()
    before = torch.load(tmp_path / "train_state.pt", weights_only=True)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    t.train_step()
    with pytest.raises(SaveError, match=r"disk full.*step 2\), intact"):
        t.save()
    monkeypatch.undo()
    after = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert after["step"] == before["step"] == 2


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    t = make_trainer(tmp_path, steps=4)
    with torch.no_grad():
        t.model.fake_latent.fill_(float("nan"))
        t.model.class_emb.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="non-finite loss .* step 0; no checkpoint was saved yet"):
        t.fit()


def test_time_budget_follows_the_clock(tmp_path):
    t = make_trainer(tmp_path, steps=None, minutes=0.05)
    t.fit()
    assert t.elapsed >= 3.0 and t.total_steps is None and t.step >= 1


def test_grad_accumulation_sees_the_same_images_as_a_bigger_batch(tmp_path):
    a = make_trainer(tmp_path / "a", steps=1)
    b = make_trainer(tmp_path / "b", steps=1, grad_accum=2)
    b.cfg.batch_size, b.steps_per_epoch = 4, len(b.train_set) // 4
    for step in range(3):
        big = a.batch(step, 0)[0]
        micro = torch.cat([b.batch(step, 0)[0], b.batch(step, 1)[0]])
        assert torch.equal(big, micro)
