"""Run time of the visualizer's generator: the ONNX graph on onnxruntime (CUDA when a session truly
runs there, else the CPU), then a bicubic upsample to the shown size.

    gen = VisualGenerator.load(path, shown=512)
    frames = gen.images(z)        # z (B, z_dim) float32 → uint8 (B, 512, 512, 3)

Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError

MODEL_KIND = "liveart-visual-generator"
QUIET_LOG = 3
MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
SHIPPED = "visual-generator.onnx"


def resolve_visual_model(path: str | Path | None) -> Path:
    """The generator to use: ``path``, or the shipped one when it is None."""
    if path is not None:
        return Path(path)
    shipped = MODEL_DIR / SHIPPED
    if not shipped.is_file():
        raise ModelError(f"no visual generator ships in {MODEL_DIR}; pass --visual-model PATH, a generator "
                         f"from 'liveart train visual'")
    return shipped


class VisualGenerator:
    def __init__(self, path: str | Path, shown: int = 512, device: str = "auto", threads: int = 1):
        import onnxruntime as ort

        from ..timbre.model import cuda_works

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        if device not in ("auto", "cpu", "cuda"):
            raise ModelError(f"unknown device {device!r}; use auto, cpu or cuda")
        use_cuda = device != "cpu" and cuda_works(path)
        if device == "cuda" and not use_cuda:
            raise ModelError("--device cuda: the CUDA execution provider does not work here; use auto or cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = QUIET_LOG
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=(["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("kind") != MODEL_KIND:
            raise ModelError(f"{path}: not a liveart visual generator (its kind is {meta.get('kind', 'not set')!r})")
        try:
            self.z_dim = int(meta["z_dim"])
            self.trained_size = int(meta["trained_size"])
        except (KeyError, ValueError) as e:
            raise ModelError(f"{path}: its metadata is incomplete ({e}); retrain it with 'liveart train visual'") from e
        if not 16 <= shown <= 4096:
            raise ModelError(f"a shown size of {shown} is not allowed; use 16 to 4096")
        self.shown = shown
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.metadata = dict(meta)
        try:  # the graph must do what its metadata says
            trial = self.raw(np.zeros((1, self.z_dim), np.float32))
        except Exception as e:
            raise ModelError(f"{path}: its graph does not match its metadata ({str(e).splitlines()[0][:200]})") from e
        if trial.shape != (1, 3, self.trained_size, self.trained_size):
            raise ModelError(f"{path}: its graph gives images of shape {trial.shape}; its metadata says "
                             f"(1, 3, {self.trained_size}, {self.trained_size})")

    @classmethod
    def load(cls, path, shown: int = 512, device: str = "auto", threads: int = 1) -> "VisualGenerator":
        return cls(path, shown, device, threads)

    def raw(self, z: np.ndarray) -> np.ndarray:
        """The generator's images at its training size: float32 (B, 3, size, size) in 0..1."""
        return self.session.run(None, {"z": np.ascontiguousarray(z, np.float32)})[0]

    def pixels(self, z: np.ndarray) -> np.ndarray:
        """The generator's images at its training size as pixels: uint8 (B, size, size, 3)."""
        return np.clip(self.raw(z).transpose(0, 2, 3, 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def images(self, z: np.ndarray) -> np.ndarray:
        """Frames to show: uint8 (B, shown, shown, 3)."""
        from PIL import Image

        rgb = self.pixels(z)
        if self.shown == self.trained_size:
            return rgb
        return np.stack([np.asarray(Image.fromarray(f).resize((self.shown, self.shown), Image.BICUBIC)) for f in rgb])
