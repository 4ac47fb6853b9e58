"""The values that cross between the grader and the learner's process.

What a check sees after the trip must be what it would have seen in one process (dtype,
strides, shared storage, a generator's state, in-place changes), and no sequence of bytes
the learner's process sends can make the grader do more than raise ``WireError``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from course_lib.grading import wire
from course_lib.grading.learner_process import _mirror_value, rebuild_error
from course_lib.grading.registry import GradeError


def roundtrip(value, **kwargs):
    return wire.decode(wire.encode(value, **kwargs))


def test_plain_values_survive():
    value = {"n": None, "t": True, "f": False, "i": -3, "big": 2**70, "x": -0.0, "nan": float("nan"),
             "c": 1 - 2j, "s": "héllo \udc80", "b": b"\x00\xff", "ba": bytearray(b"ab"), "e": Ellipsis,
             "sl": slice(1, None, 2), "r": range(0, 10, 3), "l": [1, [2, (3, {4})]], "fs": frozenset({"a"}),
             (1, "k"): "tuple key", 5: "int key"}
    out = roundtrip(value)
    assert out.keys() == value.keys()
    for key in value:
        if key == "nan":
            assert out[key] != out[key]
        else:
            assert out[key] == value[key] and type(out[key]) is type(value[key]), key


def test_big_homogeneous_containers_take_the_bulk_path_and_stay_exact():
    vocab = {f"tok{i}\u00e9": i for i in range(5000)}
    ids, floats, words = list(range(-50, 50)), [0.1 * i for i in range(40)], tuple(f"w{i}" for i in range(30))
    out = roundtrip([vocab, ids, floats, words, [2**64] * 20])
    assert out == [vocab, ids, floats, words, [2**64] * 20]
    assert type(out[3]) is tuple
    assert wire.encode(vocab)[8:9] == b"K" and wire.encode(ids)[8:9] == b"Q"  # one bulk record, no per-item tags


def test_tensors_keep_dtype_strides_offset_and_shared_storage():
    base = torch.randn(5, 6)
    value = {"base": base, "t": base.t(), "row": base[2], "slice": base[1:, ::2], "alias": base, "clone": base.clone(),
             "empty": torch.empty(0, 3), "expanded": torch.ones(3).expand(4, 3), "bf16": torch.randn(4).bfloat16(),
             "bool": torch.tensor([True, False]), "int8": torch.tensor([-128, 127], dtype=torch.int8),
             "grad": torch.ones(2, requires_grad=True), "size": torch.Size([2, 3]), "dtype": torch.float16}
    out = roundtrip(value)
    for key in ("base", "t", "row", "slice", "clone", "expanded", "bf16", "bool", "int8"):
        assert out[key].dtype == value[key].dtype and out[key].stride() == value[key].stride(), key
        assert torch.equal(out[key], value[key]), key
    storage = out["base"].untyped_storage().data_ptr()
    assert all(out[k].untyped_storage().data_ptr() == storage for k in ("t", "row", "slice"))
    assert out["alias"] is out["base"]
    assert out["clone"].untyped_storage().data_ptr() != storage
    assert out["slice"].data_ptr() - out["base"].data_ptr() == value["slice"].data_ptr() - base.data_ptr()
    assert out["grad"].requires_grad and out["size"] == torch.Size([2, 3]) and out["dtype"] is torch.float16


def test_numpy_arrays_keep_strides_and_flags():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    ro = np.broadcast_to(np.arange(3), (2, 3))
    out = roundtrip({"a": a[:, ::-2], "ro": ro, "scalar": np.float16(1.5), "dtype": np.dtype("<i2"), "empty": a[:0]})
    assert np.array_equal(out["a"], a[:, ::-2]) and out["a"].strides == a[:, ::-2].strides
    assert not out["ro"].flags.writeable and out["ro"].strides == ro.strides
    assert out["scalar"] == np.float16(1.5) and out["scalar"].dtype == np.float16
    assert out["dtype"] == np.dtype("<i2") and out["empty"].shape == (0, 6)


def test_encoding_again_after_decoding_gives_the_same_bytes():
    # the learner's process tells "changed in place" from "left alone" this way
    base = torch.arange(40.0).view(8, 5)
    value = [base[3:], base[3:, 1], np.arange(6)[::2], {"g": torch.Generator().manual_seed(1)}, "s", [1, 2]]
    blob = wire.encode(value)
    assert wire.encode(wire.decode(blob)) == blob


def test_generators_travel_as_their_state():
    g = torch.Generator().manual_seed(7)
    torch.rand(3, generator=g)
    out = roundtrip(g)
    assert torch.equal(torch.rand(5, generator=out), torch.rand(5, generator=g))


def test_callables_become_callbacks_and_other_objects_opaque_stand_ins():
    class Config:
        def __repr__(self):
            return "Config(hidden=8)"

    callbacks = []
    out = roundtrip([len, Config()], callbacks=callbacks)
    assert callbacks == [len] and isinstance(out[0], wire.CallbackRef) and out[0].ident == 0
    assert type(out[1]).__name__ == "Config" and repr(out[1]) == "Config(hidden=8)"
    assert isinstance(roundtrip(len), wire.Opaque)  # without a callback table a function is just a name


def test_limits_are_enforced():
    with pytest.raises(wire.WireError, match="nested"):
        nested = []
        for _ in range(wire.MAX_DEPTH + 5):
            nested = [nested]
        wire.encode(nested)
    huge = torch.zeros(1).expand(wire.MAX_ELEMENTS + 1)
    with pytest.raises(wire.WireError, match="more than"):
        roundtrip(huge)


def test_malformed_messages_only_ever_raise_wire_error():
    rng = random.Random(0)
    base = torch.randn(4, 4)
    blob = wire.encode({"t": base, "v": base.t()[1:], "l": list(range(20)), "s": "x" * 30, "a": np.arange(5),
                        "vocab": {f"k{i}": i for i in range(20)}, "g": torch.Generator()})
    for trial in range(3000):
        data = bytearray(blob)
        kind = trial % 3
        if kind == 0:
            data = data[:rng.randrange(len(data))]
        elif kind == 1:
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        try:
            wire.decode(bytes(data))
        except wire.WireError:
            pass


def test_a_tensor_view_past_its_storage_is_refused():
    blob = bytearray(wire.encode(torch.arange(4.0)))
    # shape is the first int64 after the dtype string: claim 1000 elements over 16 bytes
    at = blob.index(b"float32") + len(b"float32") + 8
    blob[at:at + 8] = (1000).to_bytes(8, "little", signed=True)
    with pytest.raises(wire.WireError, match="past its storage"):
        wire.decode(bytes(blob))


def test_learner_exceptions_keep_their_builtin_type():
    err = rebuild_error("ValueError", True, "bad shape", "ValueError: bad shape\n  ex.py, line 3")
    assert isinstance(err, ValueError) and "line 3" in err.learner_traceback
    odd = rebuild_error("MyError", False, "x", "")
    assert not isinstance(odd, ValueError) and odd.type_name == "MyError"
    assert isinstance(rebuild_error("NotImplementedError", True, "", ""), NotImplementedError)
    assert not isinstance(rebuild_error("SystemExit", True, "", ""), SystemExit)  # never a real exit here


def test_in_place_changes_are_copied_back_into_the_graders_arguments():
    x, g = torch.zeros(3), torch.Generator().manual_seed(0)
    words, table = ["a", "b"], {"k": [1]}
    new = wire.decode(wire.encode([torch.ones(3), _advanced(g), ["a", "b", "c"], {"k": [1, 2]}]))
    for old, changed in zip([x, g, words, table], new):
        _mirror_value(old, changed)
    assert torch.equal(x, torch.ones(3)) and words == ["a", "b", "c"] and table == {"k": [1, 2]}
    assert torch.equal(g.get_state(), _advanced(torch.Generator().manual_seed(0)).get_state())
    frozen = torch.zeros(1).expand(3)
    with pytest.raises(GradeError, match="in place"):
        _mirror_value(frozen, torch.ones(3))


def _advanced(g):
    torch.rand(2, generator=g)
    return g
