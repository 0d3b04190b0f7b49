"""Shard writers: one plug-in per on-disk layout of a shard (`webdataset`: tar + Parquet).

Adding one is a new module in this package (or anywhere imported before a build) with a
`ShardWriter` subclass that sets `name`: subclassing registers it, `shard_writer_classes()`
imports every module of the package. See `base` for the interface.
"""

from synthgen.pipelines.shard_writers.base import (
    DEFAULT_WRITER,
    ShardWriter,
    UnknownWriter,
    shard_writer_class,
    shard_writer_classes,
)

__all__ = [
    "DEFAULT_WRITER",
    "ShardWriter",
    "UnknownWriter",
    "shard_writer_class",
    "shard_writer_classes",
]
