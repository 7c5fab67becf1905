"""`fractalgm eval` end to end, `fractalgm sample --out X.npz` (resume, torchrun), and the bpd loop."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fractalgm import FractalGen, get_preset
from fractalgm.cli import main
from fractalgm.evaluate import dataset_bpd, generate_samples_npz, load_samples_npz

from conftest import needs_fmnist  # noqa: E402
from fractalgm.data import load_dataset  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    FractalGen(get_preset("tiny_fmnist")).save_pretrained(folder)
    return folder


@needs_fmnist
def test_eval_guidance_sweep_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_model_dir), "--num-samples", "20", "--batch-size", "10", "--cfg", "1,2",
            "--temperature", "1,0.8", "--num-iter", "2,2", "--ref-images", "300", "--nll-images", "20",
            "--passes", "2", "--out", str(out), "--save-ref-stats", str(tmp_path / "ref.npz"), "--device", "cpu"]
    main(args)
    report = json.loads((out / "eval.json").read_text())
    assert [(r["cfg"], r["temperature"]) for r in report["settings"]] == [(1, 1), (2, 1), (1, 0.8), (2, 0.8)]
    for row in report["settings"]:
        assert row["extractor"] == "fmnist-classifier" and row["samples"] == 20 and row["fid"] > 0
        assert 1 <= row["is"] <= 10 and 0 <= row["precision"] <= 1 and 0 <= row["coverage"] <= 1
        assert 0 <= row["class_accuracy"] <= 1 and len(row["class_accuracy_per_class"]) == 10
    est = report["likelihood"]["estimate"]
    assert est["images"] == 20 and "estimate" in est["kind"] and est["masking_stderr"] > 0 and 6 < est["bpd"] < 10
    cost = report["cost"]
    assert cost["parameters"] == sum(p.numel() for p in FractalGen.from_pretrained(tiny_model_dir).parameters())
    assert cost["train_images_per_s"] > 0 and 0 < cost["train_share_of_matmul_peak"] < 1
    assert report["recommended"]["fid"] == min(r["fid"] for r in report["settings"])
    assert (out / "guidance.png").stat().st_size > 0 and "FID (fmnist-classifier)" in (out / "eval.md").read_text()
    # the statistics written, passed back as the reference, give the same FIDs; the samples are reused
    main(args[:1] + ["--model", str(tiny_model_dir), "--num-samples", "20", "--batch-size", "10", "--cfg", "2",
                     "--temperature", "1", "--num-iter", "2,2", "--ref-stats", str(tmp_path / "ref.npz"),
                     "--nll-images", "0", "--no-cost", "--out", str(out), "--device", "cpu"])
    again = json.loads((out / "eval.json").read_text())["settings"][0]
    assert again["fid"] == pytest.approx(report["settings"][1]["fid"], rel=1e-9) and "precision" not in again


@needs_fmnist
def test_eval_on_the_shipped_model_offline(tmp_path):
    out = tmp_path / "eval"
    main(["eval", "--model", "fmnist-mar", "--num-samples", "10", "--batch-size", "10", "--cfg", "1.5",
          "--num-iter", "4,4", "--ref-images", "200", "--nll-images", "10", "--passes", "1", "--no-cost",
          "--out", str(out), "--device", "cpu"])
    row = json.loads((out / "eval.json").read_text())["settings"][0]
    assert row["extractor"] == "fmnist-classifier" and np.isfinite(row["fid"]) and row["samples"] == 10


@needs_fmnist
def test_eval_reads_a_samples_file_and_rejects_bad_options(tiny_model_dir, tmp_path):
    data = load_dataset("fashion_mnist", "test")
    from fractalgm.evaluate import save_samples_npz

    path = save_samples_npz(tmp_path / "real.npz", data.images[-40:], data.labels[-40:])
    main(["eval", "--model", str(tiny_model_dir), "--samples", str(path), "--ref-images", "400", "--nll-images", "0",
          "--no-cost", "--out", str(tmp_path / "e"), "--device", "cpu"])
    row = json.loads((tmp_path / "e" / "eval.json").read_text())["settings"][0]
    assert row["class_accuracy"] >= 0.8  # real test images, judged by the shipped classifier
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_model_dir), "--samples", str(path), "--cfg", "1,2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_model_dir), "--extractor", "nope", "--out", str(tmp_path)])


def test_sample_npz_resumes_after_an_interruption(tiny_model_dir, tmp_path):
    model = FractalGen.from_pretrained(tiny_model_dir)
    out = tmp_path / "s.npz"
    opts = dict(batch_size=2, seed=3, num_iter=2, progress=False)
    generate_samples_npz(model, out, 5, keep_parts=True, **opts)
    images, labels = load_samples_npz(out)
    assert images.shape == (5, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3, 4]
    parts = out.with_name("s.npz.parts")
    first = (parts / "batch_000000.npz").stat().st_mtime_ns
    (parts / "batch_000001.npz").unlink()  # as if interrupted before the second batch was written
    out.unlink()
    generate_samples_npz(model, out, 5, **opts)
    again, _ = load_samples_npz(out)
    assert torch.equal(again, images) and not parts.exists()
    generate_samples_npz(model, out, 5, keep_parts=True, **opts)
    with pytest.raises(ValueError, match="other settings"):
        generate_samples_npz(model, out, 5, **{**opts, "seed": 4})


def test_sample_cli_writes_npz_and_torchrun_ranks_split_the_work(tiny_model_dir, tmp_path):
    single = tmp_path / "single.npz"
    main(["sample", "--model", str(tiny_model_dir), "--num-images", "6", "--batch-size", "2", "--num-iter", "2",
          "--cfg", "1.5", "--out", str(single), "--device", "cpu"])
    images, labels = load_samples_npz(single)
    assert images.shape == (6, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3, 4, 5]
    multi = tmp_path / "multi.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29613",
           "-m", "fractalgm", "sample", "--model", str(tiny_model_dir), "--num-images", "6", "--batch-size", "2",
           "--num-iter", "2", "--cfg", "1.5", "--out", str(multi), "--device", "cpu"]
    subprocess.run(cmd, check=True, env=env, timeout=300, capture_output=True)
    multi_images, multi_labels = load_samples_npz(multi)
    assert torch.equal(multi_images, images) and torch.equal(multi_labels, labels)  # same seeds per batch


def test_dataset_bpd_agrees_with_model_nll(tiny_model_dir):
    model = FractalGen.from_pretrained(tiny_model_dir)
    x = torch.randint(0, 256, (5, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    r = dataset_bpd(model, x, batch_size=2, exact=True, order="raster", progress=False)
    want = model.nll(x, exact=True, order="raster").bpd
    assert r["exact"] and r["masking_stderr"] == 0 and r["kind"].startswith("exact")
    assert np.allclose(r["bpd_per_image"], want.tolist(), atol=1e-6)
    est = dataset_bpd(model, x, batch_size=5, passes=3, progress=False)
    assert not est["exact"] and est["passes"] == 3 and est["masking_stderr"] > 0
    with pytest.raises(ValueError):
        dataset_bpd(model, x[:0], progress=False)
    with pytest.raises(ValueError):
        dataset_bpd(model, x, torch.zeros(3, dtype=torch.long), progress=False)
