"""Behaviour a player relies on: hanging notes end, the command line's options, the channel-mode
controllers, program changes, mapped controllers, the engine's musical state, the pedal and the
General MIDI mixer controllers. Each test measures the sound (levels in windows, spectra, frame
counts), so it fails when the behaviour breaks."""

from __future__ import annotations

import math

import mido
import numpy as np
import pytest
import soundfile

from liveart import events as ev
from liveart.cli import main
from liveart.engine import Engine
from liveart.patch import patch_from_dict

from .conftest import SR, make_patch, render_events, write_midi

PURE_RELEASE_FRAMES = int(0.05 * SR)  # the 'pure' test preset's release time


def rms(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def peak_hz(x, sample_rate: int) -> float:
    """Frequency of the largest peak of a Hann-windowed spectrum, refined by parabolic interpolation."""
    x = np.asarray(x, np.float64)
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(mag[1:-1])) + 1
    a, b, c = np.log(mag[k - 1 : k + 2] + 1e-300)
    shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c != 0 else 0.0
    return (k + shift) * sample_rate / len(x)


def one_note_file(path, note=69, seconds=1.0, note_off=True, extra=()):
    """A type 0 file at 120 bpm: ``extra`` messages, then ``note`` from 0 to ``seconds`` on channel 1."""
    ticks = int(round(seconds * 960))  # 480 ticks a beat, 2 beats a second
    msgs = [mido.MetaMessage("set_tempo", tempo=500000, time=0), *extra,
            mido.Message("note_on", channel=0, note=note, velocity=100, time=0)]
    if note_off:
        msgs.append(mido.Message("note_off", channel=0, note=note, velocity=0, time=ticks))
    else:  # nothing ends the note: the file just lasts that long
        msgs.append(mido.MetaMessage("end_of_track", time=ticks))
    return write_midi(path, [msgs], midi_type=0)


def render_cli(midi, out, *args) -> tuple[np.ndarray, int]:
    assert main(["render", str(midi), "-o", str(out), "-q", *args]) == 0
    return soundfile.read(out, dtype="float64")


# ---------------------------------------------------------------------------------------- 1
@pytest.mark.parametrize("pedal", [False, True], ids=["key", "key_and_pedal"])
def test_offline_render_ends_notes_the_file_never_ends(tmp_path, pedal):
    extra = [mido.Message("control_change", channel=0, control=64, value=127, time=0)] if pedal else []
    path = one_note_file(tmp_path / "hang.mid", seconds=1.0, note_off=False, extra=extra)
    assert mido.MidiFile(path).length == pytest.approx(1.0)
    audio, sr = render_cli(path, tmp_path / "hang.wav")
    assert rms(audio[int(0.2 * sr) : int(0.9 * sr)]) > 0.003, "the note sounds while the piece lasts (a piano, decaying)"
    assert np.all(audio[-int(0.01 * sr) :] == 0.0), "the file ends in silence"
    assert 1.0 < len(audio) / sr < 1.0 + 2.0, "the note ends soon after the piece does"


# ---------------------------------------------------------------------------------------- 2
@pytest.mark.parametrize("sample_rate", [22050, 44100, 96000])
def test_sample_rate_option_sets_the_file_rate_length_and_pitch(tmp_path, sample_rate):
    path = one_note_file(tmp_path / "a440.mid", note=69, seconds=1.0)
    audio, sr = render_cli(path, tmp_path / "a440.wav", "--sample-rate", str(sample_rate))
    assert sr == sample_rate
    assert soundfile.info(str(tmp_path / "a440.wav")).samplerate == sample_rate
    # The note lasts 1 s; the file holds it and its release, not more.
    assert 1.0 < len(audio) / sr < 1.5
    sounding = np.flatnonzero(np.max(np.abs(audio), axis=1) > 1e-3)
    assert sounding[0] / sr < 0.01 and 1.0 <= sounding[-1] / sr < 1.5
    assert peak_hz(audio[int(0.2 * sr) : int(0.95 * sr), 0], sr) == pytest.approx(440.0, abs=1.0)


# ---------------------------------------------------------------------------------------- 3
def test_seed_option_repeats_and_varies_the_noise(tmp_path):
    patch = tmp_path / "pad.toml"
    patch.write_text('[channels.default]\npreset = "breathy_pad"\nfollow_program = false\n')
    path = one_note_file(tmp_path / "pad.mid", note=60, seconds=1.0)
    outs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        outs[name] = tmp_path / f"{name}.wav"
        render_cli(path, outs[name], "--patch", str(patch), "--seed", str(seed))
    assert outs["a"].read_bytes() == outs["b"].read_bytes()
    a, _ = soundfile.read(outs["a"], dtype="int16")
    c, _ = soundfile.read(outs["c"], dtype="int16")
    n = min(len(a), len(c))
    assert rms(a[:n] / 32768.0) > 0.01
    diff = (a[:n].astype(np.int64) - c[:n].astype(np.int64)) / 32768.0
    # The tone is the same; the breath noise (about 8 dB under it) is another draw.
    assert rms(diff) > 0.1 * rms(a[:n] / 32768.0)


# ---------------------------------------------------------------------------------------- 4
def test_flac_output_is_flac_with_the_same_samples_as_wav(tmp_path):
    path = one_note_file(tmp_path / "n.mid", note=64, seconds=0.5)
    render_cli(path, tmp_path / "n.wav")
    render_cli(path, tmp_path / "n.flac")
    info = soundfile.info(str(tmp_path / "n.flac"))
    assert info.format == "FLAC" and info.subtype == "PCM_16"
    assert soundfile.info(str(tmp_path / "n.wav")).format == "WAV"
    wav, sr_w = soundfile.read(tmp_path / "n.wav", dtype="int16")
    flac, sr_f = soundfile.read(tmp_path / "n.flac", dtype="int16")
    assert sr_w == sr_f == 48000
    assert rms(wav / 32768.0) > 0.01
    assert wav.shape == flac.shape and np.array_equal(wav, flac)


# ---------------------------------------------------------------------------------------- 5
def _level(out, start, length=2400):
    return rms(out[start : start + length, 0])


def test_all_sound_off_silences_within_the_steal_fade_even_with_the_pedal_down():
    patch = make_patch("pure")
    held = [ev.control_change(0, 0, ev.CC_SUSTAIN, 127), ev.note_on(1000, 0, 57, 100), ev.note_off(5000, 0, 57)]
    cut_at = 20000
    out, engine = render_events(patch, held + [ev.control_change(cut_at, 0, ev.CC_ALL_SOUND_OFF, 0)], 30000)
    kept, _ = render_events(patch, held, 30000)
    assert _level(out, cut_at - 4000) > 0.05, "the pedal holds the note past its note-off"
    assert _level(kept, cut_at + 2000) > 0.05, "without all-sound-off it would go on"
    assert np.all(out[cut_at + int(0.005 * SR) :] == 0.0)
    assert engine.sounding_voices() == 0


def test_all_notes_off_releases_every_note():
    patch = make_patch("pure")
    notes = [ev.note_on(1000, 0, 57, 100), ev.note_on(1500, 0, 64, 100)]
    off_at = 20000
    out, engine = render_events(patch, notes + [ev.control_change(off_at, 0, ev.CC_ALL_NOTES_OFF, 0)], 30000)
    assert _level(out, off_at - 4000) > 0.05
    assert np.all(out[off_at + PURE_RELEASE_FRAMES + 2 :] == 0.0)
    assert engine.sounding_voices() == 0


def test_reset_controllers_returns_the_pitch_to_the_note():
    patch = make_patch("pure", bend_range=2.0)
    events = [ev.note_on(0, 0, 57, 100), ev.pitch_bend(4000, 0, 8191),
              ev.control_change(24000, 0, ev.CC_RESET_CONTROLLERS, 0)]
    out, _ = render_events(patch, events, 48000)
    bent = peak_hz(out[6000:22000, 0], SR)
    reset = peak_hz(out[28000:44000, 0], SR)
    assert bent == pytest.approx(220.0 * 2 ** (2 * 8191 / 8192 / 12), abs=1.0)
    assert reset == pytest.approx(220.0, abs=1.0)


def test_reset_controllers_releases_notes_held_by_the_pedal():
    patch = make_patch("pure")
    held = [ev.control_change(0, 0, ev.CC_SUSTAIN, 127), ev.note_on(1000, 0, 57, 100), ev.note_off(5000, 0, 57)]
    reset_at = 20000
    out, engine = render_events(patch, held + [ev.control_change(reset_at, 0, ev.CC_RESET_CONTROLLERS, 0)], 30000)
    assert _level(out, reset_at - 4000) > 0.05, "the pedal holds the note past its note-off"
    assert np.all(out[reset_at + PURE_RELEASE_FRAMES + 2 :] == 0.0)
    assert engine.sounding_voices() == 0


# ---------------------------------------------------------------------------------------- 6
def test_program_changes_pick_the_instrument_family():
    """On a preset channel that follows programs, program 0 (piano family) plays the 'pluck' preset,
    which decays to silence; program 19 (organ family) sustains."""
    patch = patch_from_dict({"channels": {"default": {"preset": "soft_flute", "follow_program": True}}})
    onset = 1000
    frames = onset + int(2.2 * SR)
    played = {}
    for program in (0, 19):
        events = [ev.program_change(0, 0, program), ev.note_on(onset, 0, 60, 100)]
        played[program], _ = render_events(patch, events, frames)
    for out in played.values():
        assert _level(out, onset + int(0.05 * SR), 4800) > 0.01, "both notes sound at first"
    late = onset + 2 * SR
    assert _level(played[19], late) > 0.01, "the organ sustains"
    assert np.all(played[0][late:] == 0.0), "the piano-family pluck has died away"


def test_a_channel_that_does_not_follow_programs_ignores_them():
    patch = make_patch("pure")  # follow_program = false; 'pure' sustains
    onset = 1000
    frames = onset + int(2.2 * SR)
    plain, _ = render_events(patch, [ev.note_on(onset, 0, 60, 100)], frames)
    changed, _ = render_events(patch, [ev.program_change(0, 0, 0), ev.note_on(onset, 0, 60, 100)], frames)
    assert _level(changed, onset + 2 * SR) > 0.05
    assert np.array_equal(plain, changed)


# ---------------------------------------------------------------------------------------- 7
def test_a_cc_mapped_to_attack_slows_the_attack_of_new_notes():
    patch = patch_from_dict({
        "audio": {"gain_db": 0.0},
        "presets": {"slow": {"base": "organ", "harmonics": [1.0], "noise": 0.0, "attack": 0.01, "release": 0.05}},
        "channels": {"default": {"preset": "slow", "follow_program": False}},
        "cc": [{"number": 73, "param": "attack", "min": 0.1, "max": 10.0}],
    }, "<attack patch>")
    onset = 1000
    outs = {}
    for value in (0, 127):
        events = [ev.control_change(0, 0, 73, value), ev.note_on(onset, 0, 81, 100)]
        outs[value], _ = render_events(patch, events, onset + SR // 2)
    early = onset + int(0.015 * SR)  # 15 to 25 ms after the onset
    fast, slow = _level(outs[0], early, 480), _level(outs[127], early, 480)
    assert fast > 0.05
    assert slow < 0.5 * fast, "with the longest attack the note is still rising 20 ms in"
    steady = onset + int(0.3 * SR)  # both attacks are over: the same level
    assert _level(outs[127], steady) == pytest.approx(_level(outs[0], steady), rel=0.02)


# ---------------------------------------------------------------------------------------- 8
def test_state_follows_tempo_events_and_reports_the_block_rms(default_patch):
    engine = Engine(default_patch, sample_rate=SR)
    engine.schedule_many([ev.tempo(1000, 400_000), ev.tempo(3000, 1_000_000), ev.note_on(5000, 0, 69, 100)])
    block = engine.render(512)
    assert engine.state.tempo_us_per_beat == 500_000 and engine.state.tempo_bpm == pytest.approx(120.0)
    assert np.all(block == 0.0) and engine.state.rms == 0.0
    engine.render(1024)  # past frame 1000
    assert engine.state.tempo_us_per_beat == 400_000 and engine.state.tempo_bpm == pytest.approx(150.0)
    engine.render(2000)  # past frame 3000
    assert engine.state.tempo_us_per_beat == 1_000_000 and engine.state.tempo_bpm == pytest.approx(60.0)
    for n in (4096, 4096, 777):  # the onset inside a block, then steady sound
        block = engine.render(n)
        assert rms(block) > 0.01
        assert engine.state.rms == pytest.approx(rms(block), abs=1e-6)


# ---------------------------------------------------------------------------------------- 9
def test_restriking_a_key_under_the_pedal_does_not_pile_up_voices():
    engine = Engine(make_patch("pure"), sample_rate=SR)
    gap = int(0.1 * SR)  # longer than the release, as a player repeats a note
    events = [ev.control_change(0, 0, ev.CC_SUSTAIN, 127)]
    for i in range(10):
        events += [ev.note_on(1000 + i * gap, 0, 60, 100), ev.note_off(1000 + i * gap + gap // 2, 0, 60)]
    pedal_up = 1000 + 10 * gap + 1000
    events.append(ev.control_change(pedal_up, 0, ev.CC_SUSTAIN, 0))
    engine.schedule_many(events)
    most = 0
    while engine.frame < pedal_up:
        engine.render(128)
        most = max(most, engine.sounding_voices())
        if engine.frame > 1200:
            assert engine.sounding_voices() >= 1, "the pedal keeps the key sounding"
    assert most <= 2
    engine.render(PURE_RELEASE_FRAMES + 256)
    assert engine.sounding_voices() == 0
    assert np.all(engine.render(256) == 0.0)


# ---------------------------------------------------------------------------------------- 10
@pytest.mark.parametrize("control", [ev.CC_VOLUME, ev.CC_EXPRESSION], ids=["volume", "expression"])
def test_volume_and_expression_follow_the_general_midi_curve(control):
    patch = make_patch("pure")
    levels = {}
    for value in (127, 64):
        out, _ = render_events(patch, [ev.control_change(0, 0, control, value), ev.note_on(1000, 0, 69, 100)], 30000)
        levels[value] = rms(out[10000:30000])
    assert levels[127] > 0.05
    expected_db = 40.0 * math.log10(64 / 127)  # gain (64/127)**2: about -11.9 dB
    assert 20.0 * math.log10(levels[64] / levels[127]) == pytest.approx(expected_db, abs=0.5)


def test_pan_puts_the_sound_left_or_right():
    patch = make_patch("pure")
    sides = {}
    for value in (0, 64, 127):
        out, _ = render_events(patch, [ev.control_change(0, 0, ev.CC_PAN, value), ev.note_on(1000, 0, 69, 100)], 20000)
        sides[value] = (rms(out[6000:, 0]), rms(out[6000:, 1]))
    left, right = sides[0]
    assert left > 0.05 and right < 0.01 * left
    left, right = sides[127]
    assert right > 0.05 and left < 0.01 * right
    left, right = sides[64]
    assert left == pytest.approx(right, rel=0.05)
