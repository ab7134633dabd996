"""The one error hierarchy of nqformat, rooted in ValueError (spec §11).

Every malformed-file error carries a stable ``code`` (the spec's error code, also used in
``spec/vectors/manifest.json``) so tools and other-language readers can agree on what went wrong.
"""

from __future__ import annotations

__all__ = [
    "ERROR_CLASSES",
    "BadMagicError",
    "ChecksumError",
    "DuplicateNameError",
    "InvalidHeaderError",
    "InvalidNameError",
    "LayoutError",
    "LimitError",
    "MetadataError",
    "ModelSourceError",
    "NQError",
    "NQFormatError",
    "PartOnlyError",
    "QuantizationError",
    "TensorNotFoundError",
    "TruncatedError",
    "UnsupportedFeatureError",
    "UnsupportedVersionError",
]


class NQError(ValueError):
    """Root of every error nqformat raises on purpose."""


class NQFormatError(NQError):
    """A file (or bytes) that is not a valid ``.nq`` file. ``code`` is the spec §11 code."""

    code: str = "format"


class TruncatedError(NQFormatError):
    code = "truncated"


class BadMagicError(NQFormatError):
    code = "bad_magic"


class UnsupportedVersionError(NQFormatError):
    code = "unsupported_version"


class UnsupportedFeatureError(NQFormatError):
    code = "unsupported_feature"


class ChecksumError(NQFormatError):
    code = "checksum"


class InvalidHeaderError(NQFormatError):
    code = "invalid_header"


class LimitError(NQFormatError):
    code = "limit"


class LayoutError(NQFormatError):
    code = "layout"


class InvalidNameError(NQFormatError):
    code = "invalid_name"


class DuplicateNameError(NQFormatError):
    code = "duplicate_name"


class MetadataError(NQFormatError):
    code = "metadata"


class PartOnlyError(NQFormatError):
    """Full-bit data was asked of a part-bit-only file (spec §9); the file itself is fine."""

    code = "part_only"


class QuantizationError(NQError):
    """Invalid quantizer input (bit widths, non-finite weights) or a broken invariant."""


class TensorNotFoundError(NQError, KeyError):
    """No tensor of that name in the file (also a KeyError). Not a format error: the file is
    fine, the name is not in it."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ModelSourceError(NQError):
    """A model name, weights file or download that cannot give the requested model."""


#: spec §11 code -> exception class, for manifests and other-language readers.
ERROR_CLASSES: dict[str, type[NQFormatError]] = {
    cls.code: cls
    for cls in (
        TruncatedError,
        BadMagicError,
        UnsupportedVersionError,
        UnsupportedFeatureError,
        ChecksumError,
        InvalidHeaderError,
        LimitError,
        LayoutError,
        InvalidNameError,
        DuplicateNameError,
        MetadataError,
        PartOnlyError,
    )
}
