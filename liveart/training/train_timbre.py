"""Train the timbre VAE on the cached FluidSynth data set; export decoder and encoder to ONNX.

    liveart train timbre --seed 1 --out models

Each batch encodes BATCH_NOTES training notes and decodes FRAMES_PER_NOTE frames of a note of the
same program: itself, or (half the time) another pitch, velocity and hold of it. Frames are drawn
a third near the onset, a third near the release and a third anywhere. The loss is the masked mean
squared error of the levels (model scale: 1 = 50 dB), levels under QUIET_DB weighted less, plus
BETA times the KL divergence (warmed up over the first epochs).

Validation each epoch measures what the instrument does: every held-out-pitch note of the trained
programs is decoded at its program's anchor (the mean latent of the program's training notes), and
the error in dB is averaged. The best epoch is kept; training stops when it has not improved for
``patience`` epochs or the time budget is spent.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..timbre import frames as fr
from .timbre_data import HELD_OUT_PROGRAMS, TimbreDataset
from .timbre_model import (SUMMARY_OFF_SECONDS, SUMMARY_ON_SECONDS, DecoderSynth, EncoderDb, TimbreConfig, TimbreVAE,
                           parameter_count)

BATCH_NOTES = 128
FRAMES_PER_NOTE = 32
CROSS_PROBABILITY = 0.5
NEAR_EVENT_FRAMES = 30
BETA = 5e-5
BETA_WARMUP_EPOCHS = 10
QUIET_DB = -80.0
QUIET_WEIGHT = 0.3
ONNX_OPSET = 17
DECODER_KIND = "liveart-timbre-decoder"
ENCODER_KIND = "liveart-timbre-encoder"
REPRESENTATION = "harmonic64-noise16-v2"
DECODER_INPUTS = ["z", "note", "velocity", "on_seconds", "off_seconds", "band_limit_hz"]
DECODER_OUTPUTS = ["harmonics", "noise", "amp", "levels_db"]


class Prepared:
    """The data set as tensors: model-scale levels, masks, per-note summaries and frame indices."""

    def __init__(self, data: TimbreDataset):
        levels = data.levels.astype(np.float32)
        self.mask = torch.from_numpy(np.isfinite(levels))
        filled = np.where(np.isfinite(levels), levels, fr.FLOOR_DB)
        self.weight = torch.from_numpy(np.where(filled > QUIET_DB, 1.0, QUIET_WEIGHT).astype(np.float32)) * self.mask
        self.y = torch.from_numpy(fr.db_to_model(filled).astype(np.float32))
        self.offsets = data.offsets
        self.lengths = np.diff(data.offsets)
        self.hold_frames = np.round(data.hold_seconds * fr.ANALYSIS_RATE_HZ).astype(np.int64)
        self.cond = torch.from_numpy(fr.condition(data.note, data.velocity))
        self.hold_seconds = data.hold_seconds.astype(np.float64)
        self.program = data.program.astype(np.int64)
        self.summary = torch.stack([self.y[self.summary_rows(i)] for i in range(len(data))])

    def summary_rows(self, i: int) -> np.ndarray:
        on = np.round(np.array(SUMMARY_ON_SECONDS) * fr.ANALYSIS_RATE_HZ).astype(np.int64)
        off = self.hold_frames[i] + np.round(np.array(SUMMARY_OFF_SECONDS) * fr.ANALYSIS_RATE_HZ).astype(np.int64)
        rows = np.minimum(np.concatenate([on, off]), self.lengths[i] - 1)
        return self.offsets[i] + rows

    def time(self, notes: np.ndarray, frames: np.ndarray) -> torch.Tensor:
        on = frames / fr.ANALYSIS_RATE_HZ
        off = on - self.hold_seconds[notes]
        return torch.from_numpy(fr.time_features(on, np.where(off >= 0, off, -1.0)))


def sample_frames(prep: Prepared, notes: np.ndarray, rng: np.random.Generator, per_note: int) -> np.ndarray:
    """Frame indices (len(notes), per_note) inside each note."""
    length = prep.lengths[notes][:, None]
    kind = rng.integers(0, 3, size=(len(notes), per_note))
    near_on = rng.integers(0, NEAR_EVENT_FRAMES, size=kind.shape)
    near_off = prep.hold_frames[notes][:, None] + rng.integers(0, NEAR_EVENT_FRAMES, size=kind.shape)
    anywhere = (rng.random(kind.shape) * length).astype(np.int64)
    frames = np.where(kind == 0, near_on, np.where(kind == 1, near_off, anywhere))
    return np.minimum(frames, length - 1)


def masked_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (weight * (pred - target) ** 2).sum() / weight.sum().clamp(min=1.0)


@torch.no_grad()
def program_anchors(vae: TimbreVAE, prep: Prepared, notes: np.ndarray) -> dict[int, np.ndarray]:
    """Mean latent of each program over ``notes``."""
    mu, _ = vae.encoder(prep.summary[notes], prep.cond[notes])
    mu = mu.numpy()
    return {int(p): mu[prep.program[notes] == p].mean(axis=0) for p in np.unique(prep.program[notes])}


@torch.no_grad()
def anchor_error_db(vae: TimbreVAE, prep: Prepared, notes: np.ndarray, anchors: dict[int, np.ndarray]) -> float:
    """Mean absolute level error (dB, measurable levels above QUIET_DB in either) of ``notes`` decoded
    at their programs' anchors, every frame."""
    total, count = 0.0, 0
    for i in notes:
        rows = np.arange(prep.offsets[i], prep.offsets[i + 1])
        frames = np.arange(len(rows))
        n = len(rows)
        z = torch.from_numpy(np.repeat(anchors[int(prep.program[i])][None, :], n, axis=0).astype(np.float32))
        pred = vae.decoder(z, prep.cond[i].expand(n, 2), prep.time(np.full(n, i), frames))
        target = prep.y[rows]
        mask = prep.mask[rows] & ((target > fr.db_to_model(QUIET_DB)) | (pred > fr.db_to_model(QUIET_DB)))
        total += float(((pred - target).abs() * mask).sum()) * fr.LEVEL_SCALE_DB
        count += int(mask.sum())
    return total / max(count, 1)


@dataclass
class TrainResult:
    epochs: int
    best_epoch: int
    best_error_db: float
    seconds: float
    decoder: Path
    encoder: Path


def train(data: TimbreDataset, config: TimbreConfig, out_dir: Path, seed: int = 1, max_epochs: int = 300,
          patience: int = 20, max_minutes: float = 28.0, lr: float = 2e-3, threads: int = 2,
          progress: bool = True, name: str = "timbre") -> TrainResult:
    from tqdm import tqdm

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / f"{name}.pt"
    prep = Prepared(data)
    train_notes = data.indices("train")
    valid_notes = data.indices("pitch")
    by_program = {int(p): train_notes[prep.program[train_notes] == p] for p in np.unique(prep.program[train_notes])}
    vae = TimbreVAE(config)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    per_epoch = max(1, len(train_notes) // BATCH_NOTES)
    total = max_epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda b: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(b, total) / total)))
    started = time.monotonic()
    best = (math.inf, 0)
    history = []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        vae.train()
        beta = BETA * min(1.0, epoch / BETA_WARMUP_EPOCHS)
        order = rng.permutation(train_notes)
        running_rec = running_kl = 0.0
        bar = tqdm(range(per_epoch), disable=not progress, desc=f"{name} epoch {epoch}", unit="batch", leave=False)
        for k in bar:
            notes = order[k * BATCH_NOTES : (k + 1) * BATCH_NOTES]
            cross = rng.random(len(notes)) < CROSS_PROBABILITY
            targets = np.array([rng.choice(by_program[int(prep.program[i])]) if c else i for i, c in zip(notes, cross)])
            mu, logvar = vae.encoder(prep.summary[notes], prep.cond[notes])
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            frames = sample_frames(prep, targets, rng, FRAMES_PER_NOTE)
            rows = torch.from_numpy(prep.offsets[targets][:, None] + frames).reshape(-1)
            rep_notes = np.repeat(targets, FRAMES_PER_NOTE)
            pred = vae.decoder(z.repeat_interleave(FRAMES_PER_NOTE, 0), prep.cond[rep_notes],
                               prep.time(rep_notes, frames.reshape(-1)))
            rec = masked_loss(pred, prep.y[rows], prep.weight[rows])
            kl = (-0.5 * (1 + logvar - mu * mu - logvar.exp()).sum(dim=1)).mean()
            loss = rec + beta * kl
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            running_rec = 0.95 * running_rec + 0.05 * rec.item() if k else rec.item()
            running_kl = 0.95 * running_kl + 0.05 * kl.item() if k else kl.item()
            bar.set_postfix(rec_db=f"{math.sqrt(running_rec) * fr.LEVEL_SCALE_DB:.2f}", kl=f"{running_kl:.1f}")
        vae.eval()
        anchors = program_anchors(vae, prep, train_notes)
        error = anchor_error_db(vae, prep, valid_notes, anchors)
        elapsed = time.monotonic() - started
        history.append({"epoch": epoch, "train_rms_db": round(math.sqrt(running_rec) * fr.LEVEL_SCALE_DB, 3),
                        "kl": round(running_kl, 2), "valid_anchor_error_db": round(error, 3),
                        "minutes": round(elapsed / 60, 2)})
        if progress:
            print(f"{name} epoch {epoch}: train rms {math.sqrt(running_rec) * fr.LEVEL_SCALE_DB:.2f} dB, kl {running_kl:.1f}, "
                  f"valid anchor error {error:.2f} dB ({elapsed / 60:.1f} min)", flush=True)
        if error < best[0]:
            best = (error, epoch)
            tmp = ckpt_path.with_name(ckpt_path.name + ".part")
            torch.save({"config": config.to_dict(), "state_dict": vae.state_dict(), "epoch": epoch,
                        "valid_anchor_error_db": error, "seed": seed}, tmp)
            tmp.replace(ckpt_path)
        elif epoch - best[1] >= patience:
            break
        if elapsed / 60 * (epoch + 1) / epoch > max_minutes:
            break
    dec_path, enc_path = export_checkpoint(ckpt_path, data, out_dir, name, prep)
    meta = {"config": config.to_dict(), "seed": seed, "epochs": epoch, "best_epoch": best[1],
            "valid_anchor_error_db": best[0], "history": history,
            "parameters": {"encoder": parameter_count(vae.encoder), "decoder": parameter_count(vae.decoder)},
            "minutes": (time.monotonic() - started) / 60, "batches_per_epoch": per_epoch}
    (out_dir / f"{name}.train.json").write_text(json.dumps(meta, indent=1) + "\n")
    return TrainResult(epoch, best[1], best[0], time.monotonic() - started, dec_path, enc_path)


def export_checkpoint(ckpt_path: Path, data: TimbreDataset, out_dir: Path, name: str = "timbre",
                      prep: Prepared | None = None) -> tuple[Path, Path]:
    """Export a checkpoint's decoder and encoder, with every program's anchor, to ONNX."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    vae = load_checkpoint(ckpt_path)
    anchors = all_anchors(vae, prep or Prepared(data), data)
    extra = {"seed": ckpt["seed"], "valid_anchor_error_db": f"{ckpt['valid_anchor_error_db']:.3f}",
             "epoch": ckpt["epoch"]}
    dec_path, enc_path = Path(out_dir) / f"{name}-decoder.onnx", Path(out_dir) / f"{name}-encoder.onnx"
    export_onnx(vae, dec_path, enc_path, anchors, extra)
    return dec_path, enc_path


def all_anchors(vae: TimbreVAE, prep: Prepared, data: TimbreDataset) -> dict[int, np.ndarray]:
    """Anchors of every program: trained programs from their training notes, held-out programs
    (never trained on) from all their notes, placed by the encoder."""
    anchors = program_anchors(vae, prep, data.indices("train"))
    for p, z in program_anchors(vae, prep, data.indices("program")).items():
        anchors.setdefault(p, z)
    return anchors


def load_checkpoint(path: Path) -> TimbreVAE:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    vae = TimbreVAE(TimbreConfig(**ckpt["config"]))
    vae.load_state_dict(ckpt["state_dict"])
    vae.eval()
    return vae


def _add_metadata(path: Path, props: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save(model, str(path))


def export_onnx(vae: TimbreVAE, decoder_path: Path, encoder_path: Path, anchors: dict[int, np.ndarray],
                extra: dict | None = None) -> None:
    vae.eval()
    cfg = vae.config
    common = {"representation": REPRESENTATION, "latent": cfg.latent, "params": fr.N_PARAMS,
              "time_features": fr.N_TIME_FEATURES, "floor_db": fr.FLOOR_DB, "analysis_sample_rate": 48000}
    common.update(extra or {})
    anchor_json = json.dumps({str(p): [round(float(v), 6) for v in z] for p, z in sorted(anchors.items())})
    for module, path, args, inputs, outputs, props in (
        (DecoderSynth(vae.decoder), decoder_path,
         (torch.zeros(2, cfg.latent), torch.full((2,), 60.0), torch.full((2,), 100.0), torch.full((2,), 0.1),
          torch.full((2,), -1.0), torch.full((1,), fr.BAND_LIMIT * 48000)),
         DECODER_INPUTS, DECODER_OUTPUTS,
         {"kind": DECODER_KIND, "anchors": anchor_json, "parameters": parameter_count(vae.decoder),
          "held_out_programs": json.dumps(list(HELD_OUT_PROGRAMS))}),
        (EncoderDb(vae.encoder), encoder_path,
         (torch.zeros(2, len(SUMMARY_ON_SECONDS) + len(SUMMARY_OFF_SECONDS), fr.N_PARAMS), torch.zeros(2, 2)),
         ["summary_db", "condition"], ["z"],
         {"kind": ENCODER_KIND, "parameters": parameter_count(vae.encoder),
          "summary_on_seconds": json.dumps(SUMMARY_ON_SECONDS), "summary_off_seconds": json.dumps(SUMMARY_OFF_SECONDS)}),
    ):
        tmp = path.with_name(path.name + ".part")
        torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs, opset_version=ONNX_OPSET,
                          dynamo=False, dynamic_axes={n: {0: "batch"} for n in inputs + outputs if n != "band_limit_hz"})
        _add_metadata(tmp, {**common, **props})
        tmp.replace(path)
