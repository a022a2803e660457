"""The melody model at run time: one ONNX step on onnxruntime, and seeded sampling.

Layers:

- :class:`MelodyModel` — loads a shipped (or given) ONNX step graph and checks that it is a liveart
  melody model of this representation; :meth:`MelodyModel.step` advances a batch of states by one
  step and returns logits. No torch.
- :class:`Sampler` — turns logits into a token: temperature, top-p, density, a key/scale lock and a
  note range, from a seeded ``numpy.random.Generator``; the same seed and input give the same notes.
- :class:`Voice` — one conversation's explicit state (recurrent state, previous token, sounding
  pitch, step count); the live host can keep several.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from . import representation as rep
from .settings import SamplingSettings  # noqa: F401

MODEL_KIND = "liveart-melody"
REPRESENTATION = "steps16-v1"
# models/ at the repository root; liveart/data/models links to it so that wheels carry it too.
MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
SHIPPED_MODELS = {"gru": "melody-gru.onnx", "lstm": "melody-lstm.onnx"}
DEFAULT_MODEL = "gru"


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """'gru', 'lstm' (the shipped models) or a path to an .onnx file → an existing path."""
    if name_or_path is not None and not str(name_or_path):
        raise ModelError(f"an empty model name; use {', '.join(SHIPPED_MODELS)} or a path to an .onnx file")
    name = str(name_or_path or DEFAULT_MODEL)
    if name in SHIPPED_MODELS:
        path = MODEL_DIR / SHIPPED_MODELS[name]
        if not path.is_file():
            raise ModelError(f"the shipped melody model {name!r} is missing ({path}); reinstall liveart or "
                             f"train one with 'liveart train melody --arch {name}'")
        return path
    path = Path(name)
    if path.suffix != ".onnx" and len(path.parts) == 1:
        raise ModelError(f"no melody model named {name!r}; use {', '.join(SHIPPED_MODELS)} or a path to an .onnx file")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    return path


class MelodyModel:
    """A stateful single-step melody network on onnxruntime (CPU provider, one thread by default)."""

    def __init__(self, name_or_path: str | Path | None = None, threads: int = 1):
        path = resolve_model_path(name_or_path)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ModelError(f"{path}: not a readable ONNX model ({text})") from e
        self.path = path
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("kind") != MODEL_KIND:
            raise ModelError(f"{path}: not a liveart melody model (its kind is {meta.get('kind', 'not set')!r})")
        if meta.get("representation") != REPRESENTATION:
            raise ModelError(f"{path}: made for representation {meta.get('representation')!r}; this liveart reads "
                             f"{REPRESENTATION!r}; retrain it with 'liveart train melody'")
        try:
            self.vocab = int(meta["vocab"])
            self.n_features = int(meta["features"])
            self.state_rows = int(meta["state_rows"])
            self.hidden = int(meta["hidden"])
        except (KeyError, ValueError) as e:
            raise ModelError(f"{path}: its metadata lacks {e}; retrain it with 'liveart train melody'") from e
        if (self.vocab, self.n_features) != (rep.VOCAB_SIZE, rep.N_FEATURES) or \
                int(meta.get("min_pitch", -1)) != rep.MIN_PITCH:
            raise ModelError(f"{path}: has {self.vocab} tokens and {self.n_features} features; this liveart "
                             f"needs {rep.VOCAB_SIZE} and {rep.N_FEATURES}")
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {"token", "features", "state"} or outputs != ["logits", "state_out"]:
            raise ModelError(f"{path}: inputs {sorted(inputs)} and outputs {outputs} are not a melody step graph "
                             f"(token, features, state → logits, state_out)")
        self.arch = meta.get("arch", "?")
        self.metadata = dict(meta)
        # The graph must do what its metadata says: one trial step with the state it declares.
        try:
            logits, state = self.step(np.zeros(1, np.int64), np.zeros((1, self.n_features), np.float32),
                                      self.initial_state(1))
        except Exception as e:  # onnxruntime's own exception types: shapes or types that do not fit
            text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ModelError(f"{path}: its graph does not match its metadata ({text}); retrain it with "
                             f"'liveart train melody'") from e
        if logits.shape != (1, self.vocab) or state.shape != (self.state_rows, 1, self.hidden):
            raise ModelError(f"{path}: its graph gives logits {logits.shape} and state {state.shape}; its metadata "
                             f"says ({1}, {self.vocab}) and ({self.state_rows}, 1, {self.hidden})")

    def initial_state(self, batch: int = 1) -> np.ndarray:
        return np.zeros((self.state_rows, batch, self.hidden), np.float32)

    def step(self, tokens: np.ndarray, features: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """tokens (B,) int64, features (B, F) float32, state (rows, B, H) → logits (B, V), new state."""
        logits, new_state = self.session.run(None, {"token": tokens, "features": features, "state": state})
        return logits, new_state


class Sampler:
    """Logits → token, seeded; masks are built once per settings change, not per step."""

    def __init__(self, settings: SamplingSettings | None = None, seed: int = 0):
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.configure(settings or SamplingSettings())

    def configure(self, settings: SamplingSettings) -> None:
        settings.validate()
        self.settings = settings
        pitches = np.arange(rep.N_PITCHES) + rep.MIN_PITCH
        allowed = (pitches >= settings.low_pitch) & (pitches <= settings.high_pitch)
        if settings.key_lock is not None:
            allowed &= np.isin(pitches % 12, sorted(settings.key_lock))
        bias = np.zeros(rep.VOCAB_SIZE, np.float64)
        bias[rep.NOTE_BASE:] = np.where(allowed, math.log(settings.density), -np.inf)
        self._bias = bias

    def sample(self, logits: np.ndarray, sounding_pitch: int | None) -> int:
        """One token from logits (V,). HOLD is only possible while a note sounds whose pitch is allowed."""
        s = self.settings
        z = logits.astype(np.float64) / s.temperature + self._bias
        if sounding_pitch is None or not np.isfinite(self._bias[rep.note_token(sounding_pitch)]):
            z[rep.HOLD] = -np.inf
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        if s.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            cum = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cum, s.top_p)) + 1]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        return int(self.rng.choice(len(p), p=p))


@dataclass
class Voice:
    """One conversation with the model: everything needed to go on from here."""

    state: np.ndarray  # (rows, 1, hidden) float32
    prev_token: int = rep.REST
    sounding: int | None = None  # pitch of the model's note that sounds now, if any
    steps: int = 0
    features: np.ndarray = field(default_factory=lambda: np.zeros((1, rep.N_FEATURES), np.float32))

    @classmethod
    def new(cls, model: MelodyModel) -> "Voice":
        return cls(model.initial_state(1))


def advance(model: MelodyModel, voice: Voice, meter_pos: int | None, meter: rep.Meter | None,
            condition_mask: int | None, forced: int | None = None, sampler: Sampler | None = None) -> int:
    """Step ``voice`` once: feed its previous token and this step's features; either take
    ``forced`` as this step's token (priming with the player's notes) or sample one. Returns it."""
    f = voice.features
    rep.meter_features(meter_pos, meter, f[0])
    f[0, rep.METER_FEATURES:] = 0.0
    if condition_mask is not None:
        for pc in range(12):
            f[0, rep.F_CHROMA0 + pc] = (condition_mask >> pc) & 1
        f[0, rep.F_PRESENT] = 1.0
    token_in = np.array([voice.prev_token], np.int64)
    logits, voice.state = model.step(token_in, f, voice.state)
    if forced is None:
        if sampler is None:
            raise ValueError("advance() needs a sampler or a forced token")
        token = sampler.sample(logits[0], voice.sounding)
    else:
        token = int(forced)
    if token >= rep.NOTE_BASE:
        voice.sounding = rep.token_pitch(token)
    elif token == rep.REST:
        voice.sounding = None
    voice.prev_token = token
    voice.steps += 1
    return token
