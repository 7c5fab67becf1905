"""The lossless codec (`fractalgm.codec`, `fractalgm compress` / `decompress`).

A tiny random-init AR model keeps the sequential coding fast; two shipped-model images check the real
thing. Every fixture is made here, on this machine: files are never compared with bytes from elsewhere.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from fractalgm import FractalGen, get_preset
from fractalgm.cli import main
from fractalgm.codec import CodecError, decode, encode, unpack
from fractalgm.codec.coding import PRECISION, ImageDecoder, ImageEncoder, coder_weights, quantise
from fractalgm.codec.container import pack
from fractalgm.data import load_dataset

CHUNK = 4


def tiny_ar(seed: int) -> FractalGen:
    """`tiny_fmnist` with AR levels (the codec codes AR models only), random weights from `seed`."""
    config = get_preset("tiny_fmnist")
    config = replace(config, levels=tuple(replace(lv, kind="ar") for lv in config.levels))
    torch.manual_seed(seed)
    return FractalGen(config).eval()


@pytest.fixture(scope="module")
def test_set():
    data = load_dataset("fashion_mnist", "test")
    return np.asarray(data.images[:5], dtype=np.uint8), np.asarray(data.labels[:5], dtype=np.int64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-ar"
    model = tiny_ar(0)
    model.save_pretrained(folder)
    return model, str(folder)


@pytest.fixture(scope="module")
def coded(tiny, test_set):
    model, folder = tiny
    return encode(model, test_set[0], chunk=CHUNK, batch_size=3, model_name=folder)


def run_cli(argv, capsys) -> tuple[int, str]:
    """`fractalgm ARGV` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------- quantisation and the coder
def test_quantise_counts_are_positive_exact_and_deterministic():
    logits = torch.cat([torch.randn(6, 256) * 20, torch.full((1, 256), -1e30), torch.zeros(1, 256)])
    logits[0, 7] = 1e4  # one symbol carries (almost) all the mass
    counts = quantise(logits)
    assert counts.dtype == torch.int64 and counts.min() >= 1
    assert (counts.sum(-1) == 1 << PRECISION).all()
    assert torch.equal(counts, quantise(logits.clone()))
    assert counts[0, 7] == (1 << PRECISION) - 255  # the rest keep the minimum, 1
    assert (counts[7] >= 65536).all()  # uniform: 2^24/256 each
    with pytest.raises(CodecError, match="not finite"):
        quantise(torch.full((1, 256), float("nan")))


def test_constriction_codes_exactly_our_counts():
    """A symbol of count 1 costs 24 bits, of count 2^23 one bit: constriction does not re-quantise."""
    counts = torch.ones(1, 256, dtype=torch.long)
    counts[0, 1] = (1 << PRECISION) - 255
    weights = coder_weights(counts)
    enc = ImageEncoder()
    for _ in range(200):
        enc.push(0, weights)  # count 1: exactly 24 bits each
    words = enc.finish()
    assert 200 * 24 <= 32 * len(words) <= 200 * 24 + 64
    dec = ImageDecoder(words)
    assert [dec.pull(weights) for _ in range(200)] == [0] * 200


# ---------------------------------------------------------------------------- round trips
def test_round_trip_and_size_match_the_exact_likelihood(tiny, test_set, coded):
    model, folder = tiny
    images, _ = test_set
    c = unpack(coded)
    assert c.header["chunk"] == CHUNK and len(c) == 5
    assert torch.equal(decode(model, coded, model_name=folder), torch.from_numpy(images))
    nll_bits = model.nll(torch.from_numpy(images)).nats.double() / math.log(2)
    coded_bits = torch.tensor([32.0 * len(s) for s in c.streams], dtype=torch.float64)
    # the range coder's flush is < 64 bits; the 24-bit quantisation costs < 0.01 bit a pixel here
    assert (coded_bits >= nll_bits - 1).all() and (coded_bits <= nll_bits + 64 + 0.01 * 784).all()


def test_one_image_alone_equals_the_batch(tiny, test_set, coded):
    model, folder = tiny
    got = decode(model, coded, index=[4, 1], batch_size=1, model_name=folder)
    assert torch.equal(got, torch.from_numpy(test_set[0][[4, 1]]))


def test_shipped_model_round_trip_costs_its_bits_per_dim(test_set):
    model = FractalGen.from_pretrained("fmnist-ar")
    images = test_set[0][:2]
    blob = encode(model, images, chunk=2, model_name="fmnist-ar")
    assert torch.equal(decode(model, blob, model_name="fmnist-ar"), torch.from_numpy(images))
    nll_bytes = model.nll(torch.from_numpy(images)).nats.sum().item() / math.log(2) / 8
    payload = sum(4 * len(s) for s in unpack(blob).streams)
    assert nll_bytes - 1 <= payload <= nll_bytes + 2 * 8 + 0.02 * nll_bytes


def test_labels_round_trip_and_cost_one_byte_each(tiny, test_set, tmp_path, capsys):
    _, folder = tiny
    images, labels = test_set
    np.savez(tmp_path / "x.npz", images[:3].transpose(0, 2, 3, 1), labels[:3])
    out = tmp_path / "x.fgm"
    assert run_cli(["compress", str(tmp_path / "x.npz"), "--out", str(out), "--model", folder, "--labels", "data",
                    "--chunk", str(CHUNK)], capsys)[0] == 0
    c = unpack(out.read_bytes())
    assert c.labels.tolist() == labels[:3].tolist()
    assert run_cli(["decompress", str(out), "--out", str(tmp_path / "y.npz")], capsys)[0] == 0
    with np.load(tmp_path / "y.npz") as y:
        assert np.array_equal(y["arr_0"], images[:3].transpose(0, 2, 3, 1))
        assert y["arr_1"].tolist() == labels[:3].tolist()


def test_encode_and_decode_in_other_processes_threads_and_batch_sizes(tiny, test_set, tmp_path):
    """Compress in a 2-thread process in batches of 3, decompress in a 1-thread one in batches of 2: both
    code single-threaded (2 threads round CPU attention differently), so the streams are those of this
    process too. PASSIVE: spinning OpenMP threads crawl on shared cores (the arithmetic is the same)."""
    model, folder = tiny
    src = tmp_path / "in"
    src.mkdir()
    for i, im in enumerate(test_set[0][:3]):
        Image.fromarray(im[0]).save(src / f"shirt{i}.png")
    cmd = [sys.executable, "-m", "fractalgm"]
    subprocess.run(cmd + ["compress", str(src), "--out", str(tmp_path / "a.fgm"), "--model", folder,
                          "--chunk", str(CHUNK), "--batch-size", "3"],
                   env=dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE"), check=True,
                   capture_output=True)
    subprocess.run(cmd + ["decompress", str(tmp_path / "a.fgm"), "--out", str(tmp_path / "out"), "--batch-size",
                          "2"], env=dict(os.environ, OMP_NUM_THREADS="1"), check=True, capture_output=True)
    for i, im in enumerate(test_set[0][:3]):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"shirt{i}.png")), im[0])
    before = torch.get_num_threads()
    here = unpack(encode(model, test_set[0][:3], chunk=CHUNK, batch_size=1, model_name=folder))
    assert torch.get_num_threads() == before  # the process's setting is restored
    there = unpack((tmp_path / "a.fgm").read_bytes())
    assert [w.tobytes() for w in here.streams] == [w.tobytes() for w in there.streams]


def test_chunks_coded_side_by_side_equal_one_chunk_at_a_time(tiny, test_set):
    """At 2 threads on a CPU that can fork, the chunks are coded in two worker processes (each run is
    single-threaded anyway): the same bytes as one chunk at a time, decoded to the same images, and
    a damaged file still ends in a `CodecError`, not in a worker's crash."""
    from fractalgm.codec.api import _side_by_side
    from fractalgm.runtime import can_fork

    if not can_fork():
        pytest.skip("no safe fork here")
    model, folder = tiny
    images = test_set[0]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _side_by_side(model, 3).processes and _side_by_side(model, 3).workers == 2
        side = encode(model, images, chunk=CHUNK, batch_size=2, model_name=folder)  # 3 chunks
        assert torch.equal(decode(model, side, batch_size=2, model_name=folder), torch.from_numpy(images))
        c = unpack(side)
        c.streams[3], c.streams[4] = c.streams[4], c.streams[3]  # two images' words swapped
        with pytest.raises(CodecError):
            decode(model, pack(c), batch_size=2, model_name=folder)
        torch.set_num_threads(1)
        assert not _side_by_side(model, 3).processes
        one = encode(model, images, chunk=CHUNK, batch_size=2, model_name=folder)
    finally:
        torch.set_num_threads(threads)
    assert side == one


# ---------------------------------------------------------------------------- refusals
def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x10]) + data[pos + 1:]


@pytest.mark.parametrize("case, expect", [
    ("truncated", "damaged"), ("header bit", "damaged"), ("payload bit", "damaged"), ("magic", "not a fractalgm"),
    ("foreign", "not a fractalgm"), ("wrong model", "coded with model"), ("index", "out of range"),
    ("version", "format version 2"), ("threads", "threads per run")])
def test_damaged_or_mismatched_files_exit_2_with_one_line_and_no_output(case, expect, tiny, coded, tmp_path, capsys):
    _, folder = tiny
    data, model = coded, folder
    if case == "truncated":
        data = data[:-7]
    elif case == "header bit":
        data = _flip(data, 12)
    elif case == "payload bit":
        data = _flip(data, len(data) - 20)
    elif case == "magic":
        data = _flip(data, 0)
    elif case == "foreign":
        Image.new("L", (28, 28)).save(tmp_path / "f.png")
        data = (tmp_path / "f.png").read_bytes()
    elif case == "version":  # a later format, intact
        body = data[:4] + bytes([2]) + data[5:-4]
        data = body + zlib.crc32(body).to_bytes(4, "little")
    elif case == "threads":  # intact, but coded with another thread count per run
        c = unpack(data)
        c.header["threads"] = 2
        data = pack(c)
    elif case == "wrong model":
        other = tmp_path / "other"
        tiny_ar(1).save_pretrained(other)
        model = str(other)
    (tmp_path / "in.fgm").write_bytes(data)
    extra = ["--index", "9"] if case == "index" else []
    for out in ("out", "out.npz"):
        code, err = run_cli(["decompress", str(tmp_path / "in.fgm"), "--out", str(tmp_path / out), "--model", model]
                            + extra, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: ") and expect in err
        assert not (tmp_path / out).exists()


def test_images_of_another_size_or_kind_are_refused_before_coding(tiny, tmp_path, capsys):
    _, folder = tiny
    Image.new("L", (28, 28)).save(tmp_path / "ok.png")
    Image.new("L", (32, 32)).save(tmp_path / "big.png")
    Image.new("RGB", (28, 28)).save(tmp_path / "rgb.png")
    for bad, words in (("big.png", "32×32 L"), ("rgb.png", "28×28 RGB")):
        code, err = run_cli(["compress", str(tmp_path / "ok.png"), str(tmp_path / bad), "--out",
                             str(tmp_path / "x.fgm"), "--model", folder], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and bad in err and words in err
        assert "28×28 grayscale" in err and not (tmp_path / "x.fgm").exists()


def test_mar_models_code_in_raster_order_at_their_exact_likelihood(test_set):
    """MAR levels run one token per step in raster order: the code length is the exact raster NLL.
    (The shipped model: a random one codes any order at about the same length.)"""
    model = FractalGen.from_pretrained("fmnist-mar")
    images = test_set[0][:2]
    blob = encode(model, images, chunk=2)
    assert torch.equal(decode(model, blob, index=[1, 0], batch_size=1), torch.from_numpy(images[[1, 0]]))
    nll_bits = model.nll(torch.from_numpy(images), exact=True, order="raster").nats.double() / math.log(2)
    coded_bits = torch.tensor([32.0 * len(s) for s in unpack(blob).streams], dtype=torch.float64)
    assert (coded_bits >= nll_bits - 1).all() and (coded_bits <= nll_bits + 64 + 0.01 * 784).all()


def test_guiding_pixel_models_are_refused(test_set):
    config = replace(get_preset("tiny_fmnist"), guiding_pixel=True)
    with pytest.raises(CodecError, match="guiding pixel"):
        encode(FractalGen(config), test_set[0][:1])
