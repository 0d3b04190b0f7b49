"""Check plug-ins, per-sample and build-wide: one per module, found by importing every
module here (see `validators.base`)."""
