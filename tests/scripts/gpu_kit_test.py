#!/usr/bin/python3
"""Tests scripts/gpu_kit.py, the packer of the offline GPU machine's kit (scripts/gpu-kit.sh).

A kit that unpacks wrongly costs a whole device session, so this checks on constructed inputs:
fixtures come back byte for byte (lengths that are and are not multiples of 4, nested folders),
a damaged fixture is refused by its checksum, a .deb's files and symlinks land in the prefix
with absolute symlinks pointed into it, and a .deb whose data Python cannot read is refused.

  /usr/bin/python3 tests/scripts/gpu_kit_test.py
"""
import io
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                      "gpu_kit.py")


def run_kit(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def make_deb(path: str, files: dict, links: dict, data_name="data.tar.xz") -> None:
    """A .deb (ar archive) whose data tarball holds `files` (path -> bytes) and `links`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in links.items():
            info = tarfile.TarInfo("./" + name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    with open(path, "wb") as f:
        f.write(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") +
                ar_member("control.tar.xz", b"x") + ar_member(data_name, buffer.getvalue()))


class GpuKitTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        self.kit = os.path.join(self.root, "kit")
        os.makedirs(os.path.join(self.kit, "debs"))
        make_deb(os.path.join(self.kit, "debs", "a.deb"),
                 {"usr/lib/x/libq.so.1.2": b"\x7fELF library", "usr/include/q.h": b"int q();\n"},
                 {"usr/lib/x/libq.so": "libq.so.1.2", "usr/lib/x/libz.so": "/lib/x/libz.so.1"})
        make_deb(os.path.join(self.kit, "debs", "b.deb"), {"lib/x/libz.so.1": b"zlib"}, {})

    def tearDown(self):
        self.tmp.cleanup()

    def write_fixtures(self) -> dict:
        rng = random.Random(7)
        contents = {"README.md": b"fixtures\n", "parity-64/model.pt": rng.randbytes(4096 * 3 + 3),
                    "parity-64/tensors.pt": rng.randbytes(4096), "dpm-64/empty.pt": b""}
        for name, data in contents.items():
            path = os.path.join(self.root, "fixtures", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        return contents

    def pack_and_unpack(self):
        packed = run_kit("pack-fixtures", os.path.join(self.root, "fixtures"), self.kit)
        self.assertEqual(packed.returncode, 0, packed.stderr)
        return run_kit("unpack", self.kit, os.path.join(self.root, "prefix"),
                       os.path.join(self.root, "out"))

    def test_fixtures_come_back_byte_for_byte(self):
        contents = self.write_fixtures()
        unpacked = self.pack_and_unpack()
        self.assertEqual(unpacked.returncode, 0, unpacked.stderr)
        for name, data in contents.items():
            with open(os.path.join(self.root, "out", name), "rb") as f:
                self.assertEqual(f.read(), data, name)

    def test_a_damaged_fixture_is_refused(self):
        self.write_fixtures()
        run_kit("pack-fixtures", os.path.join(self.root, "fixtures"), self.kit)
        with open(os.path.join(self.kit, "fixtures", "parity-64", "tensors.pt.planed.xz.sha256"),
                  "w") as f:
            f.write("0" * 64 + "\n")
        unpacked = run_kit("unpack", self.kit, os.path.join(self.root, "prefix"),
                           os.path.join(self.root, "out"))
        self.assertNotEqual(unpacked.returncode, 0)
        self.assertIn("parity-64/tensors.pt does not match its checksum", unpacked.stderr)

    def test_debs_land_in_the_prefix_with_symlinks_inside_it(self):
        self.write_fixtures()
        self.assertEqual(self.pack_and_unpack().returncode, 0)
        prefix = os.path.join(self.root, "prefix")
        with open(os.path.join(prefix, "usr/include/q.h"), "rb") as f:
            self.assertEqual(f.read(), b"int q();\n")
        self.assertEqual(os.readlink(os.path.join(prefix, "usr/lib/x/libq.so")), "libq.so.1.2")
        anchored = os.path.join(prefix, "usr/lib/x/libz.so")
        self.assertEqual(os.readlink(anchored), prefix + "/lib/x/libz.so.1")
        with open(anchored, "rb") as f:
            self.assertEqual(f.read(), b"zlib")

    def test_a_deb_python_cannot_read_is_refused(self):
        self.write_fixtures()
        make_deb(os.path.join(self.kit, "debs", "c.deb"), {"usr/c": b"c"}, {}, "data.tar.zst")
        unpacked = self.pack_and_unpack()
        self.assertNotEqual(unpacked.returncode, 0)
        self.assertIn("c.deb: no data.tar that Python's tarfile reads", unpacked.stderr)


if __name__ == "__main__":
    unittest.main()
