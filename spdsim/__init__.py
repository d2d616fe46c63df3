"""spdsim: discrete-event simulator of Speculative Pipeline Decoding and speculative-decoding baselines."""

__version__ = "0.1.0"
