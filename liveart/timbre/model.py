"""Run time of the timbre model: the ONNX decoder on onnxruntime, CUDA when it truly works, else CPU.

    model = TimbreModel.load("timbre", device="auto")
    z = model.anchor("flute")                                  # shape (latent,)
    levels = model.decode_db(z[None], [60], [100], [0.1], [-1.0])  # shape (1, N_PARAMS), dB

The decoder is a pure function of (latent, pitch, velocity, note time): a batch of voices is one
call. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from ..errors import ModelError
from . import anchors as anc
from ..synth.presets import noise_band_edges_hz
from . import frames as fr

MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
SHIPPED = {"timbre": "timbre-decoder.onnx"}
DEFAULT_MODEL = "timbre"
DECODER_KIND = "liveart-timbre-decoder"
REPRESENTATION = "harmonic64-noise16-v2"
INPUTS = ("z", "note", "velocity", "on_seconds", "off_seconds", "band_limit_hz")
OUTPUTS = ["harmonics", "noise", "amp", "levels_db"]
DEVICES = ("auto", "cpu", "cuda")
ANALYSIS_SAMPLE_RATE = 48000  # the rate the training notes were rendered and analysed at
QUIET_LOG = 3  # onnxruntime log severity: errors only (no provider warnings on a machine without a GPU)
_probe_cache: dict[str, bool] = {}


@functools.lru_cache(maxsize=8)
def _noise_rebin(sample_rate: int) -> np.ndarray | None:
    """(16, 16) matrix moving band power from the 48 kHz bands the model knows to ``sample_rate``'s
    bands (overlap on a log-frequency axis; power above this rate's top edge is dropped), or None
    when the bands are the same."""
    source = noise_band_edges_hz(ANALYSIS_SAMPLE_RATE)
    target = noise_band_edges_hz(sample_rate)
    if np.allclose(source, target, rtol=0.0, atol=1e-9):
        return None
    ls, lt = np.log(source), np.log(target)
    m = np.zeros((len(source) - 1, len(target) - 1))
    for i in range(len(source) - 1):
        for j in range(len(target) - 1):
            overlap = min(ls[i + 1], lt[j + 1]) - max(ls[i], lt[j])
            if overlap > 0:
                m[i, j] = overlap / (ls[i + 1] - ls[i])
    m.flags.writeable = False
    return m.astype(np.float32)


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    name = str(name_or_path or DEFAULT_MODEL)
    if name in SHIPPED:
        path = MODEL_DIR / SHIPPED[name]
        if not path.is_file():
            raise ModelError(f"the shipped timbre model is missing ({path}); reinstall liveart or train one "
                             f"with 'liveart train timbre'")
        return path
    path = Path(name)
    if path.suffix != ".onnx" and len(path.parts) == 1:
        raise ModelError(f"no timbre model named {name!r}; use {', '.join(SHIPPED)} or a path to an .onnx file")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    return path


def cuda_works(path: str | Path) -> bool:
    """True when a CUDA session of ``path`` can be created and runs: onnxruntime-gpu lists the CUDA
    provider even where no GPU or CUDA runtime exists, so only a real session tells. Quiet."""
    key = str(path)
    if key in _probe_cache:
        return _probe_cache[key]
    import onnxruntime as ort

    ok = False
    if "CUDAExecutionProvider" in ort.get_available_providers():
        options = ort.SessionOptions()
        options.log_severity_level = 4
        previous = 2
        try:
            ort.set_default_logger_severity(4)
            session = ort.InferenceSession(key, options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            ok = session.get_providers()[0] == "CUDAExecutionProvider"
            if ok:  # created is not enough: it must run there (memory, kernels for this GPU, cuDNN)
                feeds = {i.name: np.zeros([d if isinstance(d, int) else 2 for d in i.shape], np.float32)
                         for i in session.get_inputs()}
                session.run(None, feeds)
        except Exception:  # any failure to start CUDA means: not usable here
            ok = False
        finally:
            ort.set_default_logger_severity(previous)
    _probe_cache[key] = ok
    return ok


class TimbreModel:
    """The decoder session, its anchors and its device."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int = 1):
        import onnxruntime as ort

        if device not in DEVICES:
            raise ModelError(f"unknown timbre device {device!r}; use one of {', '.join(DEVICES)}")
        path = Path(path)
        self.path = path
        use_cuda = device != "cpu" and cuda_works(path)
        if device == "cuda" and not use_cuda:
            raise ModelError("--device cuda: the CUDA execution provider does not work here (no usable GPU or CUDA "
                             "runtime); use --device auto or cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = QUIET_LOG
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelError(f"{path}: not a readable ONNX model ({text})") from e
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("kind") != DECODER_KIND:
            raise ModelError(f"{path}: not a liveart timbre decoder (its kind is {meta.get('kind', 'not set')!r})")
        if meta.get("representation") != REPRESENTATION:
            raise ModelError(f"{path}: made for representation {meta.get('representation')!r}; this liveart reads "
                             f"{REPRESENTATION!r}; retrain it with 'liveart train timbre'")
        try:
            self.latent = int(meta["latent"])
            anchors = json.loads(meta["anchors"])
            self.anchors = {int(p): np.asarray(z, np.float32) for p, z in anchors.items()}
            self.held_out_programs = tuple(int(p) for p in json.loads(meta.get("held_out_programs", "[]")))
            if any(not 0 <= p <= 127 for p in (*self.anchors, *self.held_out_programs)):
                raise ValueError("programs outside 0-127")
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise ModelError(f"{path}: its metadata is incomplete or unreadable ({e}); retrain it with "
                             f"'liveart train timbre'") from e
        if not self.anchors or any(z.shape != (self.latent,) or not np.all(np.isfinite(z)) for z in self.anchors.values()):
            raise ModelError(f"{path}: its anchors do not match its {self.latent}-dimensional latent")
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != set(INPUTS) or outputs != OUTPUTS:
            raise ModelError(f"{path}: inputs {sorted(inputs)} and outputs {outputs} are not a timbre decoder graph")
        self.metadata = dict(meta)
        self._band_limit = {}
        try:
            trial = self._run(np.zeros((2, self.latent), np.float32), [60, 72], [100, 100], [0.1, 0.5], [-1.0, 0.1], 48000)
        except Exception as e:
            raise ModelError(f"{path}: its graph does not match its metadata ({str(e).splitlines()[0][:200]})") from e
        shapes = [t.shape for t in trial]
        if shapes != [(2, fr.N_HARMONICS), (2, fr.N_NOISE_BANDS), (2,), (2, fr.N_PARAMS)] or not all(
                np.all(np.isfinite(t)) for t in trial):
            raise ModelError(f"{path}: its graph gives outputs of shapes {shapes}; this liveart needs harmonics, noise, "
                             f"amp and levels for each voice, finite")
        lo = np.min(np.stack(list(self.anchors.values())), axis=0)
        hi = np.max(np.stack(list(self.anchors.values())), axis=0)
        self.latent_low, self.latent_high = lo, hi  # the span of the anchors, per dimension

    @classmethod
    def load(cls, name_or_path: str | Path | None = None, device: str = "auto", threads: int = 1) -> "TimbreModel":
        return cls(resolve_model_path(name_or_path), device, threads)

    # ------------------------------------------------------------------ anchors
    def anchor(self, name) -> np.ndarray:
        """The latent of a GM instrument by number or name (see :func:`anchors.program_of`)."""
        try:
            program = anc.program_of(name)
        except ValueError as e:
            raise ModelError(str(e)) from None
        if program not in self.anchors:
            raise ModelError(f"the timbre model has no anchor for program {program} "
                             f"({anc.GM_PROGRAM_NAMES[program]}); it was not in its training data")
        return self.anchors[program]

    # ------------------------------------------------------------------ decoding
    def _run(self, z, note, velocity, on_seconds, off_seconds, sample_rate: int):
        limit = self._band_limit.get(sample_rate)
        if limit is None:
            limit = self._band_limit[sample_rate] = np.array([fr.BAND_LIMIT * sample_rate], np.float32)
        f32 = np.float32
        feeds = {"z": np.ascontiguousarray(z, f32), "note": np.asarray(note, f32), "velocity": np.asarray(velocity, f32),
                 "on_seconds": np.asarray(on_seconds, f32), "off_seconds": np.asarray(off_seconds, f32),
                 "band_limit_hz": limit}
        return self.session.run(None, feeds)

    def decode_db(self, z, note, velocity, on_seconds, off_seconds) -> np.ndarray:
        """Levels in dB, shape (V, N_PARAMS), of V voices (partials above the band limit at 48 kHz
        included, as the model predicts them).

        z : (V, latent); note, velocity : (V,) MIDI numbers (fractional notes allowed); on_seconds :
        (V,) seconds since the note-on; off_seconds : (V,) seconds since the note-off, negative while
        the key is held.
        """
        return self._run(z, note, velocity, on_seconds, off_seconds, 48000)[3]

    def frames(self, z, note, velocity, on_seconds, off_seconds, sample_rate: int, gain: float = 1.0):
        """The synth's frames of V voices, one call: harmonics (V, N_HARMONICS) and noise
        (V, N_NOISE_BANDS), linear, relative to amp (V,), the voice's linear level times ``gain``;
        partials at or above BAND_LIMIT of ``sample_rate`` zero (see :func:`frames.synth_frames`).

        A voice sounds its note from ONSET_SECONDS into the model's attack: note times before that
        are held there (the voice's first frames and its onset table are the frame at ONSET_SECONDS).
        """
        on_seconds = np.maximum(np.asarray(on_seconds, np.float64), fr.ONSET_SECONDS)
        h, noise, amp, _ = self._run(z, note, velocity, on_seconds, off_seconds, sample_rate)
        rebin = _noise_rebin(sample_rate)
        if rebin is not None:  # the model's bands are 48 kHz's; move their power onto this rate's
            noise_power = (noise * noise) @ rebin
            harmonic_power = 0.5 * np.sum(h * h, axis=1)
            total = harmonic_power + np.sum(noise_power, axis=1)
            scale = np.sqrt(np.where(total > 0, total, 1.0))
            h = (h / scale[:, None]).astype(np.float32)
            noise = (np.sqrt(noise_power) / scale[:, None]).astype(np.float32)
            amp = (amp * np.sqrt(total)).astype(np.float32)  # silent when nothing is left below Nyquist
        if gain != 1.0:
            amp *= gain
        return h, noise, amp

