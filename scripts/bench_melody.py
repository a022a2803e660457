#!/usr/bin/env python3
"""Single-step latency of the shipped melody models, one thread, side by side with eager torch.

    .venv/bin/python scripts/bench_melody.py [--steps 5000]

For each of the GRU and the LSTM it prints p50, p99 and max in microseconds of:
- ``ort step``: one onnxruntime call of the stateful step graph (CPU provider, one thread), as the
  run time makes it;
- ``ort step + sample``: :func:`liveart.melody.model.advance` — features, the step and the seeded
  sampler with temperature, top-p and a key lock — what a live host pays per 16th note;
- ``torch step`` (the anchor, needs the train extra): the same weights stepped by eager torch with
  one thread, the way a torch-hosted model (Magenta-style) would run.
Target: ort step p99 <= 300 us. The garbage collector stays on, as in a live worker.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from liveart.melody import representation as rep  # noqa: E402
from liveart.melody.model import MelodyModel, Sampler, SamplingSettings, Voice, advance  # noqa: E402


def stats(ns: list[int]) -> str:
    us = np.array(ns) / 1000.0
    return f"p50 {np.percentile(us, 50):7.1f}  p99 {np.percentile(us, 99):7.1f}  max {us.max():8.1f} us"


def bench_ort(model: MelodyModel, steps: int) -> list[int]:
    state = model.initial_state(1)
    feats = np.zeros((1, rep.N_FEATURES), np.float32)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, rep.VOCAB_SIZE, size=steps + 200).astype(np.int64)
    out = []
    for i in range(steps + 200):
        tok = tokens[i : i + 1]
        t = time.perf_counter_ns()
        _, state = model.step(tok, feats, state)
        out.append(time.perf_counter_ns() - t)
    return out[200:]


def bench_advance(model: MelodyModel, steps: int) -> list[int]:
    voice = Voice.new(model)
    sampler = Sampler(SamplingSettings(temperature=1.0, top_p=0.95, key_lock=rep.scale_pitch_classes(2, "minor")), 1)
    meter = rep.Meter()
    out = []
    for i in range(steps + 200):
        t = time.perf_counter_ns()
        advance(model, voice, i % 16, meter, 0b000010010001 if i % 2 else None, sampler=sampler)
        out.append(time.perf_counter_ns() - t)
    return out[200:]


def bench_torch(path: Path, steps: int) -> list[int] | None:
    try:
        import torch

        from liveart.training.melody_model import MelodyStep
        from liveart.training.train_melody import load_checkpoint
    except ImportError:
        return None
    torch.set_num_threads(1)
    net = load_checkpoint(path)
    step = MelodyStep(net).eval()
    state = net.initial_state(1)
    feats = torch.zeros(1, rep.N_FEATURES)
    rng = np.random.default_rng(0)
    tokens = torch.from_numpy(rng.integers(0, rep.VOCAB_SIZE, size=steps + 200).astype(np.int64))
    out = []
    with torch.inference_mode():
        for i in range(steps + 200):
            t = time.perf_counter_ns()
            _, state = step(tokens[i : i + 1], feats, state)
            out.append(time.perf_counter_ns() - t)
    return out[200:]


def main() -> int:
    ap = argparse.ArgumentParser(description="melody model single-step latency")
    ap.add_argument("--steps", type=int, default=5000)
    args = ap.parse_args()
    for arch in ("gru", "lstm"):
        model = MelodyModel(arch)
        print(f"{arch.upper()} ({model.metadata.get('parameters')} parameters, {model.metadata.get('layers')} x "
              f"{model.hidden}), {args.steps} steps, one thread")
        print(f"  ort step            {stats(bench_ort(model, args.steps))}")
        print(f"  ort step + sample   {stats(bench_advance(model, args.steps))}")
        torch_ns = bench_torch(REPO / "models" / f"melody-{arch}.pt", args.steps)
        print(f"  torch step (anchor) {stats(torch_ns) if torch_ns else 'n/a (torch not installed)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
