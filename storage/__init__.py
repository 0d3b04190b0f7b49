"""The bottom layer: atomic writes, hashing, fault points, image codecs, listing and opening files.

Everything above reaches files through this package, so another backend (an object store)
can stand behind the same functions without callers changing. It imports nothing of synthgen
but `synthgen.schemas`.
"""
