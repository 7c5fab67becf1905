"""The exact sampling path is the generic one, bit for bit: the lean AR decoder, the MAR pass that runs
its last block only where the maps are read, and batches sampled side by side.

Each test computes the "before" (the generic layer code, as sampling ran it up to this change) and
the "after" in the same run on the same machine, so bit-equality is a fair demand on any CPU.
"""
from __future__ import annotations

import os
import signal

import pytest
import torch
from conftest import build, gen, perturb, tiny_config

import fractalgm.models.ar as ar_module
from fractalgm.models import Conditions, MARGenerator
from fractalgm.models.decode import Decoder
from fractalgm.models.layers import KVCache
from fractalgm.models.mar import with_neighbours


class GenericDecoder:
    """The decode loop sampling used before `Decoder`: each block's generic forward with a `KVCache`."""

    def __init__(self, blocks, rope, rows, max_len):
        first = blocks[0].attention
        w = first.wqkv.weight
        heads, dim = first.num_heads, w.size(1)
        self.blocks, self.rope = blocks, rope
        self.caches = [KVCache(rows, heads, max_len, dim // heads, w.device, w.dtype) for _ in blocks]

    def step(self, x, pos):
        for block, cache in zip(self.blocks, self.caches):
            x = block(x, self.rope[pos:pos + 1], cache, pos)
        return x


def full_mar_predict(monkeypatch):
    """Make MAR sampling run every block on every token (and embed the prefix each step), as before."""
    predict = MARGenerator.predict

    def full(self, patches, mask, conds, count=5, needed=None, prefix=None):
        return predict(self, patches, mask, conds, count)

    monkeypatch.setattr(MARGenerator, "predict", full)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_step_is_the_generic_block_forward_bit_for_bit(dtype):
    model = perturb(build(tiny_config(("ar", "ar"), channels=3))).to(dtype)
    g = model.generator
    R, L = 5, g.cfg.seq_len + 1
    lean, generic = Decoder(g.blocks, g.rope, R, L), GenericDecoder(g.blocks, g.rope, R, L)
    torch.manual_seed(0)
    with torch.no_grad():
        for pos in range(L):
            x = torch.randn(R, 1, g.cfg.width).to(dtype)
            assert torch.equal(lean.step(x, pos), generic.step(x, pos)), pos


@pytest.mark.parametrize("kinds,options", [
    (("ar", "ar"), dict(channel_order="grb")),
    (("ar", "mar"), dict(guiding_pixel=True)),
    (("mar", "ar"), dict(num_conds=1)),
    (("mar", "mar"), dict(channels=1, guiding_pixel=True)),
    (("mar", "mar", "mar"), dict(num_conds=5)),
])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_fixed_seed_grid_is_unchanged(monkeypatch, kinds, options, cfg_scale):
    """A fixed-seed grid from the exact path equals the one from the generic code (before this change)."""
    model = perturb(build(tiny_config(kinds, **options)))
    labels = torch.tensor([0, 3, 1, 2])

    def grid():
        return model.sample(labels, cfg_scale=cfg_scale, temperature=0.9, generator=gen(11))

    after = grid()
    with monkeypatch.context() as m:
        m.setattr(ar_module, "Decoder", GenericDecoder)
        full_mar_predict(m)
        before = grid()
    assert torch.equal(after, before)


def test_inpainting_is_unchanged(monkeypatch):
    """Known pixels make rows differ in what they generate: the trimmed MAR pass still matches."""
    model = perturb(build(tiny_config(("mar", "ar"), num_conds=5)))
    S = model.config.image_size
    images = torch.randint(0, 256, (3, 3, S, S), generator=gen(2), dtype=torch.uint8)
    known = torch.zeros(3, 1, S, S, dtype=torch.bool)
    known[0, :, : S // 2] = True
    known[1, :, :, 1::3] = True
    after = model.inpaint(images, known, torch.tensor([1, 2, 3]), cfg_scale=2.0, generator=gen(4))
    with monkeypatch.context() as m:
        m.setattr(ar_module, "Decoder", GenericDecoder)
        full_mar_predict(m)
        before = model.inpaint(images, known, torch.tensor([1, 2, 3]), cfg_scale=2.0, generator=gen(4))
    assert torch.equal(after, before)


def test_trimmed_mar_maps_equal_the_full_ones_where_read():
    """`predict(needed=…)` with the revealed tokens and their neighbours gives the full pass's five maps
    at the revealed tokens, and zero middle maps where nothing is needed."""
    model = perturb(build(tiny_config(("mar", "mar"), num_conds=5)))
    g = model.generator
    R, L, p = 4, g.cfg.seq_len, g.cfg.patch_size
    patches = torch.randint(0, 256, (R, L, 3, p, p), generator=gen(0))
    mask = torch.rand(R, L, generator=gen(1)) < 0.5
    revealed = torch.rand(R, L, generator=gen(2)) < 0.2
    needed = with_neighbours(revealed, g.cfg.grid)
    conds = Conditions.repeated(torch.randn(R, g.cond_emb.in_features, generator=gen(3)), g.num_conds)
    with torch.no_grad():
        full = g.predict(patches, mask, conds, 5)
        trimmed = g.predict(patches, mask, conds, 5, needed)
    assert revealed.any() and not needed.all()
    for a, b in zip(full.tokens, trimmed.tokens):
        assert torch.equal(b[revealed], a[revealed])
    assert torch.equal(trimmed.middle[~needed], torch.zeros_like(full.middle[~needed]))


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_batches_sampled_side_by_side_are_the_sequential_ones(tmp_path, monkeypatch, processes):
    """Two batches at a time (one intra-op thread each, in forked processes or in threads) give the
    images of one at a time on one thread (at 2 threads CPU attention may round differently)."""
    from fractalgm import runtime
    from fractalgm.evaluate import samples

    if processes and not runtime.can_fork():
        pytest.skip("no safe fork here")
    monkeypatch.setattr(runtime, "can_fork", lambda: processes)
    model = perturb(build(tiny_config(("ar", "mar"), guiding_pixel=True)))
    threads = torch.get_num_threads()
    common = dict(batch_size=3, seed=5, progress=False, cfg_scale=2.0)
    torch.set_num_threads(2)
    try:
        two = samples.load_samples_npz(samples.generate_samples_npz(model, tmp_path / "two.npz", 8, workers=2,
                                                                    **common))
        assert torch.get_num_threads() == 2 and not model.training
        torch.set_num_threads(1)
        one = samples.load_samples_npz(samples.generate_samples_npz(model, tmp_path / "one.npz", 8, workers=1,
                                                                    **common))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def _square_or_fail(i: int) -> int:
    if i == 3:
        raise ValueError("item 3 is bad")
    return i * i


def _square_or_die(i: int) -> int:
    if i == 3:
        os._exit(9)  # as a worker killed by the system would end
    return i * i


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_side_by_side_returns_every_result_and_reports_a_failing_item(processes):
    from fractalgm.runtime import can_fork, side_by_side

    if processes and not can_fork():
        pytest.skip("no safe fork here")
    with side_by_side(2, processes=processes) as run:
        assert sorted(run(_square_or_fail, [0, 1, 2, 4, 5])) == [0, 1, 4, 16, 25]
    with pytest.raises(ValueError, match="item 3 is bad") as raised:
        with side_by_side(2, processes=processes) as run:
            list(run(_square_or_fail, range(6)))
    if processes:  # the worker's traceback comes along as the cause
        assert "_square_or_fail" in str(raised.value.__cause__)


def _threads_after_a_product(i: int) -> int:
    torch.ones(256, 256) @ torch.ones(256, 256)  # a parallel region at more than one thread would hang
    return torch.get_num_threads()


def _hung(*_):
    raise TimeoutError("a forked worker hung")


def test_forked_workers_run_on_one_thread_after_the_parent_used_its_pool():
    """A forked child that kept the parent's thread count would hang in its first parallel region
    (seen: remove `_work`'s `set_num_threads(1)`); an alarm turns a hang into a failure."""
    from fractalgm.runtime import can_fork, side_by_side

    if not can_fork():
        pytest.skip("no safe fork here")
    threads, alarm = torch.get_num_threads(), signal.signal(signal.SIGALRM, _hung)
    torch.set_num_threads(2)
    signal.alarm(60)
    try:
        torch.ones(256, 256) @ torch.ones(256, 256)
        with side_by_side(2) as run:
            assert list(run(_threads_after_a_product, range(4))) == [1] * 4
        assert torch.get_num_threads() == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, alarm)
        torch.set_num_threads(threads)


@pytest.mark.parametrize("fork", [True, False])
def test_batch_workers_one_process_per_thread_or_two_threads(monkeypatch, fork):
    from fractalgm import runtime

    monkeypatch.setattr(runtime, "can_fork", lambda: fork)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        cpu = torch.device("cpu")
        assert runtime.batch_workers(cpu, 10) == (4 if fork else 2)
        assert runtime.batch_workers(cpu, 3) == (3 if fork else 2)
        assert runtime.batch_workers(cpu, 1) == 1
        assert runtime.batch_workers(torch.device("meta"), 10) == 1  # a GPU's batches share one stream
    finally:
        torch.set_num_threads(threads)


def test_a_worker_that_dies_is_reported_not_waited_for():
    from fractalgm.runtime import can_fork, side_by_side

    if not can_fork():
        pytest.skip("no safe fork here")
    with pytest.raises(RuntimeError, match="exited with code 9"):
        with side_by_side(2) as run:
            list(run(_square_or_die, range(6)))


@pytest.mark.parametrize("kinds", [("ar", "ar"), ("mar", "mar")])
def test_the_fast_path_is_seeded_and_keeps_known_pixels(kinds):
    """`fast=True` is its own reproducible stream (other numbers than the exact path), and inpainting
    with it still keeps every known value."""
    model = perturb(build(tiny_config(kinds, guiding_pixel=kinds[0] == "mar")))
    labels = torch.tensor([0, 1, 2])
    fast = model.sample(labels, cfg_scale=2.0, generator=gen(3), fast=True)
    assert torch.equal(fast, model.sample(labels, cfg_scale=2.0, generator=gen(3), fast=True))
    assert not torch.equal(fast, model.sample(labels, cfg_scale=2.0, generator=gen(3)))
    S = model.config.image_size
    known = torch.zeros(3, 1, S, S, dtype=torch.bool)
    known[:, :, S // 2:] = True
    done = model.inpaint(fast, known.expand(3, 3, S, S), labels, generator=gen(5), fast=True)
    assert torch.equal(done[:, :, S // 2:], fast[:, :, S // 2:])


def test_fast_draw_never_picks_an_impossible_value():
    from fractalgm.sampling import sample_categorical_fast

    logits = torch.full((4000, 8), float("-inf"))
    logits[:, 3], logits[:, 5] = 0.0, 1.0
    drawn = sample_categorical_fast(logits, gen(0))
    assert set(drawn.tolist()) == {3, 5}
    share = (drawn == 5).double().mean().item()  # e / (1 + e) = 0.731
    assert abs(share - 0.731) < 0.03


def test_sample_cli_fast_flag(tmp_path):
    """`fractalgm sample --fast` writes other images than the exact default, and the same ones again."""
    from fractalgm.cli import main
    from fractalgm.evaluate.samples import load_samples_npz

    model = perturb(build(tiny_config(("mar", "ar"), channels=1, num_conds=1)))
    model.save_pretrained(tmp_path / "model")
    common = ["sample", "--model", str(tmp_path / "model"), "--device", "cpu", "--num-images", "4",
              "--batch-size", "2", "--num-iter", "2"]
    for name, extra in (("exact", []), ("fast", ["--fast"]), ("fast_again", ["--fast"])):
        main(common + extra + ["--out", str(tmp_path / f"{name}.npz")])
    exact, fast, again = (load_samples_npz(tmp_path / f"{n}.npz")[0] for n in ("exact", "fast", "fast_again"))
    assert torch.equal(fast, again) and not torch.equal(fast, exact)
