"""The melody representation: stepped 16th-note tokens plus per-step features.

One step is a 16th note (``STEPS_PER_QUARTER`` = 4 steps per quarter note). Each step holds one
token of a monophonic line, as in Magenta's MelodyRNN:

- ``REST``  — nothing sounds (a sounding note ends at the start of this step);
- ``HOLD``  — the note sounding in the previous step goes on;
- ``NOTE_BASE + (pitch - MIN_PITCH)`` — a new note starts (and any previous one ends).

Beside the previous token, the model sees a feature vector for the step it is about to predict
(``N_FEATURES`` floats):

- meter (``METER_FEATURES``): whether a meter is known, bar start, beat start, the step's place in
  its beat (one-hot, 8) and the beat's place in its bar (one-hot, 8). With no clock and no meter
  (a phrase played freely) all of these are 0: the model was trained with meter dropped on part
  of the data, so it still works;
- the performer (``CONDITION_FEATURES``): the pitch classes the performer sounded during the
  previous step (12) and whether the performer is present at all (1). Only the previous step is
  used, so the same rule holds live, where the current step is not yet known.

Token *t* is predicted from token *t-1* and the features of step *t*. Nothing here imports torch:
the run time and the training code share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEPS_PER_QUARTER = 4
MIN_PITCH = 36  # C2
MAX_PITCH = 96  # C7
N_PITCHES = MAX_PITCH - MIN_PITCH + 1
REST = 0
HOLD = 1
NOTE_BASE = 2
VOCAB_SIZE = NOTE_BASE + N_PITCHES

MAX_STEP_IN_BEAT = 8  # one-hot slots; a half-note beat has 8 steps
MAX_BEAT_IN_BAR = 8  # beats past the 8th share the last slot
METER_FEATURES = 3 + MAX_STEP_IN_BEAT + MAX_BEAT_IN_BAR
CONDITION_FEATURES = 13
N_FEATURES = METER_FEATURES + CONDITION_FEATURES
F_KNOWN, F_BAR, F_BEAT, F_STEP0 = 0, 1, 2, 3
F_BEAT0 = F_STEP0 + MAX_STEP_IN_BEAT
F_CHROMA0 = METER_FEATURES
F_PRESENT = METER_FEATURES + 12

# Pitch classes of the major scale and of the minor scale (natural, with the raised 7th of the
# harmonic minor), relative to the tonic.
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)


def note_token(pitch: int) -> int:
    return NOTE_BASE + int(pitch) - MIN_PITCH


def token_pitch(token: int) -> int | None:
    return MIN_PITCH + token - NOTE_BASE if token >= NOTE_BASE else None


@dataclass(frozen=True)
class Meter:
    """A meter in steps: ``bar_steps`` steps per bar, ``beat_steps`` steps per beat."""

    bar_steps: int = 16
    beat_steps: int = 4

    @classmethod
    def from_time_signature(cls, numerator: int, denominator: int) -> "Meter":
        """4/4 → 16 steps in beats of 4; 6/8 → 12 steps in beats of 6 (dotted quarters)."""
        if numerator <= 0 or denominator <= 0:
            return cls()
        unit = 4 * STEPS_PER_QUARTER / denominator  # steps per denominator note
        bar = numerator * unit
        if bar != int(bar) or bar < 1:
            return cls()
        if denominator >= 8 and numerator % 3 == 0 and numerator > 3:
            beat = 3 * unit  # compound meter: dotted beats
        else:
            beat = unit
        beat = max(1, int(beat)) if beat == int(beat) else 1
        return cls(int(bar), beat)


def meter_features(pos_in_bar: int | None, meter: Meter | None, out: np.ndarray | None = None) -> np.ndarray:
    """The meter part of a step's features, for a step ``pos_in_bar`` steps after a bar line.

    ``pos_in_bar`` None (or ``meter`` None) means no meter is known: all zeros.
    """
    if out is None:
        out = np.zeros(METER_FEATURES, np.float32)
    else:
        out[:METER_FEATURES] = 0.0
    if pos_in_bar is None or meter is None:
        return out
    pos = int(pos_in_bar) % meter.bar_steps
    out[F_KNOWN] = 1.0
    out[F_BAR] = 1.0 if pos == 0 else 0.0
    step_in_beat = pos % meter.beat_steps
    out[F_BEAT] = 1.0 if step_in_beat == 0 else 0.0
    out[F_STEP0 + min(step_in_beat, MAX_STEP_IN_BEAT - 1)] = 1.0
    out[F_BEAT0 + min(pos // meter.beat_steps, MAX_BEAT_IN_BAR - 1)] = 1.0
    return out


def meter_codes(bar_positions: np.ndarray, beat_steps: np.ndarray) -> np.ndarray:
    """Vectorised meter features for many steps.

    ``bar_positions`` int array (steps since the bar line; -1 = no meter), ``beat_steps`` the beat
    length in steps of each step. Returns float32 array, shape (n, METER_FEATURES).
    """
    n = len(bar_positions)
    out = np.zeros((n, METER_FEATURES), np.float32)
    known = bar_positions >= 0
    pos = np.where(known, bar_positions, 0)
    beat = np.maximum(beat_steps, 1)
    step_in_beat = pos % beat
    beat_in_bar = pos // beat
    rows = np.flatnonzero(known)
    out[rows, F_KNOWN] = 1.0
    out[rows, F_BAR] = (pos[rows] == 0)
    out[rows, F_BEAT] = (step_in_beat[rows] == 0)
    out[rows, F_STEP0 + np.minimum(step_in_beat[rows], MAX_STEP_IN_BEAT - 1)] = 1.0
    out[rows, F_BEAT0 + np.minimum(beat_in_bar[rows], MAX_BEAT_IN_BAR - 1)] = 1.0
    return out


def condition_codes(chroma_masks: np.ndarray, present: np.ndarray | bool) -> np.ndarray:
    """Performer features for many steps from 12-bit pitch-class masks of the *previous* step.

    Returns float32 array, shape (n, CONDITION_FEATURES).
    """
    masks = np.asarray(chroma_masks, np.int64)
    out = np.zeros((len(masks), CONDITION_FEATURES), np.float32)
    out[:, :12] = (masks[:, None] >> np.arange(12)) & 1
    out[:, 12] = present
    return out


def chroma_mask(pitches) -> int:
    mask = 0
    for p in pitches:
        mask |= 1 << (int(p) % 12)
    return mask


def notes_to_tokens(notes, total_steps: int | None = None) -> np.ndarray:
    """(start_step, end_step, pitch) notes of one line → token array (uint8).

    Overlaps are resolved by the later note (a monophonic line); notes outside the pitch range are
    folded into it by octaves.
    """
    notes = sorted((int(s), int(e), int(p)) for s, e, p in notes)
    end = max((e for _, e, _ in notes), default=0)
    n = max(end, total_steps or 0)
    tokens = np.full(n, REST, np.uint8)
    for start, stop, pitch in notes:
        if stop <= start or start >= n:
            continue
        tokens[start] = note_token(fold_pitch(pitch))
        tokens[start + 1 : stop] = HOLD
        # A later note's start overwrites this note's holds, which ends this note there.
    return tokens


def tokens_to_notes(tokens) -> list[tuple[int, int, int]]:
    """Token array → (start_step, end_step, pitch) notes; a HOLD after a REST is a REST."""
    notes = []
    current = None
    for i, tok in enumerate(tokens):
        tok = int(tok)
        if tok == HOLD and current is not None:
            continue
        if current is not None:
            notes.append((current[0], i, current[1]))
            current = None
        if tok >= NOTE_BASE:
            current = (i, MIN_PITCH + tok - NOTE_BASE)
    if current is not None:
        notes.append((current[0], len(tokens), current[1]))
    return notes


def fold_pitch(pitch: int) -> int:
    while pitch < MIN_PITCH:
        pitch += 12
    while pitch > MAX_PITCH:
        pitch -= 12
    return pitch


# Krumhansl-Kessler key profiles (probe-tone ratings), index 0 = tonic.
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(notes) -> tuple[int, str]:
    """(tonic pitch class, 'major' | 'minor') of (start, end, pitch) notes, by duration-weighted
    correlation with the Krumhansl-Kessler profiles."""
    hist = np.zeros(12)
    for start, end, pitch in notes:
        hist[pitch % 12] += max(1, end - start)
    if hist.sum() == 0:
        return 0, "major"
    best = (-2.0, 0, "major")
    for tonic in range(12):
        for mode, profile in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE)):
            r = np.corrcoef(hist, np.roll(profile, tonic))[0, 1]
            if np.isfinite(r) and r > best[0]:
                best = (r, tonic, mode)
    return best[1], best[2]


def scale_pitch_classes(tonic: int, mode: str) -> frozenset[int]:
    steps = MAJOR_SCALE if mode == "major" else MINOR_SCALE
    return frozenset((tonic + s) % 12 for s in steps)
