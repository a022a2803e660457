"""The JACK test client: frame-exact latency against a reference instrument, exact MIDI clock ticks,
and the onset rule on synthetic audio.

The real-time tests run against a private jackd (dummy backend, unique server name) started once for
the module; they skip with the reason where JACK2 or the JACK-Client package is missing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from liveart.testing.jackprobe import (
    JackProbeError,
    JackServer,
    Probe,
    clock_events,
    detect_onsets,
    jack_available,
    jack_unavailable_reason,
    measure_latency,
)

SR = 48000
PERIOD = 128
BURST_FRAMES = 480
BURST_LEVEL = 0.5

needs_jack = pytest.mark.skipif(not jack_available(), reason=f"JACK unavailable: {jack_unavailable_reason()}")


@pytest.fixture(scope="module")
def server():
    with JackServer(sample_rate=SR, period=PERIOD) as srv:
        yield srv


@pytest.fixture
def probe(server):
    with Probe("test-probe") as p:
        yield p


class ReferenceInstrument:
    """A JACK instrument with frame-exact timing: each note-on starts a constant burst exactly
    ``delay_frames`` after the note-on's own frame (the frame offset JACK gives it in its cycle)."""

    def __init__(self, delay_frames: int):
        import jack

        self.delay_frames = delay_frames
        self.client = jack.Client("reference-instrument", no_start_server=True)
        self.midi_in = self.client.midi_inports.register("midi_in")
        self.out = self.client.outports.register("out")
        self.starts = [-10**9] * 8  # ring of burst start frames, preallocated
        self.k = 0
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames):
        t0 = self.client.last_frame_time
        for off, data in self.midi_in.incoming_midi_events():
            if len(data) == 3 and data[0][0] & 0xF0 == 0x90 and data[2][0] > 0:
                self.starts[self.k % len(self.starts)] = t0 + off + self.delay_frames
                self.k += 1
        buf = self.out.get_array()
        buf.fill(0.0)
        for s in self.starts:
            a, b = max(s, t0), min(s + BURST_FRAMES, t0 + frames)
            if a < b:
                buf[a - t0 : b - t0] = BURST_LEVEL

    def close(self):
        self.client.deactivate()
        self.client.close()


@needs_jack
@pytest.mark.parametrize("delay_frames", [0, 37, 200])
def test_latency_of_a_frame_exact_instrument_is_exact(probe, delay_frames):
    # This VM's idle CPUs sometimes wake a client late (the server reports an xrun a few times a
    # minute): a note with an xrun from two periods before it to 16 after its sound (the report comes
    # from a thread that is not real-time, sometimes late) says nothing of the probe. Every other
    # note must have one latency; runs repeat until 20 notes do.
    inst = ReferenceInstrument(delay_frames)
    try:
        for _attempt in range(4):
            result = measure_latency(probe, inst.midi_in.name, [inst.out.name], notes=30,
                                     spacing_frames=2400, note_length_frames=480)
            clean = ~result.near_xrun(2 * PERIOD, delay_frames + 16 * PERIOD)
            if clean.sum() >= 20:
                break
    finally:
        inst.close()
    assert result.notes == 30
    if clean.sum() < 20:  # (CI once had 39-46 xruns in each run of 30 notes: 11-15 clear)
        pytest.skip(f"too many xruns to judge: {clean.sum()} of 30 notes away from the {result.xruns} xruns")
    lat = [v for v, ok in zip(result.latencies_frames, clean) if ok]
    assert None not in lat, lat  # every note away from an xrun sounded
    assert len(set(lat)) == 1, f"latency varied: {sorted(set(lat))}"
    # probe -> instrument -> probe is a loop in JACK's graph: one of its edges is read one cycle later
    assert lat[0] in (delay_frames, delay_frames + PERIOD)
    if not result.xruns:
        assert result.missed == 0 and result.jitter_frames == 0
    # the notes were sent at offsets spread over the period, so a constant is really frame-exact
    assert len(set(result.send_offsets[clean].tolist())) > 15


@needs_jack
def test_silent_instrument_counts_every_note_as_missed(probe):
    silent = Probe("silent-instrument", audio_inputs=0)
    try:
        out = silent.client.outports.register("out")  # never written: JACK gives silence
        result = measure_latency(probe, silent.midi_in_name, [out.name], notes=5, spacing_frames=2400,
                                 note_length_frames=480)
    finally:
        silent.close()
    assert result.missed == 5 and math.isnan(result.p50_frames)


@needs_jack
def test_clock_ticks_arrive_at_exact_frames(probe):
    # Judged on a run the server played without an xrun (this VM has a few a minute: a late cycle
    # sends its ticks late, which says nothing of the schedule); up to 20 runs of 0.6 s. (CI once had
    # an xrun in each of 8: then the schedule cannot be judged on this machine now, and the test says so.)
    attempts = 20
    for _attempt in range(attempts):
        listener = Probe("clock-listener", audio_inputs=0)
        try:
            probe.client.connect(probe.midi_out_name, listener.midi_in_name)
            capture = listener.capture_midi()
            xruns = probe.xruns
            start = probe.frame_time + SR // 5
            # 120 bpm at 48 kHz: a tick every 1000 frames; 130 bpm from tick 10: 923 1/13 frames
            change = start + 10_000
            stop = change + 20 * 48000 * 60 // (130 * 24) + 50
            resume = stop + 5000
            end = resume + 3000
            sched = probe.send_clock(start, 120, end, tempo_changes=[(change, 130)], stop_frame=stop,
                                     continue_frame=resume)
            assert listener.wait_until_frame(end + 2 * PERIOD, timeout_s=5.0)
            xruns = probe.xruns - xruns
        finally:
            listener.close()
        if xruns == 0:
            break
    if xruns:
        pytest.skip(f"the server had an xrun in each of {attempts} runs of 0.6 s: the schedule cannot be judged")
    assert sched.done and sched.late == 0
    iv130 = 48000 * 60 / (130 * 24)
    expected = [(start, 0xFA)] + [(start + 1000 * k, 0xF8) for k in range(10)]
    expected += [(change + math.floor(k * 2_880_000 / 3120), 0xF8) for k in range(21)]
    assert expected[-1][0] < stop < change + 21 * iv130
    expected += [(stop, 0xFC), (resume, 0xFB)]
    expected += [(resume + math.floor(k * 2_880_000 / 3120), 0xF8) for k in range(4)]
    assert resume + 4 * iv130 >= end > resume + 3 * iv130
    got = [(frame, data[0]) for frame, data in capture.events()]
    assert len(got) == len(expected), got[:5]
    shift = got[0][0] - expected[0][0]
    assert shift in (0, PERIOD)
    assert got == [(f + shift, b) for f, b in expected]


def test_clock_events_tempo_change_mid_tick_is_phase_continuous():
    # 120 bpm (1000 frames per tick) halved to 60 bpm halfway through the second interval:
    # the half interval left takes twice as long
    ev = clock_events(48000, 0, 120, 3500, tempo_changes=[(1500, 60)], send_start=False)
    assert [f for f, _ in ev] == [0, 1000, 2500]
    ev = clock_events(44100, 0, 127, 44100 * 10, send_start=False)
    iv = 44100 * 60 / (127 * 24)
    assert [f for f, _ in ev] == [math.floor(k * 44100 * 60 / (127 * 24)) for k in range(len(ev))]
    assert len(ev) == math.ceil(44100 * 10 / iv)


def test_clock_events_rejects_continue_before_stop():
    with pytest.raises(JackProbeError):
        clock_events(48000, 0, 120, 10000, stop_frame=5000, continue_frame=4000)


def test_detect_onsets_finds_known_onsets_and_ignores_silent_notes():
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal((20000, 2)) * 10 ** (-70 / 20)).astype(np.float32)  # noise floor -70 dBFS
    audio[1130:1600, 1] = 0.3  # note at 1000 sounds 130 frames later, on the right channel only
    audio[5077:5500] = -0.01  # note at 5000: 77 frames, quiet (-40 dBFS) but above the floor
    audio[9000:9300] = 0.2  # loud tail before the note at 9400 ...
    audio[9400:9700] = 0.5  # ... whose own sound is only 2.5x it: not an onset until 9700
    audio[9700:9800] = 0.9
    notes = [1000, 5000, 9400, 12000, 19990]  # 12000 never sounds; 19990 runs off the end
    lat = detect_onsets(audio, notes, pre_window_frames=256, max_latency_frames=4000)
    assert lat == [130, 77, 300, None, None]
    # the -50 dBFS floor: a -60 dBFS burst after silence is not a note
    quiet = np.zeros(3000, np.float32)
    quiet[500:600] = 10 ** (-60 / 20)
    assert detect_onsets(quiet, [400]) == [None]


def test_near_xruns_includes_both_ends_of_the_window():
    from liveart.testing.jackprobe import near_xruns

    frames = [1000, 2000, 3000]
    assert near_xruns(frames, [900], 100, 50).tolist() == [True, False, False]  # 100 before: in
    assert near_xruns(frames, [2050], 100, 50).tolist() == [False, True, False]  # 50 after: in
    assert near_xruns(frames, [2051, 2899], 100, 50).tolist() == [False, False, False]
    assert near_xruns(frames, [], 100, 50).tolist() == [False, False, False]


@needs_jack
def test_a_late_receiver_keeps_each_message_once(server, probe):
    """After an xrun JACK2 can hand a receiver MIDI it already read: a cycle run again whose sender
    did not run again, or a late run that reads a later cycle start (the same list a second time,
    256 frames on: 1 of 76 repeats in one experiment like this, so this test meets it only now and
    then; RepeatedMidi's own test has it every time). The capture keeps each message once
    (liveart's JACK host does the same). Both clients are late now and then: the receiver before it
    reads the cycle's start."""
    import time

    receiver = Probe("late-receiver")
    sender_cycle = probe._process_cycle
    try:
        late = receiver._process_cycle
        cycles = [0, 0]

        def sometimes_late(frames):  # miss the cycle's deadline every 37 cycles, by several periods
            cycles[0] += 1
            if cycles[0] % 37 == 0:
                time.sleep(0.012)
            late(frames)

        def sender_sometimes_late(frames):
            sender_cycle(frames)
            cycles[1] += 1
            if cycles[1] % 50 == 0:
                time.sleep(0.004)

        receiver._process_cycle = sometimes_late
        probe.connect_midi_to(receiver.midi_in.name)
        receiver.connect_midi_to(probe.midi_in.name)  # a loop, as an instrument and its test client make
        capture = receiver.capture_midi()
        start = probe.frame_time + SR // 4
        n = 1500  # one message a cycle, numbered by its note and velocity
        probe.schedule([(start + PERIOD * k, bytes([0x90, k % 128, k // 128 + 1])) for k in range(n)])
        probe._process_cycle = sender_sometimes_late
        assert probe.wait_until_frame(start + PERIOD * (n + 8), timeout_s=30)
    finally:
        probe.__dict__.pop("_process_cycle", None)  # the fixture's probe on time again
        receiver.close()
    numbers = [d[1] + 128 * (d[2] - 1) for _f, d in capture.events()]
    assert receiver.xruns > 0  # (a repeat comes in most runs, not all: RepeatedMidi's own test has both kinds)
    twice = [k for k in set(numbers) if numbers.count(k) > 1]
    assert not twice, ([(k, [f for f, d in capture.events() if d[1] + 128 * (d[2] - 1) == k]) for k in twice[:5]],
                       "xruns at", receiver.xrun_frames[-20:], "sent from", start)
    assert numbers == sorted(numbers)
    assert len(numbers) >= n - 8 * receiver.xruns, (len(numbers), receiver.xruns)  # drops only at xruns


def test_capture_keeps_a_message_repeated_in_a_second_run_of_a_cycle_once():
    from liveart.testing.jackprobe import MidiCapture

    cap = MidiCapture(16)
    cap.read_cycle(1000, [(0, b"\x90\x3c\x64"), (5, b"\xb0\x07\x00")])
    cap.read_cycle(1000, [(0, b"\x90\x3c\x64"), (9, b"\x90\x3e\x64")])  # the cycle again: one repeat, one new
    cap.read_cycle(1128, [(0, b"\x90\x3c\x64")])  # the next cycle: the same bytes are a new message
    assert cap.events() == [(1000, b"\x90\x3c\x64"), (1005, b"\xb0\x07\x00"), (1009, b"\x90\x3e\x64"),
                            (1128, b"\x90\x3c\x64")]
    assert cap.repeated == 1


def test_repeated_midi_tells_a_buffer_read_again():
    from liveart.hosts.realtime import RepeatedMidi

    on, off, cc = b"\x90\x3c\x64", b"\x80\x3c\x00", b"\xb0\x07\x00"
    r = RepeatedMidi(capacity=2)
    assert r.read(0, [(0, on), (0, on)]) == [(0, on), (0, on)]  # first run: all new
    # A second run of the cycle, the buffer mixed from a sender that ran again and one that did not:
    # the message already read at that offset is a repeat, at another offset it is new.
    assert r.read(0, [(0, on), (1, on)]) == [(1, on)] and r.count == 1
    assert r.read(128, [(0, on)]) == [(0, on)]  # the next cycle: the same bytes are a new message
    # The same list as the callback before, whole: the sender's buffer read again, whatever the
    # start this run read (a late run reads the next cycle's start as its own).
    assert r.read(256, [(0, on)]) == [] and r.count == 2 and r.moved == 1
    assert r.read(256, [(5, off)]) == [(5, off)]  # then that cycle's own messages
    # A real stream: the same message at the same offset in the next cycle but not the same list
    # (a key pressed again: its note-off between) is kept.
    assert r.read(384, [(5, on), (90, off)]) == [(5, on), (90, off)]
    assert r.read(512, [(5, on), (91, off)]) == [(5, on), (91, off)]
    assert r.read(640, []) == [] and r.read(768, []) == [] and r.count == 2  # empty cycles are not repeats
    assert r.read(896, [(3, cc)]) == [(3, cc)] and r.read(896, [(3, cc)]) == [] and r.count == 3
    # The same list after callbacks that read nothing, within the window (3 callbacks): read again.
    assert r.read(1024, []) == [] and r.read(1152, [(3, cc)]) == [] and r.count == 4 and r.moved == 2
    # Past the window it is a new message (a clock whose tick is 4 periods long, say).
    assert [r.read(1280 + 128 * k, []) for k in range(3)] == [[]] * 3
    assert r.read(1664, [(3, cc)]) == [(3, cc)] and r.count == 4