"""Checkpoints: safetensors round trips, atomic saves, clear errors, reference `.pth` conversion."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from fractalgm import FractalConfig, FractalGen, LevelConfig, PixelHeadConfig, get_preset, list_presets
from fractalgm.io import checkpoint as ckpt
from fractalgm.io.checkpoint import CheckpointError, list_pretrained, save_pretrained
from fractalgm.io.convert import convert_reference, infer_preset, load_reference, load_reference_state_dict

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


def tiny_config(**kw) -> FractalConfig:
    kw = {"channels": 1, "num_classes": 10, **kw}
    return FractalConfig(levels=(LevelConfig(8, 2, 32, 1, 2, "mar"), LevelConfig(2, 1, 32, 1, 2, "mar")),
                         head=PixelHeadConfig(16, 1, 2), **kw)


def tiny_model(seed=0, **kw) -> FractalGen:
    torch.manual_seed(seed)
    return FractalGen(tiny_config(**kw)).eval()


def images(n=3, seed=1, c=1, s=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, s, s), generator=g, dtype=torch.uint8)


def outputs(model):
    x, y = images(), torch.tensor([1, 2, 3])
    nll = model.nll(x, y, exact=True, generator=torch.Generator().manual_seed(5)).nats
    samples = model.sample(y, num_iter=2, generator=torch.Generator().manual_seed(7))
    return nll, samples


def assert_same_outputs(a, b):
    na, sa = outputs(a)
    nb, sb = outputs(b)
    assert torch.equal(na, nb)
    assert torch.equal(sa, sb)


# ---------------------------------------------------------------------------- our format
def test_round_trip_identical(tmp_path):
    model = tiny_model()
    folder = save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert FractalConfig.from_json((folder / "config.json").read_text()) == model.config
    loaded = FractalGen.from_pretrained(folder)
    assert not loaded.training and loaded.config == model.config
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert_same_outputs(model, loaded)
    # a file inside the folder also resolves to it
    assert FractalGen.from_pretrained(folder / "config.json").config == model.config


def test_bf16_save_loads_close(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path / "bf16", dtype=torch.bfloat16)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert f.metadata()["dtype"] == "bfloat16"
        assert f.get_tensor("fake_latent").dtype == torch.bfloat16
    loaded = FractalGen.from_pretrained(tmp_path / "bf16")
    assert loaded.fake_latent.dtype == torch.float32
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=1e-2, atol=1e-2)
    x = images()
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = model.nll(x, exact=True, generator=gen()).nats
    b = loaded.nll(x, exact=True, generator=gen()).nats
    torch.testing.assert_close(a, b, rtol=1e-2, atol=0.5)
    kept = FractalGen.from_pretrained(tmp_path / "bf16", dtype=None)
    assert kept.fake_latent.dtype == torch.bfloat16


def test_overwrite_replaces_and_leaves_no_temp(tmp_path):
    old, new = tiny_model(0), tiny_model(1)
    save_pretrained(old, tmp_path / "c")
    save_pretrained(new, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert torch.equal(FractalGen.from_pretrained(tmp_path / "c").fake_latent, new.fake_latent)


@pytest.mark.parametrize("partial", [False, True])
def test_failed_save_keeps_old_checkpoint(tmp_path, monkeypatch, partial):
    old = tiny_model(0)
    save_pretrained(old, tmp_path / "c")
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}

    def broken_writer(tensors, filename, metadata=None):
        if partial:
            Path(filename).write_bytes(b"\x00" * 100)  # half-written file, then the disk "fills up"
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt, "save_file", broken_writer)
    with pytest.raises(OSError, match="No space"):
        save_pretrained(tiny_model(1), tmp_path / "c")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # temporary folder cleaned up
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before
    assert_same_outputs(old, FractalGen.from_pretrained(tmp_path / "c"))


def test_save_into_folder_with_other_files(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("keep me")
    old = tiny_model(0)
    save_pretrained(old, run)
    save_pretrained(tiny_model(1), run)
    assert (run / "log.txt").read_text() == "keep me"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "log.txt", "model.safetensors"]
    monkeypatch.setattr(ckpt, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_pretrained(old, run)
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "log.txt", "model.safetensors"]
    assert torch.equal(FractalGen.from_pretrained(run).fake_latent, tiny_model(1).fake_latent)


def test_torn_pair_is_detected(tmp_path):
    save_pretrained(tiny_model(), tmp_path / "a")
    save_pretrained(tiny_model(num_classes=7), tmp_path / "b")
    (tmp_path / "a" / "config.json").write_text((tmp_path / "b" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="different saves"):
        FractalGen.from_pretrained(tmp_path / "a")


def test_truncated_or_corrupt_weights(tmp_path):
    folder = save_pretrained(tiny_model(), tmp_path / "c")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*re-download or re-save"):
        FractalGen.from_pretrained(folder)
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        FractalGen.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        FractalGen.from_pretrained(folder)


def test_missing_folder_config_and_names(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        FractalGen.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        FractalGen.from_pretrained("no-such-shipped-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        FractalGen.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid fractalgm config"):
        FractalGen.from_pretrained(tmp_path / "empty")
    pth = tmp_path / "w.pth"
    torch.save({}, pth)
    with pytest.raises(CheckpointError, match="convert_reference"):
        FractalGen.from_pretrained(pth)


def test_interrupted_swap_is_reported(tmp_path):
    save_pretrained(tiny_model(), tmp_path / "c")
    (tmp_path / "c").rename(tmp_path / ".c.old-1234abcd")  # died between the two renames
    with pytest.raises(CheckpointError, match=r"interrupted.*\.c\.old-1234abcd"):
        FractalGen.from_pretrained(tmp_path / "c")


def test_key_mismatch_lists_keys(tmp_path):
    from safetensors.torch import save_file
    model = tiny_model()
    folder = save_pretrained(model, tmp_path / "c")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd.pop("next_fractal.generator.mask_token")
    sd["extra.weight"] = torch.zeros(2)
    sd["fake_latent"] = torch.zeros(1, 5)
    save_file(sd, str(folder / "model.safetensors"))  # no config copy in the metadata
    with pytest.raises(CheckpointError) as err:
        FractalGen.from_pretrained(folder)
    msg = str(err.value)
    for part in ("does not match", "missing keys", "next_fractal.generator.mask_token", "unexpected keys",
                 "extra.weight", "shape mismatches", "fake_latent: [1, 5] vs [1, 32]"):
        assert part in msg


def test_list_pretrained_and_resolution(tmp_path, monkeypatch):
    shipped = tmp_path / "pretrained"
    monkeypatch.setattr(ckpt, "PRETRAINED_DIR", shipped)
    assert list_pretrained() == []
    model = tiny_model()
    save_pretrained(model, shipped / "tiny_demo")
    (shipped / "not_a_model").mkdir()
    assert list_pretrained() == ["tiny_demo"]
    monkeypatch.chdir(tmp_path)
    assert_same_outputs(model, FractalGen.from_pretrained("tiny_demo"))


def test_real_package_pretrained_dir_loads():
    for name in list_pretrained():  # whatever ships inside the package must load
        FractalGen.from_pretrained(name)


@pytest.mark.skipif(not hasattr(FractalGen, "from_pretrained"), reason="FractalGen methods not added yet")
def test_model_methods(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    assert_same_outputs(model, FractalGen.from_pretrained(tmp_path / "m"))


# ---------------------------------------------------------------------------- reference checkpoints
@pytest.mark.parametrize("wrap", ["plain", "train", "ddp", "state_dict"])
def test_reference_pth_round_trip(tmp_path, wrap):
    model = tiny_model(3)
    sd = model.state_dict()
    obj = {"plain": sd,
           "train": {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
                     "args": argparse.Namespace(lr=1, img_size_list=[8, 2, 1], name="x")},
           "ddp": {"model": {"module." + k: v for k, v in sd.items()}},
           "state_dict": {"state_dict": sd}}[wrap]
    pth = tmp_path / "checkpoint-last.pth"
    torch.save(obj, pth)
    got = load_reference_state_dict(pth)
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    converted = convert_reference(pth, tmp_path / "out", preset=model.config)
    assert_same_outputs(model, converted)
    assert_same_outputs(model, FractalGen.from_pretrained(tmp_path / "out"))
    fresh = FractalGen(model.config).eval()
    report = load_reference(fresh, pth)
    assert report.ok and report.loaded == len(sd)
    assert_same_outputs(model, fresh)


class Untrusted:  # any class outside torch's weights-only allow list
    pass


def test_reference_pth_other_pickles_refused(tmp_path):
    pth = tmp_path / "evil.pth"
    torch.save({"model": tiny_model().state_dict(), "x": Untrusted()}, pth)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_reference_state_dict(pth)
    bad = tmp_path / "trunc.pth"
    torch.save(tiny_model().state_dict(), bad)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated"):
        load_reference_state_dict(bad)
    with pytest.raises(CheckpointError, match="could not find a state_dict"):
        load_reference_state_dict({"epoch": 3})


def test_load_reference_strict_and_lenient():
    model = tiny_model()
    sd = dict(model.state_dict())
    sd.pop("generator.cond_emb.weight")
    sd["generator.patch_emb.weight"] = torch.zeros(3, 3)
    sd["surplus"] = torch.zeros(1)
    target = tiny_model(9)
    with pytest.raises(ValueError) as err:
        load_reference(target, sd)
    msg = str(err.value)
    assert "generator.cond_emb.weight" in msg and "surplus" in msg and "[3, 3] vs [32, 4]" in msg
    assert "no preset matches" in msg
    report = load_reference(target, sd, strict=False)
    assert report.missing == ["generator.cond_emb.weight"] and report.unexpected == ["surplus"]
    assert [k for k, _, _ in report.mismatched] == ["generator.patch_emb.weight"]
    assert torch.equal(target.fake_latent, model.fake_latent)
    assert not torch.equal(target.generator.patch_emb.weight, model.generator.patch_emb.weight)


def _meta_state_dict(name):
    with torch.device("meta"):
        return FractalGen(get_preset(name)).state_dict()


@pytest.mark.parametrize("name", ["fractalar_in64", "fractalmar_in64", "fractalmar_base_in256",
                                  "fractalmar_large_in256", "fractalmar_huge_in256"])
def test_infer_preset(name):
    sd = _meta_state_dict(name)
    assert infer_preset(sd) == name
    assert infer_preset({"module." + k: v for k, v in sd.items()}) == name
    sd.pop(next(iter(sd)))
    assert infer_preset(sd) is None


def test_strict_error_suggests_preset():
    sd = _meta_state_dict("fractalmar_in64")
    with pytest.raises(ValueError, match="fractalmar_in64"):
        load_reference(tiny_model(), sd)


def test_all_presets_are_known_to_infer():
    assert {"fractalar_in64", "fractalmar_in64"} <= set(list_presets())


# ---------------------------------------------------------------------------- golden fixtures
@pytest.mark.parametrize("name", ["ar_tiny", "mar_tiny", "mar_gp_tiny"])
def test_golden_fixture_loads(name):
    meta_path, weights = GOLDEN / f"{name}.json", GOLDEN / f"{name}.safetensors"
    if not (meta_path.is_file() and weights.is_file()):
        pytest.skip("golden fixtures not copied into tests/fixtures/golden")
    from safetensors.torch import load_file
    args = dict(json.loads(meta_path.read_text())["constructor"])
    args.pop("mode", None)
    lists = [args.pop(k) for k in ("img_size_list", "embed_dim_list", "num_blocks_list", "num_heads_list",
                                   "generator_type_list")]
    model = FractalGen(FractalConfig.from_reference_lists(*lists, **args))
    sd = load_file(str(weights))
    report = load_reference(model, sd)
    assert report.ok and report.loaded == len(sd)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.parametrize("name", ["fractalar_in64", "fractalmar_in64", "fractalmar_base_in256"])
def test_official_keys_infer_preset(name):
    path = GOLDEN.parent / "official-keys" / f"{name}.json"
    if not path.is_file():
        pytest.skip("official key lists not copied into tests/fixtures/official-keys")
    shapes = json.loads(path.read_text())
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert infer_preset(sd) == name
