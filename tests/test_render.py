"""Offline render and the command line: files in, audio out, errors as one line with an exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile

from liveart import events as ev
from liveart.cli import main
from liveart.errors import MidiFileError
from liveart.hosts import offline
from liveart.midi.files import read_midi_file

from .conftest import simple_song, write_midi

DEMO = Path(__file__).resolve().parent.parent / "liveart" / "data" / "demo.mid"


def note(n, t=0, ch=0, vel=100, kind="note_on"):
    return mido.Message(kind, channel=ch, note=n, velocity=vel, time=t)


@pytest.mark.parametrize("midi_type", [0, 1])
def test_tempo_changes_place_notes_in_seconds(tmp_path, midi_type):
    # 4 beats at 120 bpm (2 s), then 60 bpm: a note 6 beats in starts at 2 + 2 = 4 s.
    tempo = [mido.MetaMessage("set_tempo", tempo=500000, time=0),
             mido.MetaMessage("set_tempo", tempo=1000000, time=4 * 480)]
    notes = [note(60, 6 * 480), note(60, 480, vel=0)]
    tracks = [sorted_merge(tempo, notes)] if midi_type == 0 else [tempo, notes]
    path = write_midi(tmp_path / "t.mid", tracks, midi_type=midi_type)
    events = read_midi_file(path).to_events(48000)
    ons = [e for e in events if e.kind == ev.NOTE_ON]
    offs = [e for e in events if e.kind == ev.NOTE_OFF]
    assert ons[0].frame == 4 * 48000
    assert offs[0].frame == 5 * 48000


def sorted_merge(a, b):
    return list(mido.merge_tracks([mido.MidiTrack(a), mido.MidiTrack(b)]))


def test_render_writes_a_wav_with_the_piece_and_its_tail(tmp_path):
    path = write_midi(tmp_path / "song.mid", simple_song())
    out = tmp_path / "song.wav"
    report = offline.render(path, out)
    audio, sr = soundfile.read(out)
    assert sr == 48000 and audio.shape[1] == 2
    piece = mido.MidiFile(path).length
    assert piece < len(audio) / sr < piece + 2.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.01
    assert np.max(np.abs(audio)) < 1.0
    assert report.notes == 24


def test_several_channels_sound_with_their_own_presets(tmp_path):
    base = [note(57, 0, ch=0), note(57, 48000, ch=0, vel=0)]
    path_a = write_midi(tmp_path / "a.mid", [base])
    path_b = write_midi(tmp_path / "b.mid", [[m.copy(channel=9) for m in base]])  # percussion channel
    a, _ = soundfile.read(offline.render(path_a, tmp_path / "a.wav").output)
    b, _ = soundfile.read(offline.render(path_b, tmp_path / "b.wav").output)
    n = min(len(a), len(b))
    assert np.max(np.abs(a[:n] - b[:n])) > 0.05  # a different preset plays channel 10


def test_same_input_and_seed_give_identical_files(tmp_path):
    path = write_midi(tmp_path / "song.mid", simple_song())
    offline.render(path, tmp_path / "a.wav", seed=3)
    offline.render(path, tmp_path / "b.wav", seed=3)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    # the compiled block is bit-identical for any block size
    offline.render(path, tmp_path / "c.wav", seed=3, block_frames=333, audio_format="pcm16")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "c.wav").read_bytes()


def test_a_repeated_key_written_on_before_off_keeps_both_notes(tmp_path):
    """Some writers put the new note-on before the old note-off at the same tick."""
    tracks = [[note(60, 0), note(60, 480), note(60, 0, vel=0), note(60, 480, vel=0)]]
    path = write_midi(tmp_path / "onoff.mid", tracks)
    kinds = [(e.kind, e.frame) for e in read_midi_file(path).to_events(48000)]
    assert kinds == [(ev.NOTE_ON, 0), (ev.NOTE_OFF, 24000), (ev.NOTE_ON, 24000), (ev.NOTE_OFF, 48000)]
    audio, sr = soundfile.read(offline.render(path, tmp_path / "o.wav").output)
    assert np.sqrt(np.mean(audio[int(0.6 * sr) : int(0.9 * sr)] ** 2)) > 0.01  # the second note sounds


def test_loud_mix_is_scaled_down_and_says_so(tmp_path, capsys):
    msgs = [note(36 + i, 0, ch=i % 16, vel=127) for i in range(32)] + [note(36, 96000, vel=0)]
    path = write_midi(tmp_path / "loud.mid", [msgs])
    out = tmp_path / "loud.wav"
    assert main(["render", str(path), "-o", str(out), "--format", "float"]) == 0
    audio, _ = soundfile.read(out)
    assert 0.95 < np.max(np.abs(audio)) <= 0.98 + 1e-6
    err = capsys.readouterr().err
    assert "scaled by -" in err and "does not clip" in err


def test_interrupted_render_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = write_midi(tmp_path / "song.mid", simple_song())
    out = tmp_path / "song.wav"
    out.write_bytes(b"previous take")
    calls = {"n": 0}
    real = offline.Engine.render_into

    def interrupted(self, block):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, block)

    monkeypatch.setattr(offline.Engine, "render_into", interrupted)
    assert main(["render", str(path), "-o", str(out)]) == 130
    assert out.read_bytes() == b"previous take"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.mid", "song.wav"]


@pytest.mark.parametrize("case,expected", [
    ("missing", "no such file"),
    ("directory", "is a directory, not a MIDI file"),
    ("fifo", "not a regular file"),
    ("text", "not a readable MIDI file"),
    ("empty", "not a readable MIDI file"),
    ("no_notes", "contains no notes"),
    ("type2", "type 2"),
])
def test_bad_midi_input_is_one_line_and_exit_1(tmp_path, capsys, case, expected):
    path = tmp_path / "in.mid"
    if case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "text":
        path.write_text("this is not midi\n" * 20)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "no_notes":
        write_midi(path, [[mido.MetaMessage("set_tempo", tempo=500000, time=0)]])
    elif case == "type2":
        write_midi(path, [[note(60), note(60, 480, vel=0)]], midi_type=2)
    assert main(["render", str(path), "-o", str(tmp_path / "o.wav")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("liveart: error: ") and err.count("\n") == 1
    assert expected in err
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("output,expected", [
    ("missing-dir/o.wav", "does not exist"),
    ("afile/o.wav", "does not exist"),
    (".", "is a directory"),
    ("o.mp3", "must end in .wav or .flac"),
    ("/proc/o.wav", "cannot write there"),
    ("song.wav", "is the input file"),
])
def test_unwritable_output_is_one_line_and_exit_1(tmp_path, capsys, output, expected):
    path = write_midi(tmp_path / ("song.wav" if output == "song.wav" else "song.mid"), simple_song(2))
    (tmp_path / "afile").write_text("x")
    target = tmp_path / output if output != "." else tmp_path / "dir.wav"
    before = path.read_bytes()
    if output == ".":
        target.mkdir()
    assert main(["render", str(path), "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("liveart: error: ") and err.count("\n") == 1 and expected in err
    assert path.read_bytes() == before


def test_any_file_name_the_system_accepts_works(tmp_path):
    path = write_midi(tmp_path / "song.mid", simple_song(2))
    out = os.path.join(os.fsencode(tmp_path), b"caf\xe9 \xff.wav")  # not UTF-8
    assert main(["render", str(path), "-o", os.fsdecode(out)]) == 0
    assert soundfile.info(open(out, "rb")).frames > 0


@pytest.mark.parametrize("args,expected", [
    (["render"], "required"),
    (["render", "x.mid"], "-o/--output"),
    (["render", "x.mid", "-o", "o.wav", "--block", "0"], "must be greater than 0"),
    (["render", "x.mid", "-o", "o.wav", "--sample-rate", "fast"], "not a whole number"),
    (["render", "x.mid", "-o", "o.wav", "--format", "mp3"], "invalid choice"),
    (["dance"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, args, expected):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_unsupported_sample_rate_and_too_long_piece_exit_1(tmp_path, capsys):
    path = write_midi(tmp_path / "song.mid", simple_song(2))
    assert main(["render", str(path), "-o", str(tmp_path / "o.wav"), "--sample-rate", "1000"]) == 1
    assert "sample rate 1000 Hz is not supported" in capsys.readouterr().err
    assert main(["render", str(path), "-o", str(tmp_path / "o.wav"), "--max-minutes", "0.01"]) == 1
    assert "the limit is 0.01 min" in capsys.readouterr().err


def test_the_command_renders_the_demo_and_tells_where(tmp_path):
    out = tmp_path / "demo.wav"
    proc = subprocess.run([sys.executable, "-m", "liveart", "render", str(DEMO), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    audio, sr = soundfile.read(out)
    assert len(audio) / sr > 30


def test_a_bad_file_through_the_real_process_has_no_traceback(tmp_path):
    path = tmp_path / "bad.mid"
    path.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\xff\xff\x00")
    proc = subprocess.run([sys.executable, "-m", "liveart", "render", str(path), "-o", str(tmp_path / "o.wav")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [["render", "{mid}", "-o", "{out}"], ["patches"], ["generate", "{mid}", "-o", "{out}.mid"]])
def test_an_unexpected_error_is_one_line_a_report_and_exit_1(tmp_path, capsys, monkeypatch, command):
    import liveart.cli
    import liveart.hosts.generate
    import liveart.hosts.offline
    import liveart.patch

    def fail(*args, **kwargs):
        raise ZeroDivisionError("a bug\nover two lines")

    for module, name in [(liveart.hosts.offline, "render"), (liveart.patch, "available_patches"),
                         (liveart.hosts.generate, "generate_file")]:
        monkeypatch.setattr(module, name, fail)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write_midi(tmp_path / "song.mid", simple_song(2))
    argv = [a.format(mid=path, out=tmp_path / "o.wav") for a in command]
    assert liveart.cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"liveart: internal error in '{command[0]}': ZeroDivisionError: a bug over two lines (full report in ")
    reports = list((tmp_path / "cache" / "liveart" / "crash").iterdir())
    assert len(reports) == 1 and str(reports[0]) in err
    report = reports[0].read_text()
    assert "Traceback (most recent call last)" in report and "in fail" in report
    assert "ZeroDivisionError: a bug" in report and f"command: liveart {' '.join(argv)}" in report
    assert not (tmp_path / "o.wav").exists()


def test_an_unexpected_error_without_a_writable_cache_still_is_one_line(tmp_path, capsys, monkeypatch):
    import liveart.patch

    monkeypatch.setattr(liveart.patch, "available_patches", lambda: 1 / 0)
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["patches"]) == 1
    err = capsys.readouterr().err
    assert err == "liveart: internal error in 'patches': ZeroDivisionError: division by zero (no report could be written)\n"


def test_an_unexpected_error_in_the_real_process_has_no_traceback(tmp_path):
    code = ("import sys, liveart.patch, liveart.cli; "
            "liveart.patch.available_patches = lambda: {}['missing']; "
            "sys.exit(liveart.cli.main(['patches']))")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "KeyError: 'missing'" in proc.stderr
    assert len(list((tmp_path / "liveart" / "crash").iterdir())) == 1


@pytest.mark.parametrize("patch, forbidden", [
    ("quartet", ("sounddevice", "rtmidi", "torch", "onnxruntime")),  # presets only: no model at all
    ("default", ("sounddevice", "rtmidi", "torch")),  # the timbre decoder runs on onnxruntime, never torch
])
def test_offline_work_never_imports_the_hardware_modules(tmp_path, patch, forbidden):
    path = write_midi(tmp_path / "song.mid", simple_song(2))
    code = (f"import sys, liveart; liveart.render({str(path)!r}, {str(tmp_path / 'o.wav')!r}, patch={patch!r}); "
            f"bad = [m for m in {forbidden!r} if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_read_midi_file_names_the_file(tmp_path):
    path = tmp_path / "x.mid"
    path.write_bytes(b"MThd")
    with pytest.raises(MidiFileError, match=str(path)):
        read_midi_file(path)


def test_the_output_gets_the_usual_file_mode(tmp_path):
    path = write_midi(tmp_path / "song.mid", simple_song(2))
    old = os.umask(0o022)
    try:
        offline.render(path, tmp_path / "o.wav")
    finally:
        os.umask(old)
    assert (tmp_path / "o.wav").stat().st_mode & 0o777 == 0o644


SIGNAL_CHILD = """
import os, signal, sys
import liveart.engine, soundfile
from liveart.cli import main
sig = getattr(signal, "SIG" + sys.argv[1])
if sys.argv[2] == "rendering":  # the signal comes in the middle of the rendering loop
    render_into = liveart.engine.Engine.render_into
    calls = []
    def render_then_signal(self, out):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), sig)
        return render_into(self, out)
    liveart.engine.Engine.render_into = render_then_signal
else:  # the signal comes while the audio file is being written
    write = soundfile.SoundFile.write
    def write_then_signal(self, data):
        write(self, data)
        os.kill(os.getpid(), sig)
    soundfile.SoundFile.write = write_then_signal
sys.exit(main(["render", sys.argv[3], "-o", sys.argv[4], "-q"]))
"""


@pytest.mark.parametrize("when", ["rendering", "writing"])
@pytest.mark.parametrize("sig,code", [("INT", 130), ("TERM", 143)])
def test_a_signal_mid_render_leaves_no_files(tmp_path, sig, code, when):
    """A render stopped by Ctrl-C or SIGTERM while it renders (the mix is in memory) or while it
    writes (a temporary file exists): exit status, one line, no partial or temporary file, and an
    earlier file of the same name untouched."""
    path = write_midi(tmp_path / "song.mid", simple_song())
    out = tmp_path / "x.wav"
    out.write_bytes(b"earlier take")
    proc = subprocess.run([sys.executable, "-c", SIGNAL_CHILD, sig, when, str(path), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.count("\n") == 1 and "no output was written" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.mid", "x.wav"]
    assert out.read_bytes() == b"earlier take"
