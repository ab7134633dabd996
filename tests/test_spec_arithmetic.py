"""container/spec.py is the one home of the format's arithmetic: check each formula against the
stored vectors and against the code that consumes it."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nqformat import bitpack
from nqformat.container import metajson, spec
from nqformat.container.writer import canonical_json
from nqformat.errors import LimitError, NQError

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "spec" / "vectors"
VALID = [v["file"] for v in json.loads((VECTORS / "manifest.json").read_text())["valid"]]


@pytest.mark.parametrize("name", VALID)
def test_canonical_offsets_reproduce_every_valid_vector(name: str) -> None:
    pre = spec.Preamble.unpack((VECTORS / name).read_bytes()[: spec.PREAMBLE_SIZE])
    lengths = [s.length for s in pre.sections]
    assert spec.canonical_offsets(lengths) == tuple(s.offset for s in pre.sections)
    names, meta = pre.sections[spec.Section.NAMES], pre.sections[spec.Section.META]
    assert spec.header_end(pre.tensor_count, names.length, meta.length) == meta.end


@pytest.mark.parametrize("width", range(bitpack.MIN_WIDTH, bitpack.MAX_WIDTH + 1))
def test_code_range_is_exactly_what_bitpack_accepts(width: int) -> None:
    lo, hi = spec.code_range(width)
    assert hi - lo + 1 == 1 << width
    ok = np.arange(lo, hi + 1)
    assert np.array_equal(bitpack.unpack(bitpack.pack(ok, width), width, ok.size), ok)
    for bad in (lo - 1, hi + 1):
        with pytest.raises(NQError):
            bitpack.pack(np.array([bad]), width)


def test_bits_valid_is_the_spec_rule() -> None:
    pairs = {(n, h) for n in range(0, 12) for h in range(-1, 12) if spec.bits_valid(n, h)}
    assert pairs == {(n, h) for n in range(2, 9) for h in range(1, n)}


def test_numel_is_exact_and_limited() -> None:
    assert spec.numel(()) == 1
    assert spec.numel((0, 1 << 48)) == 0
    assert spec.numel((1 << 24, 1 << 24)) == 1 << 48
    with pytest.raises(LimitError):
        spec.numel((1 << 24, (1 << 24) + 1))
    with pytest.raises(LimitError):
        spec.numel(((1 << 48) + 1, 0))


json_values = st.recursive(
    st.none() | st.integers() | st.text(alphabet='{}[]"\\ab', max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


def _depth(obj: object) -> int:
    if isinstance(obj, dict):
        return 1 + max(map(_depth, obj.values()), default=0)
    if isinstance(obj, list):
        return 1 + max(map(_depth, obj), default=0)
    return 0


@given(json_values)
def test_json_depth_of_the_bytes_is_the_depth_of_the_object(obj: object) -> None:
    # the writer checks the bytes it writes with the reader's own rule: brackets inside strings
    # (escaped quotes included) must not count
    assert metajson.json_depth(canonical_json(obj)) == _depth(obj)
