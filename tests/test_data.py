"""Tests for fractalgm.data: presets, on-disk formats written here in their real layouts, and errors."""
import gzip
import hashlib
import io
import pickle
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from fractalgm import data
from fractalgm.data import ImageDataset, check_images, load_dataset

HAS_FASHION = all((data.sources.FASHION_SYSTEM_DIR / name).is_file() for name in data.FASHION_MD5)
needs_fashion = pytest.mark.skipif(not HAS_FASHION, reason="Debian package dataset-fashion-mnist not installed")


def rows(images: torch.Tensor) -> list[bytes]:
    """Images as sorted byte strings, to compare datasets as multisets."""
    return sorted(bytes(row) for row in images.reshape(len(images), -1).numpy())


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_dir(directory, n_train=20, n_test=10):
    """Tiny valid Fashion-MNIST-layout folder; image i is filled with value i."""
    directory.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return directory


# --- Fashion-MNIST -------------------------------------------------------------------------------------

@needs_fashion
def test_fashion_mnist_splits_shapes_and_classes():
    sizes = {"train": 55000, "val": 5000, "test": 10000, "train_full": 60000}
    for split, n in sizes.items():
        ds = load_dataset("fashion_mnist", split)
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.uint8
        assert ds.labels.dtype == torch.int64 and 0 <= ds.labels.min() and ds.labels.max() == 9
        assert ds.num_classes == 10 and ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert load_dataset("fashion_mnist", "train_full").labels[0] == 9  # first official training label
    assert int(load_dataset("fashion_mnist", "test").images.max()) == 255


@needs_fashion
def test_fashion_mnist_split_is_deterministic_and_disjoint():
    train, val = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "val")
    full = load_dataset("fashion_mnist", "train_full")
    assert torch.equal(val.images, load_dataset("fashion_mnist", "val").images)
    assert rows(torch.cat([train.images, val.images])) == rows(full.images)  # a partition of the 60k
    assert not torch.equal(val.images, load_dataset("fashion_mnist", "val", seed=1).images)
    test = load_dataset("fashion_mnist", "test")
    assert torch.equal(load_dataset("fashion_mnist", "test", seed=1).images, test.images)
    assert len(load_dataset("fashion_mnist", "val", val_size=1000)) == 1000
    train.images[0] += 1  # callers get copies, not the cached arrays
    assert torch.equal(load_dataset("fashion_mnist", "train").images[0], train.images[0] - 1)


def test_idx_folder_via_data_dir_and_as_path(tmp_path):
    root = write_idx_dir(tmp_path / "idx")
    ds = load_dataset("fashion_mnist", "train", data_dir=root, val_size=5)
    assert len(ds) == 15 and ds.class_names == data.FASHION_CLASSES
    assert all(int(img.max()) == int(img.min()) for img, _ in ds)  # pixel value = original index
    test = load_dataset(str(root), "test")
    assert test.images[:, 0, 0, 0].tolist() == list(range(10)) and test.num_classes == 10


@pytest.mark.parametrize("damage, message", [
    (lambda raw: gzip.compress(raw[:-100]), "truncated"),
    (lambda raw: gzip.compress(b"\x00\x00\x08\x01" + raw[4:]), "not an IDX file"),
    (lambda raw: gzip.compress(raw)[:-20], "cannot read IDX file"),
])
def test_idx_corrupt_files_give_clear_errors(tmp_path, damage, message):
    root = write_idx_dir(tmp_path / "idx")
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(damage(gzip.decompress(path.read_bytes())))
    with pytest.raises(ValueError, match=message) as err:
        load_dataset("fashion_mnist", "test", data_dir=root)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)


def test_fashion_missing_data_dir_mentions_apt_get(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", data_dir=tmp_path / "nope")


def test_fashion_offline_without_files_mentions_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(data.sources, "FASHION_SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*--data DIR"):
        load_dataset("fashion_mnist", "test")


def test_fashion_download_checks_md5_and_falls_back_to_next_mirror(tmp_path, monkeypatch):
    served = {p.name: p.read_bytes() for p in write_idx_dir(tmp_path / "served").iterdir()}
    monkeypatch.setattr(data.sources, "FASHION_MD5", {name: hashlib.md5(b).hexdigest() for name, b in served.items()})
    monkeypatch.setattr(data.sources, "FASHION_SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = data.sources.FASHION_URLS

    def fake_urlopen(url, timeout=None):  # first mirror serves corrupted bytes
        name = url.rsplit("/", 1)[1]
        return io.BytesIO(b"garbage" if url.startswith(first) else served[name])
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    ds = load_dataset("fashion_mnist", "test")
    assert len(ds) == 10
    cache = tmp_path / "cache" / "fractalgm" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(served)  # no .part leftovers


# --- small presets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, sizes, shape", [
    ("mnist5k", {"train": 4000, "val": 500, "test": 500, "train_full": 4500}, (1, 28, 28)),
    ("digits", {"train": 1347, "val": 150, "test": 300, "train_full": 1497}, (1, 8, 8)),
])
def test_small_presets(name, sizes, shape):
    splits = {split: load_dataset(name, split) for split in sizes}
    for split, n in sizes.items():
        ds = splits[split]
        assert ds.images.shape == (n, *shape) and ds.images.dtype == torch.uint8 and ds.num_classes == 10
        assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
    assert int(splits["train_full"].images.max()) == 255
    assert torch.equal(splits["val"].images, load_dataset(name, "val").images)
    assert rows(torch.cat([splits["train"].images, splits["val"].images])) == rows(splits["train_full"].images)
    assert torch.equal(splits["test"].images, load_dataset(name, "test", seed=3).images)  # test ignores seed


def test_digits_scaling_matches_round_v_times_255_over_16():
    from sklearn.datasets import load_digits
    raw = load_digits().images
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(np.unique(load_dataset("digits", "train_full").images.numpy())) <= allowed
    assert rows(torch.cat([load_dataset("digits", s).images for s in ("train_full", "test")])) == rows(
        torch.from_numpy(np.rint(raw * 255 / 16).astype(np.uint8)))


def test_photos_split_by_source_photo():
    splits = {s: load_dataset("photos", s) for s in ("train", "val", "test")}
    assert splits["train"].images.shape == (4096, 3, 32, 32) and len(splits["test"]) == 512
    used = {s: set(ds.labels.tolist()) for s, ds in splits.items()}
    assert not (used["train"] & used["val"] or used["train"] & used["test"] or used["val"] & used["test"])
    for split, ds in splits.items():
        expected = sorted(data.sources.PHOTO_SPLITS[split], key=data.sources.PHOTOS.index)
        assert [ds.class_names[i] for i in sorted(used[split])] == expected
    assert ds.num_classes == len(data.sources.PHOTOS)
    assert torch.equal(splits["train"].images, load_dataset("photos", "train").images)
    assert not torch.equal(splits["train"].images, load_dataset("photos", "train", seed=1).images)
    assert torch.equal(splits["test"].images, load_dataset("photos", "test", seed=1).images)
    small = load_dataset("photos", "val", image_size=16, num_crops=7)
    assert small.images.shape == (7, 3, 16, 16)


def test_channel_conversion_matches_pil_luma():
    rgb = load_dataset("photos", "test", num_crops=4)
    gray = load_dataset("photos", "test", num_crops=4, channels=1)
    for a, b in zip(rgb.images, gray.images):
        expected = np.array(Image.fromarray(a.permute(1, 2, 0).numpy()).convert("L"))
        assert np.array_equal(b[0].numpy(), expected)
    digits = load_dataset("digits", "test").images
    assert torch.equal(load_dataset("digits", "test", channels=3).images, digits.repeat(1, 3, 1, 1))


# --- image folders -------------------------------------------------------------------------------------

def adm_reference(img: Image.Image, size: int) -> np.ndarray:
    """The ADM recipe written out independently of the module."""
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[y:y + size, x:x + size]


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "folder"
    for d in ("train/cat", "train/dog", "test/cat", "test/dog"):
        (root / d).mkdir(parents=True)
    square = np.zeros((64, 64, 3), np.uint8)
    square[24:40, 24:40] = (255, 0, 0)  # red centre square
    Image.fromarray(square).save(root / "train/cat/a_square.png")
    wide = np.zeros((40, 96, 3), np.uint8)
    wide[:, 40:56] = 255  # white vertical bar in the middle of a non-square image
    Image.fromarray(wide).save(root / "train/cat/b_wide.png")
    Image.fromarray(np.full((20, 20), 128, np.uint8), "L").save(root / "train/dog/gray.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 33, 3), dtype=np.uint8)).save(root / "train/dog/photo.jpg")
    for cls in ("cat", "dog"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / f"test/{cls}/x.png")
    return root


def test_image_folder_centre_crop(image_folder):
    ds = load_dataset(str(image_folder), "train_full", image_size=16)
    assert ds.images.shape == (4, 3, 16, 16) and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and ds.num_skipped == 0
    square, wide, gray, _ = ds.images
    assert square[:, 6:10, 6:10].tolist() == [[[255] * 4] * 4, [[0] * 4] * 4, [[0] * 4] * 4]  # 64->16 by BOX
    assert int(square[:, 0, 0].max()) == 0
    assert int(wide[:, :, 8].min()) > 200 and int(wide[:, :, 0].max()) < 30
    reference = adm_reference(Image.open(image_folder / "train/cat/b_wide.png"), 16)
    assert np.array_equal(wide.permute(1, 2, 0).numpy(), reference)
    assert int(gray.min()) == int(gray.max()) == 128  # grayscale file -> RGB
    assert load_dataset(str(image_folder), "test", image_size=16).labels.tolist() == [0, 1]
    assert load_dataset(str(image_folder), "train_full", image_size=16, channels=1).images.shape == (4, 1, 16, 16)
    assert len(load_dataset(str(image_folder), "val", image_size=16, val_size=1)) == 1


def test_image_folder_without_split_or_class_dirs(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    ds = load_dataset(str(tmp_path), "train_full", image_size=8)
    assert len(ds) == 1 and ds.num_classes == 1
    with pytest.raises(ValueError, match="no 'test' split"):
        load_dataset(str(tmp_path), "test", image_size=8)
    with pytest.raises(ValueError, match="image-size"):
        load_dataset(str(tmp_path), "train_full")


def test_image_folder_corrupt_files(image_folder):
    (image_folder / "train/dog/broken.png").write_bytes(b"not an image")
    good = (image_folder / "train/cat/a_square.png").read_bytes()
    (image_folder / "train/dog/truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="broken.png"):
        load_dataset(str(image_folder), "train_full", image_size=16)
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = load_dataset(str(image_folder), "train_full", image_size=16, skip_bad=True)
    assert len(ds) == 4 and ds.num_skipped == 2


# --- CIFAR python batches ---------------------------------------------------------------------------------

def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10_batches(tmp_path):
    for i in range(1, 6):
        pixels = np.zeros((2, 3072), np.uint8)
        pixels[0, 1 * 1024 + 5 * 32 + 7] = 200 + i  # green channel, row 5, column 7
        write_pickle(tmp_path / f"data_batch_{i}", {b"data": pixels, b"labels": [i, 9 - i], b"batch_label": b"x"})
    write_pickle(tmp_path / "test_batch", {b"data": np.full((3, 3072), 7, np.uint8), b"labels": [0, 1, 2]})
    write_pickle(tmp_path / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    full = load_dataset(str(tmp_path), "train_full")
    assert full.images.shape == (10, 3, 32, 32) and full.num_classes == 10 and full.class_names[3] == "c3"
    assert full.images[0::2, 1, 5, 7].tolist() == [201, 202, 203, 204, 205]
    assert int(full.images[0].sum()) == 201 and full.labels.tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]
    test = load_dataset(str(tmp_path), "test")
    assert len(test) == 3 and int(test.images.min()) == 7
    assert len(load_dataset(str(tmp_path), "train", val_size=2)) == 8


def test_cifar100_batches(tmp_path):
    pixels = np.zeros((4, 3072), np.uint8)
    pixels[3, 2 * 1024 + 31 * 32 + 0] = 99  # blue channel, last row, first column
    write_pickle(tmp_path / "train", {b"data": pixels, b"fine_labels": [0, 50, 99, 3], b"coarse_labels": [0] * 4})
    write_pickle(tmp_path / "test", {b"data": pixels[:2], b"fine_labels": [1, 2], b"coarse_labels": [0, 0]})
    write_pickle(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    ds = load_dataset(str(tmp_path), "train_full")
    assert ds.num_classes == 100 and ds.labels.tolist() == [0, 50, 99, 3] and ds.class_names[99] == "f99"
    assert int(ds.images[3, 2, 31, 0]) == 99 and int(ds.images.sum()) == 99
    assert len(load_dataset(str(tmp_path), "test")) == 2


# --- npz formats -----------------------------------------------------------------------------------------

def test_downsampled_imagenet_npz(tmp_path):
    for i in (1, 2, 10):  # natural order: batch 10 comes last
        pixels = np.zeros((2, 3 * 8 * 8), np.uint8)
        pixels[0, 2 * 64 + 3 * 8 + 4] = i  # blue channel, row 3, column 4
        np.savez(tmp_path / f"train_data_batch_{i}.npz", data=pixels, labels=np.array([1, 1000]), mean=np.zeros(192))
    np.savez(tmp_path / "val_data.npz", data=np.full((3, 192), 9, np.uint8), labels=np.array([5, 6, 7]))
    full = load_dataset(str(tmp_path), "train_full")
    assert full.images.shape == (6, 3, 8, 8) and full.num_classes == 1000
    assert full.images[0::2, 2, 3, 4].tolist() == [1, 2, 10] and full.labels.tolist() == [0, 999] * 3
    test = load_dataset(str(tmp_path), "test")
    assert test.labels.tolist() == [4, 5, 6] and int(test.images.min()) == 9
    single = load_dataset(str(tmp_path / "val_data.npz"), "test")
    assert torch.equal(single.images, test.images) and single.num_classes == 1000


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_generic_npz_layouts(tmp_path, layout):
    x = np.zeros((5, 6, 6, 3), np.uint8)
    x[1, 2, 3, 0] = 42  # image 1, row 2, column 3, channel 0
    stored = {"NHW": x[..., 0], "NHWC": x, "NCHW": x.transpose(0, 3, 1, 2)}[layout]
    np.savez(tmp_path / "d.npz", x=stored)
    ds = load_dataset(str(tmp_path / "d.npz"), "train_full")
    assert ds.images.shape == (5, 1 if layout == "NHW" else 3, 6, 6) and ds.num_classes == 1
    assert int(ds.images[1, 0, 2, 3]) == 42 and int(ds.images.sum()) == 42 and ds.labels.tolist() == [0] * 5


def test_generic_npz_labels_resize_channels_and_dirs(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.arange(4 * 16 * 16).reshape(4, 16, 16) % 256, y=np.array([0, 2, 1, 2]))
    ds = load_dataset(str(tmp_path / "d.npz"), "train_full", image_size=8, channels=3)  # int64 in 0..255 is fine
    assert ds.images.shape == (4, 3, 8, 8) and ds.num_classes == 3 and ds.labels.tolist() == [0, 2, 1, 2]
    (tmp_path / "dir").mkdir()
    np.savez(tmp_path / "dir/train.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1, 0]))
    np.savez(tmp_path / "dir/test.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([4, 0]))
    train = load_dataset(str(tmp_path / "dir"), "train_full")
    assert len(train) == 3 and train.num_classes == 5  # classes span all split files


@pytest.mark.parametrize("x, message", [
    (np.zeros((2, 4, 4), np.float32), "dtype float32"),
    (np.full((2, 4, 4), 300, np.int16), "0..300"),
    (np.full((2, 4, 4), -1, np.int64), "-1..-1"),
    (np.zeros((2, 4, 4, 4), np.uint8), "channels"),
])
def test_generic_npz_rejects_bad_pixels(tmp_path, x, message):
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(ValueError, match=message):
        load_dataset(str(tmp_path / "bad.npz"), "train_full")


def test_imagenet_npz_rejects_float_data(tmp_path):
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 192), np.float64), labels=np.array([1, 2]))
    with pytest.raises(ValueError, match="float64"):
        load_dataset(str(tmp_path), "test")


# --- dataset object, validation and argument errors ------------------------------------------------------

def test_image_dataset_indexing_and_subset():
    ds = load_dataset("digits", "test")
    image, label = ds[3]
    assert image.shape == (1, 8, 8) and label.dtype == torch.int64
    sub = ds.subset([3, 0])
    assert len(sub) == 2 and torch.equal(sub.images[0], image) and sub.num_classes == 10 and sub.name == "digits"
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), 1, "x")
    with pytest.raises(ValueError, match="num_classes"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 5]), 2, "x")


def test_check_images_messages():
    ds = load_dataset("photos", "test", num_crops=2)
    check_images(ds, 3, 32)
    expected = ("dataset 'photos' has 3-channel 32x32 images but the model expects 1-channel 28x28 images; "
                "pass --channels/--image-size or choose another preset")
    with pytest.raises(ValueError) as err:
        check_images(ds, 1, 28)
    assert str(err.value) == expected
    with pytest.raises(ValueError, match="3-channel 32x32 .* expects 3-channel 64x64"):
        check_images(ds, 3, 64)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("digits", "dev")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        load_dataset("digits", channels=2)
    with pytest.raises(ValueError, match="num_crops"):
        load_dataset("digits", num_crops=3)
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("digits", "val", val_size=10_000)
    with pytest.raises(FileNotFoundError, match="not one of"):
        load_dataset(str(tmp_path / "cifar10"))
