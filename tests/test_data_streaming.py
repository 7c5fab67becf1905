"""Streaming datasets: image folders and tar shards decoded in real DataLoader workers, the per-rank batch
plan, exact mid-epoch resume through the Trainer, and bad data in every form the issue lists."""
import io
import json
import os
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fractalgm import FractalGen, get_preset
from fractalgm.cli import build_parser, main
from fractalgm.data import (BadDataError, BatchFeed, BatchPlan, ImageFolder, TarShards, load_dataset,
                            open_dataset)
from fractalgm.training.config import TrainConfig
from fractalgm.training.trainer import Trainer


def write_folder(root, classes=("cat", "dog"), per_class=12, size=(36, 44), mode="RGB", ext="png", seed=0):
    """A real image folder: random pixels of a non-square size, so the centre crop does real work."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = size + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i:03d}.{ext}")
    return root


def prepare(src, out, size=16, shard_size=7, channels=3):
    main(["prepare", str(src), "--out", str(out), "--image-size", str(size), "--shard-size", str(shard_size),
          "--workers", "2", "--no-progress", "--channels", str(channels)])
    return out


# --- formats ------------------------------------------------------------------------------------------------

def test_folder_streams_what_the_in_memory_loader_decodes(tmp_path):
    root = write_folder(tmp_path / "f")
    stream = open_dataset(root, "train_full", image_size=16)
    memory = load_dataset(root, "train_full", image_size=16)
    assert isinstance(stream, ImageFolder) and len(stream) == len(memory) == 24
    assert stream.class_names == ["cat", "dog"] and stream.natural and not memory.images.is_shared()
    for i in range(len(stream)):
        image, label = stream[i]
        assert torch.equal(image, memory.images[i]) and int(label) == int(memory.labels[i])
    image, _ = stream[(3, True)]  # (index, flip) pairs are what the batch plan hands the workers
    assert torch.equal(image, memory.images[3].flip(-1))
    train, val = open_dataset(root, "train", image_size=16, val_size=4), open_dataset(root, "val", image_size=16, val_size=4)
    assert sorted(train.ids.tolist() + val.ids.tolist()) == list(range(24))  # a partition


def test_prepared_shards_hold_the_same_pixels_and_labels(tmp_path):
    src = write_folder(tmp_path / "f")
    (src.parent / "f2").mkdir()
    out = prepare(src, tmp_path / "shards")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"train": 24} and meta["class_names"] == ["cat", "dog"] and meta["image_size"] == 16
    assert sorted(p.name for p in out.glob("*.tar")) == [f"train-{i:06d}.tar" for i in range(4)]  # 7+7+7+3
    shards, folder = open_dataset(out, "train_full"), open_dataset(src, "train_full", image_size=16)
    assert isinstance(shards, TarShards) and (shards.image_size, shards.channels, shards.num_classes) == (16, 3, 2)
    for i in range(len(folder)):
        assert torch.equal(shards[i][0], folder[i][0]) and int(shards[i][1]) == int(folder[i][1])
    with tarfile.open(out / "train-000000.tar") as tar:  # WebDataset layout: key.png + key.cls
        assert tar.getnames()[:2] == ["000000000.png", "000000000.cls"]


def test_shards_read_by_the_webdataset_package(tmp_path):
    wds = pytest.importorskip("webdataset")
    out = prepare(write_folder(tmp_path / "f", per_class=3), tmp_path / "shards", shard_size=100)
    samples = list(wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False))
    assert len(samples) == 6 and int(samples[-1]["cls"]) == 1


def test_shards_written_by_the_webdataset_package_read_here(tmp_path):
    wds = pytest.importorskip("webdataset")
    images = [np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8) for i in range(3)]
    with wds.TarWriter(str(tmp_path / "train-000000.tar")) as sink:
        for i, arr in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            sink.write({"__key__": f"sample{i}", "png": buf.getvalue(), "cls": i % 2})
    ds = open_dataset(tmp_path, "train_full", image_size=20)  # no meta.json: size given, classes counted
    assert len(ds) == 3 and ds.num_classes == 2
    assert all(np.array_equal(ds[i][0].permute(1, 2, 0).numpy(), images[i]) and int(ds[i][1]) == i % 2
               for i in range(3))


def test_grayscale_folder_and_one_channel_shards(tmp_path):
    root = write_folder(tmp_path / "g", mode="L", size=(28, 28))
    ds = open_dataset(root, "train_full", image_size=28, channels=1)
    assert ds[0][0].shape == (1, 28, 28)
    shards = open_dataset(prepare(root, tmp_path / "s", size=28, channels=1), "train_full")
    assert shards.channels == 1 and torch.equal(shards[5][0], ds[5][0])


# --- the batch plan -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, batch, world, accum", [(50, 4, 2, 1), (50, 2, 2, 3), (37, 3, 3, 2), (64, 8, 1, 1)])
def test_plan_gives_disjoint_reproducible_rank_shares_covering_an_epoch(n, batch, world, accum):
    plans = [BatchPlan(n, batch, world, r, accum, seed=5, flip=True) for r in range(world)]
    seen = [torch.cat([p.indices(s, m)[0] for s in range(plans[0].steps_per_epoch) for m in range(accum)])
            for p in plans]
    everything = torch.cat(seen)
    assert len(everything) == len(set(everything.tolist())) == plans[0].steps_per_epoch * world * batch * accum
    again = BatchPlan(n, batch, world, 0, accum, seed=5, flip=True)
    assert all(torch.equal(a, b) for a, b in zip(again.indices(3, accum - 1), plans[0].indices(3, accum - 1)))
    next_epoch = plans[0].indices(plans[0].steps_per_epoch, 0)[0]
    assert not torch.equal(next_epoch, plans[0].indices(0, 0)[0])  # a new permutation each epoch


@pytest.mark.parametrize("layout", [(8, 1, 1), (4, 2, 1), (4, 1, 2), (2, 2, 2), (1, 4, 2)])
def test_images_of_a_step_do_not_depend_on_ranks_and_accumulation(layout):
    """The world-size-change guarantee: at the same global batch, each step sees the same images and flips."""
    batch, world, accum = layout

    def step_images(b, w, a, step):
        parts = [BatchPlan(100, b, w, r, a, seed=1, flip=True).indices(step, m) for m in range(a) for r in range(w)]
        return sorted(zip(torch.cat([p[0] for p in parts]).tolist(), torch.cat([p[1] for p in parts]).tolist()))

    for step in (0, 5, 13, 25):  # 12 steps per epoch: crosses two epoch boundaries
        assert step_images(batch, world, accum, step) == step_images(8, 1, 1, step)


def test_plan_refuses_a_dataset_smaller_than_one_global_batch():
    with pytest.raises(ValueError, match="fewer than one global batch of 16.*--batch-size"):
        BatchPlan(10, 8, 2)


# --- exact resume through the Trainer, streaming ------------------------------------------------------------

def folder_trainer(root, out, steps=7, **kw):
    torch.manual_seed(0)
    model = FractalGen(get_preset("tiny_fmnist"))
    data = open_dataset(root, "train_full", image_size=28, channels=1)
    data.natural = True  # flips on, so resume must reproduce them as well
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, log_every=1, save_every=100, eval_every=100,
                      amp="none", device="cpu", workers=2, prefetch=2, **kw)
    return Trainer(model, data, out, cfg, progress_bar=False)


def test_streaming_resume_mid_epoch_is_exact(tmp_path):
    root = write_folder(tmp_path / "f", mode="L", size=(30, 34), per_class=10)  # 20 images: 5 steps per epoch
    straight = folder_trainer(root, tmp_path / "a")
    fed = []
    original = straight.feed.get
    straight.feed.get = lambda plan, s, m: fed.append(original(plan, s, m)) or fed[-1]
    straight.fit()
    first = folder_trainer(root, tmp_path / "b")
    first.fit(stop_after=3)  # mid-epoch (step 3 of 5)
    second = folder_trainer(root, tmp_path / "b")
    second.resume()
    resumed = []
    original2 = second.feed.get
    second.feed.get = lambda plan, s, m: resumed.append(original2(plan, s, m)) or resumed[-1]
    second.fit()
    assert len(resumed) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                     for a, b in zip(fed[3:], resumed))
    assert any(not torch.equal(img, img.flip(-1)) for img, _ in fed)  # flips were applied
    for (k, v), (_, v2) in zip(straight.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(v, v2), k
    assert torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)["data"]["global_batch"] == 4


def test_in_memory_flips_follow_the_plan():
    images = torch.arange(8 * 4 * 4, dtype=torch.uint8).reshape(8, 1, 4, 4)
    from fractalgm.data import ImageDataset
    ds = ImageDataset(images, torch.zeros(8, dtype=torch.int64), 1, "ramp", natural=True)
    plan = BatchPlan(8, 4, flip=True)
    got, _ = BatchFeed(ds, "cpu").get(plan, 0, 0)
    idx, flips = plan.indices(0, 0)
    assert torch.equal(got, torch.where(flips[:, None, None, None], images[idx].flip(-1), images[idx]))


# --- bad data -----------------------------------------------------------------------------------------------

def feed_everything(data, workers=2, log_path=None):
    """Every image of one epoch through real worker processes; returns the feed."""
    plan = BatchPlan(len(data), 4)
    feed = BatchFeed(data, "cpu", num_workers=workers, prefetch=2, log_path=log_path)
    for step in range(plan.steps_per_epoch):
        feed.get(plan, step, 0)
    return feed


def test_corrupt_jpeg_in_a_worker_is_one_clear_error_or_a_named_skip(tmp_path):
    root = write_folder(tmp_path / "f", ext="jpg")
    good = (root / "cat/000.jpg").read_bytes()
    (root / "cat/001.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    (root / "dog/002.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    with pytest.raises(BadDataError) as err:
        feed_everything(open_dataset(root, "train_full", image_size=16))
    message = str(err.value)
    assert ("001.jpg" in message or "002.jpg" in message) and "--skip-bad" in message
    assert "Traceback" not in message and "DataLoader worker" not in message
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        feed = feed_everything(open_dataset(root, "train_full", image_size=16, skip_bad=True),
                               log_path=tmp_path / "issues.tsv")
    assert sorted(os.path.basename(p) for p in feed.skipped) == ["001.jpg", "002.jpg"]
    listed = [line.split("\t") for line in (tmp_path / "issues.tsv").read_text().splitlines()]
    assert sorted((kind, os.path.basename(where)) for kind, where, _ in listed) == [("skipped", "001.jpg"),
                                                                                   ("skipped", "002.jpg")]


def test_cli_reports_bad_data_without_a_traceback(tmp_path, capsys):
    root = write_folder(tmp_path / "f", mode="L", size=(28, 28), per_class=8)
    (root / "dog/003.png").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "tiny_fmnist", "--data", str(root), "--steps", "4", "--batch-size", "8",
              "--out", str(tmp_path / "run"), "--amp", "none", "--workers", "2", "--val-images", "2",
              "--eval-every", "1000"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "003.png" in err and "--skip-bad" in err and "Traceback" not in err


def test_zero_byte_files_and_empty_class_folders_are_found_before_training(tmp_path):
    root = write_folder(tmp_path / "f")
    (root / "cat/empty.png").write_bytes(b"")
    (root / "bird").mkdir()
    with pytest.raises(ValueError) as err:
        open_dataset(root, "train_full", image_size=16)
    assert "empty.png is an empty file" in str(err.value) and "bird has no images" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 zero-byte file.*1 empty class folder"):
        ds = open_dataset(root, "train_full", image_size=16, skip_bad=True)
    assert len(ds) == 24 and ds.num_skipped == 1 and ds.class_names == ["bird", "cat", "dog"]


def test_grayscale_and_cmyk_files_in_an_rgb_set_are_converted_and_counted(tmp_path):
    root = write_folder(tmp_path / "f", per_class=4, ext="jpg")
    Image.fromarray(np.full((20, 20), 77, np.uint8), "L").save(root / "cat/gray.jpg")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(root / "dog/cmyk.jpg")
    data = open_dataset(root, "train_full", image_size=16)
    with pytest.warns(UserWarning, match="converted") as record:
        feed = feed_everything(data, workers=0)
    assert sorted(os.path.basename(p) for p in feed.converted) == ["cmyk.jpg", "gray.jpg"]
    assert set(feed.converted.values()) == {"grayscale", "CMYK"} and record
    gray = data[[os.path.basename(os.fsdecode(p)) for p in data.paths].index("gray.jpg")][0]
    assert gray.shape == (3, 16, 16) and int(gray.min()) == int(gray.max())


def test_truncated_shard_is_an_error_or_a_counted_skip(tmp_path):
    out = prepare(write_folder(tmp_path / "f"), tmp_path / "shards", shard_size=10)
    shard = out / "train-000001.tar"
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="train-000001.tar is truncated.*--skip-bad"):
        open_dataset(out, "train_full")
    with pytest.warns(UserWarning, match="damaged end of 1 shard"):
        ds = open_dataset(out, "train_full", skip_bad=True)
    assert 10 + 2 <= len(ds) < 20 + 4 and ds.num_skipped == 1
    shard.write_bytes(raw)
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    end = -(-(last.offset_data + last.size) // 512) * 512
    shard.write_bytes(raw[:end])  # cut exactly after a complete member: only the end-of-archive block is gone
    with pytest.raises(ValueError, match="end-of-archive"):
        open_dataset(out, "train_full")


def test_every_option_named_in_a_data_message_exists():
    """Issue 7 item 10: messages may only advise options the CLI has."""
    import re
    from pathlib import Path

    import fractalgm.data as package
    files = [*Path(package.__file__).parent.glob("*.py"), Path(package.__file__).parents[1] / "training" / "recipe.py"]
    text = "".join(p.read_text() for p in files)
    named = set(re.findall(r"(--[a-z][a-z-]+)", text))
    parser = build_parser()
    actions = parser._subparsers._group_actions[0].choices
    options = {o for name in ("train", "nll", "inpaint", "prepare") for a in actions[name]._actions
               for o in a.option_strings}
    assert named and named <= options, named - options


def test_grayscale_folder_trains_a_one_channel_preset(tmp_path):
    """Issue 12 finding 9: a grayscale folder trains tiny_fmnist (1 channel) from the CLI."""
    root = write_folder(tmp_path / "g", mode="L", size=(32, 30), per_class=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conversion: the folder is read as grayscale
        main(["train", "--preset", "tiny_fmnist", "--data", str(root), "--steps", "2", "--batch-size", "4",
              "--out", str(tmp_path / "run"), "--amp", "none", "--workers", "1", "--val-images", "2",
              "--eval-every", "1000"])
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["step"] == 2


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 0}, "--batch-size must be at least 1"),
                                             ({"batch_size": 2, "grad_accum": 0}, "--grad-accum must be at least 1"),
                                             ({"batch_size": 2, "world": 2, "rank": 2}, "rank 2 is outside")])
def test_plan_rejects_impossible_layouts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchPlan(100, **kwargs)


def test_prepare_keeps_splits_and_skips_bad_files_only_when_asked(tmp_path, capsys):
    src = tmp_path / "src"
    write_folder(src / "train", per_class=5)
    write_folder(src / "val", per_class=2, seed=1)
    (src / "train/dog/003.png").write_bytes(b"broken")
    with pytest.raises(SystemExit):
        prepare(src, tmp_path / "refused")
    err = capsys.readouterr().err
    assert "003.png: cannot identify image file;" in err and "--skip-bad" in err and "BytesIO" not in err
    out = tmp_path / "shards"
    main(["prepare", str(src), "--out", str(out), "--image-size", "16", "--workers", "1", "--no-progress",
          "--skip-bad"])
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["counts"] == {"train": 9, "val": 4}
    assert len(open_dataset(out, "train")) == 9 and len(open_dataset(out, "val")) == 4  # val shards, not carved


def test_feed_rejects_impossible_loader_settings():
    with pytest.raises(ValueError, match="--workers must be at least 0 and --prefetch at least 1"):
        BatchFeed(None, "cpu", num_workers=-1)
