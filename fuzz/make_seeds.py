#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the hand-made seed corpora under fuzz/corpus/ (small files; run from anywhere).

The byte layouts are the ones fuzz_ops.cpp and fuzz_hostile_table.cpp read (see
fuzz/README.md). Seeds name formats and nested pairs by name (`F("vtd-fl/4k")`,
`P("vtd-fl/4k", "amd-v1/4k")`); the index byte is the name's position in fuzz/format_names.txt,
which each target's `<target>_names` test checks against the target's own list.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def _names(kind):
    with open(os.path.join(HERE, "format_names.txt")) as f:
        return [line.split(" ", 1)[1].strip() for line in f if line.startswith(kind + " ")]


FORMATS, PAIRS = _names("format"), _names("pair")


def F(name):
    """The index byte that picks format `name` (fuzz_ops, fuzz_hostile_table)."""
    return FORMATS.index(name)


def P(stage1, stage2):
    """The index byte that picks the nested pair `stage1 over stage2` (fuzz_nested_table)."""
    return PAIRS.index(stage1 + " over " + stage2)

# ---------------------------------------------------------------- fuzz_ops

R, W = 0x1, 0x2


def ops_header(fmt, cfg, tables, base_mode=0, window_mode=0):
    return bytes([fmt, cfg, tables, base_mode, window_mode])


def addr(anchor=0, size_sel=0, mult=0, jitter=0, negative=False):
    """Window anchor (0..3 largest pages) + mult * size[size_sel] +/- jitter smallest pages."""
    return bytes([(anchor & 3) | (size_sel << 2), (mult & 7) | ((jitter & 15) << 3) | (0x80 if negative else 0)])


def size(sel=0, mult=1, extra_pages=0, special=0):
    """mult (1..4) * size[sel] (+ extra_pages smallest pages); special 0xf zero, 0xe misaligned,
    0xd the window, 0xc huge."""
    e = special & 0xF
    if extra_pages:
        e |= 0x80 | ((extra_pages & 7) << 4)
    return bytes([sel | ((mult - 1) << 4), e])


def op_map(a, sz, pa_mode=0, pa_k=0, prot=R | W):
    return bytes([0]) + a + bytes([pa_mode | (pa_k << 2)]) + sz + bytes([prot])


def op_map_pages(a, sel, count, pa_mode=0, pa_k=0, prot=R | W):
    return bytes([1]) + a + bytes([pa_mode | (pa_k << 2), sel, count - 1, prot])


def op_unmap(a, sz, split=False):
    return bytes([3 if split else 2]) + a + sz


def op_translate_leaf(index):
    return bytes([4, 0, 1]) + struct.pack("<H", index)


def op_reclaim():
    return bytes([5])


def op_lookup_leaf(index, offset_pages):
    return bytes([6, 1]) + struct.pack("<HH", index, offset_pages)


def op_lookup(a):
    return bytes([6, 0]) + a


OPS_SEEDS = {
    # Map a page, unmap it (its table stays, empty), then a block over the empty table.
    "block_over_empty_table": ops_header(F("arm-lpae-s1/4k"), 6, 8)
    + op_map(addr(), size(0))
    + op_unmap(addr(), size(0))
    + op_map(addr(), size(1))
    + op_lookup(addr()),
    # Blocks, pages next to them, a split unmap inside a block, reclaim.
    "split_and_reclaim": ops_header(F("arm-lpae-s1/4k"), 5, 12)
    + op_map(addr(1), size(1, 2))
    + op_map(addr(1, 1, 2), size(0, 3))
    + op_unmap(addr(1, 0, 1), size(0), split=True)
    + op_translate_leaf(0)
    + op_unmap(addr(1), size(1, 3))
    + op_reclaim()
    + op_lookup_leaf(0, 3),
    # Exact unmap that cuts a block (partial), then an overlapping map (exists).
    "partial_and_exists": ops_header(F("arm-lpae-s2/4k"), 1, 6)
    + op_map(addr(2), size(1))
    + op_unmap(addr(2, 0, 1), size(0))
    + op_map(addr(2, 0, 3), size(0))
    + op_map_pages(addr(2, 0, 0, 2, True), 0, 4)
    + op_unmap(addr(2), size(1)),
    # Too little RAM: nomem on a map and on a split.
    "nomem": ops_header(F("arm-lpae-s1/16k"), 3, 1)
    + op_map(addr(0), size(1))
    + op_map(addr(1, 0, 1), size(0))
    + op_map(addr(2, 0, 1), size(0))
    + op_unmap(addr(0, 0, 1), size(0), split=True)
    + op_reclaim(),
    # 64K granule: map_pages, ragged sizes, misaligned pa, range errors at the window's top.
    "64k_ragged": ops_header(F("arm-lpae-s1/64k"), 2, 6, 2, 1)
    + op_map_pages(addr(3, 0, 2), 0, 8)
    + op_map(addr(3, 0, 7), size(0, 2, 3), pa_mode=1, pa_k=3)
    + op_map(addr(3, 1, 1), size(1, 4), pa_mode=3, pa_k=5)
    + op_unmap(addr(3), size(special=0xd))
    + op_translate_leaf(1),
    # Stage 2 with a concatenated top table; bad prot, zero size, misaligned size.
    "s2_concat_errors": ops_header(F("arm-lpae-s2/4k"), 3, 4)
    + op_map(addr(), size(0), prot=0x80)
    + op_map(addr(), size(special=0xf))
    + op_map(addr(), size(special=0xe))
    + op_map(addr(0, 1), size(1), prot=R | 0x4 | 0x8)
    + op_unmap(addr(), size(special=0xc)),
    # Every op once on the 16K granule.
    "16k_all_ops": ops_header(F("arm-lpae-s2/16k"), 0, 10)
    + op_map(addr(1), size(1))
    + op_map_pages(addr(2, 0, 1), 0, 3, prot=W)
    + op_unmap(addr(1, 0, 5), size(0, 2), split=True)
    + op_unmap(addr(2, 0, 1), size(0))
    + op_translate_leaf(0)
    + op_lookup_leaf(2, 1)
    + op_reclaim(),
    # Index 6: the first format after the LPAE ones (blocks and pages).
    "format6": ops_header(F("arm-v7s/4k"), 0, 8)
    + op_map(addr(0), size(1, 2))
    + op_map(addr(1, 0, 3), size(0, 4))
    + op_unmap(addr(0, 0, 9), size(0), split=True)
    + op_reclaim(),
    # Index 9, AMD-Vi v1 with 3 levels (configuration 1): Next-Level-7 pages of 8K and 16K,
    # a split of one, map_pages of 8K pages, reclaim.
    "amd_v1_nl7": ops_header(F("amd-v1/4k"), 1, 8)
    + op_map(addr(0), size(2, 2))
    + op_map(addr(1, 1, 1), size(1, 3))
    + op_unmap(addr(0, 0, 1), size(0), split=True)
    + op_map_pages(addr(2, 1, 2), 1, 4)
    + op_lookup_leaf(1, 1)
    + op_unmap(addr(1), size(1, 4), split=True)
    + op_reclaim(),
    # AMD-Vi v1 with 6 levels (configuration 3): the window at the top of the 64-bit space.
    "amd_v1_64bit_top": ops_header(F("amd-v1/4k"), 3, 12, 0, 1)
    + op_map(addr(3), size(3))
    + op_map(addr(3, 0, 7), size(0, 4), pa_mode=1, pa_k=1)
    + op_unmap(addr(3, 0, 1), size(0), split=True)
    + op_translate_leaf(0)
    + op_unmap(addr(3), size(special=0xd)),
}

# ---------------------------------------------------------------- fuzz_hostile_table

VALID, TABLE = 0x1, 0x2
AF = 1 << 10
PAGE = VALID | TABLE | AF  # LPAE level-0 page
BLOCK = VALID | AF         # LPAE block


def hostile(fmt, cfg, ram_sel, base, root, tile, probes, ranges, ram):
    """base: (mode, bytes), root: (mode, bytes); probes: u64s; ranges: (first, pages)."""
    out = bytes([fmt, cfg, ram_sel, base[0]]) + base[1] + bytes([root[0]]) + root[1] + bytes([tile])
    out += bytes([len(probes)]) + b"".join(struct.pack("<Q", p) for p in probes)
    out += bytes([len(ranges)]) + b"".join(struct.pack("<QH", f, n) for f, n in ranges)
    return out + ram


def table_image(entries, size):
    """RAM image: entries = {byte offset: 64-bit word}."""
    img = bytearray(size)
    for off, w in entries.items():
        img[off : off + 8] = struct.pack("<Q", w)
    return bytes(img.rstrip(b"\0"))


ROOT0 = (0, struct.pack("<H", 0))  # root at RAM base + 0
AMD_PR, AMD_IR, AMD_IW = 1, 1 << 61, 1 << 62
AMD_RW = AMD_IR | AMD_IW
BASE0 = (0, b"")

HOSTILE_SEEDS = {
    # AMD-Vi v1, 3 levels (configuration 1): PDEs with the right Next Level, a 4M Next-Level-7
    # page (two copies), a 4K page, an 8K page (two copies), a level-0 entry that skips levels
    # (reserved) and a level-0 entry coding 2M (out of its range: reserved).
    "amd_v1_levels_and_codes": hostile(
        F("amd-v1/4k"), 1, 0, BASE0, ROOT0, 0,
        [0x0, 0x2000, 0x3000, 0x4000, 0x5000, 0x400000, 0x7FFFFF],
        [(0, 1100)],
        table_image({0x0: 0x1000 | AMD_PR | AMD_RW | (2 << 9),
                     0x1000: 0x2000 | AMD_PR | AMD_RW | (1 << 9),
                     0x1010: 0x400000 | 0x1FF000 | AMD_PR | AMD_IR | (7 << 9),
                     0x1018: 0x400000 | 0x1FF000 | AMD_PR | AMD_IR | (7 << 9),
                     0x2000: 0x5000 | AMD_PR | AMD_RW,
                     0x2010: 0x6000 | AMD_PR | AMD_IR | (7 << 9),
                     0x2018: 0x6000 | AMD_PR | AMD_IR | (7 << 9),
                     0x2020: 0x9000 | AMD_PR | AMD_RW | (1 << 9),
                     0x2028: 0xA000 | 0xFF000 | AMD_PR | AMD_RW | (7 << 9)}, 0x3000)),
    # LPAE s1 4K, IAS 48 (4 levels): root -> L2 -> L1 (a 2M block) -> L0 (pages).
    "lpae4k_wellformed": hostile(
        F("arm-lpae-s1/4k"), 6, 0, BASE0, ROOT0, 0,
        [0x0, 0x1000, 0x200000, 0x201000, 0x1234567000],
        [(0, 1024)],
        table_image({0x0: 0x1000 | VALID | TABLE, 0x1000: 0x2000 | VALID | TABLE,
                     0x2000: 0x3000 | VALID | TABLE, 0x2008: 0x40000000 | BLOCK,
                     0x3000: 0x80000000 | PAGE, 0x3008: 0x80001000 | PAGE}, 0x4000),
    ),
    # Every table entry points at the root itself: the walk must stop after `levels` reads.
    "self_loop": hostile(
        F("arm-lpae-s1/4k"), 6, 0, BASE0, ROOT0, 1, [0x0, 0xFFFFFFFFF000, 0x8000_0000_0000_0000], [(0, 4095)],
        struct.pack("<Q", 0x0 | VALID | TABLE) * 8,
    ),
    # Tables pointing outside RAM and a misaligned root.
    "outside_and_misaligned": hostile(
        F("arm-lpae-s2/4k"), 2, 1, (1, struct.pack("<H", 1)), (1, struct.pack("<I", 4)), 0, [0x0, 0x40000000], [(0, 64)],
        table_image({0x0: 0xFFFF_F000 | VALID | TABLE, 0x8: 0x10000 | VALID | TABLE}, 0x100),
    ),
    # Root at the very end of RAM, tiled pattern of pages and blocks.
    "root_at_end": hostile(
        F("arm-lpae-s1/64k"), 0, 2, BASE0, (3, bytes([1])), 1, [0x0, 0x10000], [(0, 2048)],
        struct.pack("<QQ", 0x0 | PAGE, 0x20000000 | BLOCK),
    ),
    # Index 6: the first format after the LPAE ones, over random-looking words.
    "format6_noise": hostile(
        F("arm-v7s/4k"), 1, 0, BASE0, ROOT0, 1, [0x0, 0x200000, 0x40000000], [(0, 512)],
        struct.pack("<QQQQ", 0x1003, 0x2003, 0x3083, 0x0000000080000003),
    ),
    # Stage 2, 64K granule, dirty tracking over a range of pages.
    # Tiled so that every 64K table is the same: entry 0 leads to the next 64K (a table, and a
    # page at level 0), entry 1 is a page with DBM and S2AP set (dirty).
    "s2_64k_dirty": hostile(
        F("arm-lpae-s2/64k"), 6, 1, BASE0, ROOT0, 1, [0x0, 0x10000], [(0, 16)],
        struct.pack("<QQ", 0x10000 | VALID | TABLE, 0xA0000 | PAGE | (1 << 51) | 0xC0),
    ),
}


# ---------------------------------------------------------------- fuzz_nested_table
# Pair (P(stage1, stage2), fuzz/format_names.txt), stage-2 and stage-1 configuration indices,
# span byte; then steps.
WINDOW_OUT = 2  # prot byte bit 1: the output lies in the table window (stage 2 maps it)


FOLD = 0x10  # span byte bit 4: keep a folded shadow and compare it with the nested walk


def nested_header(pair, c2=1, c1=0, span=FOLD):
    return bytes([pair, c2, c1, span])


def nt_len(sel, arg=0):
    """pick_len: 0 smallest page; 1 (1 + arg) pages; 3 2^(12 + arg % 14) bytes."""
    if sel == 1 or sel == 3:
        return bytes([sel, arg])
    return bytes([sel])


def nt_map(page, length, out_page, writable=True, in_window=True):
    pb = (1 if writable else 0) | (WINDOW_OUT if in_window else 0)
    return bytes([0]) + struct.pack("<I", page) + length + struct.pack("<I", out_page) + bytes([pb])


def nt_unmap(page, length, split=False):
    return bytes([3]) + struct.pack("<I", page) + length + bytes([1 if split else 0])


def nt_stage2(window_page, how, arg=b""):
    """how: 0 hole, 1 read-only, 2 aliased (arg: u16 page), 3 moved to spare (arg: u8), 4 back,
    5 back as Device memory."""
    return bytes([5]) + struct.pack("<H", window_page) + bytes([how]) + arg


def nt_lookup(page):
    return bytes([6]) + struct.pack("<I", page)


NESTED_SEEDS = {
    # A page mapped to the window, its stage-2 page made read-only, moved, given back; unmapped.
    "s1_4k_over_4k_stage2_changes": nested_header(P("arm-lpae-s1/4k", "arm-lpae-s2/4k"))
    + nt_map(1, nt_len(0), 5)
    + nt_map(0x200, nt_len(3, 9), 0x200)
    + nt_stage2(5, 1)
    + nt_lookup(1)
    + nt_stage2(5, 3, bytes([2]))
    + nt_lookup(1)
    + nt_stage2(5, 4)
    + nt_unmap(1, nt_len(0))
    + nt_unmap(0x200, nt_len(0), split=True)
    + nt_lookup(0x201),
    # 16K over 16K: a 32M block and pages, a hole under the table page, reclaim.
    "s1_16k_over_16k_hole": nested_header(P("arm-lpae-s1/16k", "arm-lpae-s2/16k"))
    + nt_map(0x800, nt_len(3, 13), 0)
    + nt_map(3, nt_len(1, 3), 8)
    + nt_stage2(0, 0)
    + nt_map(20, nt_len(0), 9)
    + nt_stage2(0, 5)
    + nt_lookup(3)
    + nt_stage2(0, 4)
    + bytes([7])
    + nt_lookup(4),
    # 64K stage-1 tables over 4K stage-2 pages: one stage-1 table spans sixteen stage-2 pages.
    "s1_64k_over_4k_window_pages": nested_header(P("arm-lpae-s1/64k", "arm-lpae-s2/4k"))
    + nt_map(2, nt_len(0), 1)
    + nt_stage2(3, 1)
    + nt_map(0x21, nt_len(0), 2)
    + nt_stage2(3, 4)
    + nt_map(0x21, nt_len(0), 2)
    + nt_unmap(2, nt_len(0)),
    # VT-d first stage over second stage, an alias between two window pages (fold checks stop).
    "vtd_fl_over_sl_alias": nested_header(P("vtd-fl/4k", "vtd-sl/4k"), 0, 0)
    + nt_map(1, nt_len(1, 7), 4)
    + nt_stage2(2, 2, struct.pack("<H", 6))
    + nt_map(0x400, nt_len(0), 12)
    + nt_lookup(0x400),
    # VT-d first stage over an AMD-Vi host table of 4 levels (stage-2 configuration 2):
    # maps, a stage-2 change, a split.
    "vtd_fl_over_amd_v1": nested_header(P("vtd-fl/4k", "amd-v1/4k"), 2, 0)
    + nt_map(1, nt_len(1, 7), 4)
    + nt_map(0x200, nt_len(3, 9), 0x200)
    + nt_stage2(3, 1)
    + nt_lookup(0x201)
    + nt_stage2(3, 4)
    + nt_unmap(0x203, nt_len(0), True)
    + nt_lookup(0x204),
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    write("fuzz_ops", OPS_SEEDS)
    write("fuzz_hostile_table", HOSTILE_SEEDS)
    write("fuzz_nested_table", NESTED_SEEDS)
