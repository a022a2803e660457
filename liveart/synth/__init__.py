"""The synthesizer: presets (note → parameter frame) and the vectorised voice bank."""
