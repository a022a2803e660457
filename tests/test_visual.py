"""The visualizer's groundwork: the image-set distance the quality target is measured with, the
crop sampler, and the generator's export path (the GAN itself is not trained yet: issue 6)."""

from __future__ import annotations

import numpy as np
import pytest

from liveart.training import swd


def _textures(n: int, seed: int, size: int = 64) -> np.ndarray:
    """Images with natural-image statistics: colour noise with a 1/f amplitude spectrum, in -1..1."""
    rng = np.random.default_rng(seed)
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2)
    spectrum = rng.standard_normal((n, 3, size, size // 2 + 1)) + 1j * rng.standard_normal((n, 3, size, size // 2 + 1))
    img = np.fft.irfft2(spectrum / np.maximum(f, 1.0 / size), s=(size, size))
    img /= 3 * img.std(axis=(1, 2, 3), keepdims=True)
    return np.clip(img, -1, 1).astype(np.float32)


def test_sliced_wasserstein_orders_copies_blur_and_noise():
    a, b = _textures(48, 1, 128), _textures(48, 2, 128)
    same, levels = swd.sliced_wasserstein(a, b)
    assert len(levels) == 4  # 128 → 64 → 32 → 16: three band-pass levels and the low-pass residual
    blurred, _ = swd.sliced_wasserstein(swd.blurred(a, 1), b)
    noise, _ = swd.sliced_wasserstein(np.random.default_rng(3).uniform(-1, 1, a.shape).astype(np.float32), b)
    assert same < blurred < noise
    assert swd.sliced_wasserstein(a, a)[0] < same, "a set against itself is closest (up to patch sampling)"


def test_random_crops_are_the_size_asked_in_range_and_flipped():
    from liveart.training.visual_data import VisualDataset, random_crops

    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.float32)[None, :, None], (120, 1, 3)).astype(np.uint8)
    data = VisualDataset(["a", "b"], [ramp, ramp.copy()], np.array([False, True]))
    crops = random_crops(data, data.indices(False), 64, 32, np.random.default_rng(0))
    assert crops.shape == (64, 3, 32, 32) and crops.dtype == np.float32
    assert crops.min() >= -1.0 and crops.max() <= 1.0
    slopes = np.sign(crops[:, 0, 16, -1] - crops[:, 0, 16, 0])
    assert 10 < np.sum(slopes > 0) < 54, "about half the crops are mirrored"


def test_generator_export_matches_torch_and_shows_512(tmp_path):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from liveart.training.visual_model import GanConfig, Generator, GeneratorExport, parameter_count

    torch.manual_seed(0)
    g = Generator(GanConfig(base=8)).eval()
    net = GeneratorExport(g, shown=512).eval()
    z = torch.randn(2, 128)
    path = tmp_path / "g.onnx"
    torch.onnx.export(net, (z,), str(path), input_names=["z"], output_names=["image"], opset_version=17,
                      dynamo=False, dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"z": z.numpy()})[0]
    with torch.no_grad():
        want = net(z).numpy()
    assert got.shape == (2, 3, 512, 512) and got.min() >= 0.0 and got.max() <= 1.0
    assert np.max(np.abs(got - want)) <= 1e-4
    assert parameter_count(Generator(GanConfig())) > 2_000_000
