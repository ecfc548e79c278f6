"""Hypothesis strategies: hostile REST bodies and paths, TF Serving / OIP protobufs, raw and mutated bytes."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

MODEL = "breast-cancer"
FEATURES = 30

# -- values ------------------------------------------------------------------------------------------------

HUGE_INTS = st.sampled_from([0, -1, 1, 2, 29, 30, 31, 255, 256, 257, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
                             2**63 - 1, 2**63, -(2**63), 10**30, -(10**30)])
INTS = st.one_of(HUGE_INTS, st.integers(-(2**70), 2**70))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([1e300, -1e308, 1.7976931348623157e308, 5e-324, -0.0, 3.4e38, 3.5e38]))
TEXT = st.text(max_size=40)  # every unicode code point except surrogates
ODD_NAMES = st.sampled_from(["input", "INPUT", "", "..", "input\x00", "ñ", "𝓲nput", "breast-cancer\u200b",
                             MODEL.upper(), "x" * 10_000])
NAMES = st.one_of(st.just(MODEL), TEXT, ODD_NAMES)
MODEL_NAMES = st.one_of(st.just(MODEL), st.just(MODEL), st.just(MODEL), TEXT, ODD_NAMES)
"""Mostly the served model, so the cases reach the tensor code, not only the 404 of an unknown model."""
INPUT_NAMES = st.one_of(st.just("input"), st.just("input"), st.just("input"), TEXT, ODD_NAMES)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                      st.dictionaries(TEXT, inner, max_size=6)), max_leaves=30)
ROW = st.one_of(st.lists(st.floats(-1e3, 1e3), min_size=FEATURES, max_size=FEATURES),
                st.lists(FLOATS, min_size=FEATURES, max_size=FEATURES),
                st.lists(SCALARS, max_size=40))
ROWS = st.lists(ROW, max_size=8)


def dumps(value: Any) -> bytes:
    """JSON as a hostile client writes it: NaN/Infinity literals allowed, non-ASCII raw."""
    return json.dumps(value, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def deep_json(draw) -> bytes:
    """Deeply nested arrays/objects (recursion limits of parsers and validators)."""
    depth = draw(st.sampled_from([64, 999, 1001, 5000, 20000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"inputs":[', b"]}")]))
    inner = draw(st.sampled_from([b"1", b"[]", b"NaN", b'"x"']))
    return opener * depth + inner + closer * depth


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """A valid body with bytes flipped, cut, duplicated or inserted."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut" and data:
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "dup":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def bodies(valid: bytes, structured: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Raw bytes, mutations of a valid body, deep nesting, arbitrary JSON and (half the cases)
    structured-but-wrong bodies."""
    return st.one_of(
        st.binary(max_size=300),
        mutated(valid),
        deep_json(),
        JSON.map(dumps),
        structured.map(dumps),
        structured.map(dumps),
        structured.map(dumps),
        structured.map(dumps),
    )


# -- KServe V2 REST ----------------------------------------------------------------------------------------

DATATYPES = st.one_of(st.sampled_from(["FP32", "FP64", "FP16", "INT32", "INT64", "INT8", "UINT8", "UINT64",
                                       "BOOL", "BYTES", "fp32", "FP32 ", ""]), TEXT)
SHAPES = st.lists(st.one_of(st.integers(-3, 300), HUGE_INTS), max_size=4)


def sometimes(draw, valid: Any, hostile: st.SearchStrategy[Any]) -> Any:
    """Each field is valid two times in three: most cases break one or two things, and get past the rest."""
    return draw(hostile) if draw(st.integers(0, 2)) == 2 else valid  # 0 (what Hypothesis shrinks to) is valid


@st.composite
def v2_input(draw) -> dict[str, Any]:
    rows = draw(st.one_of(st.integers(0, 4), st.sampled_from([256, 257])))
    flat = draw(st.one_of(st.just([0.5] * (rows * FEATURES)), st.lists(FLOATS, min_size=rows * FEATURES,
                                                                         max_size=rows * FEATURES)))
    tensor: dict[str, Any] = {
        "name": sometimes(draw, "input", NAMES),
        "shape": sometimes(draw, [rows, FEATURES], SHAPES),
        "datatype": sometimes(draw, "FP32", DATATYPES),
        "data": sometimes(draw, flat, st.one_of(st.lists(FLOATS, max_size=130), JSON, ROWS,
                                               st.just([[x] for x in flat]))),
    }
    if draw(st.booleans()):
        tensor["parameters"] = draw(JSON)
    return tensor


@st.composite
def v2_body(draw) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": sometimes(draw, [draw(v2_input())], st.lists(v2_input(), max_size=3))}
    for key, valid, hostile in (("id", "fuzz-1", JSON), ("outputs", [{"name": "label"}],
                                                        st.lists(st.fixed_dictionaries({"name": NAMES}), max_size=3)),
                                ("parameters", {}, JSON)):
        if draw(st.booleans()):
            body[key] = sometimes(draw, valid, hostile)
    return body


VALID_V2 = dumps({"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.5] * FEATURES}]})

# -- TF Serving REST ---------------------------------------------------------------------------------------


@st.composite
def tfs_body(draw) -> dict[str, Any]:
    key = sometimes(draw, "instances", st.sampled_from(["inputs", "examples", "signature_name", "Instances"]))
    rows = draw(st.one_of(st.just([[0.5] * FEATURES] * draw(st.integers(1, 3))), ROWS,
                          st.lists(st.dictionaries(TEXT, FLOATS, max_size=3), max_size=3)))
    body: dict[str, Any] = {key: sometimes(draw, rows, st.one_of(JSON, st.dictionaries(NAMES, ROWS, max_size=2)))}
    if draw(st.booleans()):
        body["signature_name"] = draw(st.one_of(TEXT, st.just("serving_default"), JSON))
    return body


VALID_TFS = dumps({"instances": [[0.5] * FEATURES]})

# -- paths -------------------------------------------------------------------------------------------------

VERSIONS = st.one_of(
    st.sampled_from(["1", "2", "0", "-1", "01", "99999999999999999999", "1.0", "1e3", " 1", "", "v1", "latest"]),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=3),
    TEXT,
)
"""Versions as a path segment: ASCII digits, signs, floats, and unicode digits (², ①, fullwidth ２, Thai ๑)."""


def segment(value: str) -> str:
    return quote(value, safe="")


@st.composite
def v2_path(draw) -> str:
    name = segment(draw(MODEL_NAMES))
    version = draw(st.one_of(st.none(), VERSIONS))
    base = f"/v2/models/{name}" + ("" if version is None else f"/versions/{segment(version)}")
    return base + draw(st.sampled_from(["", "/ready", "/infer", "/infer/", "/metadata"]))


@st.composite
def tfs_path(draw) -> str:
    name = segment(draw(MODEL_NAMES))
    version = draw(st.one_of(st.none(), VERSIONS))
    label = draw(st.one_of(st.none(), TEXT))
    base = f"/v1/models/{name}"
    if version is not None:
        base += f"/versions/{segment(version)}"
    elif label is not None:
        base += f"/labels/{segment(label)}"
    verb = draw(st.sampled_from(["", ":predict", ":classify", ":regress", "/metadata", ":", "::predict",
                                 ":predict:predict"]))
    return base + verb


RAW_PATHS = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"),
            max_size=60).map(lambda s: "/" + s),
    st.text(max_size=30).map(lambda s: "/v2/models/" + segment(s)),
)


def finite(x: float) -> bool:
    return math.isfinite(x)
