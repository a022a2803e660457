"""Train the melody GRU or LSTM on the cached data set, with validation each epoch, early stopping,
checkpoints and a seed; export the best weights as a stateful single-step ONNX graph.

    liveart train melody --arch gru --seed 1 --out models

The training windows are random 128-step slices of training lines, each transposed by a random
shift in [-6, +5] semitones that keeps it in range; the meter features are dropped from 15% of the
windows (so the model plays without a clock) and the performer features from 20% of the chorale
windows (so it plays without a performer too).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..melody import representation as rep
from .melody_data import MelodyDataset
from .melody_model import MelodyConfig, MelodyNet, MelodyStep, parameter_count

WINDOW_STEPS = 128
BATCH = 64
TRANSPOSE_RANGE = (-6, 5)
METER_DROP = 0.15
CONDITION_DROP = 0.2
ONNX_OPSET = 17
MODEL_KIND = "liveart-melody"
REPRESENTATION = "steps16-v1"


def rotate_chroma(masks: np.ndarray, shift: int) -> np.ndarray:
    k = shift % 12
    m = masks.astype(np.int32)
    return (((m << k) | (m >> (12 - k))) & 0xFFF).astype(np.int32)


def line_arrays(data: MelodyDataset, i: int, transpose: int = 0, meter: bool = True, condition: bool = True):
    """Inputs and targets of one whole line.

    Returns prev_tokens (n,) int64, targets (n,) int64, features (n, N_FEATURES) float32.
    """
    sl = data.line(i)
    tokens = data.tokens[sl].astype(np.int64)
    if transpose:
        tokens = np.where(tokens >= rep.NOTE_BASE, tokens + transpose, tokens)
    prev = np.empty_like(tokens)
    prev[0] = rep.REST
    prev[1:] = tokens[:-1]
    n = len(tokens)
    features = np.zeros((n, rep.N_FEATURES), np.float32)
    if meter:
        features[:, : rep.METER_FEATURES] = rep.meter_codes(data.bar_pos[sl].astype(np.int64),
                                                             data.beat_steps[sl].astype(np.int64))
    if condition and data.conditioned[i]:
        chroma = rotate_chroma(data.chroma[sl], transpose)
        prev_chroma = np.zeros(n, np.int32)
        prev_chroma[1:] = chroma[:-1]
        features[:, rep.METER_FEATURES:] = rep.condition_codes(prev_chroma, True)
    return prev, tokens, features


def transpose_limits(data: MelodyDataset, i: int) -> tuple[int, int]:
    t = data.tokens[data.line(i)]
    notes = t[t >= rep.NOTE_BASE].astype(int) - rep.NOTE_BASE + rep.MIN_PITCH
    lo = max(TRANSPOSE_RANGE[0], rep.MIN_PITCH - int(notes.min()))
    hi = min(TRANSPOSE_RANGE[1], rep.MAX_PITCH - int(notes.max()))
    return lo, hi


class WindowSampler:
    """Random training windows, seeded."""

    def __init__(self, data: MelodyDataset, indices: np.ndarray, rng: np.random.Generator):
        self.data = data
        self.indices = indices
        lengths = np.array([data.offsets[i + 1] - data.offsets[i] for i in indices], np.float64)
        self.weights = lengths / lengths.sum()
        self.limits = [transpose_limits(data, i) for i in indices]
        self.rng = rng

    def batch(self, batch: int = BATCH, window: int = WINDOW_STEPS):
        prev = np.full((batch, window), rep.REST, np.int64)
        target = np.zeros((batch, window), np.int64)
        mask = np.zeros((batch, window), np.float32)
        feats = np.zeros((batch, window, rep.N_FEATURES), np.float32)
        picks = self.rng.choice(len(self.indices), size=batch, p=self.weights)
        for b, k in enumerate(picks):
            i = int(self.indices[k])
            lo, hi = self.limits[k]
            shift = int(self.rng.integers(lo, hi + 1)) if hi >= lo else 0
            meter = self.rng.random() >= METER_DROP
            cond = self.rng.random() >= CONDITION_DROP
            p, t, f = line_arrays(self.data, i, shift, meter, cond)
            start = int(self.rng.integers(0, max(1, len(t) - window + 1)))
            n = min(window, len(t) - start)
            prev[b, :n] = p[start : start + n]
            target[b, :n] = t[start : start + n]
            feats[b, :n] = f[start : start + n]
            mask[b, :n] = 1.0
        return torch.from_numpy(prev), torch.from_numpy(target), torch.from_numpy(feats), torch.from_numpy(mask)


def evaluate_nll(net: MelodyNet, data: MelodyDataset, indices, batch: int = 32, meter: bool = True,
                 condition: bool = True) -> tuple[float, int]:
    """Mean negative log-likelihood in bits per step over whole lines (original keys), and the steps.
    ``meter``/``condition`` False: the network is shown no meter / no performer."""
    net.eval()
    order = sorted(indices, key=lambda i: data.offsets[i + 1] - data.offsets[i])
    total_bits = 0.0
    total_steps = 0
    with torch.no_grad():
        for s in range(0, len(order), batch):
            group = order[s : s + batch]
            arrays = [line_arrays(data, int(i), meter=meter, condition=condition) for i in group]
            n = max(len(a[0]) for a in arrays)
            prev = np.full((len(group), n), rep.REST, np.int64)
            target = np.zeros((len(group), n), np.int64)
            mask = np.zeros((len(group), n), np.float32)
            feats = np.zeros((len(group), n, rep.N_FEATURES), np.float32)
            for b, (p, t, f) in enumerate(arrays):
                prev[b, : len(p)] = p
                target[b, : len(t)] = t
                feats[b, : len(f)] = f
                mask[b, : len(p)] = 1
            logits, _ = net(torch.from_numpy(prev), torch.from_numpy(feats))
            nll = nn.functional.cross_entropy(logits.reshape(-1, rep.VOCAB_SIZE), torch.from_numpy(target).reshape(-1),
                                              reduction="none")
            m = torch.from_numpy(mask).reshape(-1)
            total_bits += float((nll * m).sum()) / math.log(2)
            total_steps += int(m.sum())
    return total_bits / max(1, total_steps), total_steps


@dataclass
class TrainResult:
    config: MelodyConfig
    epochs: int
    best_epoch: int
    best_valid_bits: float
    history: list
    seconds: float
    checkpoint: Path
    onnx: Path


def train(data: MelodyDataset, config: MelodyConfig, out_dir: Path, seed: int = 1, max_epochs: int = 10,
          patience: int = 3, max_minutes: float = 28.0, lr: float = 2e-3, threads: int = 2,
          batches_per_epoch: int | None = None, progress: bool = True, name: str | None = None) -> TrainResult:
    from tqdm import tqdm

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"melody-{config.arch}"
    ckpt_path = out_dir / f"{name}.pt"
    net = MelodyNet(config)
    train_idx = data.indices("train")
    valid_idx = data.indices("valid")
    sampler = WindowSampler(data, train_idx, rng)
    train_steps = int(sum(data.offsets[i + 1] - data.offsets[i] for i in train_idx))
    per_epoch = batches_per_epoch or max(1, train_steps // (BATCH * WINDOW_STEPS))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # Cosine decay over the planned epochs, to 5% of the initial rate.
    total_batches = max_epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda b: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(b, total_batches) / total_batches)))
    started = time.monotonic()
    best = (math.inf, 0)
    history = []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        running = 0.0
        bar = tqdm(range(per_epoch), disable=not progress, desc=f"{name} epoch {epoch}", unit="batch", leave=False)
        for k in bar:
            prev, target, feats, mask = sampler.batch()
            logits, _ = net(prev, feats)
            nll = nn.functional.cross_entropy(logits.reshape(-1, rep.VOCAB_SIZE), target.reshape(-1), reduction="none")
            loss = (nll * mask.reshape(-1)).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            bits = loss.item() / math.log(2)
            running = 0.98 * running + 0.02 * bits if k else bits
            bar.set_postfix(bits=f"{running:.3f}")
        valid_bits, _ = evaluate_nll(net, data, valid_idx)
        elapsed = time.monotonic() - started
        history.append({"epoch": epoch, "train_bits": round(running, 4), "valid_bits": round(valid_bits, 4),
                        "lr": opt.param_groups[0]["lr"], "minutes": round(elapsed / 60, 2)})
        if progress:
            print(f"{name} epoch {epoch}: train {running:.3f} bits/step, valid {valid_bits:.3f} bits/step "
                  f"({elapsed / 60:.1f} min)", flush=True)
        if valid_bits < best[0]:
            best = (valid_bits, epoch)
            tmp = ckpt_path.with_name(ckpt_path.name + ".part")
            torch.save({"config": config.to_dict(), "state_dict": net.state_dict(), "epoch": epoch,
                        "valid_bits": valid_bits, "seed": seed}, tmp)
            tmp.replace(ckpt_path)  # an interrupted save never leaves a broken checkpoint
        elif epoch - best[1] >= patience:
            break
        if elapsed / 60 * (epoch + 1) / epoch > max_minutes:
            break  # the next epoch would run past the time budget
    net = load_checkpoint(ckpt_path)
    onnx_path = out_dir / f"{name}.onnx"
    export_onnx(net, onnx_path, {"seed": seed, "valid_bits": f"{best[0]:.4f}"})
    meta = {"config": config.to_dict(), "seed": seed, "epochs": epoch, "best_epoch": best[1],
            "valid_bits": best[0], "history": history, "parameters": parameter_count(net),
            "minutes": (time.monotonic() - started) / 60, "batches_per_epoch": per_epoch}
    (out_dir / f"{name}.train.json").write_text(json.dumps(meta, indent=1) + "\n")
    return TrainResult(config, epoch, best[1], best[0], history, time.monotonic() - started, ckpt_path, onnx_path)


def load_checkpoint(path: Path) -> MelodyNet:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = MelodyNet(MelodyConfig(**ckpt["config"]))
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    return net


def export_onnx(net: MelodyNet, path: Path, extra: dict | None = None) -> None:
    import onnx

    net.eval()
    step = MelodyStep(net)
    token = torch.zeros(1, dtype=torch.int64)
    feats = torch.zeros(1, rep.N_FEATURES)
    state = net.initial_state(1)
    tmp = path.with_name(path.name + ".part")
    torch.onnx.export(step, (token, feats, state), str(tmp), input_names=["token", "features", "state"],
                      output_names=["logits", "state_out"], opset_version=ONNX_OPSET, dynamo=False,
                      dynamic_axes={"token": {0: "batch"}, "features": {0: "batch"}, "state": {1: "batch"},
                                    "logits": {0: "batch"}, "state_out": {1: "batch"}})
    model = onnx.load(str(tmp))
    props = {"kind": MODEL_KIND, "representation": REPRESENTATION, "arch": net.config.arch,
             "hidden": str(net.config.hidden), "layers": str(net.config.layers),
             "state_rows": str(net.config.state_rows()), "vocab": str(rep.VOCAB_SIZE),
             "features": str(rep.N_FEATURES), "min_pitch": str(rep.MIN_PITCH), "max_pitch": str(rep.MAX_PITCH),
             "parameters": str(parameter_count(net))}
    props.update({k: str(v) for k, v in (extra or {}).items()})
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(tmp))
    tmp.replace(path)
