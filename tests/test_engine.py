"""The engine and synth: timing, invariance, band limits, pedal, bend, stealing."""

from __future__ import annotations

import numpy as np
import pytest

from liveart import events as ev
from liveart.engine import MAX_GLIDE_PER_HOP, Engine

from .conftest import SR, make_patch, render_events


def busy_events():
    """Notes on three channels, chords beyond the polyphony, bends, CCs and the pedal."""
    out = []
    rng = np.random.default_rng(7)
    for i in range(40):
        t = 300 + i * 1531
        c = i % 3
        note = int(rng.integers(40, 90))
        out.append(ev.note_on(t, c, note, int(rng.integers(30, 127))))
        out.append(ev.note_off(t + int(rng.integers(200, 9000)), c, note))
    out += [ev.pitch_bend(5000, 0, 4000), ev.pitch_bend(20011, 0, -8192), ev.pitch_bend(30000, 0, 0),
            ev.control_change(7777, 1, ev.CC_VOLUME, 40), ev.control_change(12345, 2, ev.CC_PAN, 0),
            ev.control_change(15000, 1, ev.CC_BRIGHTNESS, 120), ev.control_change(16001, 0, ev.CC_MOD_WHEEL, 90),
            ev.control_change(9000, 2, ev.CC_SUSTAIN, 127), ev.control_change(40000, 2, ev.CC_SUSTAIN, 0),
            ev.program_change(25000, 1, 40)]
    out += [ev.note_on(50000 + k, 0, 50 + k, 100) for k in range(8)]  # a chord that forces stealing
    return out


@pytest.mark.parametrize("preset", ["soft_flute", "bright", "breathy_pad", "pluck", "noise_hit"])
def test_block_size_does_not_change_the_samples(preset):
    patch = make_patch(preset, polyphony=6)
    frames = 80000
    a, eng_a = render_events(patch, busy_events(), frames, block_sizes=(64,))
    b, _ = render_events(patch, busy_events(), frames, block_sizes=(1024,))
    c, _ = render_events(patch, busy_events(), frames, block_sizes=(1, 37, 700, 128, 4099))
    assert np.sqrt(np.mean(a ** 2)) > 0.01, "the test must render real sound"
    assert eng_a.stats.stolen_voices > 0, "the events must exercise voice stealing"
    # every sample is a closed form of its frame, summed in slot order: bit-identical
    assert np.array_equal(a, b) and np.array_equal(a, c)


@pytest.mark.parametrize("preset", ["soft_flute", "bright", "breathy_pad", "noise_hit"])
def test_compiled_kernel_matches_the_numpy_reference(preset):
    """Before each block of a busy piece, the voices as they stand are rendered by the kernel and by
    the numpy reference up to the next event or control hop boundary (where the state changes)."""
    engine = Engine(make_patch(preset, polyphony=6), sample_rate=SR)
    engine.schedule_many(busy_events())
    compared = loud = 0
    for _ in range(80000 // 512):
        t0 = engine.frame
        queued = engine.s.queue[0, 0] if engine.pending_events else t0 + 512
        n = int(min(queued, (t0 // engine.hop_frames + 1) * engine.hop_frames) - t0)
        if n > 0 and engine.sounding_voices():
            fast = (np.zeros(n), np.zeros(n))
            slow = (np.zeros(n), np.zeros(n))
            engine.bank.render(t0, *fast)
            engine.bank.render_numpy(t0, *slow)
            assert np.max(np.abs(fast[0] - slow[0])) <= 1e-5 and np.max(np.abs(fast[1] - slow[1])) <= 1e-5
            compared += n
            loud = max(loud, float(np.max(np.abs(slow[0]))))
        engine.render(512)
    assert compared > 5000 and loud > 0.01


def test_a_note_starts_at_its_exact_frame_inside_a_block():
    patch = make_patch("pure")
    for onset in (1037, 1038, 1100):
        out, _ = render_events(patch, [ev.note_on(onset, 0, 69, 100)], 4096, block_sizes=(64,))
        assert np.all(out[: onset + 1] == 0.0)  # the attack starts from 0 at the onset frame ...
        assert out[onset + 1, 0] != 0.0  # ... and the very next frame sounds
        assert np.count_nonzero(out[onset + 1 : onset + 64, 0]) >= 60


@pytest.mark.parametrize("pedal", [False, True])
def test_a_release_starts_at_its_exact_frame(pedal):
    """The note-off (or, with the pedal, the pedal-up) frame is the first frame that differs from
    the held note."""
    patch = make_patch("pure")
    start = [ev.control_change(0, 0, ev.CC_SUSTAIN, 127)] if pedal else []
    held, _ = render_events(patch, start + [ev.note_on(100, 0, 69, 100)], 9000, block_sizes=(64,))
    stop = 5037
    ending = [ev.note_off(3000, 0, 69), ev.control_change(stop, 0, ev.CC_SUSTAIN, 0)] if pedal else \
        [ev.note_off(stop, 0, 69)]
    released, _ = render_events(patch, start + [ev.note_on(100, 0, 69, 100)] + ending, 9000, block_sizes=(64,))
    differs = np.flatnonzero(held[:, 0] != released[:, 0])
    assert differs[0] == stop + 1  # at the stop frame itself the release starts from the held level


def test_controls_at_a_note_on_frame_apply_from_its_first_sample():
    """A bend and a volume change sent at the same frame as a note shape it from its onset."""
    patch = make_patch("pure", bend_range=12.0)
    events = [ev.pitch_bend(1000, 0, 8191), ev.control_change(1000, 0, ev.CC_VOLUME, 64), ev.note_on(1000, 0, 57, 100)]
    out, _ = render_events(patch, events, 1000 + 48000, block_sizes=(100,))
    x = out[1000:, 0].astype(np.float64)
    crossings = np.flatnonzero((x[:-1] <= 0) & (x[1:] > 0))
    periods = np.diff(crossings[:6])
    assert np.all(np.abs(periods - SR / 440.0) <= 1.5)  # an octave up from the very first cycle
    reference, _ = render_events(patch, [ev.pitch_bend(0, 0, 8191), ev.note_on(1000, 0, 57, 100)], 1000 + 48000)
    ratio = np.sqrt(np.mean(x[24000:] ** 2)) / np.sqrt(np.mean(reference[25000:, 0].astype(np.float64) ** 2))
    assert ratio == pytest.approx((64 / 100) ** 2, rel=0.01)  # CC 7 64 vs the patch's volume of 100


def test_a_later_note_is_the_same_sound_shifted():
    patch = make_patch("pure")
    a, _ = render_events(patch, [ev.note_on(1000, 0, 57, 90), ev.note_off(5000, 0, 57)], 12000, block_sizes=(128,))
    b, _ = render_events(patch, [ev.note_on(1013, 0, 57, 90), ev.note_off(5013, 0, 57)], 12000, block_sizes=(128,))
    assert np.max(np.abs(b[1013:] - a[1000:-13])) < 1e-5


def _spectrum_db(x: np.ndarray):
    w = np.hanning(len(x))
    mag = np.abs(np.fft.rfft(x * w))
    return mag, np.fft.rfftfreq(len(x), 1.0 / SR)


@pytest.mark.parametrize("note,bend", [(108, 0), (100, 0), (96, 8191), (120, 0)])
def test_no_partials_above_nyquist_fold_back(note, bend):
    """A bright 64-partial tone high up: everything outside the true harmonics is > 70 dB down."""
    patch = make_patch("bright", bend_range=2.0)
    events = [ev.pitch_bend(0, 0, bend), ev.note_on(256, 0, note, 127)]
    out, _ = render_events(patch, events, 48000 + 8192)
    x = out[8192:, 0].astype(np.float64)
    mag, freqs = _spectrum_db(x)
    f0 = 440.0 * 2 ** ((note - 69) / 12) * 2 ** (2.0 * bend / 8192 / 12)
    harmonic = np.zeros(len(freqs), bool)
    k = 1
    while k * f0 < SR / 2:
        harmonic |= np.abs(freqs - k * f0) < 20.0  # Hann main lobe is 2 bins = 2 Hz; be generous
        k += 1
    assert k > 2, "the note must have partials that would alias"
    inside = np.sum(mag[harmonic] ** 2)
    outside = np.sum(mag[~harmonic] ** 2)
    assert inside > 0
    assert 10 * np.log10(outside / inside) < -70.0


def _level(out, start, length=2400):
    return float(np.sqrt(np.mean(out[start : start + length, 0].astype(np.float64) ** 2)))


def test_sustain_pedal_holds_and_releases():
    patch = make_patch("pure")
    events = [ev.control_change(0, 0, ev.CC_SUSTAIN, 127), ev.note_on(100, 0, 60, 100), ev.note_off(10000, 0, 60)]
    held, _ = render_events(patch, events + [ev.control_change(40000, 0, ev.CC_SUSTAIN, 0)], 60000)
    free, _ = render_events(patch, [ev.note_on(100, 0, 60, 100), ev.note_off(10000, 0, 60)], 60000)
    steady = _level(held, 8000)
    assert steady > 0.05
    assert _level(held, 30000) == pytest.approx(steady, rel=0.02)  # still held long after the note-off
    assert _level(free, 30000) == 0.0  # without the pedal the note is gone
    assert np.all(held[40000 + int(0.05 * SR) + 2 :] == 0.0)  # released at pedal-up, over the release time
    assert _level(held, 40000, 200) > 0.0


@pytest.mark.parametrize("bend_range,bend", [(2.0, 8191), (2.0, -8192), (12.0, 8191), (7.0, 4096)])
def test_pitch_bend_moves_the_pitch_by_the_configured_range(bend_range, bend):
    patch = make_patch("pure", bend_range=bend_range)
    events = [ev.note_on(0, 0, 57, 100), ev.pitch_bend(24000, 0, bend)]
    out, _ = render_events(patch, events, 24000 + 48000 + 16384)
    mag_before, freqs = _spectrum_db(out[4000:20384, 0].astype(np.float64))
    mag_after, _ = _spectrum_db(out[48000:48000 + 16384, 0].astype(np.float64))
    f_before = freqs[np.argmax(mag_before)]
    f_after = freqs[np.argmax(mag_after)]
    expected = 220.0 * 2 ** (bend / 8192 * bend_range / 12)
    assert f_before == pytest.approx(220.0, abs=3.0)
    assert f_after == pytest.approx(expected, abs=3.0)


def _periods(x: np.ndarray):
    """(start frame, length) of every period of a sine, from fractional upward zero crossings."""
    i = np.flatnonzero((x[:-1] <= 0) & (x[1:] > 0))
    crossings = i + x[i] / (x[i] - x[i + 1])
    return crossings[:-1], np.diff(crossings)


@pytest.mark.parametrize("bend,hops", [(1024, 1), (8191, 7)])  # +1.5 semitones; +12 semitones
def test_pitch_bend_glides_without_folding_partials_back(bend, hops):
    """A bend does not step the frequency: it glides from the next hop boundary, over one hop
    when the step is small and over several when one hop would move the pitch by more than
    MAX_GLIDE_PER_HOP (a partial of a cross-faded wavetable could pass Nyquist)."""
    patch = make_patch("pure", bend_range=12.0)
    bend_at = 12800  # a hop boundary
    out, engine = render_events(patch, [ev.note_on(0, 0, 93, 100), ev.pitch_bend(bend_at, 0, bend)], 20000)
    hop = engine.hop_frames
    start, periods = _periods(out[:, 0].astype(np.float64))
    old, new = SR / 1760.0, SR / (1760.0 * 2 ** (12 * bend / 8192 / 12))
    glide_end = bend_at + hops * hop
    during = periods[(start > bend_at) & (start + periods < glide_end)]
    assert np.all(np.abs(periods[start + periods < bend_at - 1] - old) < 0.05)
    assert np.all(np.abs(periods[start > glide_end + 1] - new) < 0.05)
    assert len(during) >= 2
    assert np.all((during < old - 0.1) & (during > new + 0.1))  # in between, not a jump
    assert np.all(np.diff(during) < 0.01)  # and falling all the way
    # Never more than the allowed pitch ratio per hop.
    per_hop = [np.mean(periods[(start >= b) & (start + periods <= b + hop)]) for b in range(bend_at - hop, glide_end + hop, hop)]
    assert np.max(np.array(per_hop[:-1]) / np.array(per_hop[1:])) <= MAX_GLIDE_PER_HOP * 1.05


def test_voice_stealing_fades_instead_of_clicking():
    """Polyphony 4, five held low sines: the oldest is stolen with a fade of a few ms, not cut."""
    patch = make_patch("pure", polyphony=4)
    notes = [36, 40, 43, 47]
    events = [ev.note_on(100 + 4000 * i, 0, n, 127) for i, n in enumerate(notes)]
    steal_at = 30011
    events.append(ev.note_on(steal_at, 0, 48, 1))  # a very soft new note: the stolen voice dominates the step
    out, engine = render_events(patch, events, 40000, block_sizes=(128,))
    assert engine.stats.stolen_voices == 1
    assert engine.stats.hard_cuts == 0
    x = out[:, 0].astype(np.float64)
    natural = np.max(np.abs(np.diff(x[20000:steal_at])))
    around = np.max(np.abs(np.diff(x[steal_at - 10 : steal_at + 2000])))
    # What a cut would do: the stolen voice (note 36, the oldest) drops from its level to zero at once.
    solo, _ = render_events(patch, [ev.note_on(100, 0, 36, 127)], steal_at + 1)
    cut_step = np.max(np.abs(solo[steal_at - 200 : steal_at, 0]))
    assert cut_step > 5 * natural, "the test must be able to tell a cut from a fade"
    assert around <= 1.5 * natural
    # The oldest note went, the others and the new one sound.
    assert sorted(n for _, n, _ in engine.sounding_notes()) == [40, 43, 47, 48]
    # The fade lasts a few milliseconds: the stolen voice is still audible 2 ms after the steal.
    others, _ = render_events(patch, [ev.note_on(100 + 4000 * i, 0, n, 127) for i, n in enumerate(notes) if n != 36]
                              + [ev.note_on(steal_at, 0, 48, 1)], 40000, block_sizes=(128,))
    stolen_part = x - others[:, 0]
    level = lambda a, b: np.max(np.abs(stolen_part[a:b]))
    assert level(steal_at + int(0.002 * SR), steal_at + int(0.0025 * SR)) > 0.2 * level(steal_at - 400, steal_at)
    assert level(steal_at + int(0.01 * SR), steal_at + 2000) == 0.0


def test_stealing_takes_a_released_voice_before_a_held_one():
    patch = make_patch("pure", polyphony=4)
    events = [ev.note_on(0, 0, 40, 100), ev.note_on(10, 0, 43, 100), ev.note_on(20, 0, 47, 100),
              ev.note_on(30, 0, 50, 100), ev.note_off(1000, 0, 47), ev.note_on(1010, 0, 55, 100)]
    _, engine = render_events(patch, events, 3000)
    assert engine.stats.stolen_voices == 1
    assert sorted(n for _, n, _ in engine.sounding_notes()) == [40, 43, 50, 55]  # the oldest (40) stays


def test_noise_of_different_voices_is_independent():
    """Eight voices of one noisy sound on eight channels: their noise adds like independent noise
    (RMS x sqrt(8)), not like one noise played eight times (x 8)."""
    tone, _ = render_events(make_patch("breathy_pad", noise=0.0), [ev.note_on(0, 0, 60, 100)], 48000)
    noisy = make_patch("breathy_pad")
    noise = [render_events(noisy, [ev.note_on(0, c, 60, 100)], 48000)[0] - tone for c in range(8)]
    rms = lambda x: np.sqrt(np.mean(x[12000:, 0].astype(np.float64) ** 2))
    assert rms(noise[0]) > 0.01
    assert rms(sum(noise)) / rms(noise[0]) == pytest.approx(np.sqrt(8), rel=0.2)


def test_thirty_two_voices_sound_at_once():
    patch = make_patch("pure", polyphony=32)
    events = [ev.note_on(0, 0, 30 + 2 * i, 100) for i in range(32)]
    _, engine = render_events(patch, events, 2048)
    assert engine.sounding_voices() == 32
    assert engine.stats.stolen_voices == 0


def test_all_notes_off_leaves_nothing_hanging():
    patch = make_patch("pure")
    events = [ev.control_change(0, 3, ev.CC_SUSTAIN, 127)] + [ev.note_on(10 * i, i % 16, 40 + i, 100) for i in range(20)]
    engine = Engine(patch, sample_rate=SR)
    engine.schedule_many(events)
    engine.render(4096)
    engine.all_notes_off()
    engine.render(int(0.2 * SR))
    assert engine.sounding_voices() == 0
    assert np.all(engine.render(256) == 0.0)


def test_late_events_play_at_once_and_are_counted():
    engine = Engine(make_patch("pure"), sample_rate=SR)
    engine.render(1000)
    engine.schedule(ev.note_on(10, 0, 60, 100))
    out = engine.render(512)
    assert engine.stats.late_events == 1
    assert np.count_nonzero(out[:, 0]) > 500


def test_state_reports_onsets_and_levels():
    engine = Engine(make_patch("pure"), sample_rate=SR)
    engine.schedule(ev.note_on(70, 2, 64, 99))
    engine.render(128)
    assert engine.state.onsets == [(70, 2, 64, 99)]
    assert engine.state.peak > 0.0
    assert engine.sounding_notes() == [(2, 64, 99)]
    engine.render(128)
    assert engine.state.onsets == []


def test_same_seed_same_noise_other_seed_other_noise():
    patch = make_patch("breathy_pad")
    events = [ev.note_on(0, 0, 60, 100)]
    a, _ = render_events(patch, events, 20000, seed=1)
    b, _ = render_events(patch, events, 20000, seed=1)
    c, _ = render_events(patch, events, 20000, seed=2)
    assert np.array_equal(a, b)
    assert np.max(np.abs(a - c)) > 1e-3


@pytest.mark.parametrize("event", [
    ev.Event(0, 99, 0, 0, 0), ev.Event(0, ev.NOTE_ON, 16, 60, 100), ev.Event(0, ev.NOTE_ON, 0, 200, 100),
    ev.Event(0, ev.NOTE_OFF, 0, 200, 0), ev.Event(0, ev.NOTE_ON, 0, 60, 300), ev.Event(0.5, ev.NOTE_ON, 0, 60, 100),
    ev.Event(0, ev.PITCH_BEND, 0, 9000, 0), ev.Event(0, ev.CONTROL_CHANGE, 0, 7, 128), ev.Event(0, ev.TEMPO, 0, 0, 0),
])
def test_an_event_no_midi_message_could_make_is_refused(event):
    engine = Engine(make_patch("pure"))
    with pytest.raises(ValueError, match="not an engine event"):
        engine.schedule(event)
    assert engine.pending_events == 0


@pytest.mark.parametrize("shape,dtype", [((128, 2), np.float64), ((128,), np.float32), ((128, 3), np.float32)])
def test_render_into_refuses_a_wrong_buffer(shape, dtype):
    engine = Engine(make_patch("pure"))
    with pytest.raises(ValueError, match="float32 array of shape"):
        engine.render_into(np.zeros(shape, dtype))
