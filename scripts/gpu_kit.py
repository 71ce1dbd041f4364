#!/usr/bin/env python3
"""Packs and unpacks the kit that scripts/gpu-check.sh needs on an offline GPU machine.

The kit holds what such a machine lacks: the Debian packages of the build's C++ dependencies
(.deb files, unpacked into a prefix there) and the parity fixtures. Checkpoints are float32
weights whose low mantissa bytes do not compress, so each file is stored byte-planed (every
4th byte together: the exponent bytes then compress well) and xz-compressed: 52 MB of
fixtures become about 45 MB, which is what lets kit and checkout travel together in 64 MiB.

  gpu_kit.py pack-fixtures FIXTURES_DIR KIT_DIR     # FIXTURES_DIR holds parity-64/, dpm-64/
  gpu_kit.py unpack KIT_DIR PREFIX FIXTURES_OUT     # on the GPU machine

Standard library only: the GPU machine's Python may have nothing else.
"""
import hashlib
import io
import lzma
import os
import sys
import tarfile

PLANE = 4  # float32
SUFFIX = ".planed.xz"


def plane(data: bytes) -> bytes:
    whole = len(data) // PLANE * PLANE
    return b"".join(data[i:whole:PLANE] for i in range(PLANE)) + data[whole:]


def unplane(data: bytes) -> bytes:
    whole = len(data) // PLANE * PLANE
    rows = whole // PLANE
    out = bytearray(len(data))
    for i in range(PLANE):
        out[i:whole:PLANE] = data[i * rows:(i + 1) * rows]
    out[whole:] = data[whole:]
    return bytes(out)


def pack_fixtures(fixtures_dir: str, kit_dir: str) -> None:
    for root, _, files in os.walk(fixtures_dir):
        for name in sorted(files):
            source = os.path.join(root, name)
            relative = os.path.relpath(source, fixtures_dir)
            target = os.path.join(kit_dir, "fixtures", relative + SUFFIX)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(source, "rb") as f:
                data = f.read()
            packed = lzma.compress(plane(data), preset=6)
            with open(target, "wb") as f:
                f.write(packed)
            with open(target + ".sha256", "w") as f:
                f.write(hashlib.sha256(data).hexdigest() + "\n")
            print(f"{relative}: {len(data)} -> {len(packed)} bytes", flush=True)


def unpack_fixtures(kit_dir: str, fixtures_out: str) -> None:
    packed_root = os.path.join(kit_dir, "fixtures")
    for root, _, files in os.walk(packed_root):
        for name in sorted(f for f in files if f.endswith(SUFFIX)):
            source = os.path.join(root, name)
            relative = os.path.relpath(source, packed_root)[:-len(SUFFIX)]
            with open(source, "rb") as f:
                data = unplane(lzma.decompress(f.read()))
            with open(source + ".sha256") as f:
                expected = f.read().strip()
            if hashlib.sha256(data).hexdigest() != expected:
                sys.exit(f"gpu_kit: {relative} does not match its checksum")
            target = os.path.join(fixtures_out, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)


def deb_members(path: str):
    """Yields (name, bytes) of an ar archive's members (a .deb is one)."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            sys.exit(f"gpu_kit: {path} is not a .deb (no ar header)")
        while header := f.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode())
            yield name, f.read(size)
            f.read(size % 2)  # members are 2-byte aligned


def unpack_debs(kit_dir: str, prefix: str) -> None:
    debs = sorted(f for f in os.listdir(os.path.join(kit_dir, "debs")) if f.endswith(".deb"))
    if not debs:
        sys.exit(f"gpu_kit: no .deb files in {kit_dir}/debs")
    for deb in debs:
        members = dict(deb_members(os.path.join(kit_dir, "debs", deb)))
        name = next((k for k in members if k.startswith("data.tar")), None)
        if name is None or name.endswith(".zst"):
            sys.exit(f"gpu_kit: {deb}: no data.tar that Python's tarfile reads ({name})")
        with tarfile.open(fileobj=io.BytesIO(members[name])) as tar:
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(prefix, filter="tar")
            else:
                tar.extractall(prefix)
    anchor_symlinks(prefix)


def anchor_symlinks(prefix: str) -> None:
    """Points the packages' absolute symlinks (libz.so -> /lib/...) into the prefix."""
    for root, dirs, files in os.walk(prefix):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path) and os.path.isabs(os.readlink(path)):
                target = prefix + os.readlink(path)
                os.remove(path)
                os.symlink(target, path)


def main(argv) -> None:
    if len(argv) == 4 and argv[1] == "pack-fixtures":
        pack_fixtures(argv[2], argv[3])
    elif len(argv) == 5 and argv[1] == "unpack":
        unpack_debs(argv[2], argv[3])
        unpack_fixtures(argv[2], argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
