"""Evaluate the timbre model: are liveart's instruments recognisable, and does a sweep click?

    .venv/bin/python scripts/eval_timbre.py [--model timbre] [--velocities 40 80 120] [--json out.json]

1. Recognition. For every held-out pitch (every 4th rendered pitch: never trained on) and velocity,
   every program is played by liveart at its anchor (the engine, a timbre channel on that program,
   one note with the data set's hold and a 1 s tail) and by FluidSynth (FluidR3_GM, dry). The
   log-spectral distance between two notes is the RMS difference, in dB, of their log-band
   spectrograms (64 log-spaced bands, 40 Hz - 16 kHz, 2048-sample frames every 10 ms), each note
   normalised to unit RMS first (so a level offset between the two synths does not count; the
   envelope and the spectrum do). A liveart note is *recognised* when the nearest FluidSynth note
   (same pitch and velocity, any of the 128 programs) belongs to the same GM family (16 families;
   chance 1/16). Reported for the trained programs, the held-out programs (never trained on,
   placed by the encoder) and, as a baseline, liveart's hand-made presets by family.
2. Sweep. A held note (C4, velocity 100) while the timbre moves through every family's first
   trained program in turn, one anchor every 0.5 s with the patch's smoothing; the largest
   sample-to-sample step of the sweep against the largest of steady notes at each anchor passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liveart import events as ev  # noqa: E402
from liveart.engine import Engine  # noqa: E402
from liveart.patch import patch_from_dict  # noqa: E402
from liveart.timbre.anchors import GM_FAMILY_NAMES, GM_PROGRAM_NAMES  # noqa: E402
from liveart.timbre.model import TimbreModel  # noqa: E402
from liveart.training import timbre_data as td  # noqa: E402
from liveart.training.fluid import FluidNotes  # noqa: E402

SR = 48000
N_BANDS = 64
BAND_LOW, BAND_HIGH = 40.0, 16000.0
FRAME, HOP = 2048, 480
RANGE_DB = 60.0  # band levels more than this under the note's loudest are inaudible beside it: floored
SWEEP_SECONDS_PER_ANCHOR = 0.5


def band_matrix() -> np.ndarray:
    freqs = np.fft.rfftfreq(FRAME, 1.0 / SR)
    edges = np.geomspace(BAND_LOW, BAND_HIGH, N_BANDS + 1)
    m = np.zeros((N_BANDS, len(freqs)))
    for b in range(N_BANDS):
        sel = (freqs >= edges[b]) & (freqs < edges[b + 1])
        if not np.any(sel):  # a band narrower than a bin: the nearest bin
            sel = np.abs(freqs - np.sqrt(edges[b] * edges[b + 1])) == np.min(np.abs(freqs - np.sqrt(edges[b] * edges[b + 1])))
        m[b, sel] = 1.0
    return m


BANDS = band_matrix()


def log_bands(x: np.ndarray) -> np.ndarray:
    """Log-band spectrogram (frames, N_BANDS) in dB of x normalised to unit RMS."""
    x = x.astype(np.float64)
    rms = np.sqrt(np.mean(x * x))
    x = x / rms if rms > 0 else x
    padded = np.concatenate([np.zeros(FRAME // 2), x, np.zeros(FRAME // 2)])
    starts = np.arange(0, len(x), HOP)
    seg = np.lib.stride_tricks.sliding_window_view(padded, FRAME)[starts] * np.hanning(FRAME)
    power = np.abs(np.fft.rfft(seg, axis=1)) ** 2 @ BANDS.T
    db = 10.0 * np.log10(np.maximum(power, 1e-30))
    return np.maximum(db, db.max() - RANGE_DB)


def lsd(a: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """RMS dB difference of a (T, B) against each of refs (N, T, B)."""
    return np.sqrt(np.mean((refs - a[None]) ** 2, axis=(1, 2)))


CONTROL_HOP = 512  # the default patch's control hop
_settings = {"hop": CONTROL_HOP}


def liveart_notes(model: TimbreModel, program: int | None, notes: list[tuple[int, int, float]],
                  preset_family: bool = False) -> list[np.ndarray]:
    """Render (note, velocity, hold) one after another on one engine; mono (left + right)."""
    audio = {"gain_db": 0.0, "control_hop_frames": _settings["hop"]}
    if preset_family:
        patch = patch_from_dict({"audio": audio, "channels": {"default": {"follow_program": True}}})
    else:
        patch = patch_from_dict({"audio": audio, "channels": {"default": {"timbre": program}}})
    engine = Engine(patch, SR, timbre=None if preset_family else model)
    if preset_family:
        engine.schedule(ev.program_change(0, 0, program))
    out = []
    tail = td.TAIL_SECONDS
    gap = int(0.2 * SR)
    frame = gap
    spans = []
    for note, velocity, hold in notes:
        on, off, end = frame, frame + int(round(hold * SR)), frame + int(round((hold + tail) * SR))
        engine.schedule(ev.note_on(on, 0, note, velocity))
        engine.schedule(ev.note_off(off, 0, note))
        spans.append((on, end))
        frame = end + gap
    audio = engine.render(frame)
    mono = audio[:, 0].astype(np.float64) + audio[:, 1]
    for on, end in spans:
        out.append(mono[on:end])
    return out


def recognition(model: TimbreModel, velocities, progress: bool = True) -> dict:
    fluid = FluidNotes(SR)
    programs = list(range(128))
    trained = [p for p in programs if p not in model.held_out_programs]
    cases = [(pi, note, vi, vel) for pi, note in enumerate(td.PITCHES) if note in td.HELD_OUT_PITCHES
             for vi, vel in enumerate(td.VELOCITIES) if vel in velocities]
    started = time.perf_counter()
    refs = {}
    for pi, note, vi, vel in cases:
        hold = td.hold_for(pi, vi)
        refs[(note, vel)] = np.stack([log_bands(fluid.note(p, note, vel, hold, td.TAIL_SECONDS)) for p in programs])
    fluid_seconds = time.perf_counter() - started
    results = {}
    for label, progs, preset in (("trained programs", trained, False), ("held-out programs", list(model.held_out_programs), False),
                                 ("presets (baseline)", trained, True)):
        confusion = np.zeros((16, 16), np.int64)
        exact = 0
        count = 0
        distances = []
        t0 = time.perf_counter()
        for k, p in enumerate(progs):
            specs = [(note, vel, td.hold_for(pi, vi)) for pi, note, vi, vel in cases]
            audio = liveart_notes(model, p, specs, preset_family=preset)
            for (note, vel, _), x in zip(specs, audio):
                d = lsd(log_bands(x), refs[(note, vel)])
                nearest = int(np.argmin(d))
                confusion[p // 8, nearest // 8] += 1
                exact += nearest == p
                count += 1
                distances.append(float(d[p]))
            if progress:
                print(f"\r{label}: {k + 1}/{len(progs)} programs", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        correct = int(np.trace(confusion))
        results[label] = {"notes": count, "family_accuracy": correct / count, "program_accuracy": exact / count,
                          "mean_lsd_to_own_program_db": float(np.mean(distances)), "confusion": confusion.tolist(),
                          "seconds": time.perf_counter() - t0}
    results["fluidsynth_seconds"] = fluid_seconds
    return results


def sweep(model: TimbreModel) -> dict:
    firsts = [next(p for p in range(f * 8, f * 8 + 8) if p not in model.held_out_programs) for f in range(16)]
    seconds = SWEEP_SECONDS_PER_ANCHOR
    n = int(seconds * SR)
    # The sweep: a morph controller steps from anchor to anchor along the whole path, one program
    # change per anchor on a following channel (the glide smooths each jump).
    patch = patch_from_dict({"audio": {"gain_db": 0.0, "control_hop_frames": _settings["hop"]},
                             "channels": {"default": {"timbre": firsts[0]}}})
    engine = Engine(patch, SR, timbre=model)
    engine.schedule(ev.note_on(0, 0, 60, 100))
    for k, p in enumerate(firsts[1:], start=1):
        engine.schedule(ev.program_change(k * n, 0, p))
    total = len(firsts) * n
    audio = engine.render(total)[:, 0].astype(np.float64)
    settle = int(0.3 * SR)  # past the onset
    sweep_step = float(np.max(np.abs(np.diff(audio[settle:]))))
    steady = []
    for p in firsts:
        e = Engine(patch_from_dict({"audio": {"gain_db": 0.0, "control_hop_frames": _settings["hop"]},
                                    "channels": {"default": {"timbre": p}}}), SR, timbre=model)
        e.schedule(ev.note_on(0, 0, 60, 100))
        a = e.render(n + settle)[settle:, 0].astype(np.float64)
        steady.append(float(np.max(np.abs(np.diff(a)))))
    return {"anchors": [GM_PROGRAM_NAMES[p] for p in firsts], "largest_step_sweep": sweep_step,
            "largest_step_steady_max": max(steady), "ratio": sweep_step / max(steady)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--velocities", type=int, nargs="+", default=list(td.VELOCITIES))
    ap.add_argument("--json", default=None)
    ap.add_argument("--hop", type=int, default=CONTROL_HOP, help="control hop in frames (default 512, the default patch's)")
    args = ap.parse_args()
    _settings["hop"] = args.hop
    model = TimbreModel.load(args.model, device="cpu")
    rec = recognition(model, args.velocities)
    for label in ("trained programs", "held-out programs", "presets (baseline)"):
        r = rec[label]
        print(f"{label}: {r['notes']} notes; nearest FluidSynth family right {r['family_accuracy']:.1%}, "
              f"nearest program exact {r['program_accuracy']:.1%}; mean LSD to its own program "
              f"{r['mean_lsd_to_own_program_db']:.2f} dB ({r['seconds']:.0f} s)")
    conf = np.array(rec["trained programs"]["confusion"])
    print("\nconfusion (trained programs; rows: true family, columns: nearest FluidSynth family)")
    short = [n[:5] for n in GM_FAMILY_NAMES]
    print("       " + " ".join(f"{s:>5}" for s in short))
    for f in range(16):
        print(f"{short[f]:>6} " + " ".join(f"{v:5d}" for v in conf[f]) + f"   {conf[f, f] / max(conf[f].sum(), 1):.0%}")
    sw = sweep(model)
    print(f"\nsweep through {len(sw['anchors'])} anchors: largest sample step {sw['largest_step_sweep']:.5f}; "
          f"steady notes at those anchors: {sw['largest_step_steady_max']:.5f} (ratio {sw['ratio']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"recognition": rec, "sweep": sw}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
