"""The package's exceptions: one base class, one subclass per kind of bad input.

Messages say what was wrong and how to fix it; the command line prints them as one line.
"""


class LiveartError(Exception):
    """Base class of every error liveart raises on purpose."""


class PatchError(LiveartError):
    """A patch file that cannot be read or holds a value that is not allowed."""


class MidiFileError(LiveartError):
    """A MIDI file that is missing, unreadable or not MIDI."""


class OutputError(LiveartError):
    """An output path that cannot be written."""


class RenderError(LiveartError):
    """A render that cannot be done with the given settings (too long, bad block size, ...)."""


class PortError(LiveartError):
    """A MIDI port or audio device that does not exist or cannot be opened."""


class ModelError(LiveartError):
    """A model file that is missing, unreadable or not the kind of model liveart expects."""
