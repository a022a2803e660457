"""Hosts turn the outside world into engine events and take its output: offline render (a MIDI
file in, a WAV out); the live host (controller and sound card) comes later."""
