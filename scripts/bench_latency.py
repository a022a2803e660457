#!/usr/bin/env python3
"""Note-to-sound latency of live instruments on JACK, frame-exact: liveart against FluidSynth.

    .venv/bin/python scripts/bench_latency.py [--periods 64,128] [--notes 200]
        [--targets fluidsynth,liveart] [--patch default] [--liveart-args '--no-melody --no-take']
        [--visual MODEL.onnx]
    .venv/bin/python scripts/bench_latency.py --targets command \\
        --command 'my-synth --jack' --command-midi 'my-synth:midi_in' --command-audio 'my-synth:out'

For every period and target a private jackd starts (dummy backend, 48 kHz, a unique server name, so a
server already running here is never touched), the target starts as a subprocess on it, and the JACK
test client of :mod:`liveart.testing.jackprobe` plays ``--notes`` note-ons (C4, velocity 100, 50 ms
long, 350 ms apart, each at a random offset inside its period) into the target's MIDI input while
recording its audio outputs. Latency of a note: frames from its note-on to the first output sample
above -50 dBFS and above 4x the level just before the note. Prints per target and period: notes,
missed notes, p1 / p50 / p99 in frames and ms, jitter (p99 - p1) and the xruns the server reported.

Targets:
- ``fluidsynth``: ``fluidsynth -a jack -m jack -r SR -o audio.jack.server=NAME
  -o midi.jack.server=NAME FluidR3_GM.sf2`` (default gain; FluidSynth connects nothing by itself:
  ``audio.jack.autoconnect`` and ``midi.autoconnect`` are off by default), its shell kept open on a
  pipe. Ports: ``fluidsynth-midi:midi_00`` in, ``fluidsynth-midi:left/right`` out.
- ``liveart``: ``python -m liveart play --midi-api jack --virtual --block PERIOD --no-status
  --patch PATCH`` plus ``--liveart-args`` (default ``--mode free --no-take``: the melody model
  generates all along, its channel muted by CC 7 so that its voices are decoded but its notes do
  not sound between the probe's). MIDI in: ``liveart in:...``; audio: PortAudio's JACK
  client, ``liveart:out_0``/``out_1`` (PortAudio's default client name is ``PortAudio``; both match,
  with ``-NN`` when the name is taken).
- ``--visual MODEL.onnx``: the liveart targets also run the visualizer (``--visual``) and a real
  headless Chromium shows its page during the measurement; the page's frames a second and the
  display's own figures are printed after each measurement.
- ``command``: ``--command`` (``{period}`` and ``{sample_rate}`` are filled in), ports found by the
  regular expressions ``--command-midi`` and ``--command-audio``.

The anchor (docs: NOTES section 6) measured FluidSynth at 128-frame periods p1 128 / p50 288 /
p99 458 frames and at 64 p1 127 / p50 254 / p99 457.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from liveart.testing.jackprobe import (  # noqa: E402
    JackProbeError,
    JackServer,
    LatencyResult,
    Probe,
    jack_unavailable_reason,
    measure_latency,
    stop_process,
)

DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
DEFAULT_SAMPLE_RATE = 48000
# The melody model plays all along (free mode) and every channel decodes through the timbre model;
# the model's channel (2) is muted by CC 7 before the notes, so its voices are decoded but the
# probe's onsets stand on a quiet background.
DEFAULT_LIVEART_ARGS = "--mode free --no-take"
MUTE_MODEL_CHANNEL = bytes([0xB1, 7, 0])
PORT_TIMEOUT_S = 30.0  # FluidSynth loads a 148 MB SoundFont; liveart loads its models
SETTLE_S = 0.5  # after the ports appear, let the target finish starting before the first note
PRELUDE_SENDS = 5  # the prelude's messages go this many times, spread over SETTLE_S
STOP_TIMEOUT_S = 10.0
STDERR_LINES_SHOWN = 5
LIVEART_MIDI_PORT = r"^liveart(:midi_in| in:)"  # the jack backend's port, or rtmidi's virtual port
# PortAudio names its JACK client after the stream's client name: "PortAudio" by default, "liveart"
# as liveart play sets it; "-NN" is added when the name is taken.
LIVEART_AUDIO_PORTS = r"^(liveart|PortAudio)(-[0-9]+)?:out_[0-9]+$"


class TargetUnavailable(Exception):
    """A target that cannot run here; the benchmark reports it and goes on."""


@dataclasses.dataclass
class Target:
    name: str
    argv: list[str]
    midi_port: str  # regex of its MIDI input
    audio_ports: str  # regex of its audio outputs
    quit_on_stdin: bytes | None = None  # FluidSynth's shell: 'quit'; others get SIGTERM
    prelude: tuple = ()  # MIDI messages sent before the notes
    visual_url: str | None = None  # liveart --visual: a headless Chromium shows this page meanwhile


def fluidsynth_target(server: JackServer, soundfont: Path) -> Target:
    if not soundfont.exists():
        raise TargetUnavailable(f"no SoundFont at {soundfont} (Debian: fluid-soundfont-gm)")
    argv = ["fluidsynth", "-a", "jack", "-m", "jack", "-r", str(server.sample_rate),
            "-o", f"audio.jack.server={server.name}", "-o", f"midi.jack.server={server.name}",
            str(soundfont)]
    return Target("fluidsynth", argv, r"^fluidsynth[^:]*:midi", r"^fluidsynth[^:]*:(left|right)$",
                  quit_on_stdin=b"quit\n")


def liveart_target(server: JackServer, patch: str, extra_args: str, backend: str = "jack",
                   visual_model: Path | None = None) -> Target:
    argv = [sys.executable, "-m", "liveart", "play", "--backend", backend, "--midi-api", "jack", "--virtual",
            "--block", str(server.period), "--no-status", "--patch", patch, *shlex.split(extra_args)]
    name = "liveart" if backend == "jack" else f"liveart-{backend}"
    url = None
    if visual_model is not None:
        port = free_port()
        argv += ["--visual", "--visual-model", str(visual_model), "--visual-port", str(port)]
        url = f"http://127.0.0.1:{port}/"
    return Target(name, argv, LIVEART_MIDI_PORT, LIVEART_AUDIO_PORTS, prelude=(MUTE_MODEL_CHANNEL,), visual_url=url)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def chromium(url: str | None, log_dir: Path):
    """A real headless Chromium showing ``url`` for the measurement (nothing when url is None)."""
    import shutil

    if url is None:
        yield None
        return
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise TargetUnavailable("--visual needs chromium (Debian: chromium)")
    proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-dev-shm-usage", f"--user-data-dir={log_dir / 'chromium'}",
                             "--remote-debugging-port=0", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop_process(proc, STOP_TIMEOUT_S)


def visual_figures(url: str, since: float) -> str:
    """The page's frames a second (its reports since ``since``) and the display's own figures."""
    import urllib.request

    try:
        with urllib.request.urlopen(url + "status", timeout=5) as r:
            status = json.loads(r.read())
    except OSError as e:
        return f"visual: no status ({e})"
    fps = [rep["fps"] for rep in status["reports"] if rep.get("received", 0) >= since + 1.0]
    return (f"visual: page fps p50 {statistics.median(fps) if fps else 0:.0f} (min {min(fps) if fps else 0}) "
            f"over the last {len(fps)} s; frames made {status['frames_made']}, skipped {status['frames_skipped']}, "
            f"generate+encode p50/p99 {status['generate_ms_p50']:.1f}/{status['generate_ms_p99']:.1f} ms "
            f"({status['device']}, {status['size']}x{status['size']})")


def command_target(server: JackServer, command: str, midi_regex: str, audio_regex: str) -> Target:
    if not command or not midi_regex or not audio_regex:
        raise TargetUnavailable("--targets command needs --command, --command-midi and --command-audio")
    cmd = command.format(period=server.period, sample_rate=server.sample_rate)
    return Target("command", shlex.split(cmd), midi_regex, audio_regex)


def check_liveart_play() -> None:
    """``liveart play`` may not exist in this checkout: say so instead of failing later."""
    try:
        done = subprocess.run([sys.executable, "-m", "liveart", "play", "--help"], capture_output=True,
                              text=True, timeout=60, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TargetUnavailable(f"'liveart play --help' did not run: {e}") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise TargetUnavailable(f"'liveart play' is not available in this checkout: {last}")


def tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(lines[-STDERR_LINES_SHOWN:]) or "(no output)"


@contextlib.contextmanager
def running(target: Target, server: JackServer, log_dir: Path):
    log = log_dir / f"{target.name}-{server.period}.log"
    with open(log, "wb") as log_file:
        try:
            proc = subprocess.Popen(target.argv, stdin=subprocess.PIPE, stdout=log_file,
                                    stderr=subprocess.STDOUT, env=server.env, cwd=REPO_ROOT)
        except OSError as e:
            raise TargetUnavailable(f"cannot start {target.argv[0]!r}: {e}") from e
        try:
            yield proc, log
        finally:
            def quit_on_stdin(p):
                with contextlib.suppress(OSError):
                    p.stdin.write(target.quit_on_stdin)
                    p.stdin.flush()

            stop_process(proc, STOP_TIMEOUT_S, ask=quit_on_stdin if target.quit_on_stdin is not None else None)
            with contextlib.suppress(OSError):
                proc.stdin.close()


def measure_target(target: Target, server: JackServer, args, log_dir: Path) -> LatencyResult:
    with running(target, server, log_dir) as (proc, log), Probe("latency-probe") as probe, \
            chromium(target.visual_url, log_dir):
        try:
            midi = probe.wait_for_port(target.midi_port, PORT_TIMEOUT_S, is_midi=True, is_input=True,
                                       process=proc)
            audio = probe.wait_for_ports(target.audio_ports, timeout_s=PORT_TIMEOUT_S, is_audio=True,
                                         is_output=True, process=proc)
        except JackProbeError as e:
            raise TargetUnavailable(f"{e}; its output: {tail(log)}") from e
        probe.connect_midi_to(midi)
        # The prelude (liveart: the model's channel muted) goes PRELUDE_SENDS times over the settling
        # time: one send can be lost (at an xrun, or before the target reads its input), and then the
        # model sounds under the probe's notes and hides their onsets (2026-12-04: the CC missing from
        # the take in 2 of 5 runs at 64 frames, which had 50 and 54 notes "missed" and p99 ~3,800).
        for _ in range(PRELUDE_SENDS):
            for message in target.prelude:
                probe.send_at(probe.frame_time + 2 * server.period, message)
            time.sleep(SETTLE_S / PRELUDE_SENDS)
        audio = sorted(probe.find_ports(target.audio_ports, is_audio=True, is_output=True))[:2]
        print(f"  {target.name} @ {server.period}: {shlex.join(target.argv)}", flush=True)
        print(f"    MIDI -> {midi}; audio <- {', '.join(audio)}", flush=True)
        started = time.time()
        result = measure_latency(probe, midi, audio, notes=args.notes,
                                 spacing_frames=round(args.spacing_ms * server.sample_rate / 1000),
                                 offset_rng_seed=args.seed)
        if target.visual_url is not None:
            print(f"    {visual_figures(target.visual_url, started)}", flush=True)
        if proc.poll() is not None:
            raise TargetUnavailable(f"{target.name} exited during the measurement "
                                    f"(status {proc.returncode}): {tail(log)}")
        return result


HEADER = (f"{'target':<11} {'period':>6} {'notes':>5} {'missed':>6} | {'p1':>5} {'p50':>5} {'p99':>5} "
          f"{'jitter':>6} frames | {'p1':>5} {'p50':>5} {'p99':>5} {'jitter':>6} ms | {'xruns':>5}")


def row(name: str, period: int, r: LatencyResult) -> str:
    return (f"{name:<11} {period:>6} {r.notes:>5} {r.missed:>6} | {r.p1_frames:>5.0f} {r.p50_frames:>5.0f} "
            f"{r.p99_frames:>5.0f} {r.jitter_frames:>6.0f}        | {r.p1_ms:>5.2f} {r.p50_ms:>5.2f} "
            f"{r.p99_ms:>5.2f} {r.jitter_ms:>6.2f}    | {r.xruns:>5}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--periods", default="64,128", help="JACK periods in frames (default 64,128)")
    parser.add_argument("--notes", type=int, default=200, help="notes per measurement (default 200)")
    parser.add_argument("--targets", default="fluidsynth,liveart",
                        help="comma-separated: fluidsynth, liveart (the jack backend), liveart-portaudio, command")
    parser.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE)
    parser.add_argument("--spacing-ms", type=float, default=350.0, help="note-on to note-on (default 350)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the send offsets")
    parser.add_argument("--soundfont", type=Path, default=DEFAULT_SOUNDFONT)
    parser.add_argument("--patch", default="default", help="liveart patch (default 'default')")
    parser.add_argument("--liveart-args", default=DEFAULT_LIVEART_ARGS,
                        help=f"extra arguments to 'liveart play' (default {DEFAULT_LIVEART_ARGS!r})")
    parser.add_argument("--command", default="", help="the 'command' target's command line")
    parser.add_argument("--command-midi", default="", help="regex of the command's JACK MIDI input")
    parser.add_argument("--command-audio", default="", help="regex of the command's JACK audio outputs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--visual", type=Path, metavar="MODEL.onnx", default=None,
                        help="liveart targets also show the visualizer (this generator) in a headless Chromium")
    args = parser.parse_args(argv)

    print("# " + shlex.join([sys.executable, *sys.argv]), flush=True)
    reason = jack_unavailable_reason()
    if reason:
        print(f"bench_latency: JACK unavailable: {reason}", file=sys.stderr)
        return 1
    try:
        periods = [int(p) for p in args.periods.split(",") if p.strip()]
    except ValueError:
        print(f"bench_latency: --periods must be integers like 64,128, got {args.periods!r}", file=sys.stderr)
        return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {"fluidsynth", "liveart", "liveart-portaudio", "command"}
    if unknown:
        print(f"bench_latency: unknown target(s) {sorted(unknown)}; choose from fluidsynth, liveart, command",
              file=sys.stderr)
        return 2

    skipped: dict[str, str] = {}
    if "liveart" in targets or "liveart-portaudio" in targets:
        try:
            check_liveart_play()
        except TargetUnavailable as e:
            skipped["liveart"] = str(e)

    rows, figures = [], []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        for period in periods:
            for name in targets:
                if name in skipped:
                    continue
                try:
                    with JackServer(sample_rate=args.sample_rate, period=period) as server:
                        if name == "fluidsynth":
                            target = fluidsynth_target(server, args.soundfont)
                        elif name == "liveart":
                            target = liveart_target(server, args.patch, args.liveart_args,
                                                    visual_model=args.visual)
                        elif name == "liveart-portaudio":
                            target = liveart_target(server, args.patch, args.liveart_args, backend="portaudio",
                                                    visual_model=args.visual)
                        else:
                            target = command_target(server, args.command, args.command_midi,
                                                    args.command_audio)
                        result = measure_target(target, server, args, Path(tmp))
                except (TargetUnavailable, JackProbeError) as e:
                    print(f"  {name} @ {period}: not measured: {e}", file=sys.stderr, flush=True)
                    rows.append(f"{name:<11} {period:>6}   not measured (see above)")
                    continue
                rows.append(row(name, period, result))
                figures.append({"target": name, "command": target.argv, **result.summary(),
                                # each note's send frame and latency (None: not heard), and the
                                # frames at which the probe was told of an xrun: where a bad
                                # stretch sits in the run
                                "note_frames": [int(f) for f in result.note_frames],
                                "latencies_frames": [None if v is None else int(v)
                                                     for v in result.latencies_frames],
                                "xrun_frames": [int(f) for f in result.xrun_frames]})
                if result.late_events or result.frames_missing or result.callback_errors:
                    print(f"    warning: {result.late_events} late events, {result.frames_missing} frames "
                          f"not recorded, {result.callback_errors} probe callback errors", flush=True)

    print()
    print(HEADER)
    for line in rows:
        print(line)
    for name, why in skipped.items():
        print(f"{name:<11} skipped: {why}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures else 1


if __name__ == "__main__":
    sys.exit(main())
