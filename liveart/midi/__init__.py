"""MIDI in and out: files (mido) now; ports (rtmidi, virtual, JACK) and clock come with the live host."""
