#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Check the linked guest against what the VMM's loader accepts, and mark it ET_DYN.

usage: elf_finish.py LINKED OUTPUT

The VMM loads the guest at its link address plus the phys offset and applies
only R_X86_64_RELATIVE relocations from PT_DYNAMIC's DT_RELA; it refuses an
interpreter, TLS, DT_NEEDED, text relocations and any other relocation. A
change that brings one of those in (a libgcc helper, a TLS variable, code
built without -fPIE) should fail the build here, not the boot.

GNU ld writes a static PIE linked at a non-zero base (ABI_IMAGE_BASE) as
ET_EXEC although it is position independent (DF_1_PIE, relocations and all);
lld writes ET_DYN. The VMM tells a relocatable image by ET_DYN, so the header
says so; nothing else in the file changes.
"""
import struct
import sys

ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_TLS = 1, 2, 3, 7
PF_X, PF_W = 1, 2
DT_NULL, DT_NEEDED, DT_PLTRELSZ, DT_RELA, DT_RELASZ, DT_RELAENT = 0, 1, 2, 7, 8, 9
DT_REL, DT_TEXTREL, DT_JMPREL, DT_FLAGS, DT_RELR = 17, 22, 23, 30, 36
DF_TEXTREL = 0x4
R_X86_64_RELATIVE = 8
RELA_SIZE = 24


def fail(path, msg):
    sys.exit(f"{path}: not a loadable kvmem guest: {msg}")


def check(path, img):
    if img[:4] != b"\x7fELF" or img[4] != 2 or img[5] != 1:
        fail(path, "not a 64-bit little-endian ELF")
    (e_type, e_machine, _, e_entry, e_phoff, _, _, _, e_phentsize,
     e_phnum) = struct.unpack_from("<HHIQQQIHHH", img, 16)
    if e_machine != EM_X86_64 or e_type not in (ET_EXEC, ET_DYN):
        fail(path, f"e_type {e_type} e_machine {e_machine}")
    loads, dyn = [], None
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, _ = struct.unpack_from(
            "<IIQQQQQQ", img, e_phoff + i * e_phentsize)
        if p_type in (PT_INTERP, PT_TLS):
            fail(path, f"program header type {p_type} (interpreter or TLS)")
        if p_type == PT_LOAD:
            if p_flags & PF_W and p_flags & PF_X:
                fail(path, f"segment at 0x{p_vaddr:x} is writable and executable")
            loads.append((p_vaddr, p_memsz, p_offset, p_filesz, p_flags))
        elif p_type == PT_DYNAMIC:
            if dyn is not None:
                fail(path, "two PT_DYNAMIC")
            dyn = (p_offset, p_filesz)
    if dyn is None:
        fail(path, "no PT_DYNAMIC: the VMM could not find the relocations")
    if not any(v <= e_entry < v + m and f & PF_X for v, m, _, _, f in loads):
        fail(path, f"entry 0x{e_entry:x} not in an executable segment")

    def file_off(vaddr, size):
        for v, _, off, filesz, _ in loads:
            if v <= vaddr and vaddr + size <= v + filesz:
                return off + vaddr - v
        fail(path, f"[0x{vaddr:x}, +0x{size:x}) not in a loaded segment's file image")

    def writable(vaddr):
        return any(v <= vaddr and vaddr + 8 <= v + m and f & PF_W for v, m, _, _, f in loads)

    tags = {}
    for off in range(dyn[0], dyn[0] + dyn[1], 16):
        tag, val = struct.unpack_from("<qQ", img, off)
        if tag == DT_NULL:
            break
        if tag in (DT_NEEDED, DT_TEXTREL, DT_REL, DT_RELR, DT_JMPREL) or \
                (tag == DT_PLTRELSZ and val):
            fail(path, f"dynamic tag {tag} (needed library, text or non-RELA relocations)")
        if tag == DT_FLAGS and val & DF_TEXTREL:
            fail(path, "DF_TEXTREL")
        tags[tag] = val
    relasz = tags.get(DT_RELASZ, 0)
    if not relasz:
        return 0
    if DT_RELA not in tags or tags.get(DT_RELAENT) != RELA_SIZE or relasz % RELA_SIZE:
        fail(path, "DT_RELA, DT_RELASZ and DT_RELAENT do not describe a RELA table")
    base = file_off(tags[DT_RELA], relasz)
    for off in range(base, base + relasz, RELA_SIZE):
        r_offset, r_info, _ = struct.unpack_from("<QQq", img, off)
        if r_info != R_X86_64_RELATIVE:
            fail(path, f"relocation at 0x{r_offset:x}: type {r_info & 0xffffffff} "
                       f"symbol {r_info >> 32}, only R_X86_64_RELATIVE is applied")
        if not writable(r_offset):
            fail(path, f"relocation at 0x{r_offset:x} outside the writable segment")
    return relasz // RELA_SIZE


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[2])
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        img = bytearray(f.read())
    check(src, img)
    struct.pack_into("<H", img, 16, ET_DYN)
    with open(dst, "wb") as f:
        f.write(img)


if __name__ == "__main__":
    main()
