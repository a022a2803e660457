"""Check what the README's first command wrote: out/demo.wav, out/demo.mid and out/demo.mp4.

    .venv/bin/python scripts/check_demo.py [OUT_DIR]

Needs only liveart's base dependencies and ffprobe (Debian's ffmpeg), so it runs right after
`bash scripts/demo.sh` in a fresh clone. Prints one line per file; exits 1 at the first problem.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mido
import soundfile

MIN_SECONDS = 60.0  # two chorales and 8 generated bars last well over a minute
TAIL_SECONDS = 5.0  # the longest release of the default patch, with room
VIDEO_SIZE = 512
VIDEO_FPS = 30.0


class CheckError(Exception):
    pass


def check_midi(path: Path) -> float:
    """The MIDI file's length in seconds; it must hold notes on at least 2 tracks (the piece and the
    model's part)."""
    midi = mido.MidiFile(path)
    tracks_with_notes = sum(any(m.type == "note_on" and m.velocity > 0 for m in t) for t in midi.tracks)
    if tracks_with_notes < 2:
        raise CheckError(f"{path}: notes on {tracks_with_notes} tracks; expected the piece and the model's part")
    if midi.length < MIN_SECONDS:
        raise CheckError(f"{path}: {midi.length:.1f} s long; expected at least {MIN_SECONDS:.0f} s")
    print(f"{path}: {len(midi.tracks)} tracks, {tracks_with_notes} with notes, {midi.length:.2f} s")
    return midi.length


def check_wav(path: Path, midi_seconds: float) -> float:
    """The WAV's length in seconds: the MIDI's length plus at most the release tail, and not silent."""
    audio, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    seconds = len(audio) / sample_rate
    if not midi_seconds - 0.05 <= seconds <= midi_seconds + TAIL_SECONDS:
        raise CheckError(f"{path}: {seconds:.2f} s of audio for {midi_seconds:.2f} s of MIDI")
    peak = float(abs(audio).max())
    if not 0.01 < peak <= 1.0:
        raise CheckError(f"{path}: peak {peak:.4f}; expected sound that does not clip")
    print(f"{path}: {audio.shape[1]} channels at {sample_rate} Hz, {seconds:.2f} s, peak {peak:.3f}")
    return seconds


def check_mp4(path: Path, audio_seconds: float) -> None:
    """An H.264 video stream of the shown size and rate and an AAC audio stream, both as long as the audio."""
    proc = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                           "stream=codec_type,codec_name,width,height,avg_frame_rate,nb_read_frames,duration",
                           "-of", "json", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckError(f"{path}: ffprobe cannot read it: {proc.stderr.strip()}")
    streams = {s["codec_type"]: s for s in json.loads(proc.stdout)["streams"]}
    video, audio = streams.get("video"), streams.get("audio")
    if video is None or audio is None:
        raise CheckError(f"{path}: streams {sorted(streams)}; expected video and audio")
    if (video["codec_name"], audio["codec_name"]) != ("h264", "aac"):
        raise CheckError(f"{path}: codecs {video['codec_name']}/{audio['codec_name']}; expected h264/aac")
    if (video["width"], video["height"]) != (VIDEO_SIZE, VIDEO_SIZE):
        raise CheckError(f"{path}: {video['width']}x{video['height']}; expected {VIDEO_SIZE}x{VIDEO_SIZE}")
    num, den = map(int, video["avg_frame_rate"].split("/"))
    frames = int(video["nb_read_frames"])
    if num / den != VIDEO_FPS or abs(frames / VIDEO_FPS - audio_seconds) > 1.0:
        raise CheckError(f"{path}: {frames} frames at {num}/{den} fps for {audio_seconds:.2f} s of audio")
    if abs(float(audio["duration"]) - audio_seconds) > 1.0:
        raise CheckError(f"{path}: {float(audio['duration']):.2f} s of sound for {audio_seconds:.2f} s rendered")
    print(f"{path}: h264 {VIDEO_SIZE}x{VIDEO_SIZE}, {frames} frames at {VIDEO_FPS:.0f} fps, "
          f"aac {float(audio['duration']):.2f} s")


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("out")
    try:
        midi_seconds = check_midi(out / "demo.mid")
        audio_seconds = check_wav(out / "demo.wav", midi_seconds)
        check_mp4(out / "demo.mp4", audio_seconds)
    except (CheckError, OSError, ValueError, KeyError) as e:
        print(f"check_demo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
