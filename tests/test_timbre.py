"""The timbre space as a player meets it: the shipped decoder matches its training weights, frames
are always playable, every instrument has an anchor, a GM file plays each channel at its program's
anchor, morphs, XY pads and per-dimension knobs move the sound continuously (no click), the device
choice falls back to the CPU quietly, a decoder that falls behind never silences a voice, and bad
models and patches fail with one line. The analysis recovers a known tone's parameters, and the
data set keeps held-out pitches and programs out of training.

Tests that need the shipped model (``models/timbre-decoder.onnx``, and ``timbre.pt`` for parity)
skip, saying so, while it is not there.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile

from liveart.timbre.frames import ONSET_SECONDS
from liveart import events as ev
from liveart.cli import main
from liveart.engine import Engine
from liveart.errors import ModelError, PatchError
from liveart.patch import load_patch, patch_from_dict
from liveart.synth.presets import N_HARMONICS, N_NOISE_BANDS, noise_band_edges_hz
from liveart.timbre import anchors as anc
from liveart.timbre import frames as fr
from liveart.timbre.model import TimbreModel, cuda_works

from .conftest import SR, render_events, write_midi

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DECODER = MODELS_DIR / "timbre-decoder.onnx"
CHECKPOINT = MODELS_DIR / "timbre.pt"
HOP = 256

needs_model = pytest.mark.skipif(not DECODER.exists(), reason="the shipped timbre model is not there yet")


@pytest.fixture(scope="module")
def model():
    if not DECODER.exists():
        pytest.skip("the shipped timbre model is not there yet")
    return TimbreModel(DECODER, device="cpu")


def timbre_patch(channel: dict | None = None, timbre: dict | None = None, hop: int = HOP):
    return patch_from_dict({"audio": {"gain_db": 0.0, "control_hop_frames": hop},
                            "channels": {"default": {"timbre": "flute", **(channel or {})}},
                            "timbre": timbre or {}}, "<timbre test patch>")


def render(model, patch, events, frames, block_sizes=(256,)):
    return render_events(patch, events, frames, block_sizes, timbre=model)


def largest_step(x) -> float:
    return float(np.max(np.abs(np.diff(np.asarray(x, np.float64)))))


def rms(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean(x * x)))


# ------------------------------------------------------------------------------- the model file
@needs_model
def test_shipped_decoder_matches_its_torch_weights():
    torch = pytest.importorskip("torch")
    if not CHECKPOINT.exists():
        pytest.skip("the training checkpoint is not there")
    from liveart.training.timbre_model import DecoderSynth
    from liveart.training.train_timbre import load_checkpoint

    vae = load_checkpoint(CHECKPOINT)
    model = TimbreModel(DECODER, device="cpu")
    rng = np.random.default_rng(3)
    v = 64
    z = rng.normal(size=(v, model.latent)).astype(np.float32)
    note = rng.integers(0, 128, v).astype(np.float32)
    vel = rng.integers(1, 128, v).astype(np.float32)
    on = (rng.random(v) * 4).astype(np.float32)
    off = np.where(rng.random(v) < 0.5, rng.random(v) * 1.5, -1.0).astype(np.float32)
    with torch.no_grad():
        want = DecoderSynth(vae.decoder)(*(torch.from_numpy(a) for a in (z, note, vel, on, off)),
                                         torch.tensor([fr.BAND_LIMIT * SR]))
    got = model._run(z, note, vel, on, off, SR)
    for name, w, g in zip(("harmonics", "noise", "amp", "levels_db"), want, got):
        scale = 1.0 if name != "levels_db" else 100.0
        assert np.max(np.abs(w.numpy() - g)) <= 1e-4 * scale, name


@needs_model
def test_shipped_encoder_places_instruments_where_the_decoder_says(model):
    """The encoder (ONNX) and the decoder's anchors come from one training run: encoding a note's
    summary lands nearer its own program's anchor than most others."""
    import onnxruntime as ort

    torch = pytest.importorskip("torch")
    from liveart.training.timbre_model import EncoderDb
    from liveart.training.train_timbre import load_checkpoint

    session = ort.InferenceSession(str(MODELS_DIR / "timbre-encoder.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    summary = rng.uniform(-100, -20, size=(4, 8, fr.N_PARAMS)).astype(np.float32)
    cond = fr.condition([60, 64, 67, 72], [100, 90, 80, 70])
    got = session.run(None, {"summary_db": summary, "condition": cond})[0]
    if CHECKPOINT.exists():
        vae = load_checkpoint(CHECKPOINT)
        with torch.no_grad():
            want = EncoderDb(vae.encoder)(torch.from_numpy(summary), torch.from_numpy(cond)).numpy()
        assert np.max(np.abs(want - got)) <= 1e-4
    assert got.shape == (4, model.latent) and np.all(np.isfinite(got))


def test_torch_and_onnxruntime_agree_for_a_fresh_decoder(tmp_path):
    """Parity of the export path itself, on an untrained network (independent of the shipped file)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from liveart.training.timbre_model import DecoderSynth, TimbreConfig, TimbreVAE
    from liveart.training.train_timbre import export_onnx

    torch.manual_seed(0)
    vae = TimbreVAE(TimbreConfig(latent=4, hidden=32, decoder_layers=2, encoder_hidden=32)).eval()
    anchors = {p: np.full(4, p / 128.0) for p in range(128)}
    export_onnx(vae, tmp_path / "d.onnx", tmp_path / "e.onnx", anchors, {"seed": 0})
    model = TimbreModel(tmp_path / "d.onnx", device="cpu")
    rng = np.random.default_rng(1)
    v = 64
    args = (rng.normal(size=(v, 4)).astype(np.float32), rng.integers(0, 128, v).astype(np.float32),
            rng.integers(1, 128, v).astype(np.float32), (rng.random(v) * 4).astype(np.float32),
            np.where(rng.random(v) < 0.5, rng.random(v), -1.0).astype(np.float32))
    with torch.no_grad():
        want = DecoderSynth(vae.decoder)(*(torch.from_numpy(a) for a in args), torch.tensor([fr.BAND_LIMIT * 44100]))
    got = model._run(*args, 44100)
    for w, g in zip(want, got):
        assert np.max(np.abs(w.numpy() - g)) <= 1e-4 * max(1.0, float(np.max(np.abs(g))))
    assert set(model.anchors) == set(range(128))


@needs_model
def test_every_instrument_has_an_anchor_and_names_resolve(model):
    assert set(model.anchors) == set(range(128)), "all 128 GM programs are placed (trained or by the encoder)"
    assert len(model.held_out_programs) > 0 and set(model.held_out_programs) < set(range(128))
    for name, program in (("flute", 73), ("cello", 42), ("trumpet", 56), ("violin", 40), ("piano", 0), (42, 42)):
        assert np.array_equal(model.anchor(name), model.anchors[program])
    with pytest.raises(ModelError, match="did you mean"):
        model.anchor("drum")
    # Anchors are distinct places: no two instruments collapse onto one point.
    z = np.stack([model.anchors[p] for p in range(128)])
    d = np.linalg.norm(z[:, None] - z[None], axis=2) + np.eye(128) * 1e9
    assert np.min(d) > 1e-3


@needs_model
@pytest.mark.parametrize("sample_rate", [22050, 48000, 96000])
def test_decoded_frames_are_always_playable(model, sample_rate):
    """Anywhere in (and well beyond) the space, any note, velocity and time: finite, non-negative,
    no partial at or above the band limit, amp >= 0; a level at the floor is exactly zero."""
    rng = np.random.default_rng(sample_rate)
    v = 4000
    span = model.latent_high - model.latent_low
    z = model.latent_low - span + rng.random((v, model.latent)) * 3 * span
    note = rng.integers(0, 128, v)
    vel = rng.integers(1, 128, v)
    on = rng.random(v) * 10
    off = np.where(rng.random(v) < 0.5, rng.random(v) * 3, -1.0)
    h, noise, amp = model.frames(z, note, vel, on, off, sample_rate)
    assert h.shape == (v, N_HARMONICS) and noise.shape == (v, N_NOISE_BANDS) and amp.shape == (v,)
    for a in (h, noise, amp):
        assert np.all(np.isfinite(a)) and np.all(a >= 0)
    f0 = 440.0 * 2.0 ** ((note - 69) / 12.0)
    above = f0[:, None] * np.arange(1, N_HARMONICS + 1) >= fr.BAND_LIMIT * sample_rate
    assert np.all(h[above] == 0.0)
    # harmonics and noise are relative to amp: their power sums to one where the voice sounds
    power = 0.5 * np.sum(h.astype(np.float64) ** 2, axis=1) + np.sum(noise.astype(np.float64) ** 2, axis=1)
    assert np.allclose(power[amp > 1e-6], 1.0, atol=1e-3)


# ------------------------------------------------------------------------------- the engine
@needs_model
def test_same_events_give_the_same_audio_for_any_block_size(model):
    patch = timbre_patch(timbre={"morph": [{"cc": 1, "to": "cello"}]})
    events = [ev.note_on(100, 0, 60, 100), ev.note_on(3000, 0, 67, 80), ev.control_change(9000, 0, 1, 127),
              ev.note_off(30000, 0, 60), ev.program_change(20000, 1, 40), ev.note_on(21000, 1, 72, 90),
              ev.note_off(40000, 1, 72), ev.note_off(41000, 0, 67)]
    a, ea = render(model, patch, events, 96000, (256,))
    b, _ = render(model, patch, events, 96000, (100, 37, 4096, 1))
    c, _ = render(model, patch, events, 96000, (256,))
    assert np.array_equal(a, c), "deterministic"
    assert np.max(np.abs(a - b)) < 1e-5, "block-size invariant"
    assert rms(a[:40000]) > 0.01 and ea.stats.timbre_frames > 100


@needs_model
def test_a_channel_plays_at_its_program_anchor_and_follows_program_changes(model):
    patch = load_patch("default")
    engine = Engine(patch, sample_rate=SR, timbre=model)
    engine.schedule_many([ev.program_change(0, 0, 73), ev.program_change(0, 3, 42), ev.note_on(10, 0, 72, 90),
                          ev.note_on(10, 3, 48, 90)])
    engine.render(SR)
    pos = engine.state.timbre_positions
    assert np.allclose(pos[0], model.anchors[73], atol=1e-6) and np.allclose(pos[3], model.anchors[42], atol=1e-6)
    # Percussion stays on its preset.
    assert not engine.channels[9].timbre


@needs_model
def test_a_gm_file_sounds_like_its_instruments(model, tmp_path):
    """liveart render plays each channel at its GM program's anchor: an organ sustains where a
    piano decays, and a flute and a trumpet on one note differ in spectrum."""
    def one(program, note=60, seconds=2.0):
        msgs = [mido.Message("program_change", channel=0, program=program, time=0),
                mido.Message("note_on", channel=0, note=note, velocity=100, time=0),
                mido.Message("note_off", channel=0, note=note, velocity=0, time=int(seconds * 960))]
        path = write_midi(tmp_path / f"p{program}.mid", [msgs], midi_type=0)
        assert main(["render", str(path), "-o", str(tmp_path / f"p{program}.wav"), "-q"]) == 0
        return soundfile.read(tmp_path / f"p{program}.wav", dtype="float64")[0][:, 0]

    piano, organ = one(0), one(19)
    assert rms(organ[int(1.6 * SR) : int(1.9 * SR)]) / rms(organ[int(0.1 * SR) : int(0.4 * SR)]) > 0.5
    assert rms(piano[int(1.6 * SR) : int(1.9 * SR)]) / rms(piano[int(0.1 * SR) : int(0.4 * SR)]) < 0.5
    flute, trumpet = one(73), one(56)

    def centroid(x):
        mag = np.abs(np.fft.rfft(x[int(0.3 * SR) : int(1.3 * SR)] * np.hanning(SR)))
        return float(np.sum(mag * np.arange(len(mag))) / np.sum(mag))

    assert centroid(trumpet) > 1.3 * centroid(flute), "a trumpet is brighter than a flute"


def _sweep_no_click(model, patch, events, frames, path_programs, hop=HOP):
    out, engine = render(model, patch, events, frames)
    steady = []
    for p in path_programs:
        a, _ = render(model, timbre_patch({"timbre": p}, hop=hop), [ev.note_on(0, 0, 60, 100)], SR)
        steady.append(largest_step(a[int(0.3 * SR) :, 0]))
    settle = int(0.3 * SR)
    return largest_step(out[settle:, 0]), max(steady), out, engine


@needs_model
def test_a_morph_moves_the_sound_continuously_without_a_click(model):
    patch = timbre_patch(timbre={"morph": [{"cc": 1, "from": "flute", "to": "cello"}]})
    events = [ev.note_on(0, 0, 60, 100)]
    # The knob jumps: 0 -> 127 in one step, back, and a slow turn; the glide smooths every jump.
    events += [ev.control_change(int(0.5 * SR), 0, 1, 127), ev.control_change(int(1.0 * SR), 0, 1, 0)]
    events += [ev.control_change(int(1.5 * SR) + k * 480, 0, 1, k) for k in range(128)]
    sweep, steady, out, engine = _sweep_no_click(model, patch, events, int(3.2 * SR), (73, 42))
    assert sweep < 1.25 * steady, f"largest step {sweep:.4f} against {steady:.4f} for steady tones"
    assert rms(out[int(1.4 * SR) :, 0]) > 0.005, "the note sounds throughout"
    flute, cello = model.anchors[73], model.anchors[42]
    assert np.allclose(engine.state.timbre_positions[0], cello, atol=1e-3)
    # The place moves by small steps even when the knob jumps end to end: per control hop, at most
    # the glide's share (1 - exp(-hop / tau)) of the way.
    engine = Engine(patch, sample_rate=SR, timbre=model)
    engine.schedule_many(events[:3])
    positions = []
    for _ in range(int(1.4 * SR) // HOP):
        engine.render(HOP)
        positions.append(engine.state.timbre_positions[0].copy())
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    share = 1 - np.exp(-HOP / (patch.timbre.smoothing_ms * 1e-3 * SR))
    assert np.max(steps) <= share * np.linalg.norm(cello - flute) * 1.0001
    assert np.max(steps) > 0.5 * share * np.linalg.norm(cello - flute), "it does move"


@needs_model
@pytest.mark.parametrize("hop", [128, 512])
def test_a_sweep_across_the_whole_space_does_not_click(model, hop):
    """Program changes through one instrument of every family while a note is held, at the finest
    and the coarsest control rate the shipped patches use."""
    firsts = [f * 8 + 1 for f in range(16)]
    firsts = [p if p not in model.held_out_programs else p + 1 for p in firsts]
    n = int(0.4 * SR)
    events = [ev.note_on(0, 0, 60, 100)] + [ev.program_change(k * n, 0, p) for k, p in enumerate(firsts[1:], 1)]
    patch = timbre_patch({"timbre": firsts[0]}, hop=hop)
    sweep, steady, out, _ = _sweep_no_click(model, patch, events, len(firsts) * n, firsts, hop)
    assert sweep < 1.25 * steady, f"largest step {sweep:.4f} against {steady:.4f} for steady tones"


@needs_model
def test_xy_pad_and_dimension_knobs_place_the_channel(model):
    patch = timbre_patch(timbre={"xy": [{"x_cc": 16, "y_cc": 17, "anchors": ["flute", "cello", "trumpet"]}],
                                 "dim": [{"cc": 20, "dim": 0, "amount": 1.0}]})
    engine = Engine(patch, sample_rate=SR, timbre=model)
    o, a, b = model.anchors[73], model.anchors[42], model.anchors[56]
    targets = engine.timbre_targets
    assert np.allclose(targets[0], o)
    engine.schedule_many([ev.control_change(0, 0, 16, 127), ev.control_change(0, 0, 17, 127)])
    engine.render(64)
    assert np.allclose(targets[0], o + (a - o) + (b - o))
    engine.schedule(ev.control_change(engine.frame, 0, 16, 0))
    engine.schedule(ev.control_change(engine.frame, 0, 17, 0))
    engine.schedule(ev.control_change(engine.frame, 0, 20, 127))
    engine.render(64)
    span = model.latent_high[0] - model.latent_low[0]
    assert targets[0, 0] == pytest.approx(o[0] + (63 / 127) * span, rel=1e-6)
    assert np.allclose(targets[0, 1:], o[1:])
    # and the sound glides there
    engine.render(SR)
    assert np.allclose(engine.state.timbre_positions[0], targets[0], atol=1e-4)


@needs_model
def test_shipped_timbre_patches_load_and_play(model):
    for name in ("default", "timbre_morph", "timbre_xy"):
        patch = load_patch(name)
        assert patch.uses_timbre()
        out, engine = render(model, patch, [ev.note_on(0, 0, 64, 100), ev.control_change(2000, 0, 1, 90),
                                            ev.note_off(20000, 0, 64)], SR)
        assert rms(out) > 0.005 and engine.stats.timbre_frames > 0, name


# ------------------------------------------------------------------------------- live decoding
@needs_model
def test_a_worker_on_time_decodes_every_frame_ahead(model):
    from liveart.timbre.worker import TimbreWorker

    patch = timbre_patch()
    events = [ev.note_on(1000 + 7000 * i, 0, 60 + 4 * i, 90) for i in range(4)] + [ev.note_off(50000, 0, 60)]
    sync, _ = render(model, patch, events, 72000, (128,))
    with TimbreWorker(model, SR) as worker:
        engine = Engine(patch, sample_rate=SR, timbre=worker)
        engine.schedule_many(events)
        out = np.zeros((72000, 2), np.float32)
        for k in range(0, 72000, 128):
            engine.render_into(out[k : k + 128])
            assert worker.wait_idle(), "the worker keeps up"
    assert engine.stats.timbre_late == 0 and engine.stats.timbre_frames > 500
    assert rms(out - sync) < 0.1 * rms(sync), "the same sound as decoding on the spot, up to the onset tables"


@needs_model
def test_a_decoder_that_falls_behind_keeps_voices_sounding_and_counts(model):
    from liveart.timbre.worker import TimbreWorker

    patch = timbre_patch()
    events = [ev.note_on(1000, 0, 60, 100), ev.note_on(9000, 0, 64, 100)]
    steady, _ = render(model, patch, events, 48000, (128,))
    with TimbreWorker(model, SR, slowdown_seconds=0.02) as worker:  # 4 hops behind, always
        engine = Engine(patch, sample_rate=SR, timbre=worker)
        engine.schedule_many(events)
        out = np.zeros((48000, 2), np.float32)
        for k in range(0, 48000, 128):
            engine.render_into(out[k : k + 128])
            time.sleep(0.0005)
    assert engine.stats.timbre_late > 50, "late frames are counted"
    tail = out[int(0.25 * SR) :, 0]
    assert np.min([rms(tail[i : i + 480]) for i in range(0, len(tail) - 480, 480)]) > 0.1 * rms(steady[int(0.25 * SR) :, 0])
    assert largest_step(out[int(0.25 * SR) :, 0]) < 1.25 * largest_step(steady[int(0.25 * SR) :, 0]), "no click"


# ------------------------------------------------------------------------------- device choice
def test_the_device_choice_falls_back_to_the_cpu_quietly(capfd):
    if not DECODER.exists():
        pytest.skip("the shipped timbre model is not there yet")
    model = TimbreModel(DECODER, device="auto")
    works = cuda_works(DECODER)
    assert model.device == ("cuda" if works else "cpu")
    err = capfd.readouterr().err
    assert err == "", f"no provider warnings: {err!r}"
    if not works:
        with pytest.raises(ModelError, match="CUDA execution provider does not work here"):
            TimbreModel(DECODER, device="cuda")


def test_render_device_option_falls_back_or_says_why(tmp_path):
    if not DECODER.exists():
        pytest.skip("the shipped timbre model is not there yet")
    msgs = [mido.Message("note_on", channel=0, note=60, velocity=100, time=0),
            mido.Message("note_off", channel=0, note=60, velocity=0, time=480)]
    path = write_midi(tmp_path / "n.mid", [msgs], midi_type=0)
    proc = subprocess.run([sys.executable, "-m", "liveart", "render", str(path), "-o", str(tmp_path / "n.wav"),
                           "--device", "cpu", "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    if not cuda_works(DECODER):
        proc = subprocess.run([sys.executable, "-m", "liveart", "render", str(path), "-o", str(tmp_path / "c.wav"),
                               "--device", "cuda"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "cuda" in proc.stderr.lower() and not (tmp_path / "c.wav").exists()


# ------------------------------------------------------------------------------- bad input
def test_a_model_file_that_does_not_match_gets_a_clear_error(tmp_path):
    melody = MODELS_DIR / "melody-gru.onnx"
    if melody.exists():
        with pytest.raises(ModelError, match="not a liveart timbre decoder"):
            TimbreModel(melody, device="cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        TimbreModel(junk, device="cpu")
    with pytest.raises(ModelError, match="no such model file"):
        TimbreModel.load(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="unknown timbre device"):
        TimbreModel.load(None, device="gpu")


def test_the_cli_names_a_mismatched_timbre_model_in_one_line(tmp_path):
    melody = MODELS_DIR / "melody-gru.onnx"
    if not melody.exists():
        pytest.skip("no other model file to mismatch with")
    patch = tmp_path / "p.toml"
    patch.write_text(f'[timbre]\nmodel = "{melody}"\n[channels.default]\ntimbre = true\n')
    msgs = [mido.Message("note_on", channel=0, note=60, velocity=100, time=0),
            mido.Message("note_off", channel=0, note=60, velocity=0, time=480)]
    path = write_midi(tmp_path / "n.mid", [msgs], midi_type=0)
    proc = subprocess.run([sys.executable, "-m", "liveart", "render", str(path), "-o", str(tmp_path / "n.wav"),
                           "--patch", str(patch)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "not a liveart timbre decoder" in proc.stderr and not (tmp_path / "n.wav").exists()


@pytest.mark.parametrize("timbre, channel, message", [
    ({"morph": [{"cc": 1, "to": "drum"}]}, {}, "did you mean"),
    ({"morph": [{"cc": 1}]}, {}, "to: found None"),
    ({"morph": [{"cc": 64, "to": "cello"}]}, {}, "sustain pedal"),
    ({"xy": [{"x_cc": 16, "y_cc": 17, "anchors": ["flute", "cello"]}]}, {}, "three instruments"),
    ({"morph": [{"cc": 1, "to": "cello"}], "xy": [{"x_cc": 16, "y_cc": 17, "anchors": ["flute", "cello", "oboe"]}]},
     {}, "no other morph or xy"),
    ({"morph": [{"cc": 1, "to": "cello"}, {"cc": 2, "to": "oboe"}]}, {}, "no other morph or xy"),
    ({"morph": [{"cc": 1, "to": "cello"}], "dim": [{"cc": 1, "dim": 0}]}, {}, "not already used"),
    ({"device": "gpu"}, {}, "one of auto, cpu, cuda"),
    ({"position": [1.0, "a"]}, {}, "latent coordinates"),
    ({}, {"timbre": "kazoo"}, "General MIDI instrument"),
    ({"morph": [{"cc": 1, "to": "cello", "channel": 3}]}, {"timbre": False}, "plays through the timbre model"),
])
def test_bad_timbre_patches_fail_with_the_key(timbre, channel, message):
    with pytest.raises(PatchError, match=message):
        patch_from_dict({"channels": {"default": {"timbre": "flute", **channel}}, "timbre": timbre})


@needs_model
def test_a_dimension_the_model_lacks_is_a_patch_error(model):
    patch = timbre_patch(timbre={"dim": [{"cc": 20, "dim": model.latent}]})
    with pytest.raises(PatchError, match="does not exist"):
        Engine(patch, sample_rate=SR, timbre=model)


def test_the_cc_a_timbre_control_takes_is_not_mapped_twice():
    patch = patch_from_dict({"channels": {"default": {"timbre": True}},
                             "timbre": {"morph": [{"cc": 74, "to": "cello"}]}})
    assert 74 not in patch.cc_map(), "the default brightness mapping gives way to the morph"
    with pytest.raises(PatchError, match="does not use"):
        patch_from_dict({"channels": {"default": {"timbre": True}}, "timbre": {"morph": [{"cc": 20, "to": "cello"}]},
                         "cc": [{"number": 20, "param": "volume"}]})


# ------------------------------------------------------------------------------- the map
@needs_model
def test_timbre_map_and_anchor_list(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["timbre", "map", "-o", str(tmp_path / "map.png")]) == 0
    data = (tmp_path / "map.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
    assert main(["timbre", "anchors"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(1 for line in lines if line[:3].strip().isdigit()) == 128
    assert main(["timbre", "map", "-o", str(tmp_path / "map.txt")]) == 1


# ------------------------------------------------------------------------------- data
def test_analysis_recovers_a_known_tone():
    from liveart.training.timbre_data import analyse

    rng = np.random.default_rng(0)
    f0, sr = 220.0, 48000
    t = np.arange(int(1.2 * sr)) / sr
    amps = {1: 0.3, 2: 0.1, 3: 0.05, 5: 0.02, 8: 0.004}
    x = sum(a * np.sin(2 * np.pi * k * f0 * t + k) for k, a in amps.items())
    # White noise filtered into noise band 12 (about 4.2 to 6.2 kHz) at a known RMS.
    edges = noise_band_edges_hz(sr)
    spec = np.fft.rfft(rng.standard_normal(len(t)))
    freqs = np.fft.rfftfreq(len(t), 1 / sr)
    band = np.fft.irfft(np.where((freqs >= edges[12]) & (freqs < edges[13]), spec, 0), n=len(t))
    band *= 0.01 / np.sqrt(np.mean(band ** 2))
    db = analyse(x + band, f0, sr)
    mid = db[40:80]
    for k, a in amps.items():
        assert np.median(mid[:, k - 1]) == pytest.approx(20 * np.log10(a), abs=1.0), f"partial {k}"
    assert np.median(mid[:, N_HARMONICS + 12]) == pytest.approx(-40.0, abs=1.5), "the noise band's RMS"
    # Bands with no noise read as leakage of the partials at most (the Blackman window's sidelobes,
    # 58 dB down), or unmeasurable where a partial's main lobe fills the band.
    quiet = np.median(mid[:, N_HARMONICS + 4 : N_HARMONICS + 10], axis=0)
    assert np.all(np.isnan(quiet) | (quiet < 20 * np.log10(0.3) - 55)), "bands with no noise"
    assert not np.any(np.isnan(db[:, :N_HARMONICS])), "every partial of 220 Hz is below the band limit"
    high = analyse(0.1 * np.sin(2 * np.pi * 880.0 * t), 880.0, sr)
    assert np.all(np.isnan(high[:, 24:N_HARMONICS])) and not np.any(np.isnan(high[:, :24])), \
        "partials at or above 0.45 of the sample rate are unmeasurable (masked), the rest measured"


def test_held_out_pitches_and_programs_never_reach_training():
    from liveart.training import timbre_data as td

    assert set(td.HELD_OUT_PITCHES) < set(td.PITCHES) and len(td.HELD_OUT_PITCHES) >= 4
    for program in range(128):
        for note in td.PITCHES:
            split = td.SPLIT_NAMES[td.split_of(program, note)]
            if split == "train":
                assert program not in td.HELD_OUT_PROGRAMS and note not in td.HELD_OUT_PITCHES
    families = {p // 8 for p in td.HELD_OUT_PROGRAMS}
    assert len(families) == len(td.HELD_OUT_PROGRAMS), "one held-out program per family"
    cache = Path(td.DEFAULT_CACHE)
    if cache.exists():
        data = td.load_or_build(cache, progress=False)
        train = data.indices("train")
        assert not set(data.note[train]) & set(td.HELD_OUT_PITCHES)
        assert not set(data.program[train]) & set(td.HELD_OUT_PROGRAMS)


def test_program_names_resolve():
    assert anc.program_of("Flute") == 73 and anc.program_of("program 42") == 42 and anc.program_of(0) == 0
    assert anc.program_of("english horn") == 69 and anc.program_of("sax") == 65
    for bad in ("kazoo", 128, -1, True, "drum"):
        with pytest.raises(ValueError):
            anc.program_of(bad)


# ------------------------------------------------------------------------------- review cases
@needs_model
def test_a_voice_holds_the_frame_onset_seconds_into_its_note_until_it_gets_there(model):
    """The first analysis frames of a note are quieter than its attack; a voice starts from the frame
    ONSET_SECONDS in and holds it (no dip back to the quieter frames at the first control hop)."""
    z = np.repeat(model.anchors[0][None], 4, axis=0)
    on = np.array([0.0, 0.5 * ONSET_SECONDS, ONSET_SECONDS, 3 * ONSET_SECONDS])
    h, noise, amp = model.frames(z, np.full(4, 67), np.full(4, 100), on, np.full(4, -1.0), SR)
    assert np.array_equal(amp[:2], amp[[2, 2]]) and np.array_equal(h[0], h[2]) and np.array_equal(noise[1], noise[2])
    assert amp[3] != amp[2]  # after it, the note's time runs as before


class _Recording:
    """A TimbreModel stand-in that records what the engine asks the decoder."""

    def __init__(self, model):
        self.model = model
        self.anchors, self.latent = model.anchors, model.latent
        self.latent_low, self.latent_high = model.latent_low, model.latent_high
        self.held_out_programs = model.held_out_programs
        self.calls = []

    def frames(self, z, note, velocity, on_seconds, off_seconds, sample_rate, gain=1.0):
        self.calls.append((np.array(z), np.array(note), np.array(on_seconds)))
        return self.model.frames(z, note, velocity, on_seconds, off_seconds, sample_rate, gain)


@needs_model
@pytest.mark.parametrize("smoothing_ms", [40.0, 0.0])
def test_a_note_right_after_a_program_change_starts_as_the_new_instrument(model, smoothing_ms):
    rec = _Recording(model)
    patch = patch_from_dict({"channels": {"default": {"timbre": True}}, "timbre": {"smoothing_ms": smoothing_ms}})
    engine = Engine(patch, sample_rate=SR, timbre=rec)
    engine.schedule_many([ev.program_change(0, 0, 73), ev.note_on(0, 0, 72, 90)])
    engine.render(512)
    # The first call made the first onset tables (at the piano); the program change remade them at
    # the flute before the note-on took its first frame from them.
    z, note, on = rec.calls[1]
    assert np.all(on == ONSET_SECONDS) and np.allclose(z, model.anchors[73]), "the onset is the flute, not the piano"
    assert len(rec.calls) >= 5 and all(len(c[0]) == 1 for c in rec.calls[2:])  # then one voice a hop
    # With a note sounding, a program change glides (no step) unless smoothing is off.
    calls = len(rec.calls)
    engine.schedule(ev.program_change(engine.frame, 0, 42))
    engine.render(HOP * 2)
    z = np.concatenate([c[0] for c in rec.calls[calls:] if len(c[0]) == 1])  # the voice's place, hop by hop
    cello, flute = model.anchors[42], model.anchors[73]
    d = np.linalg.norm(z - flute, axis=1)
    if smoothing_ms:
        assert len(d) >= 3 and np.all(np.diff(d) > 0), d
        assert 0.01 < d[-1] < 0.5 * np.linalg.norm(cello - flute), "a glide, not a step"
    else:
        assert np.allclose(z, cello)


@needs_model
def test_reset_controllers_returns_the_morph_to_its_default(model):
    patch = timbre_patch(timbre={"morph": [{"cc": 1, "from": "flute", "to": "cello", "default": 0.25}],
                                 "dim": [{"cc": 20, "dim": 1}]})
    engine = Engine(patch, sample_rate=SR, timbre=model)
    start = engine.timbre_targets[0].copy()
    engine.schedule_many([ev.control_change(0, 0, 1, 127), ev.control_change(0, 0, 20, 0)])
    engine.render(64)
    assert not np.allclose(engine.timbre_targets[0], start)
    engine.schedule(ev.control_change(engine.frame, 0, ev.CC_RESET_CONTROLLERS, 0))
    engine.render(64)
    assert np.allclose(engine.timbre_targets[0], start)


def test_percussion_never_inherits_the_timbre_model():
    for tables in ({"default": {"timbre": True}}, {"default": {"timbre": True}, "10": {"volume": 0.5}}):
        patch = patch_from_dict({"channels": tables})
        assert patch.channels[9].timbre is None and patch.channels[0].timbre == -1
    patch = patch_from_dict({"channels": {"default": {"timbre": True}, "10": {"timbre": "taiko drum"}}})
    assert patch.channels[9].timbre == 116, "unless its own table asks"


@needs_model
def test_noise_bands_move_to_the_rate_they_are_played_at(model):
    """The model's bands are 48 kHz's (40 Hz - 20 kHz); at 22050 Hz the synth's bands end at 9.9 kHz:
    the noise power below that edge is the same, moved onto the new bands, and nothing is left above."""
    rng = np.random.default_rng(5)
    v = 200
    z = np.stack([model.anchors[int(p)] for p in rng.integers(0, 128, v)])
    args = (z, rng.integers(40, 90, v), rng.integers(30, 127, v), rng.random(v), np.full(v, -1.0))
    h48, n48, a48 = model.frames(*args, 48000)
    h22, n22, a22 = model.frames(*args, 22050)
    e48, e22 = noise_band_edges_hz(48000), noise_band_edges_hz(22050)
    below = e48[1:] <= e22[-1]  # 48 kHz bands wholly under 22050's top edge
    p48 = np.sum((n48[:, below] * a48[:, None]) ** 2, axis=1)
    p22 = np.sum((n22 * a22[:, None]) ** 2, axis=1)
    assert np.all(p22 >= p48 * 0.999), "the power of bands that fit is kept"
    straddle = np.sum((n48[:, np.flatnonzero(~below)[0]] * a48) ** 2)
    assert np.sum(p22) <= np.sum(p48) + straddle * 1.001, "what lies above the new top edge is dropped"
    assert np.allclose(h22 * a22[:, None], h48 * a48[:, None] * fr.harmonic_band_mask(
        440.0 * 2.0 ** ((args[1] - 69) / 12.0), 22050), rtol=1e-3, atol=1e-7), "partials are untouched below the limit"


@needs_model
def test_a_worker_whose_decoder_fails_keeps_going_and_says_so(model):
    from liveart.timbre.worker import TimbreWorker

    class Broken:
        def __init__(self):
            self.anchors, self.latent = model.anchors, model.latent
            self.latent_low, self.latent_high = model.latent_low, model.latent_high
            self.held_out_programs = model.held_out_programs
            self.fail = False

        def frames(self, *a, **k):
            if self.fail:
                raise RuntimeError("the GPU went away")
            return model.frames(*a, **k)

    broken = Broken()
    with TimbreWorker(broken, SR) as worker:
        engine = Engine(timbre_patch(), sample_rate=SR, timbre=worker)
        broken.fail = True
        engine.schedule(ev.note_on(0, 0, 60, 100))
        out = np.zeros((12800, 2), np.float32)
        for k in range(0, 12800, 128):
            engine.render_into(out[k : k + 128])
            worker.wait_idle(1.0)
        assert worker._thread.is_alive() and worker.failures > 0 and "GPU went away" in worker.error
        assert engine.stats.timbre_late > 0 and rms(out[4000:]) > 0.001, "the note sounds on its onset frame"


def test_timbre_map_to_a_directory_fails_in_one_line(tmp_path, capsys):
    if not DECODER.exists():
        pytest.skip("the shipped timbre model is not there yet")
    pytest.importorskip("matplotlib")
    (tmp_path / "d.png").mkdir()
    assert main(["timbre", "map", "-o", str(tmp_path / "d.png")]) == 1
    assert main(["timbre", "map", "-o", str(tmp_path / "missing" / "m.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err


@needs_model
def test_patch_check_asks_the_model_what_only_it_knows(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[timbre]\nposition = [1.0, 2.0]\n[channels.default]\ntimbre = true\n')
    assert main(["patches", "--check", str(bad)]) == 1
    assert "latent has" in capsys.readouterr().err
    missing = tmp_path / "missing.toml"
    missing.write_text('[timbre]\nmodel = "nowhere/x.onnx"\n[channels.default]\ntimbre = true\n')
    assert main(["patches", "--check", str(missing)]) == 1
    assert "no such model file" in capsys.readouterr().err
    for name in ("default", "timbre_morph", "timbre_xy"):
        assert main(["patches", "--check", name]) == 0


def test_the_data_builder_renders_and_analyses_real_fluidsynth_notes():
    from liveart.training import timbre_data as td
    from liveart.training.fluid import FluidError, find_soundfont

    try:
        soundfont = str(find_soundfont())
        notes = td._render_program((73, soundfont))
    except FluidError as e:
        pytest.skip(f"FluidSynth is not installed here: {e}")
    assert len(notes) == len(td.PITCHES) * len(td.VELOCITIES), "a flute sounds at every rendered pitch"
    by_key = {(n[1], n[2]): n for n in notes}
    program, note, velocity, hold, db = by_key[(72, 80)]
    assert db.shape[1] == fr.N_PARAMS and len(db) == int((hold + td.TAIL_SECONDS) * fr.ANALYSIS_RATE_HZ)
    held = db[20 : int(hold * 100) - 5].astype(np.float64)
    assert np.nanmedian(held[:, 0]) > np.nanmedian(held[:, 5]) + 10, "a flute's fundamental leads its 6th partial"
    assert np.nanmedian(held[:, 0]) > -40 and np.nanmedian(db[-10:, 0]) < -80, "it sounds, then the release ends"
    louder = np.nanmax(by_key[(72, 120)][4][:, 0].astype(np.float64))
    assert louder > np.nanmax(held[:, 0]) + 3, "velocity 120 is louder than 80"


def test_training_runs_end_to_end_on_a_small_set(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from liveart.training import timbre_data as td
    from liveart.training.fluid import FluidError, find_soundfont
    from liveart.training.timbre_model import TimbreConfig
    from liveart.training.train_timbre import train

    try:
        soundfont = str(find_soundfont())
    except FluidError as e:
        pytest.skip(f"FluidSynth is not installed here: {e}")
    notes = td._render_program((73, soundfont)) + td._render_program((42, soundfont))
    levels = np.concatenate([n[4] for n in notes])
    data = td.TimbreDataset(
        levels=levels, offsets=np.concatenate([[0], np.cumsum([len(n[4]) for n in notes])]).astype(np.int64),
        program=np.array([n[0] for n in notes], np.int16), note=np.array([n[1] for n in notes], np.int16),
        velocity=np.array([n[2] for n in notes], np.int16), hold_seconds=np.array([n[3] for n in notes], np.float32),
        split=np.array([td.split_of(n[0], n[1]) for n in notes], np.uint8))
    result = train(data, TimbreConfig(latent=4, hidden=32, decoder_layers=2, encoder_hidden=32), tmp_path,
                   max_epochs=10, threads=1, progress=False)
    import json

    history = json.loads((tmp_path / "timbre.train.json").read_text())["history"]
    assert result.best_error_db < history[0]["valid_anchor_error_db"] - 1.0, "it learns"
    assert result.decoder.exists() and result.encoder.exists() and (tmp_path / "timbre.pt").exists()
    model = TimbreModel(result.decoder, device="cpu")
    assert set(model.anchors) == {42, 73} and model.latent == 4
    assert model.anchor("cello").shape == (4,)


@needs_model
def test_the_demo_morphs_its_flute_towards_the_choir_and_back(model):
    from liveart.midi.files import read_midi_file

    demo = Path(__file__).resolve().parent.parent / "liveart" / "data" / "demo.mid"
    performance = read_midi_file(demo)
    events = performance.to_events(SR)
    swell = [e for e in events if e.kind == ev.CONTROL_CHANGE and e.channel == 0 and e.a == 1]
    peak = next(e.frame for e in swell if e.b == 127)
    engine = Engine(load_patch("default"), sample_rate=SR, timbre=model)
    engine.schedule_many(events)
    flute, choir = model.anchors[73], model.anchors[52]
    engine.render(peak + SR // 2)  # just past the top of the swell
    assert np.linalg.norm(engine.state.timbre_positions[0] - choir) < 0.05 * np.linalg.norm(choir - flute)
    engine.render(swell[-1].frame + SR // 2 - engine.frame)  # the swell is over
    assert np.linalg.norm(engine.state.timbre_positions[0] - flute) < 0.05 * np.linalg.norm(choir - flute)
    assert np.allclose(engine.state.timbre_positions[1], model.anchors[68]), "the oboe stays an oboe"
