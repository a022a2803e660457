"""Command line: arguments → one library call each; errors → one line on stderr and an exit status.

Exit status: 0 done, 1 bad input or a failed render (a LiveartError), 2 bad arguments,
130 interrupted, 143 terminated. An unexpected exception is a bug: it is also status 1, with one line
that names it and the file under the user's cache directory where its full report was written.
"""

from __future__ import annotations

import argparse
import signal
import sys

from . import __version__
from .errors import LiveartError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that renders clean up their temporary files."""


def _on_sigterm(signum, frame):
    raise _Terminated


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, f"liveart: error: {message} (see '{self.prog} --help')\n"
                  if " " in self.prog else f"liveart: error: {message} (see 'liveart --help')\n")


def _whole_number(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"{text!r} must be greater than 0" if minimum == 1 else f"{text!r} must be {minimum} or more")
        return value
    return parse


_positive_int = _whole_number(1)
_nonnegative_int = _whole_number(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="liveart", description="liveart: a real-time AI performance instrument.")
    parser.add_argument("--version", action="version", version=f"liveart {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    r = sub.add_parser("render", help="render a MIDI file to a WAV file through the engine",
                       description="Render a MIDI file (type 0 or 1) to audio through the liveart engine.")
    r.add_argument("midi", metavar="IN.mid", help="MIDI file to play")
    r.add_argument("-o", "--output", required=True, metavar="OUT.wav", help="audio file to write (.wav or .flac)")
    r.add_argument("--patch", metavar="P", default=None,
                   help="patch name (from patches/) or path to a .toml file; default: 'default'")
    r.add_argument("--sample-rate", type=_positive_int, metavar="SR", default=None,
                   help="output sample rate in Hz (default: the patch's, 48000)")
    r.add_argument("--block", type=_positive_int, metavar="N", default=None,
                   help="engine block size in frames (default 4096; the output does not depend on it)")
    r.add_argument("--seed", type=_nonnegative_int, metavar="S", default=None,
                   help="random seed of the synth and the melody model (default 0; the melody model: the patch's)")
    r.add_argument("--format", dest="audio_format", choices=("pcm16", "pcm24", "float"), default="pcm16",
                   help="sample format (default pcm16)")
    r.add_argument("--max-minutes", type=_positive_float, default=60.0, metavar="M",
                   help="refuse pieces longer than this (default 60)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    r.add_argument("--continue", dest="continue_bars", type=_positive_int, metavar="BARS", default=None,
                   help="let the melody model continue the piece for this many bars after it ends")
    r.add_argument("--midi-out", metavar="OUT.mid", default=None,
                   help="also write the MIDI that was played (with the model's part) to this file")
    r.add_argument("--video", metavar="OUT.mp4", default=None,
                   help="also write a video in sync: the visualizer's pictures, moved by the music, with the audio")
    r.add_argument("--fps", type=_positive_float, default=30.0, metavar="F", help="video frames a second (default 30)")
    r.add_argument("--size", type=_positive_int, default=512, metavar="PX", help="video size in pixels (default 512)")
    r.add_argument("--visual-model", metavar="PATH", default=None, help="the generator (.onnx) for --video (default the shipped one)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where the timbre decoder runs (default: the patch's, auto: CUDA when it truly works)")
    _melody_options(r, modes=False)

    g = sub.add_parser("generate", help="let the melody model answer, continue or accompany a MIDI file",
                       description="Play a MIDI file to the melody model and write the file with the model's "
                                   "part added on a new track.")
    g.add_argument("prime", metavar="PRIME.mid", help="the MIDI file the model hears")
    g.add_argument("-o", "--output", required=True, metavar="OUT.mid", help="MIDI file to write")
    g.add_argument("--bars", type=_positive_int, default=8, metavar="N",
                   help="bars to continue for (continue) or to play (free); default 8")
    g.add_argument("--seed", type=_nonnegative_int, metavar="S", default=None,
                   help="random seed (default: the patch's, 0)")
    _melody_options(g, modes=True)
    g.add_argument("-q", "--quiet", action="store_true", help="no summary")

    t = sub.add_parser("train", help="train a model (needs the train extra: pip install 'liveart[train]')",
                       description="Train one of liveart's models on data that ships in Python packages.")
    tsub = t.add_subparsers(dest="what", metavar="MODEL", parser_class=_Parser)
    tsub.required = True
    tm = tsub.add_parser("melody", help="the melody GRU or LSTM (music21's corpus)")
    tm.add_argument("--arch", choices=("gru", "lstm"), default="gru", help="recurrent cell (default gru)")
    tm.add_argument("--hidden", type=_positive_int, default=256, metavar="H", help="units per layer (default 256)")
    tm.add_argument("--layers", type=_positive_int, default=2, metavar="L", help="layers (default 2)")
    tm.add_argument("--seed", type=_nonnegative_int, default=1, metavar="S", help="random seed (default 1)")
    tm.add_argument("--epochs", type=_positive_int, default=10, metavar="N",
                    help="epochs; the learning rate decays over them (default 10)")
    tm.add_argument("--patience", type=_positive_int, default=3, metavar="N",
                    help="stop after this many epochs without a better validation score (default 3)")
    tm.add_argument("--max-minutes", type=_positive_float, default=30.0, metavar="M",
                    help="a safety net: stop before an epoch that would end past this (default 30)")
    tm.add_argument("--threads", type=_positive_int, default=2, metavar="N", help="torch threads (default 2)")
    tm.add_argument("--data", metavar="PATH", default=".cache/melody-dataset-v2.npz",
                    help="the cached data set; built from music21's corpus when missing")
    tm.add_argument("--rebuild-data", action="store_true", help="parse the corpus again even if cached")
    tm.add_argument("--out", metavar="DIR", default="models",
                    help="where the checkpoint and ONNX go (default models: replaces the shipped model)")
    tm.add_argument("--name", metavar="NAME", default=None, help="file name stem (default melody-ARCH)")
    tt = tsub.add_parser("timbre", help="the timbre VAE (FluidSynth's FluidR3_GM notes)")
    tt.add_argument("--latent", type=_positive_int, default=8, metavar="D", help="latent dimensions (default 8)")
    tt.add_argument("--hidden", type=_positive_int, default=256, metavar="H", help="decoder units per layer (default 256)")
    tt.add_argument("--layers", type=_positive_int, default=2, metavar="L", help="decoder hidden layers (default 2)")
    tt.add_argument("--seed", type=_nonnegative_int, default=1, metavar="S", help="random seed (default 1)")
    tt.add_argument("--epochs", type=_positive_int, default=300, metavar="N",
                    help="epochs; the learning rate decays over them (default 300)")
    tt.add_argument("--patience", type=_positive_int, default=20, metavar="N",
                    help="stop after this many epochs without a better validation score (default 20)")
    tt.add_argument("--max-minutes", type=_positive_float, default=28.0, metavar="M",
                    help="a safety net: stop before an epoch that would end past this (default 28)")
    tt.add_argument("--threads", type=_positive_int, default=2, metavar="N", help="torch threads (default 2)")
    tt.add_argument("--data", metavar="PATH", default=".cache/timbre-dataset-v1.npz",
                    help="the cached data set; rendered with FluidSynth and analysed when missing")
    tt.add_argument("--rebuild-data", action="store_true", help="render and analyse again even if cached")
    tt.add_argument("--out", metavar="DIR", default="models",
                    help="where the checkpoint and ONNX go (default models: replaces the shipped model)")
    tt.add_argument("--name", metavar="NAME", default="timbre", help="file name stem (default timbre)")
    tv = tsub.add_parser("visual", help="the visualizer's GAN generator (Debian wallpapers)")
    tv.add_argument("--minutes", type=_positive_float, default=60.0, metavar="M", help="time budget (default 60)")
    tv.add_argument("--base", type=_positive_int, default=32, metavar="C", help="channels at 128x128 (default 32)")
    tv.add_argument("--seed", type=_nonnegative_int, default=1, metavar="S", help="random seed (default 1)")
    tv.add_argument("--threads", type=_positive_int, default=2, metavar="N", help="torch threads (default 2)")
    tv.add_argument("--batch", type=_positive_int, default=16, metavar="B", help="images a step (default 16)")
    tv.add_argument("--upsample", choices=("transpose", "nearest"), default="transpose",
                    help="the generator's x2 stages: transposed convolutions, or nearest-neighbour + 3x3 convolution")
    tv.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                    help="stop after N steps (with --threads 1 the same seed and steps give the same weights)")
    tv.add_argument("--mbstd", action="store_true",
                    help="the discriminator also sees the spread of each group of 4 pictures (against a collapse to few pictures)")
    tv.add_argument("--low-d", type=_nonnegative_int, default=0, metavar="PX",
                    help="a second discriminator on the pictures pooled to PX x PX (e.g. 32: layout and colour; default 0, none)")
    tv.add_argument("--lr", type=_positive_float, default=2e-4, metavar="R", help="learning rate of both networks (default 2e-4)")
    tv.add_argument("--lr-decay", action="store_true",
                    help="learning rates fall to a tenth over the second half of the budget")
    tv.add_argument("--init", type=str, metavar="CKPT", default=None,
                    help="start the generator from this checkpoint's (e.g. models/visual.pt), with a new discriminator")
    tv.add_argument("--no-augment", action="store_true",
                    help="show the discriminator the crops as they are (default: DiffAugment on real and generated)")
    tv.add_argument("--resume", action="store_true", help="go on from the last checkpoint in --out")
    tv.add_argument("--data", metavar="PATH", default=".cache/visual-dataset-v1.npz",
                    help="the cached wallpapers; built from the Debian packages when missing")
    tv.add_argument("--out", metavar="DIR", default="models", help="where the checkpoints and ONNX go (default models)")
    tv.add_argument("--name", metavar="NAME", default="visual", help="file name stem (default visual)")

    tb = sub.add_parser("timbre", help="the timbre space: its anchors and a map",
                        description="Look at the timbre model's latent space.")
    tbsub = tb.add_subparsers(dest="what", metavar="ACTION", parser_class=_Parser)
    tbsub.required = True
    ta = tbsub.add_parser("anchors", help="list the named anchors (one per General MIDI instrument)")
    ta.add_argument("--model", metavar="M", default=None, help="timbre model: timbre (shipped) or a path")
    tmap = tbsub.add_parser("map", help="plot a 2-D projection of the space with every instrument placed "
                                        "(needs matplotlib: pip install 'liveart[plot]')")
    tmap.add_argument("-o", "--output", required=True, metavar="MAP.png", help="image to write (.png, .svg or .pdf)")
    tmap.add_argument("--model", metavar="M", default=None, help="timbre model: timbre (shipped) or a path")

    pl = sub.add_parser("play", help="play live: a controller (or a DAW) in, the models, sound and MIDI out",
                        description="Play live through the engine, with the melody model answering or "
                                    "accompanying and every note coloured by the timbre space. Ctrl-C stops; "
                                    "the take is saved in takes/ as you play.")
    pl.add_argument("--in", dest="input_name", metavar="NAME", default=None,
                    help="MIDI input: the controller (part of its port name; see 'liveart devices')")
    pl.add_argument("--out", dest="output_name", metavar="NAME", default=None,
                    help="MIDI output for the model's notes and the clock (part of a port name)")
    pl.add_argument("--virtual", action="store_true",
                    help="make MIDI ports 'liveart in' and 'liveart out' that a DAW can connect to")
    pl.add_argument("--audio-device", metavar="NAME", default=None,
                    help="audio output (part of its name; default: JACK when a server runs, else the system's)")
    pl.add_argument("--sample-rate", type=_positive_int, metavar="SR", default=None,
                    help="sample rate in Hz (default: the patch's; on JACK the server's)")
    pl.add_argument("--block", type=_positive_int, metavar="N", default=None,
                    help="audio block in frames (default: the patch's, 128; on JACK the server's period)")
    pl.add_argument("--patch", metavar="P", default=None, help="patch name or .toml path (default 'default')")
    pl.add_argument("--backend", choices=("auto", "jack", "portaudio"), default="auto",
                    help="jack: one JACK client, MIDI and audio in the same callback, every event at its exact "
                         "frame; portaudio: sounddevice + python-rtmidi (any system). Default auto: jack when a "
                         "JACK server runs")
    pl.add_argument("--midi-api", choices=("auto", "jack", "alsa", "coremidi", "winmm"), default="auto",
                    help="the portaudio backend's MIDI system (default auto: JACK when the audio runs on JACK)")
    pl.add_argument("--clock", choices=("internal", "external"), default="internal",
                    help="internal: run at --bpm and send MIDI clock out; external: follow the MIDI clock "
                         "coming in (start, stop, continue, song position)")
    pl.add_argument("--bpm", type=_positive_float, default=120.0, metavar="BPM", help="internal clock tempo (default 120)")
    pl.add_argument("--mode", choices=("answer", "continue", "accompany", "free"), default=None,
                    help="how the melody model plays (default: the patch's)")
    pl.add_argument("--no-melody", action="store_true", help="no melody model: the instrument alone")
    pl.add_argument("--seed", type=_nonnegative_int, metavar="S", default=0, help="random seed (default 0)")
    pl.add_argument("--takes", metavar="DIR", default="takes", help="where takes are saved (default takes/)")
    pl.add_argument("--no-take", action="store_true", help="do not save a take")
    pl.add_argument("--duration", type=_positive_float, metavar="SECONDS", default=None,
                    help="stop after this long (default: play until Ctrl-C)")
    pl.add_argument("--no-status", action="store_true", help="no live status line")
    pl.add_argument("--visual", action="store_true",
                    help="show the visualizer on a local web page (full screen; a projector or an OBS browser source)")
    pl.add_argument("--visual-host", metavar="HOST", default="127.0.0.1",
                    help="address the page is served on (default 127.0.0.1: this machine only)")
    pl.add_argument("--visual-port", type=_nonnegative_int, metavar="PORT", default=8765,
                    help="port of the page (default 8765; 0: any free port)")
    pl.add_argument("--visual-model", metavar="PATH", default=None, help="the generator (.onnx; default the shipped one)")
    pl.add_argument("--fps", type=_positive_float, default=30.0, metavar="F", help="visual frames a second (default 30)")
    pl.add_argument("--size", type=_positive_int, default=512, metavar="PX", help="visual size in pixels (default 512)")

    dv = sub.add_parser("devices", help="list MIDI ports and audio devices (with their host APIs)")
    dv.add_argument("--midi-api", choices=("auto", "jack", "alsa", "coremidi", "winmm"), default="auto",
                    help="MIDI system to list (default auto)")

    p = sub.add_parser("patches", help="list the shipped patches and the built-in presets")
    p.add_argument("--check", metavar="P", default=None, help="validate one patch (name or path) and report")
    return parser


def _melody_options(parser, modes: bool) -> None:
    if modes:
        parser.add_argument("--mode", choices=("answer", "continue", "accompany", "free"), default=None,
                            help="how the model plays (default: the patch's [melody] mode when --patch is given, "
                                 "else continue)")
        parser.add_argument("--answer-ratio", type=_positive_float, default=None, metavar="R",
                            help="answer length relative to the phrase (answer mode; default the patch's, 1)")
        parser.add_argument("--silence", type=float, default=None, metavar="SECONDS",
                            help="silence that ends a phrase (answer mode; default the patch's, 0.6)")
        parser.add_argument("--melody-channel", type=_positive_int, default=None, metavar="CH",
                            help="the channel (1-16) the model hears; default: the top line of all pitched channels")
        parser.add_argument("--free-time", action="store_true",
                            help="ignore the file's meter (a phrase played without a clock)")
        parser.add_argument("--patch", metavar="P", default=None, help="patch whose [melody] settings apply")
    parser.add_argument("--model", metavar="M", default=None,
                        help="melody model: gru, lstm or a path to an .onnx file (default: the patch's, gru)")
    parser.add_argument("--temperature", type=_positive_float, default=None, metavar="T",
                        help="sampling temperature (default: the patch's, 1.0)")
    parser.add_argument("--top-p", type=_positive_float, default=None, metavar="P", help="nucleus sampling mass")
    parser.add_argument("--density", type=_positive_float, default=None, metavar="D",
                        help="more (>1) or fewer (<1) new notes")
    parser.add_argument("--key-lock", default=None, metavar="KEY",
                        help="off, auto (from what the model hears) or a key such as 'D minor'")
    parser.add_argument("--range", dest="note_range", default=None, metavar="LOW-HIGH",
                        help="MIDI note range of the model's notes, e.g. 55-84")


def _play_settings(args, patch):
    """The patch's [melody] settings with the command line's changes."""
    from dataclasses import replace

    from .errors import RenderError

    settings = patch.melody.settings
    changes = {}
    for name, attr in (("mode", "mode"), ("answer_ratio", "answer_ratio"), ("silence", "silence_seconds"),
                       ("temperature", "temperature"), ("top_p", "top_p"), ("density", "density"),
                       ("key_lock", "key_lock")):
        value = getattr(args, name, None)
        if value is not None:
            changes[attr] = value
    if getattr(args, "note_range", None):
        try:
            low, high = (int(x) for x in args.note_range.split("-"))
        except ValueError:
            raise RenderError(f"--range: {args.note_range!r} is not LOW-HIGH (e.g. 55-84)") from None
        changes["low_pitch"], changes["high_pitch"] = low, high
    try:
        settings = replace(settings, **changes)
        settings.validate()
    except ValueError as e:
        raise RenderError(str(e)) from None
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _in_main_thread() else None
    try:
        if args.command == "render":
            return _render(args)
        if args.command == "patches":
            return _patches(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "train":
            return _train(args)
        if args.command == "timbre":
            return _timbre(args)
        if args.command == "play":
            return _play(args)
        if args.command == "devices":
            return _devices(args)
    except LiveartError as e:
        print(f"liveart: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("liveart: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print("liveart: terminated; no output was written", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as e:  # a bug: one line here, the traceback in a report file
        report = _write_crash_report(e, sys.argv if argv is None else ["liveart", *argv])
        where = f"full report in {report}" if report else "no report could be written"
        message = " ".join(str(e).split())
        message = message if len(message) <= 200 else message[:199] + "…"
        print(f"liveart: internal error in '{args.command}': {type(e).__name__}: {message} ({where})",
              file=sys.stderr)
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_USAGE


def crash_dir():
    """Where crash reports go: liveart/crash under the user's cache directory (XDG_CACHE_HOME or
    ~/.cache on Linux, ~/Library/Caches on macOS, LOCALAPPDATA on Windows)."""
    import os
    from pathlib import Path

    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "liveart" / "crash"


def _write_crash_report(error: BaseException, argv: list[str]):
    """Write the traceback and what ran to a new file in crash_dir(); its path, or None when it
    cannot be written."""
    import datetime
    import os
    import platform
    import traceback

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        folder = crash_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stamp}-{os.getpid()}.txt"
        path.write_text(
            f"liveart {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
            f"command: {' '.join(argv)}\n\n" + "".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _play(args) -> int:
    from .hosts.live import LiveSettings, play
    from .patch import load_patch

    patch = load_patch(args.patch)
    settings = LiveSettings(
        backend=args.backend, midi_api=args.midi_api, input_name=args.input_name, output_name=args.output_name, virtual=args.virtual,
        audio_device=args.audio_device, sample_rate=args.sample_rate, block_frames=args.block, clock=args.clock,
        bpm=args.bpm, melody=not args.no_melody, mode=args.mode, seed=args.seed,
        takes_dir=None if args.no_take else args.takes, duration_seconds=args.duration, status=not args.no_status)
    if args.visual:
        from .visual.live import DisplayOptions

        driver = {k: v for k, v in patch.visual.items() if k != "seed"}
        settings.visual = DisplayOptions(host=args.visual_host, port=args.visual_port, fps=args.fps, size=args.size,
                                         seed=patch.visual.get("seed", 0), driver=driver)
        settings.visual_model = args.visual_model
    stats = play(patch, settings)
    return 0 if stats is not None else EXIT_ERROR


def _devices(args) -> int:
    from .midi.ports import describe_devices

    print(describe_devices(args.midi_api))
    return 0


def _render(args) -> int:
    from .hosts.offline import render

    from .hosts.offline import take_settings
    from .patch import load_patch

    # A live take plays with the patch it was played with, unless --patch says otherwise.
    patch = load_patch(args.patch) if args.patch is not None else (take_settings(args.midi)[0] or load_patch(None))
    melody = None
    if args.continue_bars is not None:
        from dataclasses import replace

        melody = {"settings": replace(_play_settings(args, patch), mode="continue"), "bars": args.continue_bars,
                  "model": args.model or patch.melody.model,
                  "seed": patch.melody.seed if args.seed is None else args.seed}
    elif args.midi_out is not None:
        from .errors import RenderError

        raise RenderError("--midi-out goes with --continue (without it, the MIDI played is the input file)")
    if args.device is not None:
        from dataclasses import replace

        patch = replace(patch, timbre=replace(patch.timbre, device=args.device))
    report = render(args.midi, args.output, patch=patch, sample_rate=args.sample_rate,
                    block_frames=args.block, seed=args.seed, audio_format=args.audio_format,
                    max_minutes=args.max_minutes, progress=not args.quiet and sys.stderr.isatty(),
                    melody=melody, midi_out=args.midi_out, video=args.video, fps=args.fps, video_size=args.size,
                    visual_model=args.visual_model, visual_seed=args.seed)
    if report.gain_db < 0:
        print(f"liveart: note: the mix peaked at {report.peak:.2f}; scaled by {report.gain_db:.1f} dB so it "
              f"does not clip", file=sys.stderr)
    if report.hard_cuts:
        print(f"liveart: note: {report.hard_cuts} voices were cut without a fade (too many notes at once)",
              file=sys.stderr)
    if not args.quiet:
        try:
            print(report.summary(), flush=True)
        except OSError:  # a closed or full stdout; the file is written all the same
            pass
    return 0


def _generate(args) -> int:
    from .errors import RenderError
    from .hosts.generate import generate_file
    from .patch import load_patch

    patch = load_patch(args.patch)
    if args.mode is None and args.patch is None:
        args.mode = "continue"  # the default patch's mode is for live play; offline, continue
    settings = _play_settings(args, patch)
    channel = None
    if args.melody_channel is not None:
        if not 1 <= args.melody_channel <= 16:
            raise RenderError(f"--melody-channel must be 1 to 16, not {args.melody_channel}")
        channel = args.melody_channel - 1
    seed = patch.melody.seed if args.seed is None else args.seed
    result, _ = generate_file(args.prime, args.output, settings, bars=args.bars, seed=seed,
                              model=args.model or patch.melody.model, melody_channel=channel,
                              free_time=args.free_time, program=patch.melody.program, cc_map=patch.cc_map())
    if not args.quiet:
        print(f"wrote {args.output} ({len(result.notes)} generated notes, mode {result.mode}, seed {seed})")
    return 0


def _train(args) -> int:
    from pathlib import Path

    from .errors import LiveartError

    try:
        import torch  # noqa: F401
        import onnx  # noqa: F401
        if args.what == "melody":
            import music21  # noqa: F401
    except ImportError as e:
        raise LiveartError(f"training needs the train extra ({e.name} is missing): pip install 'liveart[train]'") from None
    if args.what == "timbre":
        return _train_timbre(args)
    if args.what == "visual":
        return _train_visual(args)

    from .training.melody_data import build_dataset
    from .training.melody_model import MelodyConfig
    from .training.train_melody import train

    data = build_dataset(Path(args.data), rebuild=args.rebuild_data)
    config = MelodyConfig(arch=args.arch, hidden=args.hidden, layers=args.layers)
    result = train(data, config, Path(args.out), seed=args.seed, max_epochs=args.epochs, patience=args.patience,
                   max_minutes=args.max_minutes, threads=args.threads, name=args.name)
    print(f"trained {config.arch}: best validation {result.best_valid_bits:.3f} bits/step at epoch "
          f"{result.best_epoch} of {result.epochs} ({result.seconds / 60:.1f} min); wrote {result.onnx}")
    return 0


def _timbre(args) -> int:
    from .timbre.anchors import GM_FAMILY_NAMES, GM_PROGRAM_NAMES
    from .timbre.model import TimbreModel

    model = TimbreModel.load(args.model, device="cpu")
    if args.what == "anchors":
        for program in sorted(model.anchors):
            held = "  (never trained on: placed by the encoder)" if program in model.held_out_programs else ""
            print(f"{program:3d}  {GM_PROGRAM_NAMES[program]:<22} {GM_FAMILY_NAMES[program // 8]}{held}")
        return 0
    from .timbre.plot import plot_map

    path = plot_map(model, args.output)
    print(f"wrote {path}")
    return 0


def _train_visual(args) -> int:
    from pathlib import Path

    from .training.train_visual import AUGMENT, train
    from .training.visual_data import load_or_build
    from .training.visual_model import GanConfig

    try:
        config = GanConfig(base=args.base, upsample=args.upsample, mbstd=args.mbstd, low_d=args.low_d)
    except ValueError as e:
        raise LiveartError(f"--low-d: {e}") from None
    data = load_or_build(Path(args.data))
    print(f"{len(data.images)} wallpapers", flush=True)
    result = train(data, config, Path(args.out), seed=args.seed, minutes=args.minutes,
                   threads=args.threads, resume=args.resume, name=args.name, batch=args.batch, max_steps=args.steps,
                   augment=() if args.no_augment else AUGMENT, lr_decay=args.lr_decay, lr=args.lr,
                   init=Path(args.init) if args.init else None)
    print(f"trained the generator: {result.steps} steps, best SWD x1000 {result.best_swd:.1f} (blurred crops "
          f"{result.blurred_swd:.1f}) in {result.seconds / 60:.1f} min; wrote {result.onnx}")
    return 0


def _train_timbre(args) -> int:
    from pathlib import Path

    from .training.timbre_data import describe, load_or_build
    from .training.timbre_model import TimbreConfig
    from .training.train_timbre import train

    data = load_or_build(Path(args.data), rebuild=args.rebuild_data)
    print(describe(data), flush=True)
    config = TimbreConfig(latent=args.latent, hidden=args.hidden, decoder_layers=args.layers)
    result = train(data, config, Path(args.out), seed=args.seed, max_epochs=args.epochs, patience=args.patience,
                   max_minutes=args.max_minutes, threads=args.threads, name=args.name)
    print(f"trained the timbre VAE: best anchor error {result.best_error_db:.2f} dB at epoch {result.best_epoch} of "
          f"{result.epochs} ({result.seconds / 60:.1f} min); wrote {result.decoder} and {result.encoder}")
    return 0


def _patches(args) -> int:
    from .patch import available_patches, load_patch
    from .synth.presets import BUILTIN_PRESETS

    if args.check:
        patch = load_patch(args.check)
        if patch.uses_timbre():  # what only the model can tell: its file, its latent's size
            from .errors import PatchError
            from .timbre.control import timbre_layout
            from .timbre.model import TimbreModel

            model = TimbreModel.load(patch.timbre.model, device="cpu")
            try:
                timbre_layout(model.anchors, model.latent_low, model.latent_high, patch.timbre, patch.channels)
            except ValueError as e:
                raise PatchError(f"{patch.source}: {e}") from None
        print(f"{patch.source}: ok ({patch.name})")
        return 0
    print("patches: " + ", ".join(available_patches()))
    print("presets: " + ", ".join(BUILTIN_PRESETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
