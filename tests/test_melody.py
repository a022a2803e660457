"""The melody model as a player meets it: the shipped models load and match their training weights,
a seed repeats a take, every way to play keeps its timing, the key lock and the note range hold,
bad input fails with one line, ``render --continue`` adds the model's part, patch controllers steer
it, and no generated note is left hanging. The data set keeps each tune in one split and the
Markov baseline is a proper distribution.

Tests that need a trained model use the shipped ``models/melody-{gru,lstm}.onnx`` (and, for the
torch/ONNX parity, their ``.pt`` checkpoints); they skip, saying so, while a model is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile

from liveart import events as ev
from liveart.cli import main
from liveart.hosts.generate import TRACK_NAME, combined_midi, generate, generate_file
from liveart.melody import representation as rep
from liveart.melody.model import MelodyModel, Sampler, SamplingSettings
from liveart.melody.play import Partner, PlaySettings
from liveart.midi.files import read_midi_notes

from .conftest import write_midi

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
ARCHS = ("gru", "lstm")
TPB = 480
STEP_TICKS = TPB // 4  # a 16th note
STEP_SECONDS = 0.125  # a 16th at 120 bpm, the tempo of every prime here
C_MAJOR = frozenset({0, 2, 4, 5, 7, 9, 11})


def shipped(arch: str, suffix: str = ".onnx") -> Path:
    path = MODELS_DIR / f"melody-{arch}{suffix}"
    if not path.is_file():
        pytest.skip(f"models/{path.name} is not there yet (it ships once 'liveart train melody --arch {arch}' "
                    f"has been run)")
    return path


@pytest.fixture(scope="module")
def gru_path() -> Path:
    """The default shipped model, for tests where the cell does not matter."""
    return shipped("gru")


@pytest.fixture(scope="module")
def model(gru_path) -> MelodyModel:
    return MelodyModel(gru_path)


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request) -> MelodyModel:
    return MelodyModel(shipped(request.param))


@pytest.mark.parametrize("arch", ARCHS)
def test_the_shipped_models_load_by_name(arch):
    path = shipped(arch)
    model = MelodyModel(arch)
    assert model.path.samefile(path)
    assert model.arch == arch and model.metadata["kind"] == "liveart-melody"
    assert (model.vocab, model.n_features) == (rep.VOCAB_SIZE, rep.N_FEATURES)


# -------------------------------------------------------------------------------------- helpers
def prime_file(path, notes, *, tpb: int = TPB, time_signature=(4, 4), controls=()):
    """A type 1 file at 120 bpm. ``notes``: (start_step, end_step, pitch[, channel]); ``controls``:
    (step, channel, control, value). Steps may be fractional (off the grid)."""
    meta = [mido.MetaMessage("set_tempo", tempo=500000, time=0)]
    if time_signature:
        meta.append(mido.MetaMessage("time_signature", numerator=time_signature[0],
                                     denominator=time_signature[1], time=0))
    timed = []
    for n in notes:
        start, end, pitch = n[:3]
        channel = n[3] if len(n) > 3 else 0
        timed.append((start, 2, mido.Message("note_on", channel=channel, note=pitch, velocity=90)))
        timed.append((end, 0, mido.Message("note_off", channel=channel, note=pitch, velocity=0)))
    for step, channel, control, value in controls:
        timed.append((step, 1, mido.Message("control_change", channel=channel, control=control, value=value)))
    timed.sort(key=lambda x: (x[0], x[1]))
    msgs, now = [], 0
    for step, _, msg in timed:
        tick = int(round(step * tpb / 4))
        msgs.append(msg.copy(time=tick - now))
        now = tick
    return write_midi(path, [meta, msgs], ticks_per_beat=tpb)


def model_part(midi) -> list[tuple[int, int, int, int]]:
    """The notes of the 'liveart melody' track as (start_tick, end_tick, pitch, velocity); fails on a
    note that starts while it already sounds or never ends."""
    tracks = [t for t in midi.tracks if any(m.type == "track_name" and m.name == TRACK_NAME for m in t)]
    assert len(tracks) == 1, "the model's part is one new track"
    notes, sounding, tick = [], {}, 0
    for msg in tracks[0]:
        tick += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            assert msg.note not in sounding, f"note {msg.note} starts again at tick {tick} before it ended"
            sounding[msg.note] = (tick, msg.velocity)
        elif msg.type in ("note_on", "note_off"):
            assert msg.note in sounding, f"a note-off for {msg.note} at tick {tick} that no note-on opened"
            start, velocity = sounding.pop(msg.note)
            assert tick > start, "a generated note lasts at least one step"
            notes.append((start, tick, msg.note, velocity))
    assert not sounding, f"generated notes left hanging: {sorted(sounding)}"
    return sorted(notes)


def in_steps(notes, tpb: int = TPB) -> list[tuple[float, float, int]]:
    return [(s * 4 / tpb, e * 4 / tpb, p) for s, e, p, _ in notes]


def play(model, prime, settings: PlaySettings, seeds=(0, 1, 2), bars: int = 2, free_time: bool = False,
         tpb: int = TPB) -> list[list[tuple[float, float, int]]]:
    """The model's part for each seed, in steps, read back from the MIDI file it would write."""
    source = read_midi_notes(prime)
    takes = []
    for seed in seeds:
        result = generate(source, model, settings, bars=bars, seed=seed, free_time=free_time)
        notes = model_part(combined_midi(result))
        for start, end, _, _ in notes:
            assert start % (tpb // 4) == 0 and end % (tpb // 4) == 0, "generated notes sit on the 16th grid"
        takes.append(in_steps(notes, tpb))
    assert any(takes), "the model played something in at least one take"
    return takes


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# A phrase of eight 8th notes in C major, 0-16 steps (one 4/4 bar at 120 bpm is 2 s).
C_PHRASE = [(0, 2, 60), (2, 4, 62), (4, 6, 64), (6, 8, 65), (8, 10, 67), (10, 12, 65), (12, 14, 64), (14, 16, 60)]


# ------------------------------------------------------------------------------- representation
def test_tokens_round_trip_a_line_and_mark_repeated_notes():
    line = [(0, 4, 60), (4, 6, 60), (8, 9, 72), (9, 16, 30), (16, 17, 100)]
    tokens = rep.notes_to_tokens(line)
    assert tokens[0] == rep.note_token(60) and tokens[4] == rep.note_token(60), "a repeated note restarts"
    assert list(tokens[1:4]) == [rep.HOLD] * 3 and list(tokens[6:8]) == [rep.REST] * 2
    # Pitches outside the model's range fold into it by octaves.
    assert rep.tokens_to_notes(tokens) == [(0, 4, 60), (4, 6, 60), (8, 9, 72), (9, 16, 42), (16, 17, 88)]
    assert rep.Meter.from_time_signature(6, 8) == rep.Meter(12, 6)
    assert rep.Meter.from_time_signature(3, 4) == rep.Meter(12, 4)


# ---------------------------------------------------------------------------------------- 1
def test_dataset_split_keeps_every_tune_and_every_chorale_in_one_split(tmp_path, monkeypatch):
    pytest.importorskip("music21")
    from liveart.training import melody_data as md

    real = md.corpus_files

    def few_files(sources):  # a handful of Ryan's tunes and Bach chorales instead of all 1430 files
        files = real(sources)
        return [f for f in files if f[0] == "ryans"][:12] + [f for f in files if f[0] == "bach"][:5]

    monkeypatch.setattr(md, "corpus_files", few_files)
    cache = tmp_path / "d.npz"
    data = md.build_dataset(cache, sources=("ryans", "bach"), workers=1, limit_files=17, progress=False,
                            rebuild=True)
    assert set(data.source) == {"ryans", "bach"}
    assert len(data) >= 5 * 4 + 6

    splits_of_group: dict[str, set[int]] = {}
    splits_of_content: dict[str, set[int]] = {}
    for i in range(len(data)):
        split = int(data.split[i])
        assert split == md.split_of(str(data.group[i]))
        splits_of_group.setdefault(str(data.group[i]), set()).add(split)
        content = md._content_key(data.tokens[data.line(i)])  # the same tune in any key
        splits_of_content.setdefault(content, set()).add(split)
    assert all(len(s) == 1 for s in splits_of_group.values()), "a tune lies in two splits"
    assert all(len(s) == 1 for s in splits_of_content.values()), "the same melody lies in two splits"

    chorales = {}
    for i in np.flatnonzero(data.source == "bach"):
        chorale = str(data.name[i]).rsplit("/", 1)[0]
        chorales.setdefault(chorale, []).append(i)
    assert len(chorales) >= 3
    for chorale, lines in chorales.items():
        assert len(lines) % 4 == 0, f"{chorale}: its four voices are all there"
        assert len({int(data.split[i]) for i in lines}) == 1, f"{chorale}: voices in two splits"
        assert len({str(data.group[i]) for i in lines}) == 1
        assert all(data.conditioned[i] for i in lines), "a chorale voice hears the other three"

    # The cache gives the same data set back without parsing again.
    monkeypatch.setattr(md, "parse_file", lambda item: pytest.fail("the cached data set was parsed again"))
    again = md.build_dataset(cache, sources=("ryans", "bach"), workers=1, progress=False)
    assert np.array_equal(again.split, data.split) and np.array_equal(again.tokens, data.tokens)
    assert list(again.group) == list(data.group)


def test_a_chorale_melody_harmonised_twice_lands_in_one_split():
    """Bach set some chorale tunes more than once: BWV 194.6 and BWV 39.7 share their soprano line note
    for note, as do BWV 114.7 and BWV 258. A tune in train and in test would flatter the scores."""
    pytest.importorskip("music21")
    from liveart.training.melody_data import _content_key, assemble, parse_file

    lines = [line for name in ("bwv194.6", "bwv39.7", "bwv114.7", "bwv258")
             for line in parse_file(("bach", f"bach/{name}"))]
    data = assemble(lines)
    sopranos = {}
    for i in range(len(data)):
        if str(data.name[i]).endswith("/Soprano"):
            sopranos.setdefault(_content_key(data.tokens[data.line(i)]), []).append(i)
    assert len(sopranos) == 2, "two soprano tunes"
    for same in sopranos.values():  # (a duplicate may be dropped; a kept one must share the split)
        assert len({int(data.split[i]) for i in same}) == 1, \
            f"{[str(data.name[i]) for i in same]} lie in splits {[int(data.split[i]) for i in same]}"


ABC_TUNE = """X:1
T:{title}
M:4/4
L:1/8
K:C
{body}
"""


def test_a_tune_and_its_transposition_share_a_group_and_a_split(tmp_path):
    pytest.importorskip("music21")
    from liveart.training.melody_data import assemble, parse_file, split_of

    bodies = {
        "in_c": "CDEF GABc|cBAG FEDC|E2G2 c2G2|C8|",
        "in_d": "DE^FG AB^cd|d^cBA G^FED|^F2A2 d2A2|D8|",  # the same tune a whole tone higher
        "other": "C2DE F2GA|B2c2 BAGF|E2G2 c2G2|C8|",  # other rhythms
    }
    lines = {}
    for name, body in bodies.items():
        path = tmp_path / f"{name}.abc"
        path.write_text(ABC_TUNE.format(title=name, body=body))
        parsed = parse_file(("ryans", str(path)))
        assert len(parsed) == 1, f"{name}: one line"
        lines[name] = parsed[0]
    assert rep.tokens_to_notes(lines["in_d"].tokens)[0][2] == rep.tokens_to_notes(lines["in_c"].tokens)[0][2] + 2
    assert lines["in_c"].group == lines["in_d"].group
    assert split_of(lines["in_c"].group) == split_of(lines["in_d"].group)
    assert lines["other"].group != lines["in_c"].group
    data = assemble([lines["in_c"], lines["other"], lines["in_d"]])
    assert len(data) == 2, "the transposed duplicate is kept once"
    assert len({str(g) for g in data.group}) == 2


# ---------------------------------------------------------------------------------------- 2
@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_step_matches_the_torch_checkpoint_over_64_steps(arch):
    torch = pytest.importorskip("torch")
    from liveart.training.train_melody import load_checkpoint

    onnx_path, checkpoint = shipped(arch), shipped(arch, ".pt")
    net = load_checkpoint(checkpoint)
    model = MelodyModel(onnx_path)
    assert model.arch == arch and model.hidden == net.config.hidden
    n = 64
    melody = [(s, s + 2, 60 + (5 * s) % 12) for s in range(0, n, 3)]
    tokens = rep.notes_to_tokens(melody, n)[:n].astype(np.int64)
    prev = np.concatenate([[rep.REST], tokens[:-1]]).astype(np.int64)
    rng = np.random.default_rng(1)
    features = np.concatenate([rep.meter_codes(np.arange(n) % 16, np.full(n, 4)),
                               rep.condition_codes(rng.integers(0, 4096, n), True)], axis=1).astype(np.float32)
    features[40:, :] = 0.0  # no meter and no performer for the last steps
    with torch.no_grad():
        expected, expected_state = net(torch.from_numpy(prev[None]), torch.from_numpy(features[None]))
    expected = expected[0].numpy()
    state = model.initial_state(1)
    got = np.zeros_like(expected)
    for t in range(n):
        logits, state = model.step(prev[t : t + 1], features[t : t + 1], state)
        got[t] = logits[0]
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert np.max(np.abs(state - expected_state.numpy())) <= 1e-4
    assert np.ptp(expected, axis=1).min() > 0.1, "the logits say something (not a constant)"


# ---------------------------------------------------------------------------------------- 3
def test_a_seed_repeats_a_take_and_another_seed_changes_it(tmp_path, arch_model):
    prime = prime_file(tmp_path / "p.mid", C_PHRASE)
    source = read_midi_notes(prime)
    settings = PlaySettings(mode="continue")
    first = generate(source, arch_model, settings, bars=4, seed=7).notes
    other = generate(source, arch_model, settings, bars=4, seed=8).notes
    again = generate(source, arch_model, settings, bars=4, seed=7).notes  # the model object keeps no state
    assert first and first == again
    assert other != first
    # The same through files: byte-identical output for the same seed.
    outs = [tmp_path / f"{i}.mid" for i in range(2)]
    for out in outs:
        generate_file(prime, out, settings, bars=4, seed=7, model=arch_model.path)
    assert outs[0].read_bytes() == outs[1].read_bytes()


# ---------------------------------------------------------------------------------------- 4
# Two calls: steps 0-8, then, after a long rest, steps 48-56.
TWO_CALLS = [(0, 2, 60), (2, 4, 64), (4, 6, 67), (6, 8, 72), (48, 50, 67), (50, 52, 64), (52, 56, 60)]


@pytest.mark.parametrize("silence, free_time, ratio, begin", [
    (0.6, True, 1.0, 13),  # 8 + 0.6 s / 0.125 s = 12.8 → the next step
    (0.6, False, 2.0, 16),  # ... → the next bar line
    (1.3, True, 1.0, 19),  # 8 + 10.4 = 18.4 → 19
    (1.3, False, 1.0, 32),
])
def test_an_answer_starts_after_the_silence_on_the_grid(tmp_path, model, silence, free_time, ratio, begin):
    prime = prime_file(tmp_path / "calls.mid", TWO_CALLS)
    settings = PlaySettings(mode="answer", silence_seconds=silence, answer_ratio=ratio)
    length = ratio * 8  # the call lasts 8 steps
    answered = 0
    for take in play(model, prime, settings, free_time=free_time, seeds=(0, 1, 2, 3)):
        first_answer = [n for n in take if n[0] < 48]
        for start, end, _ in first_answer:
            assert begin <= start and end <= begin + length, (start, end)
        answered += len(first_answer)
    assert answered, "the first call was answered"
    # (the answer to the last call is checked in the next test)


def test_the_answer_to_the_last_call_also_waits_for_the_silence_and_the_bar(tmp_path, model):
    prime = prime_file(tmp_path / "call.mid", [(0, 2, 60), (2, 4, 64), (4, 6, 67), (6, 9, 72)])
    settings = PlaySettings(mode="answer", silence_seconds=0.6)
    for take in play(model, prime, settings, seeds=(0, 1, 2, 3)):
        for start, end, _ in take:
            # The call ends at step 9; 0.6 s later is 13.8; the next bar line is 16.
            assert start >= 16, f"an answer note at step {start}, before the silence and the bar line"
            assert end <= 16 + 9


def test_a_live_answer_waits_for_the_bar_line_and_a_new_call_cuts_it_short(model):
    """The partner as the live host drives it: no end of input, events before the step they precede."""
    phrase = [(0, 2, 60), (2, 4, 64), (4, 6, 67), (6, 8, 72)]
    for seed in range(4):
        partner = Partner(model, PlaySettings(mode="answer", silence_seconds=0.6, answer_ratio=2.0), seed=seed,
                          meter=rep.Meter(), step_seconds=STEP_SECONDS)
        ons, offs = [], []
        for k in range(48):
            for start, end, pitch in phrase:
                if k - 1 < end <= k:
                    partner.note_off(end, pitch)
                if k - 1 < start <= k:
                    partner.note_on(start, pitch, 100)
            if k == 20:
                partner.note_on(19.5, 62, 100)  # the player starts again mid-answer
            for kind, pitch, _ in partner.step(k):
                (ons if kind == ev.NOTE_ON else offs).append(k)
        assert all(16 <= k < 20 for k in ons), f"seed {seed}: answer notes at {ons}"
        assert len(offs) == len(ons) and all(k <= 20 for k in offs), "the cut answer falls silent at once"
        if ons:
            break
    else:
        pytest.fail("the partner never answered")


@pytest.mark.parametrize("prime_notes", [
    C_PHRASE,
    C_PHRASE[:4] + [(s + 12, e + 12, p) for s, e, p in C_PHRASE[4:]],  # a 1.5 s rest inside the prime
], ids=["legato", "with_a_rest"])
def test_a_continuation_starts_where_the_prime_ends_and_lasts_the_bars(tmp_path, model, prime_notes):
    prime = prime_file(tmp_path / "p.mid", prime_notes)
    end = max(e for _, e, _ in prime_notes)
    for take in play(model, prime, PlaySettings(mode="continue"), bars=2):
        for start, stop, _ in take:
            assert end <= start and stop <= end + 2 * 16, (start, stop)


def test_accompaniment_plays_on_the_grid_only_while_the_player_plays(tmp_path, model):
    melody = [(s, s + 4, 64 + (s // 4) % 3 * 3) for s in range(0, 32, 4)]  # bars 0-1
    melody += [(s, s + 4, 67) for s in range(96, 112, 4)]  # bar 6, after four silent bars
    bass = [(0, 16, 48, 1), (16, 32, 43, 1), (96, 112, 48, 1)]
    tpb = 96
    prime = prime_file(tmp_path / "acc.mid", melody + bass, tpb=tpb)
    takes = play(model, prime, PlaySettings(mode="accompany"), tpb=tpb)
    player = [(s, e) for s, e, *_ in melody + bass]
    for take in takes:
        for start, end, _ in take:
            heard = [e for s, e in player if s < start]
            assert heard, f"an accompaniment note at step {start}, before the player began"
            assert start - max(heard) <= 16, f"a note at step {start}, more than a bar after the player stopped"
            assert end - max(heard) <= 17
    assert any(n[0] > 96 for take in takes for n in take), "it plays again when the player comes back"


@pytest.mark.parametrize("time_signature, bar_steps", [((4, 4), 16), ((3, 4), 12)])
def test_free_play_stays_within_the_bars(tmp_path, model, time_signature, bar_steps):
    prime = prime_file(tmp_path / "p.mid", C_PHRASE[:2], time_signature=time_signature)
    for take in play(model, prime, PlaySettings(mode="free"), bars=2):
        assert take, "free play plays"
        assert all(0 <= start and end <= 2 * bar_steps for start, end, _ in take)


# ---------------------------------------------------------------------------------------- 5
def test_the_sampler_never_leaves_the_key_or_the_range():
    settings = SamplingSettings(temperature=2.0, top_p=1.0, density=3.0, key_lock=rep.scale_pitch_classes(2, "minor"),
                                low_pitch=55, high_pitch=84)
    sampler = Sampler(settings, seed=3)
    rng = np.random.default_rng(0)
    sounding, pitches = None, []
    for _ in range(3000):
        token = sampler.sample(rng.normal(0, 3, rep.VOCAB_SIZE).astype(np.float32), sounding)
        if token == rep.HOLD:
            assert sounding is not None, "HOLD only while a note sounds"
        elif token == rep.REST:
            sounding = None
        else:
            sounding = rep.token_pitch(token)
            pitches.append(sounding)
    assert len(pitches) > 500
    assert {p % 12 for p in pitches} == set(settings.key_lock)
    assert 55 <= min(pitches) and max(pitches) <= 84


@pytest.mark.parametrize("mode", ["answer", "continue", "accompany", "free"])
def test_a_fixed_key_lock_and_the_range_hold_in_every_mode_even_when_hot(tmp_path, model, mode):
    # A chromatic prime: the model hears every pitch class, and must still keep to C major.
    prime = prime_file(tmp_path / "chromatic.mid", [(2 * i, 2 * i + 2, 60 + i) for i in range(12)])
    settings = PlaySettings(mode=mode, temperature=2.0, top_p=1.0, key_lock="C major", low_pitch=55, high_pitch=79)
    pitches = [p for take in play(model, prime, settings, bars=4) for _, _, p in take]
    assert {p % 12 for p in pitches} <= C_MAJOR, f"out of C major: {sorted({p for p in pitches if p % 12 not in C_MAJOR})}"
    assert all(55 <= p <= 79 for p in pitches)


@pytest.mark.parametrize("mode", ["answer", "continue", "accompany"])
def test_auto_key_lock_keeps_to_the_key_the_player_plays_in(tmp_path, model, mode):
    # E major: scale and tonic arpeggio.
    notes = [(2 * i, 2 * i + 2, p) for i, p in enumerate([64, 66, 68, 69, 71, 73, 75, 76, 71, 68, 64, 64])]
    assert rep.estimate_key(notes) == (4, "major")
    e_major = rep.scale_pitch_classes(4, "major")
    prime = prime_file(tmp_path / "e.mid", notes)
    settings = PlaySettings(mode=mode, temperature=2.0, top_p=1.0, key_lock="auto")
    pitches = [p for take in play(model, prime, settings, bars=4) for _, _, p in take]
    assert {p % 12 for p in pitches} <= e_major
    assert all(48 <= p <= 88 for p in pitches), "the default range, 48-88"


def test_key_lock_and_range_reach_the_model_from_the_command_line_and_the_patch(tmp_path, capsys, gru_path):
    prime = prime_file(tmp_path / "p.mid", C_PHRASE)
    patch = tmp_path / "p.toml"
    patch.write_text(f'[melody]\nmodel = "{gru_path}"\nkey_lock = "E minor"\nlow_pitch = 60\nhigh_pitch = 72\n'
                     'temperature = 2.0\nseed = 4\n')
    cases = [
        ([], rep.scale_pitch_classes(4, "minor"), (60, 72)),  # the patch's [melody] table
        (["--key-lock", "Bb major", "--range", "55-70"], rep.scale_pitch_classes(10, "major"), (55, 70)),
    ]
    for extra, scale, (low, high) in cases:
        out = tmp_path / "out.mid"
        rc, _, err = run_cli(capsys, "generate", prime, "-o", out, "--patch", patch, "--bars", "4", "-q", *extra)
        assert rc == 0, err
        notes = model_part(mido.MidiFile(str(out)))
        assert len(notes) >= 4
        assert {p % 12 for _, _, p, _ in notes} <= scale
        assert all(low <= p <= high for _, _, p, _ in notes)


# ---------------------------------------------------------------------------------------- 6
def _identity_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # one every onnxruntime reads
    onnx.save(model, str(path))
    return path


def _error_case(name, tmp_path):
    good = prime_file(tmp_path / "good.mid", C_PHRASE)
    if name == "empty_prime":
        prime = write_midi(tmp_path / "empty.mid", [[mido.MetaMessage("set_tempo", tempo=500000, time=0),
                                                      mido.MetaMessage("end_of_track", time=960)]])
        return [prime], "contains no notes"
    if name == "drum_prime":
        prime = prime_file(tmp_path / "drums.mid", [(s, s + 1, 36, 9) for s in range(0, 16, 2)])
        return [prime, "--model", shipped("gru")], "drum"
    if name == "garbage_model":
        bad = tmp_path / "garbage.onnx"
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
        return [good, "--model", bad], "not a readable ONNX model"
    if name == "foreign_model":
        pytest.importorskip("onnx")
        return [good, "--model", _identity_onnx(tmp_path / "identity.onnx")], "not a liveart melody model"
    if name == "unknown_model":
        return [good, "--model", "transformer"], "no melody model named 'transformer'"
    if name == "missing_model":
        return [good, "--model", tmp_path / "nowhere.onnx"], "no such model file"
    if name == "bad_key_lock":
        return [good, "--key-lock", "H major"], "key lock"
    if name == "bad_key_mode":
        return [good, "--key-lock", "D dorian"], "major or minor"
    if name == "reversed_range":
        return [good, "--range", "84-55"], "range"
    if name == "range_outside":
        return [good, "--range", "20-60"], "range"
    if name == "range_not_numbers":
        return [good, "--range", "low-high"], "LOW-HIGH"
    raise AssertionError(name)


@pytest.mark.parametrize("case", ["empty_prime", "drum_prime", "garbage_model", "foreign_model", "unknown_model",
                                  "missing_model", "bad_key_lock", "bad_key_mode", "reversed_range",
                                  "range_outside", "range_not_numbers"])
def test_generate_errors_are_one_line_exit_1_and_write_nothing(tmp_path, capsys, case):
    args, expected = _error_case(case, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.mid"
    rc, stdout, err = run_cli(capsys, "generate", args[0], "-o", out, *args[1:])
    assert rc == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("liveart: error: "), err
    assert expected in lines[0]
    assert stdout == ""
    assert not out.exists() and os.listdir(out_dir) == [], "no output (nor a part file) is left behind"


@pytest.mark.parametrize("args", [["--mode", "sing"], ["--bars", "0"], ["--temperature", "-1"]])
def test_generate_usage_errors_exit_2_with_one_line(tmp_path, capsys, args):
    prime = prime_file(tmp_path / "p.mid", C_PHRASE)
    rc, _, err = run_cli(capsys, "generate", prime, "-o", tmp_path / "o.mid", *args)
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("liveart: error: ")
    assert not (tmp_path / "o.mid").exists()


# ---------------------------------------------------------------------------------------- 7
def test_render_continue_writes_audio_and_midi_with_the_models_part(tmp_path, capsys, gru_path):
    prime = prime_file(tmp_path / "p.mid", C_PHRASE)  # 2 s
    wav, mid = tmp_path / "out.wav", tmp_path / "out.mid"
    rc, _, err = run_cli(capsys, "render", prime, "-o", wav, "--continue", "2", "--midi-out", mid,
                         "--model", gru_path, "--sample-rate", "22050", "-q", "--seed", "3")
    assert rc == 0, err
    played = mido.MidiFile(str(mid))
    prime_count = sum(m.type == "note_on" and m.velocity > 0 for m in mido.MidiFile(str(prime)))
    total_count = sum(m.type == "note_on" and m.velocity > 0 for m in played)
    generated = model_part(played)
    assert generated and total_count == prime_count + len(generated) > prime_count
    assert all(start >= 16 * STEP_TICKS for start, *_ in generated), "it continues after the prime"
    last_end = max(end for _, end, _, _ in generated) / TPB * 0.5  # seconds at 120 bpm
    audio, sr = soundfile.read(wav, dtype="float64")
    assert sr == 22050
    assert len(audio) / sr >= last_end > 2.0, "the audio holds the continuation"
    tail = audio[int(2.1 * sr) : int(last_end * sr)]
    assert np.sqrt(np.mean(tail ** 2)) > 1e-3, "the model's part sounds"


def _cc_patch(tmp_path, model_path, param, **mapping):
    extra = "".join(f"{k} = {v}\n" for k, v in mapping.items())
    path = tmp_path / f"{param}.toml"
    path.write_text(f'[melody]\nmodel = "{model_path}"\n\n[[cc]]\nnumber = 20\nparam = "{param}"\n{extra}')
    return path


def _generate_cli(capsys, tmp_path, prime, patch, *args):
    out = tmp_path / "g.mid"
    rc, _, err = run_cli(capsys, "generate", prime, "-o", out, "--patch", patch, "-q", *args)
    assert rc == 0, err
    return in_steps(model_part(mido.MidiFile(str(out))))


def test_a_panic_controller_in_the_prime_silences_the_model_from_that_step(tmp_path, capsys, gru_path):
    patch = _cc_patch(tmp_path, gru_path, "melody_panic")
    plain = prime_file(tmp_path / "plain.mid", C_PHRASE, controls=[(39.5, 0, 20, 0)])
    panic = prime_file(tmp_path / "panic.mid", C_PHRASE, controls=[(39.5, 0, 20, 127)])  # mid bar 2
    for seed in range(4):
        args = ("--mode", "continue", "--bars", "4", "--seed", seed)
        without = _generate_cli(capsys, tmp_path, plain, patch, *args)
        if any(start >= 40 for start, _, _ in without):
            break
    else:
        pytest.fail("the model never played past step 40 without the panic")
    with_panic = _generate_cli(capsys, tmp_path, panic, patch, *args)
    assert with_panic, "it plays until the panic"
    assert all(end <= 40 for _, end, _ in with_panic), "silent from the panic on"
    assert with_panic == [n if n[1] <= 40 else (n[0], 40, n[2]) for n in without if n[0] < 40], \
        "before the panic it plays as it would have"


def test_a_mode_controller_switches_the_way_the_model_plays(tmp_path, capsys, gru_path):
    patch = _cc_patch(tmp_path, gru_path, "melody_mode", min=0.0, max=3.0)
    end = 16
    for value, mode in ((0, "answer"), (127, "free")):
        prime = prime_file(tmp_path / f"mode{value}.mid", C_PHRASE, controls=[(0, 0, 20, value)])
        notes = _generate_cli(capsys, tmp_path, prime, patch, "--mode", "continue", "--bars", "2", "--seed", "1")
        if mode == "free":  # it plays on its own from the start, over the prime
            assert any(start < end for start, _, _ in notes)
        else:  # answer: the answer to the only phrase comes after it
            assert notes and all(start >= end for start, _, _ in notes)


def test_a_temperature_controller_changes_the_notes(tmp_path, capsys, gru_path):
    patch = _cc_patch(tmp_path, gru_path, "melody_temperature", min=0.1, max=3.0)
    takes = []
    for value in (0, 127):
        prime = prime_file(tmp_path / f"t{value}.mid", C_PHRASE, controls=[(0, 0, 20, value)])
        takes.append(_generate_cli(capsys, tmp_path, prime, patch, "--mode", "continue", "--bars", "4",
                                   "--seed", "2"))
    cold, hot = takes
    assert cold and hot and cold != hot
    # At temperature 0.1 the model all but picks its favourite: fewer distinct pitches than at 3.0.
    assert len({p for _, _, p in cold}) < len({p for _, _, p in hot})


# ---------------------------------------------------------------------------------------- 8
def test_markov_baseline_probabilities_sum_to_one():
    pytest.importorskip("torch")  # the training package imports it
    from liveart.training.markov import KneserNey, _contexts

    rng = np.random.default_rng(0)
    lines = [rep.notes_to_tokens([(s, s + int(rng.integers(1, 4)), int(rng.integers(55, 80)))
                                  for s in range(0, 64, 4)]) for _ in range(20)]
    lines.append(rep.notes_to_tokens([(s, s + 2, 60 + (s // 2) % 3) for s in range(0, 96, 2)]))  # 60 61 62 ...
    grams = np.concatenate([_contexts(t) for t in lines])
    kn = KneserNey().fit(grams)
    n60, n61, n62 = (rep.note_token(p) for p in (60, 61, 62))
    contexts = [tuple(grams[5, :3]), tuple(grams[-1, :3]), (n60, rep.HOLD, n61),  # seen
                (rep.REST, rep.REST, rep.REST),  # the start of every line
                (n62, n62, n62),  # unseen, its suffixes seen
                (rep.VOCAB_SIZE - 1, rep.VOCAB_SIZE - 2, rep.VOCAB_SIZE - 3)]  # tokens never seen at all
    for context in contexts:
        p = kn.prob(np.array([[*context, t] for t in range(rep.VOCAB_SIZE)], np.int64))
        assert np.all(p > 0), context
        assert p.sum() == pytest.approx(1.0, abs=1e-9), context
    p = kn.prob(np.array([[n60, rep.HOLD, n61, t] for t in range(rep.VOCAB_SIZE)], np.int64))
    assert int(np.argmax(p)) == rep.HOLD and p[rep.HOLD] > 0.5, "it learns the pattern it saw"


def test_panic_ends_the_sounding_note_and_drops_the_answer(model):
    for seed in range(8):
        partner = Partner(model, PlaySettings(mode="answer", silence_seconds=0.0, answer_ratio=4.0), seed=seed,
                          meter=None, step_seconds=STEP_SECONDS)
        assert partner.panic() == [], "nothing sounds: nothing to stop"
        for start, end, pitch in [(0, 2, 60), (2, 4, 64), (4, 8, 67)]:
            partner.note_on(start, pitch, 90)
            partner.note_off(end, pitch)
        sounding = None
        for k in range(8, 24):
            for kind, pitch, _ in partner.step(k):
                sounding = pitch if kind == ev.NOTE_ON else None
            if sounding is not None:
                break
        if sounding is None:
            continue
        assert partner.panic() == [(ev.NOTE_OFF, sounding, 0)]
        assert partner.panic() == []
        later = [a for j in range(k + 1, 48) for a in partner.step(j)]
        assert later == [], "the rest of the answer is dropped"
        assert not partner.busy
        return
    pytest.fail("the partner never sounded a note to stop")


@pytest.mark.parametrize("mode", ["answer", "continue", "accompany", "free"])
def test_a_partner_stopped_mid_note_leaves_nothing_sounding(model, mode):
    """As the live host drives it: each note-on is ended by a note-off, one note at a time, and
    finish() ends whatever still sounds, wherever the host stops."""
    phrase = [(0, 2, 60), (2, 4, 64), (4, 6, 67), (6, 16, 72)]
    stopped_mid_note = 0
    for stop_at in (10, 13, 17, 20, 23, 26):
        partner = Partner(model, PlaySettings(mode=mode, silence_seconds=0.0, density=3.0), seed=stop_at,
                          meter=None, step_seconds=STEP_SECONDS)
        sounding = set()
        for k in range(stop_at):
            for start, end, pitch in phrase:
                if k - 1 < start <= k:
                    partner.note_on(start, pitch, 90)
                if k - 1 < end <= k:
                    partner.note_off(end, pitch)
            for kind, pitch, _ in partner.step(k):
                if kind == ev.NOTE_ON:
                    assert not sounding, f"step {k}: a second note starts while {sounding} sounds"
                    sounding.add(pitch)
                else:
                    assert pitch in sounding, f"step {k}: a note-off for {pitch}, which does not sound"
                    sounding.discard(pitch)
        stopped_mid_note += bool(sounding)
        for kind, pitch, _ in partner.finish():
            assert kind == ev.NOTE_OFF
            sounding.discard(pitch)
        assert not sounding, f"{mode}, stopped at step {stop_at}: {sounding} left sounding"
    assert stopped_mid_note, "some takes were stopped while a note sounded"


@pytest.mark.parametrize("mode", ["answer", "continue", "accompany", "free"])
def test_no_generated_note_is_left_hanging(tmp_path, capsys, gru_path, mode):
    # The prime's last note is never ended: the file just stops.
    prime = write_midi(tmp_path / "open.mid", [[
        mido.MetaMessage("set_tempo", tempo=500000, time=0),
        *[m for p in (60, 62, 64) for m in (mido.Message("note_on", note=p, velocity=90, time=0),
                                            mido.Message("note_off", note=p, velocity=0, time=STEP_TICKS * 2))],
        mido.Message("note_on", note=67, velocity=90, time=0),
        mido.MetaMessage("end_of_track", time=STEP_TICKS * 4),
    ]], midi_type=0)
    out = tmp_path / "out.mid"
    for seed in range(3):
        rc, _, err = run_cli(capsys, "generate", prime, "-o", out, "--mode", mode, "--bars", "1", "--seed", seed,
                             "--model", gru_path, "--density", "3", "-q")
        assert rc == 0, err
        notes = model_part(mido.MidiFile(str(out)))  # fails on a hanging or doubled note
        ons = sum(m.type == "note_on" and m.velocity > 0 for m in mido.MidiFile(str(out)).tracks[-1])
        assert ons == len(notes)


def test_the_partners_notes_sound_through_the_engine_at_their_frames(model):
    """The live path: a partner's actions become engine events at their steps' frames, and the engine
    sounds each note from that frame on (silence before the first)."""
    from liveart.engine import Engine
    from liveart.melody.play import to_events
    from liveart.patch import load_patch

    sr, step_frames = 48000, 6000  # a 16th at 120 bpm
    partner = Partner(model, PlaySettings(mode="free", temperature=0.8), seed=5, meter=rep.Meter())
    events = []
    for k in range(4, 36):  # the partner starts a bar in: silence first
        events += to_events(partner.step(k), k * step_frames, 3)
    events += to_events(partner.finish(), 36 * step_frames, 3)
    ons = [e for e in events if e.kind == ev.NOTE_ON]
    assert ons and all(e.frame % step_frames == 0 and e.channel == 3 for e in events)
    engine = Engine(load_patch("default"), sample_rate=sr)
    engine.schedule_many(events)
    audio = np.zeros((37 * step_frames + sr, 2), np.float32)
    engine.render_into(audio)
    first = ons[0].frame
    assert np.abs(audio[:first]).max() == 0.0, "nothing sounds before the first note"
    assert np.abs(audio[first : first + 2000]).max() > 1e-3, "the first note sounds from its frame"
    assert engine.sounding_notes() == [], "every note the partner started has ended"


# ----------------------------------------------------------------- found in review: edge cases
@pytest.mark.parametrize("lock, note_range", [("C major", "61-61"), ("auto", "61-61")])
def test_a_key_lock_with_no_note_in_the_range_is_a_clear_error_or_plays_unlocked(tmp_path, capsys, gru_path,
                                                                                    lock, note_range):
    prime = prime_file(tmp_path / "p.mid", C_PHRASE)
    out = tmp_path / "out.mid"
    rc, _, err = run_cli(capsys, "generate", prime, "-o", out, "--model", gru_path, "--key-lock", lock,
                         "--range", note_range, "--bars", "1")
    if lock == "auto":  # the key is only known while playing: the model plays unlocked, in range
        assert rc == 0, err
        assert all(p == 61 for _, _, p, _ in model_part(mido.MidiFile(out)))
    else:
        assert rc == 1 and err.count("\n") == 1 and err.startswith("liveart: error:") and not out.exists()


def test_a_model_whose_graph_does_not_match_its_metadata_is_refused(tmp_path, gru_path):
    import onnx

    from liveart.errors import ModelError

    m = onnx.load(str(gru_path))
    for prop in m.metadata_props:
        if prop.key == "hidden":
            prop.value = "128"
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ModelError, match="does not match its metadata"):
        MelodyModel(bad)


def test_panic_stops_free_play_until_resumed(model):
    partner = Partner(model, PlaySettings(mode="free", temperature=1.2), seed=1, meter=rep.Meter())
    for k in range(8):
        partner.step(k)
    partner.panic()
    assert not partner.busy
    assert all(partner.step(k) == [] for k in range(8, 40)), "nothing plays after a panic"
    partner.resume()
    assert any(partner.step(k) for k in range(40, 72)), "free play goes on after resume()"


def test_an_answer_comes_even_after_a_long_silence(tmp_path, capsys, gru_path):
    prime = prime_file(tmp_path / "p.mid", C_PHRASE)
    out = tmp_path / "out.mid"
    rc, _, err = run_cli(capsys, "generate", prime, "-o", out, "--model", gru_path, "--mode", "answer",
                         "--silence", "20")
    assert rc == 0, err
    notes = model_part(mido.MidiFile(out))
    assert notes, "the answer comes after 20 s of silence"
    assert min(s for s, *_ in notes) >= (16 + 160) * STEP_TICKS, "and not before the silence has passed"


def test_a_new_phrase_before_the_answer_never_feeds_a_step_twice(model):
    """The model's clock only moves forward: when the player starts again while the answer waits for
    the bar line, the new phrase is not fed over steps the model has already seen."""
    from liveart.hosts.generate import drive

    fed = []

    class Spy:
        def __getattr__(self, name):
            return getattr(model, name)

        def step(self, tokens, features, state):
            fed.append(int(np.argmax(features[0, rep.F_BEAT0 : rep.F_BEAT0 + 8])) * 4
                       + int(np.argmax(features[0, rep.F_STEP0 : rep.F_STEP0 + 8])))
            return model.step(tokens, features, state)

    partner = Partner(Spy(), PlaySettings(mode="answer", silence_seconds=0.0, wait_for_bar=True), seed=3,
                      meter=rep.Meter())
    first = [(k, k + 1, 60 + k, 80) for k in range(5)]  # ends at step 5; the answer waits for step 16
    second = [(k, k + 1, 60 + k, 80) for k in range(8, 12)]  # comes first, at step 8
    notes = drive(partner, first + second, 0, 64, end_input=12)
    assert notes and min(s for s, *_ in notes) >= 16, "the answer to the second phrase, on the bar line"
    # Every fed step's place in the bar follows the one before it: none fed twice, none skipped.
    assert all((b - a) % 16 == 1 for a, b in zip(fed, fed[1:])), fed


# ---------------------------------------------------------- found in the final review: edge cases
def test_controllers_in_the_prime_do_not_move_the_models_part_onto_a_players_channel(tmp_path, capsys, gru_path):
    prime = prime_file(tmp_path / "p.mid", C_PHRASE, controls=[(1, 0, 7, 100), (2, 0, 74, 60)])
    out = tmp_path / "out.mid"
    rc, _, err = run_cli(capsys, "generate", prime, "-o", out, "--model", gru_path, "--bars", "2")
    assert rc == 0, err
    midi = mido.MidiFile(out)
    track = [t for t in midi.tracks if any(m.type == "track_name" and m.name == TRACK_NAME for m in t)][0]
    channels = {m.channel for m in track if m.type in ("note_on", "note_off", "program_change")}
    assert channels == {1}, "the model plays on the first free channel, not the player's channel 1"


@pytest.mark.parametrize("tpb", [1, 2, 3])
def test_a_coarse_file_resolution_is_scaled_so_no_note_is_lost(tmp_path, capsys, gru_path, tpb):
    prime = prime_file(tmp_path / "p.mid", [(0, 4, 60), (4, 8, 64), (8, 12, 67), (12, 16, 72)], tpb=tpb)
    out = tmp_path / "out.mid"
    rc, _, err = run_cli(capsys, "generate", prime, "-o", out, "--model", gru_path, "--bars", "2", "--mode", "free")
    assert rc == 0, err
    midi = mido.MidiFile(out)
    assert midi.ticks_per_beat % 4 == 0
    notes = model_part(midi)  # fails on a note that never ends or starts twice
    assert notes and all(e > s for s, e, _, _ in notes)
    player = read_midi_notes(out).notes
    assert [(s * 4 // midi.ticks_per_beat, p) for s, _, c, p, _ in player if c == 0] == \
        [(0, 60), (4, 64), (8, 67), (12, 72)], "the player's part keeps its timing"


def test_a_continuation_waits_for_a_held_bass_to_end(tmp_path, gru_path, model):
    melody = [(k * 4, k * 4 + 4, 72 + (k % 3)) for k in range(8)]  # ends at step 32
    bass = [(0, 64, 48, 1)]  # held to step 64
    prime = prime_file(tmp_path / "p.mid", melody + bass)
    take = play(model, prime, PlaySettings(mode="continue"), seeds=(0,), bars=2)[0]
    assert min(s for s, _, _ in take) >= 64, "the model continues where the piece ends, not its top line"


@pytest.mark.parametrize("args, message", [
    (["--mode", "free", "--bars", "1024"], "limit"),
])
def test_work_too_large_to_do_is_refused_at_once(tmp_path, capsys, gru_path, args, message):
    prime = prime_file(tmp_path / "p.mid", C_PHRASE, time_signature=(255, 1))
    out = tmp_path / "out.mid"
    rc, _, err = run_cli(capsys, "generate", prime, "-o", out, "--model", gru_path, *args)
    assert rc == 1 and message in err and err.count("\n") == 1 and not out.exists()


def test_an_absurd_tempo_is_refused(tmp_path, capsys, gru_path):
    path = write_midi(tmp_path / "fast.mid", [[mido.MetaMessage("set_tempo", tempo=1, time=0),
                                              mido.Message("note_on", note=60, velocity=90, time=0),
                                              mido.Message("note_off", note=60, velocity=0, time=480)]])
    out = tmp_path / "out.mid"
    rc, _, err = run_cli(capsys, "generate", path, "-o", out, "--model", gru_path, "--mode", "answer")
    assert rc == 1 and "tempo" in err and err.count("\n") == 1 and not out.exists()


def test_render_continue_checks_the_length_limit_before_generating(tmp_path, capsys, gru_path):
    prime = prime_file(tmp_path / "p.mid", [(0, 1, 60), (80000, 80001, 62)])  # 2.8 hours at 120 bpm
    out = tmp_path / "o.wav"
    rc, _, err = run_cli(capsys, "render", prime, "-o", out, "--continue", "2", "--model", gru_path)
    assert rc == 1 and "limit" in err and not out.exists()
