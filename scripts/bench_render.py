"""Benchmark offline rendering: liveart against FluidSynth, whole processes, wall-clock time.

    .venv/bin/python scripts/bench_render.py [--midi FILE] [--runs N] [--skip-offline | --skip-synth]

Each renderer turns the same MIDI file into a WAV file at the same sample rate, ``--runs`` times
after ``--warmup`` untimed runs, the two renderers taking turns; every run is a fresh process
(start-up and SoundFont or model loading included), timed with ``time.perf_counter`` around it.
Prints median and minimum wall time, CPU time (user + system, all threads), peak memory of the
process, the audio duration, and the ratio liveart / FluidSynth.

Then the synth's cost per 128-frame block with 8, 16 and 32 sounding voices, rendered on this
thread as the live host does, as a share of the block's real-time duration.

liveart is the console script next to the Python running this file (``.venv/bin/liveart``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MIDI = REPO_ROOT / "scripts" / "bench" / "piece_5min.mid"
DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
DEFAULT_RUNS = 5
DEFAULT_WARMUP_RUNS = 1  # fills the page cache with the SoundFont / models before timing
DEFAULT_SAMPLE_RATE = 48000
STDERR_LINES_SHOWN = 3


class BenchError(Exception):
    """A renderer could not be run; the message says why and what to do."""


@dataclasses.dataclass
class Measurement:
    name: str
    wall_seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)  # user + system, all threads
    peak_rss_bytes: int | None = None
    audio_seconds: float | None = None
    error: str | None = None

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.wall_seconds)

    @property
    def min_seconds(self) -> float:
        return min(self.wall_seconds)


def fluidsynth_command(midi: Path, wav: Path, sample_rate: int, soundfont: Path) -> list[str]:
    return ["fluidsynth", "-ni", "-q", "-F", str(wav), "-r", str(sample_rate), str(soundfont),
            str(midi)]


def liveart_executable() -> Path:
    """The liveart console script installed beside the running Python."""
    return Path(sys.executable).parent / "liveart"


def liveart_command(midi: Path, wav: Path, sample_rate: int, patch: str | None = None) -> list[str]:
    command = [str(liveart_executable()), "render", str(midi), "-o", str(wav), "--sample-rate", str(sample_rate)]
    return command + (["--patch", patch] if patch else [])


def check_fluidsynth(soundfont: Path) -> None:
    if not _on_path("fluidsynth"):
        raise BenchError("fluidsynth is not installed; run scripts/setup.sh "
                         "(or apt-get install fluidsynth fluid-soundfont-gm)")
    if not soundfont.is_file():
        raise BenchError(f"SoundFont {soundfont} not found; install fluid-soundfont-gm "
                         "or pass --soundfont")


def check_liveart() -> None:
    executable = liveart_executable()
    if not executable.is_file():
        raise BenchError(f"liveart is not runnable: {executable} does not exist; run "
                         "scripts/setup.sh, then this script with .venv/bin/python")


def _on_path(program: str) -> bool:
    return any((Path(d) / program).is_file() for d in os.environ.get("PATH", "").split(os.pathsep))


def run_timed(command: list[str], workdir: Path) -> tuple[float, float | None, int | None]:
    """Run one process; return (wall seconds, CPU seconds, peak resident memory in bytes or None).

    Raises BenchError with the tail of stderr if the process fails.
    """
    stderr_path = workdir / "stderr.txt"
    with open(stderr_path, "w+b") as stderr:
        start = time.perf_counter()
        try:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                       cwd=workdir)
        except OSError as e:
            raise BenchError(f"cannot start {command[0]}: {e}") from e
        peak_rss = None
        cpu = None
        if hasattr(os, "wait4"):  # POSIX: the child's own resource usage, not all children's
            _, status, usage = os.wait4(process.pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
            process.returncode = returncode
            # ru_maxrss is in KiB on Linux, bytes on macOS.
            peak_rss = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
            cpu = usage.ru_utime + usage.ru_stime
        else:
            returncode = process.wait()
        elapsed = time.perf_counter() - start
        stderr.seek(0)
        stderr_text = stderr.read().decode(errors="replace")
    if returncode != 0:
        tail = "\n".join(stderr_text.strip().splitlines()[-STDERR_LINES_SHOWN:])
        raise BenchError(f"`{' '.join(command)}` exited with status {returncode}:\n{tail}")
    return elapsed, cpu, peak_rss


def wav_seconds(path: Path) -> float:
    try:
        import soundfile
    except ImportError:  # the stdlib reads the 16-bit PCM FluidSynth writes, not float WAV
        import wave
        with wave.open(str(path)) as w:
            return w.getnframes() / w.getframerate()
    info = soundfile.info(str(path))
    return info.frames / info.samplerate


def midi_seconds(path: Path) -> float | None:
    try:
        import mido
    except ImportError:
        return None
    return mido.MidiFile(path).length


def bench_offline(midi: Path, runs: int, warmup_runs: int, sample_rate: int,
                  soundfont: Path, patch: str | None = None) -> list[Measurement]:
    """Offline render of ``midi`` by FluidSynth and by liveart, runs interleaved (F, L, F, L, ...)
    so that a change in the machine's load hits both alike."""
    commands = {}
    results = {}
    try:
        check_fluidsynth(soundfont)
        commands["fluidsynth"] = lambda wav: fluidsynth_command(midi, wav, sample_rate, soundfont)
    except BenchError as e:
        results["fluidsynth"] = Measurement("fluidsynth", error=str(e))
    try:
        check_liveart()
        commands["liveart"] = lambda wav: liveart_command(midi, wav, sample_rate, patch)
    except BenchError as e:
        results["liveart"] = Measurement("liveart", error=str(e))
    for name in commands:
        results[name] = Measurement(name)
    with tempfile.TemporaryDirectory(prefix="bench-offline-") as tmp:
        workdir = Path(tmp)
        for run in range(warmup_runs + runs):
            for name, command_for in commands.items():
                result = results[name]
                if result.error:
                    continue
                wav = workdir / f"{name}.wav"
                try:
                    seconds, cpu, peak_rss = run_timed(command_for(wav), workdir)
                except BenchError as e:
                    result.error = str(e)
                    continue
                if run >= warmup_runs:
                    result.wall_seconds.append(seconds)
                    if cpu is not None:
                        result.cpu_seconds.append(cpu)
                if peak_rss is not None:
                    result.peak_rss_bytes = max(result.peak_rss_bytes or 0, peak_rss)
                result.audio_seconds = wav_seconds(wav)
    return [results[name] for name in ("fluidsynth", "liveart") if name in results]


def format_offline(results: list[Measurement], music_seconds: float | None) -> str:
    lines = [f"{'renderer':<12}{'median s':>10}{'min s':>9}{'CPU s':>8}{'x real time':>13}"
             f"{'peak MiB':>10}{'WAV s':>9}"]
    for r in results:
        if r.error:
            lines.append(f"{r.name:<12}failed")
            continue
        speed = f"{music_seconds / r.median_seconds:.0f}" if music_seconds else "?"
        rss = f"{r.peak_rss_bytes / 2**20:.0f}" if r.peak_rss_bytes else "?"
        cpu = f"{statistics.median(r.cpu_seconds):.2f}" if r.cpu_seconds else "?"
        lines.append(f"{r.name:<12}{r.median_seconds:>10.2f}{r.min_seconds:>9.2f}{cpu:>8}{speed:>13}"
                     f"{rss:>10}{r.audio_seconds:>9.2f}")
    ok = {r.name: r for r in results if not r.error}
    if "fluidsynth" in ok and "liveart" in ok:
        ratio = ok["liveart"].median_seconds / ok["fluidsynth"].median_seconds
        lines.append(f"liveart / fluidsynth (median wall time): {ratio:.2f}")
    for r in results:
        if r.error:
            lines.append(f"{r.name}: {r.error}")
    return "\n".join(lines)


BLOCK_FRAMES = 128
BLOCK_VOICES = (8, 16, 32)
BLOCK_REPEATS = 3000
# Programs whose presets sustain (flute-like, organ, pad, saw lead): every voice sounds throughout.
SUSTAINING_PROGRAMS = (73, 19, 48, 81)


def bench_synth_blocks(sample_rate: int, block_frames: int = BLOCK_FRAMES, voices=BLOCK_VOICES,
                       repeats: int = BLOCK_REPEATS) -> list[tuple]:
    """Cost of one engine block with N sounding voices, on this thread, as the live host renders.

    Two cases: voices left alone, and every channel moving its pitch bend and brightness (CC 74)
    every block, which makes the engine ramp every voice and rebuild its wavetable.
    Returns rows (case, voices asked, voices sounding, median us, p99 us, median as % of the block).
    """
    import numpy as np

    from liveart import events as ev
    from liveart.engine import Engine
    from liveart.patch import patch_from_dict

    # The synth alone: preset voices picked by GM family (the timbre model's cost is measured by
    # scripts/bench_timbre.py).
    patch = patch_from_dict({"channels": {"default": {"preset": "soft_flute", "follow_program": True}}})
    budget_us = block_frames / sample_rate * 1e6
    rows = []
    for moving in (False, True):
        for n in voices:
            engine = Engine(patch, sample_rate=sample_rate)
            engine.reserve(block_frames)
            channels = range(min(n, 8))  # 8 channels, none of them percussion
            for i in range(n):
                channel = i % 8
                engine.schedule(ev.program_change(0, channel, SUSTAINING_PROGRAMS[channel % len(SUSTAINING_PROGRAMS)]))
                engine.schedule(ev.note_on(0, channel, 36 + 2 * i, 90))
            out = np.zeros((block_frames, 2), np.float32)
            for _ in range(int(0.5 * sample_rate / block_frames)):  # past every attack and decay
                engine.render_into(out)
            times = np.empty(repeats)
            for k in range(repeats):
                if moving:
                    for c in channels:
                        engine.schedule(ev.pitch_bend(engine.frame, c, int(4000 * math.sin(k / 40 + c))))
                        engine.schedule(ev.control_change(engine.frame, c, 74, 64 + int(60 * math.sin(k / 25 + c))))
                start = time.perf_counter()
                engine.render_into(out)
                times[k] = time.perf_counter() - start
            times *= 1e6
            median = float(np.median(times))
            rows.append(("bend+CC74 every block" if moving else "steady", n, engine.sounding_voices(), median,
                         float(np.percentile(times, 99)), 100.0 * median / budget_us))
    return rows


def format_synth_blocks(rows, sample_rate: int, block_frames: int = BLOCK_FRAMES) -> str:
    lines = [f"Synth cost per {block_frames}-frame block at {sample_rate} Hz "
             f"({block_frames / sample_rate * 1e3:.2f} ms of audio), one thread:",
             f"{'controls':<24}{'voices':>7}{'sounding':>10}{'median us':>11}{'p99 us':>9}{'% of block':>12}"]
    for case, n, sounding, median, p99, share in rows:
        lines.append(f"{case:<24}{n:>7}{sounding:>10}{median:>11.0f}{p99:>9.0f}{share:>11.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--midi", type=Path, default=DEFAULT_MIDI,
                        help="MIDI file to render (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help="timed runs per renderer (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP_RUNS,
                        help="untimed runs before timing (default: %(default)s)")
    parser.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE,
                        help="output sample rate in Hz (default: %(default)s)")
    parser.add_argument("--soundfont", type=Path, default=DEFAULT_SOUNDFONT,
                        help="SoundFont for FluidSynth (default: %(default)s)")
    parser.add_argument("--patch", default=None,
                        help="liveart's patch (default: the default patch, through the timbre model)")
    parser.add_argument("--skip-offline", action="store_true", help="only the synth block cost")
    parser.add_argument("--skip-synth", action="store_true", help="only the offline render")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    midi = args.midi.resolve()
    if not midi.is_file():
        parser.error(f"MIDI file {args.midi} not found; scripts/make_midi.py writes the default")

    failed = False
    if not args.skip_offline:
        music_seconds = midi_seconds(midi)
        length = f"{music_seconds:.1f} s of music" if music_seconds else "length unknown"
        try:
            shown = midi.relative_to(REPO_ROOT)
        except ValueError:
            shown = midi
        print(f"Offline render: {shown} ({length}), {args.sample_rate} Hz, "
              f"{args.runs} timed runs each after {args.warmup} warm-up, whole processes, interleaved")
        results = bench_offline(midi, args.runs, args.warmup, args.sample_rate, args.soundfont, args.patch)
        print(format_offline(results, music_seconds))
        failed = any(r.error for r in results)
    if not args.skip_synth:
        if not args.skip_offline:
            print()
        print(format_synth_blocks(bench_synth_blocks(args.sample_rate), args.sample_rate))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
