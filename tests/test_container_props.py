"""Property test: whatever is written reads back exactly, in both modes, compressed or not."""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np
from _container_util import random_nested
from hypothesis import given, settings
from hypothesis import strategies as st

import nqformat
from nqformat import NQWriter

_RAW_DTYPES = ["<f4", "<f2", "<f8", "|i1", "|u1", "<i2", "<i4", "<i8", "|b1"]


@st.composite
def _files(draw: st.DrawFn) -> dict:
    n = draw(st.integers(2, 8))
    h = draw(st.integers(1, n - 1))
    shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
    tensors = []
    for i in range(draw(st.integers(0, 5))):
        nested = draw(st.booleans())
        shape = draw(shapes)
        if nested and not shape:
            shape = (draw(st.integers(0, 5)),)
        tensors.append(
            {
                "name": f"t{i}." + draw(st.text(min_size=0, max_size=5)),
                "nested": nested,
                "shape": shape,
                "dtype": draw(st.sampled_from(_RAW_DTYPES)),
                "zeros": draw(st.booleans()),  # compressible content
            }
        )
    return {
        "n": n,
        "h": h,
        "tensors": tensors,
        "compress": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _raw_array(rng: np.random.Generator, shape: tuple, dtype: str, zeros: bool) -> np.ndarray:
    dt = np.dtype(dtype)
    if zeros:
        return np.zeros(shape, dt)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)


@settings(max_examples=60, deadline=None)
@given(_files())
def test_random_files_read_back_exactly(spec: dict) -> None:
    rng = np.random.default_rng(spec["seed"])
    n, h = spec["n"], spec["h"]
    expected: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "p.nq"
        with NQWriter(
            path, n=n, h=h, metadata={"seed": spec["seed"]}, compress=spec["compress"]
        ) as w:
            for t in spec["tensors"]:
                if t["nested"]:
                    value = random_nested(rng, t["shape"], n, h)
                    if t["zeros"]:
                        value = type(value)(
                            **{
                                **value.__dict__,
                                "high": np.zeros_like(value.high),
                                "low": np.zeros_like(value.low),
                            }
                        )
                    w.add_nested(t["name"], **value.kwargs(), w_int=value.full)
                else:
                    value = _raw_array(rng, t["shape"], t["dtype"], t["zeros"])
                    w.add_raw(t["name"], value)
                expected[t["name"]] = value
        with nqformat.open(path) as f:
            assert f.names() == list(expected)
            assert f.metadata["seed"] == spec["seed"]
            for name, value in expected.items():
                if isinstance(value, np.ndarray):
                    got = f.read(name)
                    assert got.dtype == value.dtype and got.shape == value.shape
                    assert got.tobytes() == value.tobytes()
                    continue
                np.testing.assert_array_equal(f.codes(name, "high"), value.high)
                np.testing.assert_array_equal(f.codes(name, "low"), value.low)
                np.testing.assert_array_equal(f.codes(name, "full"), value.full)
                for mode in ("part", "full"):
                    assert f.read(name, mode).tobytes() == value.expected(mode).tobytes()
            assert f.verify() == []
