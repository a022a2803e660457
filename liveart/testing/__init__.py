"""Test and benchmark tools for liveart's real-time parts; not imported at run time.

- :mod:`liveart.testing.jackprobe` — a JACK test client that plays MIDI at exact frames, records
  audio and MIDI with their frames, and measures a MIDI instrument's note-to-sound latency
  (needs the JACK-Client package and a ``jackd`` binary).
"""
