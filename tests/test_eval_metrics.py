"""Metrics with known answers: FID (closed forms), IS, PRDC, class accuracy, the .npz formats, NFE."""
import numpy as np
import pytest
import torch

from fractalgm import get_preset
from fractalgm.evaluate import (FeatureStats, class_accuracy, fid, frechet_distance, inception_score,
                                load_samples_npz, prdc, save_samples_npz)
from fractalgm.evaluate.cost import network_evaluations


def rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_fid_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(400, 16)) @ rotation(16, 1)
    s = FeatureStats.from_features(feats, "x")
    assert abs(fid(s, s)) < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fid_of_two_gaussians_equals_the_closed_form(seed):
    # commuting covariances Q diag(a) Qᵀ and Q diag(b) Qᵀ: FID = |Δμ|² + Σ (√a − √b)²
    rng, d = np.random.default_rng(seed), 12
    q = rotation(d, seed + 10)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-8, abs=1e-8)
    # 1-D: (m1 − m2)² + (s1 − s2)²
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)


def test_fid_from_samples_approaches_the_closed_form():
    rng, d = np.random.default_rng(3), 4
    x = rng.normal(size=(20000, d))
    y = rng.normal(size=(20000, d)) * 2 + 1  # N(1, 4I)
    want = d * 1 + d * (1 - 2) ** 2
    got = fid(FeatureStats.from_features(x, "e"), FeatureStats.from_features(y, "e"))
    assert got == pytest.approx(want, rel=0.03)


def test_fid_handles_singular_covariances():
    feats = np.random.default_rng(0).normal(size=(5, 10))  # rank 4 < 10
    s = FeatureStats.from_features(feats, "e")
    assert np.isfinite(fid(s, s)) and abs(fid(s, s)) < 1e-3


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    a, b = FeatureStats(np.zeros(2), np.eye(2), "one"), FeatureStats(np.zeros(2), np.eye(2), "two")
    with pytest.raises(ValueError, match="cannot compare"):
        fid(a, b)
    with pytest.raises(ValueError, match="N >= 2"):
        FeatureStats.from_features(np.zeros((1, 3)), "e")


def test_stats_npz_round_trip_and_the_adm_format(tmp_path):
    feats = np.random.default_rng(0).normal(size=(50, 6))
    s = FeatureStats.from_features(feats, "fmnist-classifier")
    back = FeatureStats.load(s.save(tmp_path / "ref.npz"))
    assert np.array_equal(back.mu, s.mu) and np.array_equal(back.sigma, s.sigma)
    assert back.extractor == "fmnist-classifier" and back.num_images == 50
    # the ADM / reference files hold only mu and sigma: Inception statistics
    np.savez(tmp_path / "adm_in64_stats.npz", mu=s.mu.astype(np.float32), sigma=s.sigma.astype(np.float32))
    adm = FeatureStats.load(tmp_path / "adm_in64_stats.npz")
    assert adm.extractor == "inception-v3" and adm.num_images is None
    assert np.allclose(adm.sigma, s.sigma, atol=1e-6)
    with pytest.raises(ValueError, match="not fmnist-classifier"):
        FeatureStats.load(tmp_path / "adm_in64_stats.npz", extractor="fmnist-classifier")


def test_stats_npz_bad_inputs(tmp_path):
    np.savez(tmp_path / "samples.npz", arr_0=np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match="no `mu`"):
        FeatureStats.load(tmp_path / "samples.npz")
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="do not match"):
        FeatureStats.load(tmp_path / "bad.npz")
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="cannot read"):
        FeatureStats.load(tmp_path / "trunc.npz")
    with pytest.raises(ValueError, match=".npz"):
        FeatureStats(np.zeros(2), np.eye(2), "e").save(tmp_path / "x.txt")


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_inception_score_of_confident_uniform_predictions_is_the_class_count(classes):
    logits = np.full((classes * 20, classes), -50.0)
    logits[np.arange(len(logits)), np.arange(len(logits)) % classes] = 50.0
    mean, std = inception_score(logits, splits=10 if classes <= 20 else 2)
    assert mean == pytest.approx(classes, rel=1e-6) and std < 1e-6


def test_inception_score_is_one_without_information():
    rng = np.random.default_rng(0)
    assert inception_score(np.zeros((100, 7)))[0] == pytest.approx(1.0)  # uniform p(y|x)
    same = np.tile(rng.normal(size=(1, 7)) * 5, (100, 1))  # every image gets the same p(y|x)
    assert inception_score(same)[0] == pytest.approx(1.0)
    # known in between: half the images certain of class 0, half uniform over 2 classes:
    # p(y) = (3/4, 1/4); KL = ½·log(4/3) + ½·(½ log(2/3) + ½ log 2)
    logits = np.array([[50.0, -50.0]] * 50 + [[0.0, 0.0]] * 50)
    want = np.exp(0.5 * np.log(4 / 3) + 0.5 * (0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)))
    assert inception_score(logits[np.random.default_rng(1).permutation(100)], splits=1)[0] == pytest.approx(want)
    with pytest.raises(ValueError):
        inception_score(np.zeros((5, 3)), splits=10)


def test_prdc_on_constructed_point_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 4))
    same = prdc(real, real.copy())
    assert same["precision"] == 1 and same["recall"] == 1 and same["coverage"] == 1
    assert same["density"] == pytest.approx(1.0, abs=0.2)
    far = prdc(real, real + 100)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # two real clusters; the fakes cover only one: precise but half the recall and coverage
    a, b = rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 50
    r = prdc(np.concatenate([a, b]), rng.normal(size=(200, 2)))
    assert r["precision"] > 0.95 and 0.3 < r["recall"] <= 0.5 and 0.3 < r["coverage"] <= 0.5
    with pytest.raises(ValueError):
        prdc(real[:3], real[:3])
    with pytest.raises(ValueError):
        prdc(real, real[:, :2])


def test_class_accuracy():
    r = class_accuracy([0, 1, 1, 2], [0, 1, 2, 2], 3)
    assert r["accuracy"] == 0.75 and r["per_class"] == {0: 1.0, 1: 1.0, 2: 0.5} and r["samples"] == 4
    with pytest.raises(ValueError):
        class_accuracy([0, 1], [0], 2)


def test_samples_npz_round_trip(tmp_path):
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4])
    path = save_samples_npz(tmp_path / "s.npz", images, labels)
    with np.load(path) as f:
        assert f["arr_0"].shape == (5, 8, 8, 3) and f["arr_0"].dtype == np.uint8  # ADM: NHWC
        assert np.array_equal(f["arr_0"][1, 2, 3], images[1, :, 2, 3].numpy())
    x, y = load_samples_npz(path)
    assert torch.equal(x, images) and torch.equal(y, labels)
    # a file written the ADM way (np.savez(path, arr, label_arr)) reads back; unlabelled too
    np.savez(tmp_path / "adm.npz", images.permute(0, 2, 3, 1).numpy())
    x, y = load_samples_npz(tmp_path / "adm.npz")
    assert torch.equal(x, images) and y is None


def test_samples_npz_bad_inputs(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_samples_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "s.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="arr_0"):
        load_samples_npz(tmp_path / "s.npz")
    with pytest.raises(ValueError, match="labels"):
        save_samples_npz(tmp_path / "x.npz", torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(2))


def test_network_evaluations_follow_the_sampling_plan():
    cfg = get_preset("fractalmar_fmnist")  # MAR 49 patches, MAR 16 pixels, 1 channel
    nfe = network_evaluations(cfg, num_iter=[8, 4])
    assert list(nfe["per_level"].values()) == [8, 49 * 4, 49 * 16]
    assert network_evaluations(cfg, num_iter=[8, 4], guided=True)["total"] == 2 * nfe["total"]
    ar = network_evaluations(get_preset("fractalar_fmnist"), num_iter=2)  # AR ignores num_iter
    assert ar["total"] == 49 + 49 * 16 + 784
