"""The ``.nq`` container: spec constants (``spec``), lazy reader, streaming writer.

Needs only numpy and the standard library; zstandard is imported lazily for compressed blobs.
"""

from nqformat.container.reader import (
    ChannelParams,
    NQFile,
    SectionInfo,
    TensorInfo,
    TensorNotFoundError,
    open,
)
from nqformat.container.spec import BlobRef, Codec, DType, IncompatFlag, Kind, Section
from nqformat.container.writer import NQWriter

__all__ = [
    "BlobRef",
    "ChannelParams",
    "Codec",
    "DType",
    "IncompatFlag",
    "Kind",
    "NQFile",
    "NQWriter",
    "Section",
    "SectionInfo",
    "TensorInfo",
    "TensorNotFoundError",
    "open",
]
