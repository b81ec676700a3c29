#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the seed corpus of fuzz_sharing under fuzz/corpus/fuzz_sharing/ (run from anywhere).

The byte layout is the one fuzz_sharing.cpp reads (its header comment); the wire layouts are
formats/README.md's. Each seed is a well-formed request that the device accepts (or refuses
for one named reason), over a guest RAM whose repeated contents make the walks go somewhere.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, 'corpus', 'fuzz_sharing')
RAM_1G = 0x40000000


def pg_format(model, variant, sizes, ias, oas, tag, flags, pgsizes):
    blob = struct.pack('<IIBBBBQ', variant, sizes, ias, oas, tag, flags, pgsizes)
    return struct.pack('<I', model) + blob + bytes(64 - len(blob))


def probe_reply(entries, slots, nr_contexts=64):
    body = b''.join(entries[:slots]) + bytes(68 * max(0, slots - len(entries)))
    return struct.pack('<II', len(entries), nr_contexts) + body


OFFERED = [
    pg_format(1, 1, 0x15000, 52, 52, 16, 3, 0x40062215000),  # LPAE 64-bit, 4k/16k/64k
    pg_format(1, 3, 0x1000, 32, 34, 16, 0, 0x1111000),       # short descriptor
    pg_format(2, 1, 0x30, 56, 52, 16, 3, 0x40201000),        # VT-d first stage, 4/5 levels
]


def lpae_config(tcr, mair=0xf404ff44, asid=0):
    b = struct.pack('<IIQQI', 1, 0, tcr, mair, asid)
    return b + bytes(64 - len(b))


def v7s_config(tcr=0, prrr=0x800b8204, nmrr=0x40004000, asid=0):
    b = struct.pack('<IIIII', 3, tcr, prrr, nmrr, asid)
    return b + bytes(64 - len(b))


def vtd_config(width=48, domain=0):
    b = struct.pack('<III', 1, width, domain)
    return b + bytes(64 - len(b))


def tcr(ias, tg0, ips, hd=False):
    v = (64 - ias) | 0x3500 | (tg0 << 14) | (1 << 23) | (ips << 32)
    return v | ((1 << 39) | (1 << 40) if hd else 0)


def attach(model, config, table, flags=0, nr_contexts=0):
    return struct.pack('<B3xIIQII', 0x41, 0, flags, table, nr_contexts, model) + config


def invalidate(kind, context, va, size):
    return struct.pack('<B3xIIIQQ', 0x42, 0, context, kind, va, size) + bytes(64)


def seed(reply, req, table_mode, ram_sel, base_mode, tag_bits, off_mask, max_contexts, addresses,
         extra_context, inv, ram_words):
    assert len(req) == 92
    out = struct.pack('<H', len(reply)) + reply + req
    out += bytes([table_mode, ram_sel, base_mode]) + bytes([tag_bits]) + struct.pack('<H', off_mask)
    out += bytes([max_contexts, len(addresses)]) + b''.join(struct.pack('<Q', a) for a in addresses)
    out += struct.pack('<I', extra_context)
    assert len(inv) == 96
    out += inv + ram_words
    return out


SEEDS = {
    # LPAE 4k, IAS 48: every RAM word is a table/page descriptor pointing at RAM's base, so
    # every walk goes down to a 4K page.
    'lpae4k_walks': seed(probe_reply(OFFERED, 3), attach(1, lpae_config(tcr(48, 0, 5)), 0), 1, 4, 0, 16, 0,
                         64, [0x1000, 0x7fffffffffff, 0x1000000000000], 0, invalidate(0, 0, 0x1000, 0x2000),
                         struct.pack('<Q', RAM_1G | 0x403)),
    # LPAE 64k, IAS/OAS 52, ASID 0xabc; the reply truncated to one slot.
    'lpae64k_52': seed(probe_reply(OFFERED, 1), attach(1, lpae_config(tcr(52, 1, 6), asid=0xabc), 0), 2, 5, 0,
                       16, 0, 64, [0x10000, 0xfffffffffffff], 0, invalidate(1, 0, 0, 0),
                       struct.pack('<Q', RAM_1G | 0x403)),
    # LPAE 16k, IAS 47, hardware dirty state (HA/HD).
    'lpae16k_hd': seed(probe_reply(OFFERED, 3), attach(1, lpae_config(tcr(47, 2, 5, hd=True)), 0), 2, 4, 0, 16,
                       0, 64, [0x4000, 0x7fffffffffff], 0, invalidate(0, 0, 0x4000, 0x4000),
                       struct.pack('<Q', RAM_1G | 0x403)),
    # v7s: first-level entries are sections.
    'v7s_sections': seed(probe_reply(OFFERED[1:2], 2), attach(1, v7s_config(asid=7), 0), 1, 2, 0, 8, 0, 64,
                         [0x100000, 0xfff00000], 0, invalidate(0, 0, 0xfff00000, 0x100000),
                         struct.pack('<I', 0x00100c02)),
    # VT-d first stage, 5 levels, F_INDIRECT with 4 contexts: every slot and entry points at
    # RAM's base (valid / present).
    'vtd5_indirect': seed(probe_reply(OFFERED[2:], 1), attach(2, vtd_config(57, 0x1234), 0, flags=1, nr_contexts=4),
                          2, 3, 0, 16, 0, 64, [0x1000, 0xffffffffffffff], 3, invalidate(2, 0, 0, 0),
                          struct.pack('<Q', RAM_1G | 0x1)),
    # Refusals: TG0 reserved, and a 4-byte PROBE_TABLE reply.
    'refused_tg0': seed(b'\x03\x00\x00\x00', attach(1, lpae_config(tcr(48, 3, 5)), 0), 1, 0, 0, 16, 0, 64, [], 0,
                        invalidate(0, 0, 0, 0), b''),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), 'wb') as f:
            f.write(data)
    print('wrote %d seeds (%d bytes) to %s' % (len(SEEDS), sum(len(d) for d in SEEDS.values()), OUT))


if __name__ == '__main__':
    main()
