"""liveart: a real-time AI performance instrument.

Layers, from the top:

- ``liveart.render(midi_path, wav_path, patch=...)`` — one call: a MIDI file in, audio out
  (:mod:`liveart.hosts.offline`);
- :class:`liveart.engine.Engine` — the deterministic core that the offline renderer and the live
  host both drive: timestamped :mod:`liveart.events` in, audio blocks and musical state out;
- :mod:`liveart.patch` — TOML patches → typed, validated configuration;
- below the real-time line, compiled and never taking the GIL: :func:`liveart.realtime.block.block`,
  one block of the engine; :func:`liveart.realtime.callback.cycle`, one live audio period (MIDI in,
  the block, MIDI out), which JACK calls through :mod:`liveart.realtime.jack`; they meet Python
  threads through :mod:`liveart.realtime.rings`;
- raw steps: :class:`liveart.synth.bank.VoiceBank` holds the voices and renders one segment of the
  polyphonic harmonic-plus-noise synth; :func:`liveart.synth.presets.frame_for_note` makes one
  parameter frame;
- :mod:`liveart.midi.files` reads MIDI files into events.

Hardware modules (sounddevice, rtmidi) are imported only by the hosts that need them.
"""

__version__ = "0.1.0"


def render(midi_path, wav_path, patch=None, **kwargs):
    """Render a MIDI file to a WAV file; see :func:`liveart.hosts.offline.render`."""
    from .hosts.offline import render as _render

    return _render(midi_path, wav_path, patch=patch, **kwargs)
