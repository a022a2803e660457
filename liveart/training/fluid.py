"""FluidSynth through its C library (Debian ``libfluidsynth3``, installed with ``fluidsynth``), for
rendering reference notes: one note at a time, float samples, no reverb or chorus.

A small ctypes binding rather than a PyPI wrapper: the calls needed are few, and float output
(``fluid_synth_write_float``) keeps soft notes free of 16-bit quantisation noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import numpy as np

from ..errors import LiveartError

SOUNDFONT_CANDIDATES = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
)
LIBRARY_NAMES = ("libfluidsynth.so.3", "libfluidsynth.so.2", "libfluidsynth.so")
SYNTH_GAIN = 0.5
RENDER_CHUNK_FRAMES = 4096


class FluidError(LiveartError):
    """FluidSynth or its SoundFont is missing or failed."""


def find_soundfont(path: str | Path | None = None) -> Path:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FluidError(f"SoundFont not found: {p}")
        return p
    for p in SOUNDFONT_CANDIDATES:
        if p.is_file():
            return p
    raise FluidError("FluidR3_GM.sf2 not found; install the Debian package fluid-soundfont-gm "
                     "(scripts/setup.sh does)")


def _load_library() -> ctypes.CDLL:
    names = list(LIBRARY_NAMES)
    found = ctypes.util.find_library("fluidsynth")
    if found:
        names.append(found)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        vp, ci, cd, cc = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_char_p
        lib.new_fluid_settings.restype = vp
        lib.fluid_settings_setnum.argtypes = (vp, cc, cd)
        lib.fluid_settings_setint.argtypes = (vp, cc, ci)
        lib.new_fluid_synth.restype = vp
        lib.new_fluid_synth.argtypes = (vp,)
        lib.fluid_synth_sfload.argtypes = (vp, cc, ci)
        lib.fluid_synth_program_select.argtypes = (vp, ci, ci, ci, ci)
        lib.fluid_synth_noteon.argtypes = (vp, ci, ci, ci)
        lib.fluid_synth_noteoff.argtypes = (vp, ci, ci)
        lib.fluid_synth_all_sounds_off.argtypes = (vp, ci)
        lib.fluid_synth_system_reset.argtypes = (vp,)
        lib.fluid_synth_write_float.argtypes = (vp, ci, vp, ci, ci, vp, ci, ci)
        lib.delete_fluid_synth.argtypes = (vp,)
        lib.delete_fluid_settings.argtypes = (vp,)
        return lib
    raise FluidError("the FluidSynth library (libfluidsynth) is not installed; install the Debian "
                     "package fluidsynth (scripts/setup.sh does)")


class FluidNotes:
    """Renders single notes of General MIDI programs, dry (no reverb, no chorus), mono float32."""

    def __init__(self, sample_rate: int = 48000, soundfont: str | Path | None = None):
        self.sample_rate = int(sample_rate)
        self.soundfont = find_soundfont(soundfont)
        lib = self._lib = _load_library()
        self._settings = lib.new_fluid_settings()
        lib.fluid_settings_setnum(self._settings, b"synth.sample-rate", float(self.sample_rate))
        lib.fluid_settings_setnum(self._settings, b"synth.gain", SYNTH_GAIN)
        lib.fluid_settings_setint(self._settings, b"synth.reverb.active", 0)
        lib.fluid_settings_setint(self._settings, b"synth.chorus.active", 0)
        lib.fluid_settings_setint(self._settings, b"synth.cpu-cores", 1)
        self._synth = lib.new_fluid_synth(self._settings)
        if not self._synth:
            raise FluidError("FluidSynth could not create a synthesizer")
        self._sfont = lib.fluid_synth_sfload(self._synth, str(self.soundfont).encode(), 1)
        if self._sfont < 0:
            raise FluidError(f"FluidSynth could not load {self.soundfont}")
        self._left = np.zeros(RENDER_CHUNK_FRAMES, np.float32)
        self._right = np.zeros(RENDER_CHUNK_FRAMES, np.float32)

    def close(self) -> None:
        if self._synth:
            self._lib.delete_fluid_synth(self._synth)
            self._lib.delete_fluid_settings(self._settings)
            self._synth = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _render(self, frames: int) -> np.ndarray:
        out = np.empty(frames, np.float32)
        done = 0
        while done < frames:
            n = min(RENDER_CHUNK_FRAMES, frames - done)
            self._lib.fluid_synth_write_float(self._synth, n, self._left.ctypes.data, 0, 1,
                                              self._right.ctypes.data, 0, 1)
            out[done : done + n] = self._left[:n] + self._right[:n]
            done += n
        return out

    def note(self, program: int, note: int, velocity: int, hold_seconds: float, tail_seconds: float,
             channel: int = 0) -> np.ndarray:
        """One note from silence: shape (frames,), mono (left + right), float32; the note-on is
        frame 0, the note-off at round(hold_seconds * sample_rate)."""
        lib, synth = self._lib, self._synth
        lib.fluid_synth_system_reset(synth)
        lib.fluid_synth_program_select(synth, channel, self._sfont, 128 if channel == 9 else 0, program)
        hold = int(round(hold_seconds * self.sample_rate))
        tail = int(round(tail_seconds * self.sample_rate))
        lib.fluid_synth_noteon(synth, channel, note, velocity)
        held = self._render(hold)
        lib.fluid_synth_noteoff(synth, channel, note)
        released = self._render(tail)
        lib.fluid_synth_all_sounds_off(synth, -1)
        self._render(RENDER_CHUNK_FRAMES)  # let the voices die before the next note
        return np.concatenate([held, released])
