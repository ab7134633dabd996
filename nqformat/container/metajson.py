"""The §6 META JSON limits checked before parsing: depth and value count in one linear pass.

A regular expression or a recursive parser can be driven quadratic or deep by a hostile META;
this scan is vectorised, bounded in memory and never backtracks (spec §6, §10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nqformat import fused

__all__ = ["JsonShape", "json_depth", "json_shape", "json_shape_numpy"]


@dataclass(frozen=True)
class JsonShape:
    """What :func:`json_shape` learns of a JSON text without parsing it."""

    depth: int  # deepest nesting of objects and arrays (§6: at most 64)
    values: int  # values and member names (§6: at most 2^20)


#: bytes of the JSON text scanned per step: bounds the scan's temporary arrays (~40 bytes each)
_JSON_SCAN_CHUNK = 1 << 20
_BACKSLASH, _QUOTE = ord("\\"), ord('"')
#: bytes that open a value outside strings: '{', '[', a number's first character, or the one
#: letter of true/false/null that no other literal contains (opening quotes are counted apart)
_VALUE_START = np.zeros(256, dtype=bool)
_VALUE_START[list(b"{[-0123456789tfn")] = True
#: bytes that continue a number (so that only its first character counts)
_NUMBER_PART = np.zeros(256, dtype=bool)
_NUMBER_PART[list(b"-+.0123456789eE")] = True
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("{"), ord("[")]] = 1
_DEPTH_STEP[[ord("}"), ord("]")]] = -1


def json_shape(raw: bytes) -> JsonShape:
    """Depth and value count of the JSON text ``raw`` (§6): the C scan of the extension where
    it is built (``nqformat.fused.json_scan``, one pass, the same rules), else
    :func:`json_shape_numpy`."""
    if fused.JSON_SCAN_IN_C:
        depth, values = fused.json_scan(raw)
        return JsonShape(depth, values)
    return json_shape_numpy(raw)


def json_shape_numpy(raw: bytes) -> JsonShape:
    """Depth and value count of the JSON text ``raw`` (§6), in one linear vectorised pass with
    bounded temporaries and no regular expression: safe on any input, valid JSON or not.

    A quote is a string delimiter when an even number of backslashes precede it; bytes between
    delimiters are inside a string. Outside strings, brackets give the depth as a running sum,
    and every opening quote, '{', '[', first number character and t/f/n starts one value or
    member name. On valid JSON both numbers are exact; on invalid JSON they are whatever the
    scan finds, which is harmless since the parser then rejects the text anyway."""
    data = np.frombuffer(raw, dtype=np.uint8)
    depth = max_depth = values = 0
    in_string = False  # whether the chunk starts inside a string
    backslashes = 0  # backslashes that end the previous chunk
    prev_number = False  # whether the previous chunk ends inside a number
    for start in range(0, data.size, _JSON_SCAN_CHUNK):
        chunk = data[start : start + _JSON_SCAN_CHUNK]
        quote = chunk == _QUOTE
        is_bs = chunk == _BACKSLASH
        last_other = np.empty(0, dtype=np.int32)
        if is_bs.any():
            # run of backslashes ending just before each byte: i - 1 - (last non-backslash < i)
            idx = np.arange(chunk.size, dtype=np.int32)
            last_other = np.maximum.accumulate(np.where(is_bs, np.int32(-1), idx))
            before = np.empty(chunk.size, dtype=np.int32)
            before[0] = backslashes
            before[1:] = idx[:-1] - last_other[:-1]
            before[1:] += np.where(last_other[:-1] < 0, np.int32(backslashes), np.int32(0))
            delim = quote & (before % 2 == 0)
        else:
            delim = quote
            if backslashes % 2 and chunk.size and quote[0]:
                delim = quote.copy()
                delim[0] = False  # escaped by the backslashes that end the previous chunk
        # strings: a byte is inside one when an odd number of delimiters precede it (exclusive)
        parity = np.cumsum(delim, dtype=np.int32) - delim + np.int32(in_string)
        outside = parity % 2 == 0
        opening = delim & outside
        steps = np.where(outside, _DEPTH_STEP[chunk], np.int8(0))
        running = np.cumsum(steps, dtype=np.int32) + np.int32(depth)
        if running.size:
            max_depth = max(max_depth, int(running.max()))
            depth = int(running[-1])
        number_part = _NUMBER_PART[chunk] & outside
        prev = np.empty(chunk.size, dtype=bool)
        prev[0] = prev_number
        prev[1:] = number_part[:-1]
        digit_start = _VALUE_START[chunk] & outside & ~prev
        values += int(np.count_nonzero(opening)) + int(np.count_nonzero(digit_start))
        in_string = bool((int(np.count_nonzero(delim)) + in_string) % 2)
        if last_other.size:
            trailing = chunk.size - 1 - int(last_other[-1])
            backslashes = trailing + (backslashes if last_other[-1] < 0 else 0)
        else:
            backslashes = 0
        prev_number = bool(number_part[-1])
    return JsonShape(max_depth, values)


def json_depth(raw: bytes) -> int:
    """Nesting depth of the JSON text ``raw`` (objects and arrays; §6 allows 64); see
    :func:`json_shape`."""
    return json_shape(raw).depth
