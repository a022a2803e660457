#!/usr/bin/env python3
"""Evaluate the shipped melody models against the issue's targets and print the figures.

    .venv/bin/python scripts/eval_melody.py [--data .cache/melody-dataset-v2.npz] [--json out.json]

1. Held-out negative log-likelihood per step, in bits, on the test split (whole lines, original
   keys): the GRU and the LSTM (torch checkpoints; the ONNX graphs agree to 1e-4, a test checks),
   the order-3 Kneser-Ney Markov baseline trained on the same training split (as it is, and with
   the network's transpositions; the better of the two is the reference), and a unigram for scale.
   Target: network <= 0.85 x Markov. The network is also scored with its meter and performer
   features zeroed, seeing only the tokens as the Markov chain does, and on the folk lines alone.
2. 100 seeded continuations at temperature 1.0 (top-p 1.0, no key lock, full note range) of held-out
   primes (the first 4 bars of 100 test tunes with a meter, picked with a fixed seed), 4 bars each,
   through the same Partner the command line and the live host use: the share of generated notes
   in the key estimated from the prime (Krumhansl-Kessler; major, or minor with both the natural
   and the raised 7th). Target >= 90%.
3. Plagiarism: the share of generated 8-note phrases (7 intervals, so transposed copies count too;
   with and without the rhythm) that occur anywhere in the training split, and the share of
   continuations that hold at least one such copy. The same figures for the real next 4 bars of the
   same test tunes, for scale: folk tunes share formulas.

Needs the train extra (torch, music21).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from liveart.hosts.generate import drive  # noqa: E402
from liveart.melody import representation as rep  # noqa: E402
from liveart.melody.model import MelodyModel  # noqa: E402
from liveart.melody.play import Partner, PlaySettings  # noqa: E402

PRIME_BARS = 4
CONTINUE_BARS = 4
N_CONTINUATIONS = 100
PHRASE_NOTES = 8


def pick_primes(data, n: int, seed: int = 2026):
    rng = np.random.default_rng(seed)
    candidates = []
    for i in data.indices("test"):
        i = int(i)
        if data.source[i] == "bach" and not data.name[i].endswith("Soprano"):
            continue  # inner and bass lines are not tunes to continue
        sl = data.line(i)
        bar_pos = data.bar_pos[sl]
        if bar_pos[0] < 0:
            continue
        bar_steps = _bar_steps(data, i)
        need = (PRIME_BARS + CONTINUE_BARS) * bar_steps + bar_steps
        if len(bar_pos) < need:
            continue
        candidates.append(i)
    picks = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
    return [candidates[k] for k in sorted(picks)]


def _bar_steps(data, i: int) -> int:
    sl = data.line(i)
    bar_pos = data.bar_pos[sl].astype(int)
    wraps = np.flatnonzero(np.diff(bar_pos) < 0)
    return int(bar_pos[wraps[0]] + 1) if len(wraps) else 16


def prime_of(data, i: int):
    """(prime notes, real continuation notes, meter, bar origin, prime end step)."""
    sl = data.line(i)
    tokens = data.tokens[sl]
    bar_pos = data.bar_pos[sl].astype(int)
    beat = int(data.beat_steps[sl][0])
    bar_steps = _bar_steps(data, i)
    meter = rep.Meter(bar_steps, beat)
    origin = -int(bar_pos[0])  # step k has bar position (k - origin) % bar_steps
    first_bar = (bar_steps - bar_pos[0]) % bar_steps  # step of the first full bar line
    prime_end = first_bar + PRIME_BARS * bar_steps
    notes = rep.tokens_to_notes(tokens)
    prime = [(s, min(e, prime_end), p) for s, e, p in notes if s < prime_end]
    real = [(s, e, p) for s, e, p in notes if prime_end <= s < prime_end + CONTINUE_BARS * bar_steps]
    return prime, real, meter, origin, prime_end


def continuation(model, prime, meter, origin, prime_end, seed):
    settings = PlaySettings(mode="continue", temperature=1.0, top_p=1.0, key_lock="off", low_pitch=rep.MIN_PITCH,
                            high_pitch=rep.MAX_PITCH, continue_bars=CONTINUE_BARS)
    partner = Partner(model, settings, seed=seed, meter=meter, bar_origin_step=origin)
    partner.whole_input_is_prime = True  # as `liveart generate --mode continue` does: only after the prime
    played = [(s, e, p, 80) for s, e, p in prime]
    last = prime_end + CONTINUE_BARS * meter.bar_steps + 1
    return [(s, e, p) for s, e, p, _ in drive(partner, played, 0, last, end_input=prime_end)]


def in_key_share(prime, generated) -> tuple[int, int]:
    scale = rep.scale_pitch_classes(*rep.estimate_key(prime))
    return sum(1 for _, _, p in generated if p % 12 in scale), len(generated)


def phrases(notes, with_rhythm: bool):
    out = []
    for j in range(len(notes) - PHRASE_NOTES + 1):
        w = notes[j : j + PHRASE_NOTES]
        key = tuple(b[2] - a[2] for a, b in zip(w, w[1:]))
        if with_rhythm:
            key += tuple(n[1] - n[0] for n in w[:-1]) + tuple(b[0] - a[0] for a, b in zip(w, w[1:]))
        out.append(key)
    return out


def training_phrases(data, with_rhythm: bool) -> set:
    table = set()
    for i in data.indices("train"):
        notes = rep.tokens_to_notes(data.tokens[data.line(int(i))])
        table.update(phrases(notes, with_rhythm))
    return table


def copy_rates(sets, table):
    windows = [w for s in sets for w in s]
    copied = sum(1 for w in windows if w in table)
    with_copy = sum(1 for s in sets if any(w in table for w in s))
    return copied / max(1, len(windows)), with_copy / max(1, len(sets)), len(windows)


def report_copies(results: dict, who: str, sets: dict, tables: dict) -> None:
    for r in (False, True):
        rate, with_copy, windows = copy_rates(sets[r], tables[r])
        results[f"{who}_copy_rate{'_rhythm' if r else ''}"] = rate
        results[f"{who}_continuations_with_copy{'_rhythm' if r else ''}"] = with_copy
        print(f"     8-note phrases found in training ({'intervals + rhythm' if r else 'intervals only'}): "
              f"{100 * rate:.1f}% of {windows}; continuations holding one: {100 * with_copy:.0f}%")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO / ".cache/melody-dataset-v2.npz"))
    ap.add_argument("--models", default=str(REPO / "models"))
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import torch

    from liveart.training.markov import markov_bits_per_step, unigram_bits_per_step
    from liveart.training.melody_data import build_dataset
    from liveart.training.train_melody import evaluate_nll, load_checkpoint

    torch.set_num_threads(2)
    data = build_dataset(Path(args.data))
    results: dict = {"data": data.summary()}
    t = time.time()
    markov, steps = markov_bits_per_step(data, augment=False)
    markov_aug, _ = markov_bits_per_step(data, augment=True)
    results["markov3_kn_bits"] = markov
    results["markov3_kn_transposed_bits"] = markov_aug
    markov = min(markov, markov_aug)
    results["unigram_bits"] = unigram_bits_per_step(data)
    results["test_steps"] = steps
    print(f"test split: {steps} steps in {len(data.indices('test'))} lines")
    print(f"order-3 Markov (interpolated Kneser-Ney), trained as is:       {results['markov3_kn_bits']:.4f} bits/step")
    print(f"order-3 Markov (interpolated Kneser-Ney), trained transposed:  {markov_aug:.4f} bits/step"
          f"   ({time.time() - t:.0f} s)")
    print(f"unigram:                                  {results['unigram_bits']:.4f} bits/step")
    folk = np.array([i for i in data.indices("test") if data.source[i] != "bach"])
    markov_folk, _ = markov_bits_per_step(data, augment=False, test_indices=folk)
    results["markov3_kn_bits_folk"] = markov_folk
    print(f"order-3 Markov, trained as is, folk test lines only:            {markov_folk:.4f} bits/step")
    for arch in ("gru", "lstm"):
        net = load_checkpoint(Path(args.models) / f"melody-{arch}.pt")
        bits, _ = evaluate_nll(net, data, data.indices("test"))
        results[f"{arch}_bits"] = bits
        print(f"{arch.upper():4s} test NLL {bits:.4f} bits/step = {bits / markov:.3f} x Markov "
              f"({'meets' if bits <= 0.85 * markov else 'MISSES'} the 0.85 target)")
        # Like for like with the Markov chain, which sees neither the meter nor a performer.
        bare, _ = evaluate_nll(net, data, data.indices("test"), meter=False, condition=False)
        results[f"{arch}_bits_no_features"] = bare
        folk_bits, _ = evaluate_nll(net, data, folk, meter=False, condition=False)
        results[f"{arch}_bits_folk_no_features"] = folk_bits
        print(f"     without meter or performer features: {bare:.4f} bits/step = {bare / markov:.3f} x Markov; "
              f"folk lines only: {folk_bits:.4f} = {folk_bits / markov_folk:.3f} x Markov")

    primes = pick_primes(data, N_CONTINUATIONS)
    print(f"\n{len(primes)} held-out primes of {PRIME_BARS} bars, {CONTINUE_BARS}-bar continuations at T=1.0")
    tables = {r: training_phrases(data, r) for r in (False, True)}
    real_sets = {r: [] for r in (False, True)}
    real_key = [0, 0]
    for i in primes:
        prime, real, meter, origin, end = prime_of(data, i)
        a, b = in_key_share(prime, real)
        real_key[0] += a
        real_key[1] += b
        for r in (False, True):
            real_sets[r].append(phrases(real, r))
    results["real_in_key"] = real_key[0] / max(1, real_key[1])
    for arch in ("gru", "lstm"):
        model = MelodyModel(Path(args.models) / f"melody-{arch}.onnx")
        in_key = [0, 0]
        gen_sets = {r: [] for r in (False, True)}
        t = time.time()
        for n, i in enumerate(primes):
            prime, real, meter, origin, end = prime_of(data, i)
            gen = continuation(model, prime, meter, origin, end, seed=n)
            a, b = in_key_share(prime, gen)
            in_key[0] += a
            in_key[1] += b
            for r in (False, True):
                gen_sets[r].append(phrases(gen, r))
        share = in_key[0] / max(1, in_key[1])
        results[f"{arch}_in_key"] = share
        results[f"{arch}_generated_notes"] = in_key[1]
        print(f"{arch.upper():4s} {in_key[1]} notes, {100 * share:.1f}% in the prime's key "
              f"({'meets' if share >= 0.9 else 'MISSES'} the 90% target)   ({time.time() - t:.0f} s)")
        report_copies(results, arch, gen_sets, tables)
    print(f"real next {CONTINUE_BARS} bars of the same tunes: {100 * results['real_in_key']:.1f}% in key")
    report_copies(results, "real", real_sets, tables)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
