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
TAIL_MARGIN_SECONDS = 0.05
IN_MEMORY_LIMIT_BYTES = 1 << 30  # larger mixes go through a memory-mapped temporary file
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
    late_events: int
    stolen_voices: int

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
           progress: bool = False) -> RenderReport:
    """Render ``midi_path`` to ``wav_path``. Raises LiveartError subclasses on bad input."""
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
        mix = _mix_buffer(total, parent, temp_paths)
        peak = _render_blocks(engine, mix, block_frames, progress, sample_rate)
        # Cut the silent end of the tail (keeping a few ms), now that it is known.
        sounding = np.flatnonzero(np.max(np.abs(mix[end_frame:]), axis=1) > 1e-6)
        length = end_frame + (int(sounding[-1]) + 1 + int(0.01 * sample_rate) if len(sounding) else 0)
        length = min(length, total)
        gain = NORMALISE_TO / peak if peak > CLIP_LEVEL else 1.0
        fd, temp_out = tempfile.mkstemp(prefix=f".{wav_path.name}.", suffix=".part" + wav_path.suffix, dir=parent)
        os.close(fd)
        temp_paths.append(temp_out)
        try:
            with soundfile.SoundFile(temp_out, "w", samplerate=sample_rate, channels=2,
                                     subtype=SUBTYPES[audio_format],
                                     format="FLAC" if wav_path.suffix.lower() == ".flac" else "WAV") as f:
                step = 1 << 18
                for i in range(0, length, step):
                    chunk = mix[i : min(i + step, length)]
                    if gain != 1.0:
                        chunk = chunk * np.float32(gain)
                    if audio_format == "pcm16":  # numpy rounds faster than libsndfile converts
                        chunk = np.rint(np.clip(chunk, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
                    f.write(chunk)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp_out, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
            os.replace(temp_out, wav_path)
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
        wall_seconds=time.perf_counter() - started, late_events=engine.stats.late_events,
        stolen_voices=engine.stats.stolen_voices,
    )


def _mix_buffer(frames: int, directory: Path, temp_paths: list[str]) -> np.ndarray:
    if frames * 2 * 4 <= IN_MEMORY_LIMIT_BYTES:
        return np.zeros((frames, 2), np.float32)
    try:
        fd, name = tempfile.mkstemp(prefix=".liveart-mix.", suffix=".f32", dir=directory)
        os.close(fd)
        temp_paths.append(name)
        return np.memmap(name, dtype=np.float32, mode="w+", shape=(frames, 2))
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

