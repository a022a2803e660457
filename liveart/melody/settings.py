"""The melody model's settings: what a patch, a command line or a controller sets, validated. Pure
configuration, so that liveart.patch stays configuration too: it needs none of the run time
(:mod:`liveart.melody.play`, :mod:`liveart.melody.model`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import representation as rep

MODES = ("answer", "continue", "accompany", "free")
KEY_LOCK_MODES = ("off", "auto")


@dataclass
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 0.95
    density: float = 1.0  # > 1 more new notes, < 1 fewer (scales their probability)
    key_lock: frozenset[int] | None = None  # allowed pitch classes, or None
    low_pitch: int = rep.MIN_PITCH
    high_pitch: int = rep.MAX_PITCH

    def validate(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], not {self.top_p}")
        if not (self.density > 0 and math.isfinite(self.density)):
            raise ValueError(f"density must be a positive number, not {self.density}")
        if not rep.MIN_PITCH <= self.low_pitch <= self.high_pitch <= rep.MAX_PITCH:
            raise ValueError(f"the note range must lie within {rep.MIN_PITCH}-{rep.MAX_PITCH}, low <= high; "
                             f"got {self.low_pitch}-{self.high_pitch}")
        if self.key_lock is not None and not any(
                (p % 12) in self.key_lock for p in range(self.low_pitch, self.high_pitch + 1)):
            raise ValueError("the key lock leaves no note inside the note range")


@dataclass(frozen=True)
class PlaySettings:
    mode: str = "answer"
    temperature: float = 1.0
    top_p: float = 0.95
    density: float = 1.0
    answer_ratio: float = 1.0  # answer length / phrase length
    continue_bars: int = 4
    silence_seconds: float = 0.6
    wait_for_bar: bool = True
    key_lock: str = "off"  # "off", "auto" (from what the player played) or a key such as "D minor"
    low_pitch: int = 48
    high_pitch: int = 88
    velocity: int = 0  # 0 = follow the player's
    accompany_tail_bars: float = 1.0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 0.05 <= self.answer_ratio <= 8:
            raise ValueError(f"answer length must be 0.05 to 8 times the phrase, not {self.answer_ratio}")
        if not 1 <= self.continue_bars <= 1024:
            raise ValueError(f"bars must be 1 to 1024, not {self.continue_bars}")
        if not 0 <= self.silence_seconds <= 60:
            raise ValueError(f"silence must be 0 to 60 s, not {self.silence_seconds}")
        if not 0 <= self.velocity <= 127:
            raise ValueError(f"velocity must be 0 (follow the player) to 127, not {self.velocity}")
        if not 0.05 <= self.temperature <= 5:
            raise ValueError(f"temperature must be 0.05 to 5, not {self.temperature}")
        if not 0.05 <= self.density <= 10:
            raise ValueError(f"density must be 0.05 to 10, not {self.density}")
        key = parse_key(self.key_lock)
        lock = rep.scale_pitch_classes(*key) if key else None
        self.sampling(lock).validate()

    def sampling(self, lock: frozenset[int] | None) -> SamplingSettings:
        return SamplingSettings(self.temperature, self.top_p, self.density, lock, self.low_pitch, self.high_pitch)


_PITCH_CLASSES = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}


def parse_key(text: str) -> tuple[int, str] | None:
    """'off'/'auto' → None; 'D minor', 'Bb major', 'f#' (minor when lower case) → (tonic, mode)."""
    t = text.strip()
    if t.lower() in KEY_LOCK_MODES:
        return None
    parts = t.split()
    if not parts or len(parts) > 2 or parts[0][0].lower() not in _PITCH_CLASSES:
        raise ValueError(f"key lock must be off, auto or a key such as 'D minor' or 'Bb major', not {text!r}")
    name = parts[0]
    tonic = _PITCH_CLASSES[name[0].lower()]
    for accidental in name[1:]:
        if accidental in "#♯":
            tonic += 1
        elif accidental in "b♭":
            tonic -= 1
        else:
            raise ValueError(f"key lock: {name!r} is not a note name (use e.g. C, F#, Bb)")
    if len(parts) == 2:
        mode = parts[1].lower()
        if mode not in ("major", "minor"):
            raise ValueError(f"key lock: {parts[1]!r} must be major or minor")
    else:
        mode = "minor" if name[0].islower() else "major"
    return tonic % 12, mode
