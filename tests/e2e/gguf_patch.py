#!/usr/bin/env python3
"""Writes a modified copy of a GGUF file for error-path tests.

  gguf_patch.py IN OUT rename-tensor OLD NEW      (NEW must have the same length)
  gguf_patch.py IN OUT set-dim TENSOR AXIS VALUE  (rewrite one ne[] entry)
  gguf_patch.py IN OUT set-str KEY VALUE          (same length as the old value)
  gguf_patch.py IN OUT rename-key OLD NEW         (NEW must have the same length)
  gguf_patch.py IN OUT set-u32 KEY VALUE
  gguf_patch.py IN OUT add-u32 KEY VALUE          (append a new u32 metadata pair)
  gguf_patch.py IN OUT set-offset TENSOR VALUE    (rewrite a tensor's data offset)
  gguf_patch.py IN OUT set-f32 TENSOR INDEX VALUE (element INDEX of an F32 tensor; nan, inf ok)
Only the header changes (set-f32: one element of the data); tensor data is otherwise copied
as is (re-padded to the alignment).
"""
import struct, sys

SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class R:
    def __init__(self, b):
        self.b, self.p = b, 0

    def u32(self):
        v = struct.unpack_from("<I", self.b, self.p)[0]; self.p += 4; return v

    def u64(self):
        v = struct.unpack_from("<Q", self.b, self.p)[0]; self.p += 8; return v

    def s(self):
        n = self.u64(); at = self.p; self.p += n; return self.b[at:at + n].decode("utf-8", "replace"), at, n

    def skip(self, t):
        if t == 8:
            self.s()
        elif t == 9:
            et = self.u32(); n = self.u64()
            for _ in range(n):
                self.skip(et)
        else:
            self.p += SCALAR[t]


def main():
    src, dst, op = sys.argv[1], sys.argv[2], sys.argv[3]
    b = bytearray(open(src, "rb").read())
    r = R(b)
    assert r.u32() == 0x46554747
    r.u32()
    nt, nkv = r.u64(), r.u64()
    kv = {}
    kv_count_at = 16
    key_at = {}
    for _ in range(nkv):
        k, kat, kn = r.s()
        key_at[k] = (kat, kn)
        t = r.u32()
        kv[k] = (t, r.p)
        r.skip(t)
    kv_end = r.p
    tensors = {}
    for _ in range(nt):
        name, at, n = r.s()
        nd = r.u32()
        dims_at = r.p
        r.p += 8 * nd
        ttype = r.u32()
        off_at = r.p
        toff = r.u64()
        tensors[name] = (at, n, nd, dims_at, ttype, off_at, toff)
    infos_end = r.p
    align = 32
    if "general.alignment" in kv:
        align = struct.unpack_from("<I", b, kv["general.alignment"][1])[0]
    data_at = (infos_end + align - 1) // align * align
    if op == "rename-tensor":
        old, new = sys.argv[4], sys.argv[5]
        at, n = tensors[old][:2]
        assert len(new.encode()) == n
        b[at:at + n] = new.encode()
    elif op == "set-dim":
        name, axis, val = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        nd, dims_at = tensors[name][2:4]
        assert axis < nd
        struct.pack_into("<Q", b, dims_at + 8 * axis, val)
    elif op == "set-str":
        key, val = sys.argv[4], sys.argv[5].encode()
        t, p = kv[key]
        assert t == 8
        n = struct.unpack_from("<Q", b, p)[0]
        assert len(val) == n, "same length only"
        b[p + 8:p + 8 + n] = val
    elif op == "set-u32":
        key, val = sys.argv[4], int(sys.argv[5])
        t, p = kv[key]
        assert t == 4
        struct.pack_into("<I", b, p, val)
    elif op == "add-u32":
        key, val = sys.argv[4].encode(), int(sys.argv[5])
        pair = struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, val)
        head = b[:kv_end] + pair + b[kv_end:infos_end]
        struct.pack_into("<Q", head, kv_count_at, nkv + 1)
        pad = (-len(head)) % align
        b = head + bytes(pad) + b[data_at:]
    elif op == "rename-key":
        old, new = sys.argv[4], sys.argv[5].encode()
        at, n = key_at[old]
        assert len(new) == n
        b[at:at + n] = new
    elif op == "set-offset":
        name, val = sys.argv[4], int(sys.argv[5])
        struct.pack_into("<Q", b, tensors[name][5], val)
    elif op == "set-f32":
        name, idx, val = sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
        ttype, toff = tensors[name][4], tensors[name][6]
        assert ttype == 0, "F32 tensors only"
        struct.pack_into("<f", b, data_at + toff + 4 * idx, val)
    else:
        sys.exit("unknown op " + op)
    open(dst, "wb").write(b)


if __name__ == "__main__":
    main()
