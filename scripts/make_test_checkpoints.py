#!/usr/bin/python3
"""Writes the small checkpoints that tests/core/checkpoint_test.cc reads.

Run with a Python that has torch (Debian's: /usr/bin/python3), from anywhere:

    /usr/bin/python3 scripts/make_test_checkpoints.py

Files, in tests/data/checkpoints/ (each a few KB, committed as test data):

  fp16.pt, bf16.pt        state_dicts of a tiny Conv2d + GroupNorm + Linear net in half and
                          bfloat16 (OrderedDict with _metadata, as model.state_dict() saves it)
  shared_storage.pt       tensors that share one storage: a base, its transpose, a strided slice,
                          a row, a scalar element, and a slice of a longer storage
  parameter.pt            nn.Parameter values (torch._utils._rebuild_parameter)
  parameter_with_state.pt a Parameter pickled through _rebuild_parameter_with_state, as
                          PyTorch >= 2.0 does for a Parameter with extra attributes
  protocol4.pt            every integer dtype, bool and float64, saved with pickle protocol 4
                          (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL)
  opcodes.pt              a hand-made pickle with the other safe opcodes (LONG1, BINFLOAT,
                          BINUNICODE8, lists, DUP/POP, a tensor reached twice through the memo);
                          checked by loading it with torch.load here
  legacy.pt               the pre-1.6 non-zip format (_use_new_zipfile_serialization=False)
  forbidden_global.pt     a zip whose data.pkl calls os.system via GLOBAL (bytes built by hand)
  forbidden_stack_global.pt  the same with builtins.eval via protocol 4's STACK_GLOBAL
  list.pt, nested.pt      a list of tensors, and {"model": state_dict}: not state_dicts
  reference.safetensors   every safetensors dtype, written here by hand (not with the
                          safetensors library, and not with our C++ writer), with metadata
  expected.json           for every readable file above: each key in file order with its dtype,
                          shape and exact values (floats as Python repr, which round-trips)

Nothing here executes an untrusted pickle: the forbidden files are written, never loaded.
The output is deterministic (fixed seeds; torch's zip writer stores no timestamps), except
legacy.pt, whose storage keys are Python object ids.
"""

import collections
import json
import os
import pickle
import struct
import sys
import types

import torch

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data",
                       "checkpoints")

DTYPE_NAMES = {
    torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
    torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32",
    torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
}
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def describe(state):
    """Key -> {dtype, shape, values} in order; values flattened, exact."""
    out = collections.OrderedDict()
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.is_floating_point():
            values = tensor.double().flatten().tolist()
        else:
            values = tensor.long().flatten().tolist()
        out[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                     "values": values}
    return out


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, kernel_size=3, padding=1),
        torch.nn.GroupNorm(2, 4),
        torch.nn.SiLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 2 * 2, 3),
    )


def save(name, obj, **kwargs):
    torch.save(obj, os.path.join(OUT_DIR, name), **kwargs)


def write_zip_pickle(name, data_pkl, storages=()):
    """A torch.save-style zip (archive/data.pkl, archive/data/<key>, archive/version) around
    hand-made pickle bytes and (key, bytes) storages."""
    writer = torch._C.PyTorchFileWriter(os.path.join(OUT_DIR, name))
    writer.write_record("data.pkl", data_pkl, len(data_pkl))
    for key, raw in storages:
        writer.write_record("data/" + key, raw, len(raw))
    writer.write_end_of_file()


def forbidden_global_pickle():
    # OrderedDict({"weight": os.system("echo pwned")}), protocol 2, opcodes spelled out.
    command = b"echo pwned"
    return (b"\x80\x02"                                   # PROTO 2
            b"ccollections\nOrderedDict\nq\x00)R"         # GLOBAL, BINPUT, EMPTY_TUPLE, REDUCE
            b"X\x06\x00\x00\x00weight"                    # BINUNICODE "weight"
            b"cos\nsystem\n"                              # GLOBAL os system  <- must be refused
            b"X" + struct.pack("<I", len(command)) + command +
            b"\x85R"                                      # TUPLE1, REDUCE
            b"s.")                                        # SETITEM, STOP


def forbidden_stack_global_pickle():
    # builtins.eval("1+1") with protocol 4: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL.
    body = (b"\x8c\x08builtins\x94"
            b"\x8c\x04eval\x94"
            b"\x93\x94"
            b"\x8c\x031+1\x94\x85\x94R\x94.")
    return b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body


def opcodes_pickle():
    """A state_dict pickle using the safe opcodes torch.save of this version does not: FRAME,
    STACK_GLOBAL, MEMOIZE, BINUNICODE8, LONG1, BINFLOAT, lists, DUP/POP, a tensor reached twice
    through the memo, and a BUILD state holding assorted values. Storage "0" holds 6 floats."""
    def uni(text):
        return b"\x8c" + bytes([len(text)]) + text.encode()

    body = (uni("collections") + uni("OrderedDict") + b"\x93\x94)R\x94"    # OrderedDict() -> memo 1
            b"\x8d" + struct.pack("<Q", 1) + b"w"                            # BINUNICODE8 "w"
            b"ctorch._utils\n_rebuild_tensor_v2\n("
            b"(" + uni("storage") + b"ctorch\nFloatStorage\n" + uni("0") + uni("cpu") +
            b"K\x06tQ"                                                       # BINPERSID
            b"\x8a\x01\x02"                                                  # offset: LONG1 2
            b"K\x02K\x02\x86"                                                 # size (2, 2)
            b"\x8a\x01\x02K\x01\x86"                                          # stride (2, 1)
            b"\x89h\x00)R"                                                    # False, OrderedDict()
            b"tR\x94s"                                                        # tensor -> memo 2
            + uni("alias") + b"h\x02s"                                          # the same tensor again
            b"}(" + uni("_metadata") + b"}" + uni("") + b"}" + uni("version") + b"K\x01ss"
            + uni("misc") + b"]Na(\x88J\xf9\xff\xff\xffG\x40\x0a\x00\x00\x00\x00\x00\x00"
            b"C\x02by" + uni("t") + b"\x85e"                 # [None, True, -7, 3.25, b"by", ("t",)]
            b"2" b"0"                                                          # DUP, POP
            b"ub.")                                                            # SETITEMS, BUILD, STOP
    return b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    """Stand-in with the name PyTorch >= 2.0 uses, so that pickle can refer to it here."""
    param = torch.nn.Parameter(data, requires_grad)
    param._backward_hooks = backward_hooks
    for key, value in state.items():
        setattr(param, key, value)
    return param


class ParameterWithStatePickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, torch.nn.Parameter):
            return (_rebuild_parameter_with_state,
                    (obj.data, obj.requires_grad, collections.OrderedDict(), {"tag": "extra"}))
        return NotImplemented


def write_safetensors(name, state, metadata):
    """The format by hand: 8-byte little-endian header size, JSON header, raw data. The data is
    written in reverse key order, so that data offsets decrease along the header."""
    entries = collections.OrderedDict([("__metadata__", metadata)])
    blobs = []
    offset = 0
    for key in reversed(list(state)):
        tensor = state[key].contiguous()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: same bits as int16
            tensor = tensor.view(torch.int16)
        raw = tensor.numpy().tobytes()
        blobs.append(raw)
        entries[key] = {"dtype": SAFETENSORS_DTYPES[state[key].dtype],
                        "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    header = collections.OrderedDict([("__metadata__", metadata)])
    header.update((key, entries[key]) for key in state)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(OUT_DIR, name), "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def main():
    assert sys.byteorder == "little", "the formats are little-endian; run this on such a host"
    os.makedirs(OUT_DIR, exist_ok=True)
    expected = collections.OrderedDict()

    net = tiny_net()
    for name, dtype in (("fp16.pt", torch.float16), ("bf16.pt", torch.bfloat16)):
        state = net.to(dtype).state_dict()
        assert hasattr(state, "_metadata")
        save(name, state)
        expected[name] = describe(state)

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) * 0.5 - 3
    longer = torch.linspace(-1, 1, 9, dtype=torch.float32)
    shared = collections.OrderedDict([
        ("base", base),
        ("transposed", base.t()),              # stride (1, 6)
        ("strided_slice", base[1:3, ::2]),     # offset 6, stride (6, 2)
        ("row", base[2]),                      # offset 12
        ("element", base[3, 5]),               # a 0-dim view at offset 23
        ("tail", longer[5:]),                  # the only view of its storage, at offset 5
    ])
    save("shared_storage.pt", shared)
    expected["shared_storage.pt"] = describe(shared)

    params = collections.OrderedDict([
        ("weight", torch.nn.Parameter(torch.tensor([[1.5, -2.25], [0.125, 4.0]]))),
        ("bias", torch.nn.Parameter(torch.tensor([0.5, -0.5]), requires_grad=False)),
    ])
    save("parameter.pt", params)
    expected["parameter.pt"] = describe(params)

    torch._utils._rebuild_parameter_with_state = _rebuild_parameter_with_state
    _rebuild_parameter_with_state.__module__ = "torch._utils"
    with_state = collections.OrderedDict([
        ("scale", torch.nn.Parameter(torch.tensor([0.25, 8.0, -1.0], dtype=torch.float64))),
    ])
    save("parameter_with_state.pt", with_state,
         pickle_module=types.SimpleNamespace(__name__="pickle", Pickler=ParameterWithStatePickler))
    expected["parameter_with_state.pt"] = describe(with_state)

    ints = collections.OrderedDict([
        ("int64", torch.tensor([-(2**62) - 5, 2**40 + 3, -1, 0, 2**63 - 1], dtype=torch.int64)),
        ("int32", torch.tensor([[-(2**31), 2**31 - 1], [7, -7]], dtype=torch.int32)),
        ("int16", torch.tensor([-32768, 32767, 12], dtype=torch.int16)),
        ("int8", torch.tensor([-128, 127, -3], dtype=torch.int8)),
        ("uint8", torch.tensor([0, 255, 128], dtype=torch.uint8)),
        ("bool", torch.tensor([True, False, True, True])),
        ("float64", torch.tensor([1e300, -2.5e-310, 3.141592653589793], dtype=torch.float64)),
        ("empty", torch.zeros(0, 3)),
        ("wide", torch.arange(300, dtype=torch.float32).reshape(1, 300)[:, ::100]),
    ])
    save("protocol4.pt", ints, pickle_protocol=4)
    expected["protocol4.pt"] = describe(ints)

    write_zip_pickle("opcodes.pt", opcodes_pickle(),
                     [("0", struct.pack("<6f", 0.5, 1.5, 2.5, 3.5, 4.5, 5.5))])
    opcodes = torch.load(os.path.join(OUT_DIR, "opcodes.pt"))  # our own bytes, safe globals only
    assert opcodes["w"].tolist() == [[2.5, 3.5], [4.5, 5.5]], opcodes
    assert opcodes._metadata == {"": {"version": 1}}, opcodes._metadata
    expected["opcodes.pt"] = describe(opcodes)

    save("legacy.pt", collections.OrderedDict([("w", torch.ones(2))]),
         _use_new_zipfile_serialization=False)
    write_zip_pickle("forbidden_global.pt", forbidden_global_pickle())
    write_zip_pickle("forbidden_stack_global.pt", forbidden_stack_global_pickle())
    save("list.pt", [torch.zeros(2)])
    save("nested.pt", {"model": collections.OrderedDict([("w", torch.ones(2))])})

    torch.manual_seed(1)
    reference = collections.OrderedDict([
        ("f64", torch.randn(2, 3, dtype=torch.float64)),
        ("f32", torch.randn(3, 1, 2)),
        ("f16", torch.randn(5).half()),
        ("bf16", torch.randn(2, 2).bfloat16()),
        ("i64", torch.tensor([-(2**60), 2**60 + 1], dtype=torch.int64)),
        ("i32", torch.tensor([[-5, 6]], dtype=torch.int32)),
        ("i16", torch.tensor([-300, 301], dtype=torch.int16)),
        ("i8", torch.tensor([-100, 100], dtype=torch.int8)),
        ("u8", torch.tensor([0, 200, 255], dtype=torch.uint8)),
        ("bool", torch.tensor([[False, True], [True, False]])),
        ("scalar", torch.tensor(2.5)),
        ("nothing", torch.zeros(0, 4)),
    ])
    write_safetensors("reference.safetensors", reference,
                      {"format": "pt", "producer": "make_test_checkpoints.py"})
    expected["reference.safetensors"] = describe(reference)

    with open(os.path.join(OUT_DIR, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
