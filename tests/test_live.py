"""The live instrument against a real audio server: JACK2's dummy backend, liveart's real
`liveart play` process (sounddevice on PortAudio's JACK host API, python-rtmidi's JACK MIDI), and a
JACK test client (liveart.testing.jackprobe) that plays MIDI in at exact frames and records the
audio and MIDI that come out, frame-exact.

Speed targets live in scripts/bench_latency.py; these tests assert behaviour with bounds a broken
host would break: every note sounds, within a few periods; the model's notes come out on the
clock's grid; nothing hangs; the take replays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from liveart.midi.ports import CLIENT_NAME, find_port
from liveart.errors import PortError

jackprobe = pytest.importorskip("liveart.testing.jackprobe")
if not jackprobe.jack_available():
    pytest.skip(f"JACK is not available: {jackprobe.jack_unavailable_reason()}", allow_module_level=True)

SR = 48000
PERIOD = 128
START_TIMEOUT_S = 60.0  # models load before the ports appear


@pytest.fixture(scope="module")
def server():
    # The JACK callback compiles once a machine (numba caches it): here, not inside the first test's
    # time to open its ports.
    import liveart.realtime.jack  # noqa: F401
    from liveart.engine import Engine
    from liveart.patch import load_patch

    Engine(load_patch("default"), SR).render(PERIOD)  # (and the engine's block, for a fresh checkout)
    with jackprobe.JackServer(sample_rate=SR, period=PERIOD) as s:
        yield s


# More xruns a second than this during a test: the server cannot keep a 2.7 ms period at all (on
# 2026-12-02 CI saw 70-200 a second), and the real-time lines are not judged (the test says so).
DENSE_XRUNS_PER_SECOND = 10
LIVEART_PORTS = r"^liveart(-[0-9]+)?:|^liveart (in|out):"  # the instrument's (not the probe's) JACK ports


@pytest.fixture
def probe(server):
    with jackprobe.Probe("liveart-probe") as p:
        # A liveart an earlier test killed (-9) may keep its JACK ports a while: its audio ports would
        # then be the ones this test found and recorded, silence, while the new one, named
        # liveart-01 by the server, played unheard (suspected in a CI run that missed 19 of 20 notes).
        deadline = time.monotonic() + 10
        while p.find_ports(LIVEART_PORTS):
            assert time.monotonic() < deadline, f"an earlier liveart's JACK ports are still there: {p.find_ports(LIVEART_PORTS)}"
            time.sleep(0.05)
        yield p


class Live:
    """A `liveart play` process on the test's JACK server."""

    def __init__(self, server, tmp_path: Path, *args: str, env: dict | None = None):
        self.takes = tmp_path / "takes"
        self.argv = [sys.executable, "-m", "liveart", "play", "--midi-api", "jack", "--no-status",
                     "--takes", str(self.takes), *args]
        self.proc = subprocess.Popen(self.argv, env={**server.env, **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr = ""

    def wait_ports(self, probe, virtual: bool = True) -> tuple[str | None, list[str]]:
        midi_in = probe.wait_for_port(r"^liveart(:midi_in| in:)", timeout_s=START_TIMEOUT_S, is_midi=True,
                                      is_input=True, process=self.proc) if virtual else None
        audio = probe.wait_for_ports(r"^liveart:out_", count=2, timeout_s=START_TIMEOUT_S, is_audio=True,
                                     process=self.proc)
        return midi_in, audio

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _out, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, self.stderr = self.proc.communicate()
            raise AssertionError(f"liveart play did not stop within {timeout} s after {sig!r}")
        return self.proc.returncode

    def take(self) -> Path:
        takes = sorted(self.takes.glob("take-*.mid"))
        assert len(takes) == 1, f"expected one take in {self.takes}, found {takes}"
        return takes[0]

    def log(self) -> dict:
        return json.loads(self.take().with_suffix(".log.json").read_text())

    def send_until_taken(self, probe, message: bytes, timeout_s: float = 15.0) -> None:
        """Sends ``message`` to liveart until its take holds it: JACK can drop a cycle's MIDI at an
        xrun, and a test that sets something up with one message (a channel muted) must know that it
        arrived. The take is flushed every TAKE_FLUSH_SECONDS and readable while written."""
        import mido

        deadline = time.monotonic() + timeout_s
        while True:
            probe.send_at(probe.frame_time + 2 * PERIOD, message)
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                time.sleep(0.1)
                takes = sorted(self.takes.glob("take-*.mid"))
                try:
                    held = takes and any(m.bytes() == list(message) for m in mido.MidiFile(takes[0]).tracks[0])
                except (OSError, EOFError, ValueError, IndexError):  # caught mid-flush: read it again
                    held = False
                if held:
                    return
            assert time.monotonic() < deadline, f"{message.hex()} never reached liveart's take in {timeout_s} s"


def _note_events(midi: list[tuple[int, bytes]]):
    ons = [(f, m[0] & 0x0F, m[1]) for f, m in midi if len(m) == 3 and m[0] & 0xF0 == 0x90 and m[2] > 0]
    offs = [(f, m[0] & 0x0F, m[1]) for f, m in midi
            if len(m) == 3 and (m[0] & 0xF0 == 0x80 or (m[0] & 0xF0 == 0x90 and m[2] == 0))]
    return ons, offs


def _hanging(midi: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """Notes switched on and never off, in time order."""
    down: dict[tuple[int, int], int] = {}
    for _f, m in midi:
        if len(m) == 3 and m[0] & 0xF0 in (0x80, 0x90):
            key = (m[0] & 0x0F, m[1])
            if m[0] & 0xF0 == 0x90 and m[2] > 0:
                down[key] = down.get(key, 0) + 1
            elif down.get(key):
                down[key] = 0
    return [k for k, v in down.items() if v]


# ----------------------------------------------------------------------------- errors, no audio needed
def test_find_port_matches_names_and_lists_the_rest():
    ports = ["Keystation 49 MK3:Keystation 49 MK3 MIDI 1 20:0", "Midi Through:Midi Through Port-0 14:0",
             "liveart in:midi 128:0"]
    assert find_port(ports, "keystation", "input") == 0
    assert find_port(ports, "Midi Through:Midi Through Port-0 14:0", "input") == 1
    with pytest.raises(PortError, match=r"no MIDI input matches 'Keystaton'; available: 'Keystation 49"):
        find_port(ports, "Keystaton", "input")
    with pytest.raises(PortError, match="several"):
        find_port(ports, "i", "input")
    with pytest.raises(PortError, match="no MIDI input matches 'liveart in'"):
        find_port(ports, "liveart in", "input")  # never liveart's own port


def test_unknown_ports_and_devices_are_one_line_errors(server, probe, tmp_path):
    run = [sys.executable, "-m", "liveart"]
    cases = [
        (["play", "--midi-api", "jack", "--in", "Keystaton"], "no MIDI input matches 'Keystaton'; available: "
                                                               f"'{probe.midi_out_name}'"),
        (["play", "--midi-api", "jack", "--virtual", "--out", "x"], "--out and --virtual"),
        (["play", "--virtual", "--audio-device", "nosuch"],
         "no audio output matches 'nosuch'; available: 'system:playback_1', 'system:playback_2'"),
        (["play", "--backend", "portaudio", "--midi-api", "jack", "--virtual", "--audio-device", "nosuch"],
         "no audio output device matches 'nosuch'; available: 'JACK Audio Connection Kit: system'"),
        (["play", "--backend", "portaudio", "--midi-api", "jack", "--in", "Keystaton"],
         f"no MIDI input matches 'Keystaton'; available: '{probe.midi_out_name}"),
        (["play", "--midi-api", "jack"], "no MIDI input: give --in NAME"),
        (["play", "--midi-api", "jack", "--virtual", "--out", "liveart-probe"], "--out and --virtual"),
        (["play", "--midi-api", "jack", "--in", "liveart-probe", "--out", "nosuch"], "no MIDI output matches 'nosuch'"),
    ]
    for args, expected in cases:
        p = subprocess.run(run + args + ["--takes", str(tmp_path / "t")], env=server.env, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 1, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("liveart: error: ") and expected in lines[0], (args, p.stderr)
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "t").exists() or not list((tmp_path / "t").glob("*.mid"))  # no take for a failed start

    p = subprocess.run(run + ["devices"], env=server.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert probe.midi_out_name in p.stdout and probe.midi_in_name in p.stdout
    assert "JACK Audio Connection Kit: system" in p.stdout


# ----------------------------------------------------------------------------- a performance
def test_the_audio_never_waits_for_the_gil(server, probe, tmp_path):
    """A thread inside liveart holds the GIL 100 ms at a time, 10 ms apart (a test-only switch),
    while the probe plays notes: the JACK callback is compiled and never takes the GIL, so the
    callbacks run on through every hold and every note sounds within a period and half a millisecond."""
    live = Live(server, tmp_path, "--virtual", "--no-melody", env={"LIVEART_TEST_GIL_HOG_MS": os.environ.get("HOGMS", "100")})
    try:
        midi_in, audio = live.wait_ports(probe)
        probe.connect_midi_to(midi_in)
        xruns_before = probe.xruns
        result = jackprobe.measure_latency(probe, None, audio, notes=40, note=67, velocity=100,
                                           spacing_frames=int(0.4 * SR))
        xruns = probe.xruns - xruns_before
    finally:
        rc = live.stop()
    assert rc == 0 and "Traceback" not in live.stderr, live.stderr
    log = live.log()
    holds = log["gil_hog"]["callbacks_per_hold"]
    # A callback that needed the GIL would run at most once a hold; 37.5 periods fit in 100 ms (the
    # dummy driver itself can run behind real time on a noisy VM: the median is judged).
    assert len(holds) > 40 and np.median(holds) >= 0.6 * 0.1 * SR / PERIOD, holds
    assert result.missed <= xruns, result.summary()
    timed = ~result.near_xrun(4 * PERIOD, 16 * PERIOD)
    if timed.sum() < 0.4 * len(timed):
        pytest.skip(f"latency not judged: {timed.sum()} of {len(timed)} notes away from the {xruns} xruns "
                    f"(callbacks per hold {np.median(holds)})")
    latencies = np.array([v for v, ok in zip(result.latencies_frames, timed) if ok], dtype=float)
    assert not np.isnan(latencies).any(), result.summary()
    assert np.percentile(latencies, 99) <= PERIOD + 0.0005 * SR, (sorted(latencies)[-5:], result.summary())


def test_live_performance_notes_model_clock_take(server, probe, tmp_path):
    """One minute of playing with the melody model generating (free mode, internal clock) and every
    channel decoded by the timbre model: the player's notes all sound within a few periods, the
    model's notes and the clock come out on the MIDI output on the clock's grid, SIGTERM ends every
    note, and the take replays offline to the same audio (judged away from the xruns this VM has)."""
    liveart_late_before = _late_in_xruns(server, CLIENT_NAME)
    live = Live(server, tmp_path, "--virtual", "--mode", "free", "--bpm", "120", "--seed", "3")
    try:
        midi_in, audio = live.wait_ports(probe)
        probe.connect_midi_from(probe.wait_for_port(r"^liveart(:midi_out| out:)", is_midi=True, is_output=True, timeout_s=10))
        probe.connect_midi_to(midi_in)
        # The model's channel (2) muted: its voices are still decoded by the timbre model, but the
        # player's onsets can be measured on a quiet background.
        live.send_until_taken(probe, bytes([0xB1, 7, 0]))
        capture = probe.capture_midi()
        capture_start = probe.frame_time
        xruns_before = probe.xruns
        result = jackprobe.measure_latency(probe, None, audio, notes=140, note=67, velocity=100,
                                           spacing_frames=int(0.4 * SR), keep_recording=True)
        xruns = probe.xruns - xruns_before
    finally:
        rc = live.stop()
    assert rc == 0, live.stderr
    assert "Traceback" not in live.stderr

    # Every note sounded, within a few periods (the benchmark measures the real figures). JACK can
    # drop the MIDI of a cycle a client misses: a note can be lost only to an xrun, and a note with
    # one near it is not timed.
    assert result.missed <= xruns, result.summary()
    # (an xrun's report can come up to 16 periods after it, as the reference instrument's test
    # found: CI once had a note missed with no report within 6 periods after it; and its effects
    # last a few periods past the report: under emulated VM noise, 2,000 xruns a minute, a note was
    # missed 3 periods after one, none after it. The grid check below uses the same window.)
    timed = ~result.near_xrun(4 * PERIOD, 16 * PERIOD)
    # With xruns so dense that fewer than 40% of the notes have a clean stretch around them (CI once had
    # 2,171 in the minute: one every 30 ms), the latency cannot be judged: the test says so by ending
    # as skipped once everything else is checked, rather than judging a handful of notes.
    unjudged = []
    if timed.sum() < 0.4 * len(timed):
        unjudged.append(f"latency: {timed.sum()} of {len(timed)} notes away from the {xruns} xruns")
    else:
        latencies = [v for v, ok in zip(result.latencies_frames, timed) if ok]
        # (95% of them: on this VM the dummy driver itself can run tens of milliseconds late without an
        # xrun report, docs/benchmarks.md, and CI had one note at 851 frames, none reported near it)
        assert None not in latencies and np.mean(np.array(latencies) <= 4 * PERIOD) >= 0.95, \
            (sorted(latencies, key=str)[-5:], result.summary(), live.log()["stats"], "missed at, to the nearest xrun",
             [(int(f), _to_nearest_xrun(f, probe.xrun_frames))
              for f, v in zip(result.note_frames, result.latencies_frames) if v is None])
    assert result.callback_errors == 0
    log = live.log()
    assert log["error"] is None
    assert log["stats"]["generated_notes"] > 30  # the model played all along
    # (a decoder that cannot keep up is late at nearly every hop; CI had 520 late frames, 2.7% of the
    # callbacks, on a VM with about 1,700 xruns a minute: 5% is the line)
    assert log["timing"]["timbre_late_frames"] < 0.05 * max(1, log["stats"]["callbacks"]), log["timing"]
    print("latency", result.summary(), "xruns (server)", xruns, "liveart", log["stats"], log["timing"])
    # The model's notes and the clock on the MIDI output.
    midi = capture.events()
    ticks = np.array([f for f, m in midi if m == b"\xf8"])
    assert len(ticks) > 24 * 2 * 40  # 120 bpm: 48 ticks a second
    intervals = np.diff(ticks)
    assert abs(np.median(intervals) - 1000) <= 1, np.median(intervals)  # 120 bpm at 48 kHz: a tick = 1000 frames
    ons, offs = _note_events(midi)
    model_ons = np.array([f for f, ch, _n in ons if ch == 1])
    assert len(model_ons) > 30
    # On the grid: each note-on goes out with a clock tick (the nearest: near an xrun either may be
    # stamped a period off), and on the same tick of the 16th (6 ticks) as the others.
    nearest = np.searchsorted(ticks, model_ons).clip(1, len(ticks) - 1)
    nearest = np.where(np.abs(ticks[nearest - 1] - model_ons) < np.abs(ticks[nearest] - model_ons),
                       nearest - 1, nearest)
    assert np.percentile(np.abs(ticks[nearest] - model_ons), 99) <= PERIOD, np.abs(ticks[nearest] - model_ons).max()
    # The notes sit on one grid of 16ths (6000 frames). The engine stays locked to the server's
    # time through xruns (cycles it missed are caught up unheard; one it had already played, which
    # JACK2 runs again after a late callback, is waited out), so a note away from an xrun is on the
    # grid to the frame. Near one, the probe itself may stamp a message a period off (a late
    # callback reads the next cycle's start), so those are not judged.
    # The xrun's report comes from a thread that is not real-time, up to 16 periods late (the
    # reference instrument's test): a note up to 16 periods before a report is near it. CI once had
    # 760 xruns in this minute, and a note off the grid with none reported within 4 periods after it.
    xrun_frames = np.array(probe.xrun_frames, np.int64)
    near = jackprobe.near_xruns(model_ons, xrun_frames, 4 * PERIOD, 16 * PERIOD)
    if np.sum(~near) < max(20, 0.4 * len(model_ons)):
        unjudged.append(f"grid: {np.sum(~near)} of {len(model_ons)} model notes away from the {xruns} xruns")
    else:
        clean = model_ons[~near]
        offset = (clean - clean[0] + 3000) % 6000 - 3000
        off = np.flatnonzero(np.abs(offset) > 2)
        assert len(off) == 0, (xruns, offset[off], "frames to the nearest xrun report",
                               [_to_nearest_xrun(f, xrun_frames) for f in clean[off]])
    assert not _hanging(midi), _hanging(midi)  # SIGTERM ended every note it sent
    # ... twice: JACK can drop a cycle's MIDI at an xrun, so the final note-offs, one for every note
    # liveart sent, go out twice, several cycles apart (one may be missing only with an xrun after
    # the last note-on).
    last_on = max(f for f, _ch, _n in ons)
    tail = [(ch, n) for f, ch, n in offs if f > last_on]
    once = [key for key in {(ch, n) for _f, ch, n in ons} if tail.count(key) < 2]
    if once and jackprobe.near_xruns(np.array([last_on]), xrun_frames, 0, 10 * SR)[0]:
        unjudged.append(f"final note-offs: {len(once)} notes got one, with an xrun after the last note-on")
    else:
        assert not once, (once, tail)

    # The take: readable, holds the player's notes and the model's, and replays offline.
    import mido

    take = live.take()
    notes, frame = [], 0
    for m in mido.MidiFile(take).tracks[0]:  # (a tick of the take is a frame of the engine)
        frame += m.time
        if m.type == "note_on" and m.velocity > 0:
            notes.append((frame, m))
    notes, take_frames = [m for _f, m in notes], np.array([f for f, m in notes if m.channel == 1])
    # (liveart drops MIDI that JACK2 hands again after an xrun; CI once had 143 of 140 in the take, with
    # several hundred xruns, before it also told a buffer read again under a later cycle start. That
    # is the likely account, not a proven one, so the allowance stays)
    assert 140 - result.missed <= sum(m.channel == 0 for m in notes) <= 140 + xruns // 50, (xruns, log["stats"])
    # Every model note the probe received is in the take; one sent in a cycle an xrun lost is not
    # received (liveart's own late callbacks count too: a late cycle and the one run again after it
    # can each lose their MIDI). The model plays from liveart's start, so the take's notes from
    # before the capture began are left out: the engine's frames are the server's less a constant,
    # found from the last notes of both (CI had 163 in the take and 161 received, the 2 before it).
    n = min(len(take_frames), len(model_ons))
    offset = int(np.median(model_ons[-n:] - take_frames[-n:]))
    in_capture = int(np.sum(take_frames + offset >= capture_start))
    assert 0 <= in_capture - len(model_ons) <= xruns + 2 * log["stats"]["xruns"], (
        in_capture, len(model_ons), len(take_frames), xruns, log["stats"])
    wav = tmp_path / "replay.wav"
    p = subprocess.run([sys.executable, "-m", "liveart", "render", str(take), "-o", str(wav), "-q",
                        "--format", "float"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    import soundfile as sf

    offline, sr = sf.read(wav, dtype="float32")
    assert sr == SR
    # Align the live recording with the render by the notes, then compare each note's onset
    # and the loudness envelope.
    live_audio = result.recording.audio[:, 0]
    live_onsets = np.array([lat + f - result.recording.start_frame
                            for lat, f in zip(result.latencies_frames, result.note_frames) if lat is not None])
    take_frames = _take_note_frames(take)
    offline_lat = jackprobe.detect_onsets(offline[:, :1], take_frames, max_latency_frames=2400)
    # Every note of the take sounds offline, but one whose previous note (the same key) has no
    # note-off in the take: JACK can drop a cycle's MIDI at an xrun, and a note still sounding hides
    # the next one's onset.
    unreleased = _unreleased_before(take)
    silent = [i for i, v in enumerate(offline_lat) if v is None]
    assert all(unreleased[i] for i in silent) and len(silent) <= xruns, (silent, unreleased, offline_lat)
    offline_onsets = np.array([v + f for v, f in zip(offline_lat, take_frames) if v is not None])
    # Aligned by the median offset of all the notes, not by the first alone: one note whose attack
    # crosses the threshold a few frames apart would otherwise shift every other note by as much.
    def residuals(shift):  # signed, modulo whole periods (where an xrun moved the engine's time)
        nearest = np.array([live_onsets[np.abs(live_onsets - shift - f).argmin()] - shift - f for f in offline_onsets])
        return (nearest + PERIOD // 2) % PERIOD - PERIOD // 2

    shift = int(live_onsets[0] - offline_onsets[0])
    shift += int(np.median(residuals(shift)))
    # Each note of the render starts where it started live, to the frame, give or take whole periods.
    error = np.abs(residuals(shift))
    # (Live, a note starts from the worker's onset table, offline from its own decode: the attack
    # crosses the -50 dBFS threshold a few frames apart at most.) Judged away from the xruns (a late
    # cycle can start a note late by part of a period: CI had 17% of the notes off among 1,700 xruns).
    near_note = jackprobe.near_xruns(result.recording.start_frame + shift + offline_onsets, xrun_frames,
                                     4 * PERIOD, 16 * PERIOD)
    if np.sum(~near_note) < 0.4 * len(error):
        unjudged.append(f"replay onsets: {np.sum(~near_note)} of {len(error)} notes away from the {xruns} xruns")
    else:
        clear = error[~near_note]
        assert np.median(clear) <= 2 and np.mean(clear <= PERIOD // 4) >= 0.9, (np.sort(clear)[-10:], xruns)
    a = _envelope(live_audio[shift:] if shift >= 0 else np.concatenate([np.zeros(-shift), live_audio]))
    b = _envelope(offline[:, 0])
    n = min(len(a), len(b), int(50 * SR / 480))
    # Windows of 480 frames, compared where no xrun was reported within 25 ms (there a cycle of
    # the live audio may be silence or a period late).
    window_start = result.recording.start_frame + shift + 480 * np.arange(n)
    clean = ~jackprobe.near_xruns(window_start, xrun_frames, 1199, 480 + 1199)
    if clean.sum() < 0.7 * n:
        unjudged.append(f"replay: {clean.sum()} of {n} windows away from the {xruns} xruns")
    else:
        corr = np.corrcoef(a[:n][clean], b[:n][clean])[0, 1]
        assert corr > 0.95, (corr, np.corrcoef(a[:n], b[:n])[0, 1], xruns)

    # Zero xruns is the target, and not met here (docs/benchmarks.md has the figures): on this 2-core
    # virtual machine a minimal Python JACK client has 1-5 xruns in 30 s, and liveart with both models
    # 20 to 380 a minute this session (the test's own probe is late in many of them). The test holds
    # the line a broken host would cross (late every few cycles): the xruns jackd puts on liveart.
    # (5%: a host late every few cycles is late in 20% or more; CI once had liveart named in 219 of
    # 727 xruns in the minute, 1.03% of its callbacks, on a VM where the probe alone had 15 a minute)
    # (Above DENSE_XRUNS_PER_SECOND the server itself cannot keep its period: CI once had 4,669 xruns in
    # the minute and liveart named in 7.5% of them; then this line is not judged either.)
    late = _late_in_xruns(server, CLIENT_NAME) - liveart_late_before
    if xruns > DENSE_XRUNS_PER_SECOND * 140 * 0.4:
        unjudged.append(f"liveart named late in {late} of {log['stats']['callbacks']} callbacks among {xruns} xruns")
    else:
        assert late <= 0.05 * log["stats"]["callbacks"], (late, xruns, log["stats"], log["timing"], _xrun_lines(server))
    if unjudged:  # everything else held; these could not be judged on this machine now
        pytest.skip("too many xruns to judge: " + "; ".join(unjudged))


def _to_nearest_xrun(frame, xrun_frames) -> int:
    """Frames from ``frame`` to the nearest xrun report (10**9 with none)."""
    return int(np.min(np.abs(np.asarray(xrun_frames, np.int64) - frame), initial=10**9))


def _late_in_xruns(server, client: str) -> int:
    """How many xruns jackd's log so far puts on ``client`` ("client = NAME was not finished")."""
    return sum(f"client = {client} was not finished" in line for line in server.log_text().splitlines())


def _take_notes(take: Path) -> list:
    import mido

    out, t = [], 0
    for m in mido.MidiFile(take).tracks[0]:
        t += m.time
        if m.type in ("note_on", "note_off"):
            out.append((t, m.type, m.channel, m.note, m.velocity))
    return out[:12]


def _xrun_lines(server) -> list[str]:
    """The server's own account of each xrun (which client was late)."""
    return [line for line in server.log_text().splitlines() if "XRun" in line][-20:]


def _take_note_frames(take: Path) -> np.ndarray:
    import mido

    frames, t = [], 0
    for m in mido.MidiFile(take).tracks[0]:
        t += m.time
        if m.type == "note_on" and m.velocity > 0 and m.channel == 0:
            frames.append(t)  # a take's tick is one audio frame
    return np.array(frames, np.int64)


def _unreleased_before(take: Path) -> list[bool]:
    """Per player note-on of the take (channel 1), whether the key was still down: no note-off since
    its previous note-on."""
    import mido

    down, out = set(), []
    for m in mido.MidiFile(take).tracks[0]:
        if m.type == "note_on" and m.velocity > 0 and m.channel == 0:
            out.append(m.note in down)
            down.add(m.note)
        elif m.type in ("note_off", "note_on") and m.channel == 0:
            down.discard(m.note)
    return out


def _envelope(x: np.ndarray, hop: int = 480) -> np.ndarray:
    n = len(x) // hop
    return np.sqrt(np.mean(x[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))


# ----------------------------------------------------------------------------- following a clock
def test_model_follows_an_external_clock_start_tempo_stop(server, probe, tmp_path):
    """The model plays on the grid of the clock the test sends (100 bpm, then 140), and stops with it."""
    live = Live(server, tmp_path, "--virtual", "--clock", "external", "--mode", "free", "--seed", "5")
    try:
        midi_in, _audio = live.wait_ports(probe)
        probe.connect_midi_from(probe.wait_for_port(r"^liveart(:midi_out| out:)", is_midi=True, is_output=True))
        probe.connect_midi_to(midi_in)
        capture = probe.capture_midi()
        start = probe.frame_time + SR // 2
        change, stop, end = start + 8 * SR, start + 14 * SR, start + 16 * SR
        clock = jackprobe.clock_events(SR, start, 100, end, tempo_changes=[(change, 140)], stop_frame=stop)
        xruns_before, xrun_index = probe.xruns, len(probe.xrun_frames)
        probe.schedule(clock)
        assert probe.wait_until_frame(end + SR // 2, timeout_s=30)
        xruns = probe.xruns - xruns_before
    finally:
        rc = live.stop()
    assert rc == 0, live.stderr
    ticks = np.array([f for f, m in clock if m == b"\xf8"])
    steps = ticks[::6]  # the Start's first tick is song position 0: every 6th tick begins a 16th
    ons, offs = _note_events(capture.events())
    model_ons = np.array([f for f, ch, _n in ons if ch == 1])
    assert len(model_ons) > 20, capture.events()[:20]
    # Nothing before the clock runs, nothing after it stops (but notes decided within the lead). When
    # an xrun came near the Stop, JACK may have dropped it (CI once had notes 1.8 s on): the clock's
    # silence stops the model then, within 12 ticks (an 8th) of the last one.
    last_tick = ticks[ticks < stop].max()
    stop_lost = jackprobe.near_xruns(np.array([stop]), np.array(probe.xrun_frames[xrun_index:], np.int64),
                                     8 * PERIOD, 16 * PERIOD)[0]
    latest = last_tick + 12 * SR * 60 / (140 * 24) + 4 * PERIOD if stop_lost else stop + 4 * PERIOD
    assert model_ons.min() >= start and model_ons.max() <= latest, (model_ons.min() - start, model_ons.max() - stop, stop_lost)
    # Each note lands just after a 16th of the clock it follows: a constant latency (the clock's way
    # in, the note's way out), so the spread is what the follower's estimate adds.
    settled = model_ons[((model_ons > start + SR) & (model_ons < change)) | (model_ons > change + 2 * SR)]
    assert len(settled) > 15
    after = np.array([on - steps[steps <= on].max() for on in settled])
    # (the notes before the first xrun, where there was one; at least five of them)
    first_xrun = min(probe.xrun_frames[xrun_index:], default=end)
    basis = after[settled < first_xrun] if np.sum(settled < first_xrun) >= 5 else after
    lag = np.median(basis)
    unjudged = []
    if xruns == 0 or len(basis) < len(after):
        assert 0 <= lag <= 3 * PERIOD, (lag, list(zip((settled - start).tolist(), after.tolist())))
    if xruns == 0:
        assert np.percentile(np.abs(after - lag), 95) <= PERIOD, np.sort(np.abs(after - lag))[-8:]
    else:
        # Around an xrun JACK can drop the MIDI of a cycle a client misses or hand it twice to a
        # client it runs again: the follower infers lost and repeated ticks from their timing, but
        # not always (an open defect: its count of 16ths can shift by whole ticks). The notes must
        # still land with a tick of the clock they follow (judged away from the xruns: a note decided
        # or sent in a late cycle comes late), most of them: CI once had 2 notes of about 30 some
        # 1,100 frames after their tick (60 xruns in 16 s; more than 8 periods from any, so the
        # follower's estimate carries an xrun's effect further: not explained yet). A follower that did not follow would have a third
        # of them there at most (a tick is 1,200 frames at 100 bpm, 857 at 140).
        # (A note just after the Stop, on the step the clock would have ticked next, has no tick.)
        judged = settled[~jackprobe.near_xruns(settled, probe.xrun_frames[xrun_index:], 8 * PERIOD, 8 * PERIOD)
                         & (settled <= ticks.max() + 3 * PERIOD)]
        if len(judged) < 0.5 * len(settled):  # (CI once had 1,047 xruns in the 16 s: 6 of 30 notes clear)
            unjudged.append(f"{len(judged)} of {len(settled)} notes away from the {xruns} xruns")
        else:
            to_tick = np.array([on - ticks[ticks <= on].max() for on in judged])  # after the tick before
            worst = np.argsort(to_tick)[-4:]
            assert np.mean(to_tick <= 3 * PERIOD) >= 0.8, (
                xruns, to_tick[worst], "at", (judged[worst] - start).tolist(), "change", change - start,
                "stop", stop - start, "xruns at", (np.array(probe.xrun_frames[xrun_index:]) - start).tolist())
    # 140 bpm after the change: notes are 16ths of 140 apart (5143 frames), not of 100 (7200).
    fast = model_ons[model_ons > change + 2 * SR]
    late = np.diff(fast)
    on_grid = np.abs(late / (SR * 60 / 140 / 4) - np.round(late / (SR * 60 / 140 / 4))) < 0.1
    assert len(late) >= 8, late
    if xruns == 0:
        assert np.all(on_grid), late
    else:  # (a repeated or lost tick moves the follower's phase, and its line is refitted: a note or two off)
        # judged where neither note of a pair was near an xrun (a note sent in a late cycle comes late)
        near = jackprobe.near_xruns(fast, probe.xrun_frames[xrun_index:], 4 * PERIOD, 4 * PERIOD)
        pairs = ~near[:-1] & ~near[1:]
        if pairs.sum() < 6:
            unjudged.append(f"140 bpm: {pairs.sum()} of {len(late)} note spacings away from the {xruns} xruns")
        else:
            assert np.mean(on_grid[pairs]) >= 0.75, (xruns, late, pairs)
    assert not _hanging(capture.events())  # the stop ended the model's note
    if unjudged:  # everything else held; this could not be judged on this machine now
        pytest.skip("too many xruns to judge the notes against the ticks: " + "; ".join(unjudged))


# ----------------------------------------------------------------------------- a controller that goes
def test_controller_unplugged_and_back_a_flood_and_a_kill(server, probe, tmp_path):
    """A controller that disappears mid-note: its note is released and playing goes on; when it comes
    back it plays again; a flood of MIDI neither stops liveart nor leaves notes or latency behind;
    after kill -9 the take is still readable and renders."""
    live = Live(server, tmp_path, "--in", "test-keys", "--patch", "quartet", "--no-melody")
    keys = jackprobe.Probe("test-keys", audio_inputs=0)
    try:
        _midi_in, audio = live.wait_ports(probe, virtual=False)
        probe.connect_audio_from(audio)
        rec = probe.record(probe.frame_time + PERIOD, seconds=16)
        t = rec.start_frame + SR // 2
        keys.send_at(t, bytes([0x90, 60, 100]))  # held ...
        assert keys.wait_until_frame(t + SR // 2, timeout_s=10)
        keys.close()  # ... and the controller unplugged
        keys = None
        time.sleep(2.0)
        assert live.proc.poll() is None
        keys = jackprobe.Probe("test-keys", audio_inputs=0)  # plugged back in
        deadline = time.monotonic() + 5
        while not probe.client.get_all_connections(keys.midi_out_name):  # liveart reconnects by itself
            assert time.monotonic() < deadline, "liveart did not reconnect to the controller within 5 s"
            time.sleep(0.05)
        t2 = keys.frame_time + SR // 4
        # Three notes a quarter second apart: around an xrun JACK can drop the MIDI of a cycle (CI once
        # had over a thousand xruns a minute and the one note then sent went unheard); one heard is
        # enough to show liveart plays the controller again.
        for k in range(3):
            keys.send_at(t2 + k * SR // 4, bytes([0x90, 64, 100]))
            keys.send_at(t2 + k * SR // 4 + SR // 10, bytes([0x80, 64, 0]))
        # A flood: 10,000 messages a second for 3 s (random notes on and off, the mod wheel): 27 a
        # cycle, about what a JACK MIDI port's buffer holds at 128-frame periods.
        rng = np.random.default_rng(1)
        f0 = t2 + SR
        flood = []
        for k in range(30000):
            f = f0 + k * 3 * SR // 30000
            n = int(rng.integers(36, 96))
            flood.append((f, bytes([0x90, n, 90]) if k % 3 == 0 else bytes([0x80, n, 0]) if k % 3 == 1
                          else bytes([0xB0, 1, int(rng.integers(0, 128))])))
        # Then all notes off, three times 0.1 s apart: around an xrun JACK can drop a cycle's MIDI
        # before a late client reads it (seen once in CI: the flood's notes then hung), which no
        # instrument can make good; a keyboard's panic is sent more than once for the same reason.
        for end in (f0 + 3 * SR, f0 + 3 * SR + SR // 10, f0 + 3 * SR + SR // 5):
            flood += [(end + 10, bytes([0xB0, 123, 0]))] + [(end + 11 + i, bytes([0x80, n, 0]))
                                                            for i, n in enumerate(range(36, 96))]
        keys.schedule(flood)
        t3 = f0 + 4 * SR  # notes after the flood (three: JACK can drop one at an xrun, as above)
        for k in range(3):
            keys.send_at(t3 + k * SR // 4, bytes([0x90, 67, 100]))
            keys.send_at(t3 + k * SR // 4 + SR // 10, bytes([0x80, 67, 0]))
        assert rec.wait(30)
        assert keys.callback_errors == 0, keys.last_callback_error  # the flood went out whole
        assert live.proc.poll() is None  # still playing
    finally:
        if keys is not None:
            keys.close()
        live.proc.send_signal(signal.SIGKILL)
        _out, live.stderr = live.proc.communicate(timeout=20)
    a = np.abs(rec.audio).max(axis=1)

    def loud(frame_from, frame_to):
        return float(a[frame_from - rec.start_frame: frame_to - rec.start_frame].max())

    assert loud(t, t + SR // 4) > 0.01  # the held note sounded
    assert loud(t + int(1.6 * SR), t + int(2.3 * SR)) < 1e-4  # unplugged: released, silence
    assert max(loud(t2 + k * SR // 4, t2 + k * SR // 4 + SR // 20) for k in range(3)) > 0.01, \
        (live.stderr, _take_notes(live.take()), t2 - rec.start_frame, t - rec.start_frame)  # back: it plays again
    onsets = jackprobe.detect_onsets(rec.audio, t3 + np.arange(3) * SR // 4 - rec.start_frame,
                                     max_latency_frames=SR // 5)
    # After the flood: no backlog (a backlog would make all three late).
    assert min(v for v in onsets + [10**9] if v is not None) <= 4 * PERIOD, \
        (onsets, loud(t3 - SR // 2, t3), loud(t3, t3 + SR // 5), loud(f0, f0 + 3 * SR), live.stderr)
    assert loud(t3 + SR // 2 + SR, rec.end_frame) < 1e-4  # and nothing left hanging from the flood

    import mido

    take = live.take()  # killed with -9: the take is still a MIDI file with what was played
    messages = list(mido.MidiFile(take).tracks[0])
    assert any(m.type == "note_on" and m.note == 64 and m.velocity > 0 for m in messages)
    p = subprocess.run([sys.executable, "-m", "liveart", "render", str(take), "-o", str(tmp_path / "k.wav"), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def test_portaudio_backend_plays_and_sends(server, probe, tmp_path):
    """The portable path (sounddevice + python-rtmidi, here on JACK): notes sound, the model's notes
    go out through rtmidi's virtual port, and SIGTERM ends them."""
    live = Live(server, tmp_path, "--backend", "portaudio", "--virtual", "--mode", "free", "--patch", "quartet")
    try:
        midi_in, audio = live.wait_ports(probe)
        probe.connect_midi_from(probe.wait_for_port(r"^liveart out:", is_midi=True, is_output=True))
        probe.connect_midi_to(midi_in)
        live.send_until_taken(probe, bytes([0xB1, 7, 0]))  # the model's channel muted
        capture = probe.capture_midi()
        result = jackprobe.measure_latency(probe, None, audio, notes=20, note=67, spacing_frames=int(0.4 * SR))
    finally:
        rc = live.stop()
    assert rc == 0, live.stderr
    assert result.missed <= result.xruns, result.summary()
    ons, _offs = _note_events(capture.events())
    assert sum(ch == 1 for _f, ch, _n in ons) > 5
    assert not _hanging(capture.events())
    assert live.log()["backend"] == "portaudio"
    if result.xruns > DENSE_XRUNS_PER_SECOND * 20 * 0.4:  # (CI once had 1,602 in these 8 s)
        pytest.skip(f"too many xruns to judge the latency: {result.xruns} in 8 s")
    assert result.p99_frames <= 4 * PERIOD, result.summary()


def test_panic_control_silences_everything(server, probe, tmp_path):
    """A controller mapped to "panic": every voice stops at once (held keys included) and every note
    liveart sent out gets its own note-off."""
    patch = tmp_path / "panic.toml"
    patch.write_text('name = "panic"\n[channels.default]\npreset = "strings"\n'
                     '[[cc]]\nnumber = 26\nparam = "panic"\n')
    live = Live(server, tmp_path, "--virtual", "--patch", str(patch), "--mode", "free", "--no-take")
    try:
        midi_in, audio = live.wait_ports(probe)
        probe.connect_midi_from(probe.wait_for_port(r"^liveart(:midi_out| out:)", is_midi=True, is_output=True))
        probe.connect_midi_to(midi_in)
        probe.connect_audio_from(audio)
        capture = probe.capture_midi()
        xrun_index = len(probe.xrun_frames)
        rec = probe.record(probe.frame_time + PERIOD, seconds=4)
        t = rec.start_frame + SR // 2
        probe.schedule([(t + i, bytes([0x90, n, 100])) for i, n in enumerate((48, 55, 60, 64))])  # held
        panic = t + 2 * SR
        probe.send_at(panic, bytes([0xB0, 26, 127]))
        assert rec.wait(20)
        assert live.proc.poll() is None
    finally:
        rc = live.stop()
    assert rc == 0, live.stderr
    a = np.abs(rec.audio).max(axis=1)
    before = a[panic - rec.start_frame - SR // 2: panic - rec.start_frame].max()
    after = a[panic - rec.start_frame + SR // 20: panic - rec.start_frame + SR].max()
    assert before > 0.01 and after < 1e-4, (before, after)
    midi = [(f, m) for f, m in capture.events() if f <= panic + SR // 10]
    ons = [(f, m) for f, m in midi if len(m) == 3 and m[0] == 0x91 and m[2] > 0]
    assert ons, "the model played before the panic"
    # Each of its notes ended by the panic (or before). JACK can drop a cycle's MIDI at an xrun, the
    # panic's note-offs with it (CI: a note hanging among 700 xruns a minute): with an xrun near the
    # panic, every note must be ended by the final note-offs at SIGTERM at the latest.
    if jackprobe.near_xruns(np.array([panic]), np.array(probe.xrun_frames[xrun_index:], np.int64),
                            4 * PERIOD, 16 * PERIOD)[0]:
        assert not _hanging(capture.events()), _hanging(capture.events())
    else:
        assert not _hanging(midi), _hanging(midi)


# ----------------------------------------------------------------------------- the visualizer, live
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _chromium(tmp_path: Path, url: str) -> subprocess.Popen:
    """A real headless Chromium showing ``url`` (Debian's chromium; scripts/setup.sh installs it)."""
    import os
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
        pytest.skip("chromium is not installed (Debian: chromium)")
    return subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
                             "--remote-debugging-port=0", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _reports(url: str, epoch: str | None = None) -> list[dict]:
    try:
        status = _get_json(url + "status")
    except OSError:
        return []
    return [r for r in status["reports"] if epoch is None or r.get("epoch") == status["epoch"]]


def test_the_visual_page_in_chromium_moves_with_the_notes_and_reconnects(server, probe, tmp_path, tiny_generator):
    """`liveart play --visual`: a real headless Chromium loads the page and draws the frames; the
    pictures change more while the test plays notes than in silence; when liveart stops and starts
    again on the same port, the same page reconnects by itself and draws the new server's frames."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    args = ("--virtual", "--no-melody", "--visual", "--visual-model", str(tiny_generator), "--visual-port", str(port))
    live = Live(server, tmp_path, *args)
    browser = None
    try:
        midi_in, _audio = live.wait_ports(probe)
        probe.connect_midi_to(midi_in)
        browser = _chromium(tmp_path, url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(r.get("fps", 0) > 0 for r in _reports(url)):
            time.sleep(0.5)
        assert any(r.get("fps", 0) > 0 for r in _reports(url)), "the page drew no frames"
        # Silence, then notes: a new note every 200 ms, all twelve pitch classes.
        time.sleep(5.0)
        quiet_end = time.time()
        first = probe.frame_time + SR // 10
        events = []
        for k in range(25):
            f = first + k * SR // 5
            events += [(f, bytes([0x90, 48 + (7 * k) % 24, 120])), (f + SR // 10, bytes([0x80, 48 + (7 * k) % 24, 0]))]
        notes_start = time.time()
        probe.schedule(events)
        time.sleep(5.5)
        notes_end = time.time()
        reports = _reports(url)

        def changes(t0, t1):  # the frame-to-frame change the page measured, from reports covering [t0, t1]
            return [c for r in reports if t0 + 1.0 <= r["received"] <= t1 for _i, c in r["changes"][1:]]

        quiet, moving = changes(quiet_end - 4.0, quiet_end), changes(notes_start + 0.5, notes_end)
        fps = [r["fps"] for r in reports if notes_start + 1.0 <= r["received"] <= notes_end]
        print("page fps", fps, "change quiet", np.mean(quiet), "with notes", np.mean(moving))
        assert len(quiet) > 20 and len(moving) > 20, (len(quiet), len(moving))
        assert np.mean(moving) > 2.0 * np.mean(quiet), (np.mean(quiet), np.mean(moving))
        assert np.median(fps) >= 10, fps  # (the benchmark measures the real figure; CI shares 2 cores)
        old_epoch = _get_json(url + "status")["epoch"]
        assert live.stop() == 0, live.stderr
        assert "Traceback" not in live.stderr
        log = live.log()
        assert log["visual"]["frames_made"] > 100 and log["visual"]["error"] is None, log["visual"]

        # The server goes away and comes back: the page, left running, reconnects by itself.
        time.sleep(2.0)
        live = Live(server, tmp_path / "again", *args)
        live.wait_ports(probe)
        deadline = time.monotonic() + 30
        fresh = []
        while time.monotonic() < deadline and not fresh:
            time.sleep(0.5)
            fresh = [r for r in _reports(url) if r.get("epoch") != old_epoch and r.get("drawn", 0) > 0
                     and r.get("fps", 0) > 0]
        assert fresh, "the page did not reconnect to the restarted server"
    finally:
        if browser is not None:
            browser.terminate()
            try:
                browser.wait(10)
            except subprocess.TimeoutExpired:
                browser.kill()
        live.stop()
