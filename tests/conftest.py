"""Shared fixtures: patches built in code, MIDI files written with mido, an engine runner."""

from __future__ import annotations

import mido
import numpy as np
import pytest

from liveart.engine import Engine
from liveart.patch import load_patch, patch_from_dict

SR = 48000


def make_patch(preset: str = "pure", polyphony: int = 32, bend_range: float = 2.0, **channel):
    """A patch whose every channel plays ``preset``; 'pure' is a noiseless sine, 'bright' a noiseless saw."""
    return patch_from_dict({
        "audio": {"polyphony": polyphony, "pitch_bend_range": bend_range, "gain_db": 0.0},
        "presets": {
            "pure": {"base": "organ", "harmonics": [1.0], "noise": 0.0, "attack": 0.005, "release": 0.05},
            "bright": {"base": "saw_lead", "noise": 0.0, "attack": 0.005, "release": 0.05},
        },
        "channels": {"default": {"preset": preset, "follow_program": False, **channel},
                     "10": {"preset": preset, "follow_program": False}},
    }, "<test patch>")


@pytest.fixture
def default_patch():
    return load_patch()


def render_events(patch, events, frames: int, block_sizes=(256,), seed: int = 0, sample_rate: int = SR,
                  timbre=None):
    """Render ``events`` for ``frames`` frames, cycling through ``block_sizes``; returns (audio, engine)."""
    engine = Engine(patch, sample_rate=sample_rate, seed=seed, timbre=timbre)
    engine.schedule_many(events)
    out = np.zeros((frames, 2), np.float32)
    pos, i = 0, 0
    while pos < frames:
        n = min(block_sizes[i % len(block_sizes)], frames - pos)
        engine.render_into(out[pos : pos + n])
        pos += n
        i += 1
    return out, engine


def write_midi(path, tracks, ticks_per_beat: int = 480, midi_type: int = 1):
    """tracks: lists of mido messages with delta times in ticks."""
    mid = mido.MidiFile(type=midi_type, ticks_per_beat=ticks_per_beat)
    for msgs in tracks:
        track = mido.MidiTrack()
        track.extend(msgs)
        mid.tracks.append(track)
    mid.save(str(path))
    return path


def simple_song(n_notes: int = 8, channels=(0, 1, 2), beat_ticks: int = 480):
    """A short multi-channel type 1 song with a tempo change, CCs, bends and the sustain pedal."""
    tempo_track = [mido.MetaMessage("set_tempo", tempo=500000, time=0),
                   mido.MetaMessage("set_tempo", tempo=400000, time=beat_ticks * 4)]
    tracks = [tempo_track]
    for c in channels:
        msgs = [mido.Message("program_change", channel=c, program=[73, 0, 19, 48][c % 4], time=0),
                mido.Message("control_change", channel=c, control=7, value=90 + c, time=0)]
        for i in range(n_notes):
            note = 60 + 4 * c + (i * 5) % 12
            msgs.append(mido.Message("note_on", channel=c, note=note, velocity=60 + 7 * i % 60, time=0))
            if i == 3:
                msgs.append(mido.Message("pitchwheel", channel=c, pitch=3000, time=beat_ticks // 4))
                msgs.append(mido.Message("control_change", channel=c, control=64, value=127, time=0))
            msgs.append(mido.Message("note_off", channel=c, note=note, velocity=0, time=beat_ticks // 2))
            if i == 5:
                msgs.append(mido.Message("control_change", channel=c, control=64, value=0, time=0))
                msgs.append(mido.Message("pitchwheel", channel=c, pitch=0, time=0))
        tracks.append(msgs)
    return tracks


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory):
    """A small untrained visual generator exported to ONNX (base 4: fast)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from pathlib import Path

    from liveart.training.train_visual import export_onnx
    from liveart.training.visual_model import GanConfig, Generator

    d = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    g = Generator(GanConfig(base=4))
    # Batch norm's running statistics measured on random latents (a fresh network's are 0 and 1,
    # which leave its pictures nearly the same for every latent): the pictures then move with z.
    for m in g.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for _ in range(4):
            g(torch.randn(64, g.config.z_dim))
    g.eval()
    torch.save({"config": GanConfig(base=4).to_dict(), "g_ema": g.state_dict(), "step": 0, "seed": 0}, d / "g.pt")
    export_onnx(d / "g.pt", d / "g.onnx")
    return Path(d / "g.onnx")
