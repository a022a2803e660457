"""Command line: arguments → one library call each; errors → one line on stderr and an exit status.

Exit status: 0 done, 1 bad input or a failed render (a LiveartError), 2 bad arguments,
130 interrupted.
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
        self.exit(EXIT_USAGE, f"liveart: error: {message} (see 'liveart {self.prog.split()[-1]} --help')\n"
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
    r.add_argument("--seed", type=_nonnegative_int, metavar="S", default=0, help="random seed (default 0)")
    r.add_argument("--format", dest="audio_format", choices=("pcm16", "pcm24", "float"), default="pcm16",
                   help="sample format (default pcm16)")
    r.add_argument("--max-minutes", type=_positive_float, default=60.0, metavar="M",
                   help="refuse pieces longer than this (default 60)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")

    p = sub.add_parser("patches", help="list the shipped patches and the built-in presets")
    p.add_argument("--check", metavar="P", default=None, help="validate one patch (name or path) and report")
    return parser


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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_USAGE


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _render(args) -> int:
    from .hosts.offline import render

    report = render(args.midi, args.output, patch=args.patch, sample_rate=args.sample_rate,
                    block_frames=args.block, seed=args.seed, audio_format=args.audio_format,
                    max_minutes=args.max_minutes, progress=not args.quiet and sys.stderr.isatty())
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


def _patches(args) -> int:
    from .patch import available_patches, load_patch
    from .synth.presets import BUILTIN_PRESETS

    if args.check:
        patch = load_patch(args.check)
        print(f"{patch.source}: ok ({patch.name})")
        return 0
    print("patches: " + ", ".join(available_patches()))
    print("presets: " + ", ".join(BUILTIN_PRESETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
