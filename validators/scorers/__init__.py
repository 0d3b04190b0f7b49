"""Scorer plug-ins: one per module, found by importing every module here (see `base`)."""
