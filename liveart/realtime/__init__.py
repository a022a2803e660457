"""The compiled real-time path: code that runs on the audio server's thread without the GIL.

- :mod:`.atomics`: release/acquire memory ordering and raw addresses for compiled code;
- :mod:`.rings`: lock-free single-producer/single-consumer rings between the audio thread and the
  others (Python threads and processes);
- :mod:`.jackapi`: libjack's real-time calls for a numba ``cfunc`` process callback, and its
  registration.
"""
