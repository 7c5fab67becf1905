"""Feature extractors: the shipped classifier on the real test set, EfficientNet-Lite0 with its real
weights, and the FID Inception-v3 (layout, loading, FID pipeline) with random weights."""
import numpy as np
import pytest
import torch

from fractalgm.evaluate import FeatureStats, fid, get_extractor, list_extractors
from fractalgm.evaluate.inception import FIDInceptionV3, load_inception

try:
    from fractalgm.data import load_dataset

    TEST = load_dataset("fashion_mnist", "test")
except Exception:  # noqa: BLE001 - any loader failure means the data is not installed
    TEST = None
needs_fmnist = pytest.mark.skipif(TEST is None, reason="Fashion-MNIST not installed")


def test_registry_names_the_three_extractors():
    assert {"fmnist-classifier", "efficientnet-lite0", "inception-v3"} <= set(list_extractors())
    with pytest.raises(ValueError, match="unknown extractor"):
        get_extractor("lenet")


@needs_fmnist
def test_shipped_classifier_accuracy_on_the_real_test_set():
    from fractalgm.evaluate.classifier import classifier_card, load_classifier

    net = load_classifier()
    acc = (net.predict(TEST.images) == TEST.labels).float().mean().item()
    card = classifier_card()
    assert acc >= 0.92
    assert acc == pytest.approx(card["test_accuracy"], abs=5e-4) and card["test_images"] == 10_000


@needs_fmnist
def test_classifier_features_separate_real_data_from_noise():
    ext = get_extractor("fmnist-classifier")
    a, la = ext(TEST.images[:500])
    b, _ = ext(TEST.images[500:1000])
    noise, _ = ext(torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8))
    assert a.shape == (500, 128) and la.shape == (500, 10)
    real = fid(FeatureStats.from_features(a, ext.name), FeatureStats.from_features(b, ext.name))
    fake = fid(FeatureStats.from_features(a, ext.name), FeatureStats.from_features(noise, ext.name))
    assert fake > 20 * real  # two halves of the test set are close; noise is far


def test_classifier_rejects_other_formats():
    ext = get_extractor("fmnist-classifier")
    with pytest.raises(ValueError, match="1-channel"):
        ext(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="28×28"):
        ext(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ext(torch.zeros(2, 1, 28, 28))


def _photo(name: str) -> torch.Tensor:
    from PIL import Image
    from skimage import data

    img = Image.fromarray(getattr(data, name)()).convert("RGB").resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def test_efficientnet_lite0_real_weights_recognise_real_photos():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("skimage")
    ext = get_extractor("efficientnet-lite0")
    feats, logits = ext(torch.stack([_photo("chelsea"), _photo("coffee")]))
    assert feats.shape == (2, 1280) and logits.shape == (2, 1000)
    top = logits.argmax(1)
    assert 281 <= top[0] <= 285  # a cat (ImageNet 281–285: tabby … Egyptian cat)
    assert top[1] == 967  # espresso
    small, _ = ext(torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8))  # gray and small: resized
    assert small.shape == (3, 1280)


def test_fid_inception_has_the_torchvision_layout():
    net = FIDInceptionV3()
    # torchvision's inception_v3 has 27,161,264 parameters; minus its auxiliary head (3,326,696),
    # plus 8 more classes (1008: 8 × 2048 + 8) = the FID network of pytorch-fid / torch-fidelity
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 16_392
    keys = net.state_dict().keys()
    for k in ("Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Mixed_5b.branch_pool.conv.weight",
              "Mixed_6e.branch7x7dbl_5.bn.bias", "Mixed_7c.branch3x3dbl_3b.conv.weight", "fc.weight"):
        assert k in keys
    assert net.Mixed_7c.max_pool and not net.Mixed_7b.max_pool


def test_fid_inception_shapes_loading_and_the_fid_pipeline(tmp_path):
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)  # the released file has no num_batches_tracked
    ext = get_extractor("inception-v3", weights=path)
    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (1, 1, 28, 28), generator=g, dtype=torch.uint8)
    rgb = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    f1, z1 = ext(gray)
    f2, z2 = ext(rgb)
    assert f1.shape == (1, 2048) and f2.shape == (2, 2048) and z2.shape == (2, 1008)
    with torch.no_grad():
        want, _ = net(rgb)
    assert np.allclose(f2, want.double().numpy(), atol=1e-5)  # the loaded file computes the same
    assert np.allclose(ext(rgb[:1])[0], f2[:1], atol=1e-5)  # batching does not change features (eval-mode BN)


def test_fid_inception_preprocessing_is_pytorch_fids():
    x = FIDInceptionV3.preprocess(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 1, 2, 2))
    assert x.shape == (1, 3, 299, 299) and float(x.min()) == -1 and abs(float(x.max()) - 1) < 1e-6  # [0, 1] → [-1, 1], gray → RGB
    assert torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ValueError, match="uint8"):
        FIDInceptionV3.preprocess(torch.zeros(1, 3, 8, 8))


def test_inception_weights_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="weights file"):
        get_extractor("inception-v3")
    with pytest.raises(FileNotFoundError, match="pt_inception"):
        load_inception(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the FID Inception"):
        load_inception(tmp_path / "other.pth")
