#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer targets into fuzz/corpus/NAME/: a few small, valid
inputs per target from the tools that make them for real (numpy's np.save / np.savez, torch.save,
the safetensors layout, the reference README's flag strings), so that fuzzing starts from deep
inside each format. Run with Debian's python (numpy and torch: python3-numpy, python3-torch):

    /usr/bin/python3 fuzz/make_seeds.py

Deterministic: running it again rewrites the same files (with the same numpy and PyTorch).
"""
import collections
import io
import json
import os
import struct
import sys
import zipfile

import numpy as np
import torch

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(compressed, **arrays):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def npy_seeds():
    write("npy", "f4_2x3", npy_bytes(np.arange(6, dtype="<f4").reshape(2, 3) * 0.5 - 1))
    write("npy", "i8_scalar", npy_bytes(np.array(-7, dtype="<i8")))
    write("npy", "b1_2x2", npy_bytes(np.array([[True, False], [False, True]])))
    write("npy", "f2_3", npy_bytes(np.array([1.5, -2, 65504], dtype="<f2")))
    write("npy", "be_fortran_i4", npy_bytes(np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3))))
    write("npy", "u2_widened", npy_bytes(np.array([0, 65535], dtype="<u2")))
    write("npy", "c8_complex", npy_bytes(np.array([1 + 2j], dtype="<c8")))
    write("npy", "u1_empty_dim", npy_bytes(np.zeros((3, 0, 2), dtype="|u1")))
    # Version 2.0: a 4-byte header length.
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"
    header += " " * (-(12 + len(header) + 1) % 64) + "\n"
    write("npy", "v2_f8", b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) +
          header.encode() + np.array([0.25, -4.0], dtype="<f8").tobytes())


def npz_seeds():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    labels = np.array([3, 7], dtype=np.int64)
    write("npz", "savez_samples", npz_bytes(False, arr_0=images, arr_1=labels))
    write("npz", "savez_compressed_samples", npz_bytes(True, arr_0=images, arr_1=labels))
    write("npz", "savez_empty", npz_bytes(False))
    write("npz", "savez_types", npz_bytes(False, x=np.array([0.5], dtype="<f2"),
                                          mask=np.array([True]), z=np.array([1j], dtype="<c16")))
    # A member that is not deflate-friendly, compressed by zipfile rather than numpy.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        member = zipfile.ZipInfo("noise.npy", date_time=(1980, 1, 1, 0, 0, 0))
        member.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(member, npy_bytes(np.linspace(-1, 1, 24, dtype="<f4").reshape(2, 3, 4)))
    write("npz", "zipfile_deflated", buffer.getvalue())


def safetensors_bytes(tensors, metadata=None):
    header = {}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    f32 = np.arange(6, dtype="<f4").reshape(2, 3)
    write("safetensors", "f32", safetensors_bytes({"out.2.weight": ("F32", [2, 3], f32.tobytes())}))
    write("safetensors", "types_and_metadata", safetensors_bytes({
        "a": ("F16", [2], np.array([1, -2], dtype="<f2").tobytes()),
        "b": ("BF16", [1], b"\x80\x3f"),
        "c": ("I64", [], np.array(5, dtype="<i8").tobytes()),
        "d": ("BOOL", [3], b"\x01\x00\x01"),
        "e": ("U8", [0, 4], b""),
    }, metadata={"format": "pt", "model_flags": "--image_size 64"}))


def torch_seeds():
    def save(name, obj):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        write("torch_checkpoint", name, buffer.getvalue())

    torch.manual_seed(0)
    state = collections.OrderedDict()
    state["time_embed.0.weight"] = torch.randn(4, 2)
    state["time_embed.0.bias"] = torch.zeros(4)
    base = torch.arange(12, dtype=torch.float32)
    state["view.a"] = base[2:8].view(2, 3)  # two views of one storage, one strided
    state["view.b"] = base.view(3, 4).t()
    state._metadata = collections.OrderedDict([("", {"version": 1})])
    save("state_dict_views", state)
    save("dtypes", {"h": torch.tensor([1.5], dtype=torch.float16),
                    "bf": torch.tensor([2.0], dtype=torch.bfloat16),
                    "l": torch.tensor([[1, 2]], dtype=torch.int64),
                    "b": torch.tensor([True, False]),
                    "u": torch.tensor(7, dtype=torch.uint8),
                    "e": torch.empty(0, 3)})
    save("parameter", {"p": torch.nn.Parameter(torch.ones(2, 2))})


def model_flags_seeds():
    # The reference README's MODEL_FLAGS and CLASSIFIER_FLAGS for 256x256, and the bundled model's.
    write("model_flags", "imagenet256",
          b"--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 "
          b"--image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 "
          b"--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
          b"--use_scale_shift_norm True\n"
          b"--classifier_attention_resolutions 32,16,8 --classifier_depth 2 --classifier_width 128 "
          b"--classifier_pool attention --classifier_resblock_updown True "
          b"--classifier_use_scale_shift_norm True")
    write("model_flags", "fashion_mnist",
          b"--image_size=28 --in_channels 1 --num_classes 10 --num_channels 32 "
          b"--channel_mult 1,2,2 --attention_resolutions 7 --num_head_channels 32 "
          b"--learn_sigma yes --noise_schedule cosine --timestep_respacing ddim50 "
          b"--classifier_channel_mult 1,2,2 --classifier_attention_resolutions 7 --dropout 0.1")
    write("model_flags", "sampling", b"--classifier_scale 10.0 --batch_size 4 --use_ddim 1 "
          b"--model_path m.pt --classifier_path c.pt --clip_denoised false")
    # The --name=value form for every kind of flag, string values that are lists among them.
    write("model_flags", "equals_forms", b"--attention_resolutions=16 --dropout=0.25 "
          b"--in_channels=4 --use_fp16=False --classifier_pool=spatial --num_classes=21843")


def respacing_seeds():
    for steps, spec, name in [(1000, b"250", "count"), (1000, b"ddim25", "ddim"),
                              (300, b"10,20,30", "sections"), (4000, b"", "none"),
                              (1000, b"ddim1000", "ddim_all")]:
        write("timestep_respacing", name, struct.pack("<H", steps - 1) + spec)


def varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number, value):
    """One protobuf field: ints as varints, floats as doubles, bytes/str/lists as length-delimited
    (a list is a nested message already encoded, or packed varints when given as a tuple)."""
    if isinstance(value, bool) or isinstance(value, int):
        return varint(number << 3) + varint(value & (2**64 - 1))
    if isinstance(value, float):
        return varint(number << 3 | 1) + struct.pack("<d", value)
    if isinstance(value, tuple):
        value = b"".join(varint(v & (2**64 - 1)) for v in value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def sample_request_seeds():
    # SampleRequest field numbers (proto/guided_diffusion/v1/sampler.proto): model 1, labels 2,
    # num_samples 3, classifier_scale 4, sampler 5, eta 6, timestep_respacing 7, seed 8,
    # clip_denoised 9, noise 10, stream 11, output 12, steps 13, solver_order 14, skip_type 15,
    # dynamic_thresholding_ratio 16, first_image_index 17.
    write("sample_request", "ddpm_guided", field(2, (0, 3, 9)) + field(4, 3.0) + field(5, 1) +
          field(7, "100") + field(8, 42))
    write("sample_request", "ddim_eta", field(1, "fashion-mnist") + field(2, (1,)) + field(5, 2) +
          field(6, 0.5) + field(7, "ddim25") + field(11, field(1, 5) + field(2, True)) +
          field(12, field(2, True) + field(3, True)))
    write("sample_request", "dpm_solver", field(2, (4, 4)) + field(4, 10.0) + field(5, 3) +
          field(13, 15) + field(14, 3) + field(15, 3) + field(16, 0.995) + field(17, 100))
    noise = np.zeros((1, 1, 28, 28), dtype="<f4").tobytes()
    tensor = field(1, (1, 1, 28, 28)) + field(2, 1) + field(3, noise)
    write("sample_request", "noise_unclipped", field(3, 1) + field(5, 2) + field(7, "10,5") +
          field(9, field(1, False)) + field(10, tensor))


if __name__ == "__main__":
    npy_seeds()
    npz_seeds()
    safetensors_seeds()
    torch_seeds()
    model_flags_seeds()
    respacing_seeds()
    sample_request_seeds()
    print("seeds written to", CORPUS, file=sys.stderr)
