"""Benchmark the timbre decoder: cost per control frame, batched over voices, and what it costs the
engine per audio block.

    .venv/bin/python scripts/bench_timbre.py [--model timbre] [--runs 5000]

1. Decode: one call of ``TimbreModel.frames`` (the ONNX graph from voice state to the synth's
   frame: features, MLP, dB to linear, band limit, normalisation) for 1, 8, 32 and 256 voices at
   random places, notes, velocities and note times; onnxruntime CPU provider, one thread; p50, p99
   and max over ``--runs`` calls after 300 untimed ones, garbage collector on. The CUDA provider
   too when a CUDA session truly runs here (it is probed; on this project's CPU machines it does not).
2. Engine: the cost of one 128-frame block (48 kHz) with N timbre voices sounding, control hop 256,
   (a) decoding on the spot (the offline path) and (b) with the decoder on a worker thread (the
   live path: the block only applies frames decoded ahead), as a share of the block's 2.67 ms.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liveart import events as ev  # noqa: E402
from liveart.engine import Engine  # noqa: E402
from liveart.patch import patch_from_dict  # noqa: E402
from liveart.timbre.model import TimbreModel, cuda_works, resolve_model_path  # noqa: E402
from liveart.timbre.worker import TimbreWorker  # noqa: E402

SR = 48000
BLOCK = 128


def percentiles(samples_s) -> str:
    us = np.asarray(samples_s) * 1e6
    return f"p50 {np.percentile(us, 50):7.1f} us  p99 {np.percentile(us, 99):7.1f} us  max {np.max(us):8.1f} us"


def bench_decode(model: TimbreModel, voices: int, runs: int, rng) -> list[float]:
    programs = rng.integers(0, 128, voices)
    z = np.stack([model.anchors[int(p)] for p in programs])
    note = rng.integers(36, 96, voices)
    vel = rng.integers(20, 127, voices)
    on = rng.random(voices) * 3
    off = np.where(rng.random(voices) < 0.3, rng.random(voices), -1.0)
    for _ in range(300):
        model.frames(z, note, vel, on, off, SR)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model.frames(z, note, vel, on, off, SR)
        times.append(time.perf_counter() - t)
    return times


def bench_engine(model: TimbreModel, voices: int, blocks: int, worker: bool) -> list[float]:
    patch = patch_from_dict({"audio": {"control_hop_frames": 512, "polyphony": max(32, voices)},
                             "channels": {"default": {"timbre": True, "follow_program": True}}})
    source = TimbreWorker(model, SR) if worker else model
    try:
        engine = Engine(patch, sample_rate=SR, timbre=source)
        for i in range(voices):
            c = i % 15 + (1 if i % 15 >= 9 else 0)  # skip the percussion channel
            engine.schedule(ev.program_change(0, c, (i * 37) % 128))
            engine.schedule(ev.note_on(0, c, 40 + (i * 7) % 48, 90))
        out = np.zeros((BLOCK, 2), np.float32)
        for _ in range(400):  # past the onsets
            engine.render_into(out)
            if worker:
                time.sleep(BLOCK / SR)
        times = []
        for _ in range(blocks):
            t = time.perf_counter()
            engine.render_into(out)
            times.append(time.perf_counter() - t)
            if worker:  # real time: the worker decodes while the audio thread waits for the next block
                time.sleep(max(0.0, BLOCK / SR - times[-1]))
        if worker and engine.stats.timbre_late:
            print(f"    ({engine.stats.timbre_late} voice frames were late)")
        return times
    finally:
        if worker:
            source.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--blocks", type=int, default=3000)
    args = ap.parse_args()
    gc.enable()
    rng = np.random.default_rng(0)
    path = resolve_model_path(args.model)
    cpu = TimbreModel(path, device="cpu", threads=1)
    print(f"model {path} ({cpu.metadata.get('parameters')} decoder parameters, latent {cpu.latent})")
    print("decode, CPU provider, one thread:")
    for v in (1, 8, 32, 256):
        print(f"  {v:4d} voices: {percentiles(bench_decode(cpu, v, args.runs, rng))}")
    if cuda_works(path):
        gpu = TimbreModel(path, device="cuda")
        print("decode, CUDA provider:")
        for v in (32, 256):
            print(f"  {v:4d} voices: {percentiles(bench_decode(gpu, v, args.runs, rng))}")
    else:
        print("decode, CUDA provider: not measured (no CUDA session runs on this machine)")
    block_us = BLOCK / SR * 1e6
    for worker in (False, True):
        print(f"engine block of {BLOCK} frames, decoder {'on a worker thread (live)' if worker else 'on the spot (offline)'}:")
        for v in (8, 16, 32):
            times = bench_engine(cpu, v, args.blocks, worker)
            us = np.asarray(times) * 1e6
            print(f"  {v:3d} voices: {percentiles(times)}  = {np.percentile(us, 50) / block_us:.1%} / "
                  f"{np.percentile(us, 99) / block_us:.1%} of the block")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
