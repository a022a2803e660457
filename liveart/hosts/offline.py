"""Offline render: a MIDI file in, a WAV (or FLAC) out, through the same engine as live play.

The output appears atomically: audio goes to a temporary file beside the target and is renamed
over it only when complete, so an interrupted or failed render never leaves a truncated file under
the target name. The mix is rendered in full first, then scaled down if its peak would clip.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import Engine
from ..errors import OutputError, RenderError
from ..midi.files import read_midi_file
from ..patch import SAMPLE_RATES, Patch, load_patch

OFFLINE_BLOCK_FRAMES = 16384
MAX_BLOCK_FRAMES = 1 << 16
CLIP_LEVEL = 0.999  # peaks above this are scaled down ...
NORMALISE_TO = 0.98  # ... to this
TAIL_MARGIN_SECONDS = 0.05  # rendered beyond the longest release
SILENCE_LEVEL = 1e-6  # the tail is cut after the last sample above this (-120 dBFS) ...
TAIL_KEEP_SECONDS = 0.01  # ... plus this much
WRITE_CHUNK_FRAMES = 1 << 18
# Mixes larger than this (46.6 min of stereo float32 at 48 kHz) go through a memory-mapped file.
IN_MEMORY_LIMIT_BYTES = 1 << 30
DEFAULT_MAX_MINUTES = 60.0
SUBTYPES = {"pcm16": "PCM_16", "pcm24": "PCM_24", "float": "FLOAT"}
OUTPUT_SUFFIXES = (".wav", ".flac")


@dataclass
class RenderReport:
    output: Path
    duration_seconds: float
    sample_rate: int
    notes: int
    peak: float  # before any scaling, linear
    gain_db: float  # applied to avoid clipping; 0 when none was needed
    wall_seconds: float
    stolen_voices: int
    hard_cuts: int

    def summary(self) -> str:
        return (f"wrote {self.output} ({self.duration_seconds:.1f} s, {self.sample_rate} Hz, {self.notes} notes, "
                f"rendered in {self.wall_seconds:.2f} s)")


def check_output_path(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(f"{path}: the output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write there; the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write there; the directory {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{path}: the file exists and is not writable")


def render(midi_path: str | Path, wav_path: str | Path, patch: Patch | str | Path | None = None,
           sample_rate: int | None = None, block_frames: int | None = None, seed: int = 0,
           audio_format: str = "pcm16", max_minutes: float = DEFAULT_MAX_MINUTES,
           progress: bool = False, melody: dict | None = None, midi_out: str | Path | None = None) -> RenderReport:
    """Render ``midi_path`` to ``wav_path``. Raises LiveartError subclasses on bad input.

    ``melody``: ``{"settings": PlaySettings, "bars": N, "model": name or path}`` lets the melody model
    continue the piece (see :mod:`liveart.hosts.generate`); ``midi_out`` then receives the MIDI played.
    """
    started = time.perf_counter()
    wav_path = Path(wav_path)
    patch = patch if isinstance(patch, Patch) else load_patch(patch)
    sample_rate = int(sample_rate or patch.audio.sample_rate)
    if sample_rate not in SAMPLE_RATES:
        raise RenderError(f"sample rate {sample_rate} Hz is not supported; use one of "
                          f"{', '.join(map(str, SAMPLE_RATES))}")
    block_frames = int(block_frames or OFFLINE_BLOCK_FRAMES)
    if not 1 <= block_frames <= MAX_BLOCK_FRAMES:
        raise RenderError(f"block size {block_frames} is not allowed; use 1 to {MAX_BLOCK_FRAMES} frames")
    if audio_format not in SUBTYPES:
        raise RenderError(f"audio format {audio_format!r} is not known; use one of {', '.join(SUBTYPES)}")
    if not (max_minutes > 0 and math.isfinite(max_minutes)):
        raise RenderError(f"--max-minutes must be a positive number, not {max_minutes}")
    check_output_path(wav_path)
    if Path(midi_path).exists() and wav_path.exists() and os.path.samefile(midi_path, wav_path):
        raise OutputError(f"{wav_path}: is the input file; give another output name")

    combined = None
    if melody is not None:
        prime = read_midi_file(midi_path)  # the input's own checks (and its length) first
        if prime.duration_seconds > max_minutes * 60.0:
            raise RenderError(f"{midi_path}: the piece lasts {_duration_text(prime.duration_seconds)}; "
                              f"the limit is {max_minutes:g} min (raise it with --max-minutes)")
        from .generate import check_midi_output, combined_midi, generate
        from ..melody.model import MelodyModel
        from ..midi.files import read_midi_notes

        if midi_out is not None:
            check_midi_output(Path(midi_out), Path(midi_path))
        source = read_midi_notes(midi_path)
        result = generate(source, MelodyModel(melody.get("model")), melody["settings"], bars=melody["bars"],
                          seed=melody.get("seed", seed), cc_map=patch.cc_map())
        combined = combined_midi(result, patch.melody.program)
        performance = read_midi_file(midi_path, midi=combined)
    else:
        performance = read_midi_file(midi_path)
    if performance.duration_seconds > max_minutes * 60.0:
        raise RenderError(f"{midi_path}: the piece lasts {_duration_text(performance.duration_seconds)}; "
                          f"the limit is {max_minutes:g} min (raise it with --max-minutes)")

    engine = Engine(patch, sample_rate=sample_rate, seed=seed)
    engine.reserve(block_frames)
    engine.schedule_many(performance.to_events(sample_rate))
    end_frame = int(round(performance.duration_seconds * sample_rate))
    engine.all_notes_off(end_frame)  # notes the file never ends still end
    tail = patch.max_release_seconds() + TAIL_MARGIN_SECONDS
    total = end_frame + int(math.ceil(tail * sample_rate))

    import soundfile  # lazy: only rendering needs libsndfile

    parent = wav_path.parent if str(wav_path.parent) else Path(".")
    temp_paths: list[str] = []
    try:
        # Both temporary files exist before any rendering, so an unwritable place fails at once.
        temp_out = _temp_file(parent, f".{wav_path.name}.", ".part" + wav_path.suffix, wav_path, temp_paths)
        mix = _mix_buffer(total, parent, temp_paths)
        peak = _render_blocks(engine, mix, block_frames, progress, sample_rate)
        # Cut the silent end of the tail (keeping a few ms), now that it is known.
        sounding = np.flatnonzero(np.max(np.abs(mix[end_frame:]), axis=1) > SILENCE_LEVEL)
        tail_frames = int(sounding[-1]) + 1 + int(TAIL_KEEP_SECONDS * sample_rate) if len(sounding) else 0
        length = min(end_frame + tail_frames, total)
        gain = NORMALISE_TO / peak if peak > CLIP_LEVEL else 1.0
        try:
            # soundfile gets an open file, not a name, so any name the OS accepts works.
            with open(temp_out, "wb") as raw, soundfile.SoundFile(
                    raw, "w", samplerate=sample_rate, channels=2, subtype=SUBTYPES[audio_format],
                    format="FLAC" if wav_path.suffix.lower() == ".flac" else "WAV") as f:
                for i in range(0, length, WRITE_CHUNK_FRAMES):
                    chunk = mix[i : min(i + WRITE_CHUNK_FRAMES, length)]
                    if gain != 1.0:
                        chunk = chunk * np.float32(gain)
                    if audio_format == "pcm16":  # numpy rounds faster than libsndfile converts
                        chunk = np.rint(np.clip(chunk, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
                    f.write(chunk)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp_out, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
            temp_midi = None
            if combined is not None and midi_out is not None:
                # The MIDI is written before the audio is put in place: both appear, or neither.
                from .generate import write_midi_temp

                temp_midi = write_midi_temp(combined, Path(midi_out))
                temp_paths.append(temp_midi)
            os.replace(temp_out, wav_path)
            if temp_midi is not None:
                os.replace(temp_midi, midi_out)
                temp_paths.remove(temp_midi)
        except (OSError, RuntimeError) as e:  # soundfile raises RuntimeError-derived LibsndfileError
            raise OutputError(f"{wav_path}: cannot write the audio ({e})") from e
        temp_paths.remove(temp_out)
    finally:
        for p in temp_paths:
            try:
                os.unlink(p)
            except OSError:
                pass
    return RenderReport(
        output=wav_path, duration_seconds=length / sample_rate, sample_rate=sample_rate,
        notes=performance.note_count, peak=peak,
        gain_db=20.0 * math.log10(gain) if gain != 1.0 else 0.0,
        wall_seconds=time.perf_counter() - started, stolen_voices=engine.stats.stolen_voices,
        hard_cuts=engine.stats.hard_cuts,
    )


def _temp_file(directory: Path, prefix: str, suffix: str, target: Path, temp_paths: list[str]) -> str:
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    except (OSError, UnicodeError) as e:
        raise OutputError(f"{target}: cannot write there ({e})") from e
    os.close(fd)
    temp_paths.append(name)
    return name


def _mix_buffer(frames: int, directory: Path, temp_paths: list[str]) -> np.ndarray:
    if frames * 2 * 4 <= IN_MEMORY_LIMIT_BYTES:
        return np.zeros((frames, 2), np.float32)
    name = _temp_file(directory, ".liveart-mix.", ".f32", directory, temp_paths)
    try:
        # Reserve the space now: a full disk is an error here, not a crash while rendering.
        with open(name, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, frames * 2 * 4)
        return np.memmap(name, dtype=np.float32, mode="r+", shape=(frames, 2))
    except OSError as e:
        raise OutputError(f"{directory}: no room for the mix of a long render ({e})") from e


def _render_blocks(engine: Engine, mix: np.ndarray, block_frames: int, progress: bool, sample_rate: int) -> float:
    from tqdm import tqdm

    total = len(mix)
    peak = 0.0
    with tqdm(total=total / sample_rate, unit="s", disable=not progress, delay=0.5, file=sys.stderr,
              leave=False, desc="rendering",
              bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]") as bar:
        for start in range(0, total, block_frames):
            block = mix[start : min(start + block_frames, total)]
            engine.render_into(block)
            peak = max(peak, engine.state.peak)
            bar.update(len(block) / sample_rate)
    return peak


def _duration_text(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"

