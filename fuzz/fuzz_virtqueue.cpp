// SPDX-License-Identifier: MIT
/// @file fuzz_virtqueue.cpp
/// libFuzzer target `fuzz_virtqueue`: the device side of a split virtqueue
/// (virtio/virtqueue.hpp) over a 64 KiB guest RAM filled with the input, so the descriptor
/// table, the available ring, indirect tables and buffers are all hostile. The device pops
/// until nothing is left (or the queue breaks), writes input bytes into each well-formed
/// chain, returns every chain it may return, and asks whether to notify.
///
/// Every step is checked against a reference written here (an independent walk of the same
/// memory): what `pop` returns (nothing, a broken queue, the chain's error, the gathered
/// readable bytes — so every one came from inside RAM —, the writable segments); and the
/// exact bytes of RAM after each step: `pop` writes nothing, `write` only the scattered
/// bytes inside the chain's writable segments, `push_used` only its used element and the
/// used idx, `needs_notify` only avail_event (with EVENT_IDX). Every loop is bounded.
///
/// Input, front to back (reads past the end give zero):
///
/// | bytes | meaning |
/// |---|---|
/// | 1 | bit 0 VIRTIO_F_INDIRECT_DESC, bit 1 VIRTIO_F_EVENT_IDX, bit 2 tame, bit 3 raw layout |
/// | 1 | queue size: 1 << (byte mod 8) |
/// | 1 | readable-byte limit (mod 4): 0, 64, 4096, 1 MiB |
/// | 1 | RAM base (mod 3): 0, 1 GiB, 2^64 - 64 KiB |
/// | 6 | ring place: packed at u16 offset (rounded to 16), or (raw layout) three u16 offsets |
/// | 32 | choices, used in turn: the tame avail idx, then per chain how to write |
/// | rest | RAM contents, repeated over all of it |
///
/// "Tame" rewrites the descriptor table so that addresses land in RAM (addr mod RAM size),
/// lengths are under 512 and `next` is at most the queue size, the avail ring entries to at
/// most the queue size and avail idx to a few entries ahead: deep chains without waiting for
/// the fuzzer to guess RAM's addresses.
#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <iopgtable/mem/guest_ram.hpp>
#include <iopgtable/virtio/virtqueue.hpp>

#include "fuzz_support.hpp"

namespace iopgtable::fuzz {
namespace {

using namespace iopgtable::virtio;
using bytes = std::vector<std::uint8_t>;

constexpr std::uint64_t ram_size = 64 * 1024;

/// IOPGTABLE_FUZZ_TRACE=1: say on stderr what each pop gave (to check seeds).
const bool trace = std::getenv("IOPGTABLE_FUZZ_TRACE") != nullptr;

/// Copy all of RAM into `into` (reused: one allocation per input, not per step).
bytes& snapshot(guest_ram& ram, bytes& into) {
    auto b = ram.bytes();
    into.resize(b.size());
    std::memcpy(into.data(), b.data(), b.size());
    return into;
}
bool ram_is(guest_ram& ram, const bytes& want) { return std::memcmp(ram.bytes().data(), want.data(), want.size()) == 0; }

// ---- the reference: the same contract, walked independently ----

struct reference {
    guest_ram& ram;
    queue_layout q;
    queue_features f;
    std::uint32_t max_readable;

    std::uint16_t rd16(std::uint64_t at) const {
        std::uint8_t b[2] = {};
        FUZZ_CHECK(ram.read(pa_t{at}, b, 2), "ring field at %#" PRIx64 " outside RAM", at);
        return static_cast<std::uint16_t>(b[0] | b[1] << 8);
    }
    bool inside(std::uint64_t addr, std::uint64_t len) const {
        return addr <= ~std::uint64_t{0} - len && ram.contains(pa_t{addr}, len);
    }
    struct raw_desc {
        std::uint64_t addr;
        std::uint32_t len;
        std::uint16_t flags, next;
    };
    raw_desc rd_desc(std::uint64_t at) const {
        std::uint8_t b[16] = {};
        FUZZ_CHECK(ram.read(pa_t{at}, b, 16), "descriptor at %#" PRIx64 " outside RAM", at);
        raw_desc d{};
        for (int k = 7; k >= 0; --k) d.addr = d.addr << 8 | b[k];
        for (int k = 11; k >= 8; --k) d.len = d.len << 8 | b[k];
        d.flags = static_cast<std::uint16_t>(b[12] | b[13] << 8);
        d.next = static_cast<std::uint16_t>(b[14] | b[15] << 8);
        return d;
    }

    enum class outcome { nothing, jump, head_out_of_range, chain };
    struct expected {
        outcome what = outcome::nothing;
        std::uint16_t head = 0;
        chain_error error = chain_error::none;
        bytes readable;
        std::vector<segment> writable;
    };

    /// What the device must do next, `last_avail` being the next avail index it reads.
    expected next(std::uint16_t last_avail) const {
        expected e;
        const auto pending = static_cast<std::uint16_t>(rd16(q.avail.value + 2) - last_avail);
        if (pending == 0) return e;
        if (pending > q.size) {
            e.what = outcome::jump;
            return e;
        }
        e.head = rd16(q.avail.value + 4 + 2 * std::uint64_t{static_cast<std::uint16_t>(last_avail % q.size)});
        e.what = e.head < q.size ? outcome::chain : outcome::head_out_of_range;
        if (e.what == outcome::chain) e.error = walk(e.head, e);
        if (e.error != chain_error::none) {
            e.readable.clear();
            e.writable.clear();
        }
        return e;
    }

    /// First the chain's shape (the data descriptors in order, and how the walk ended), then
    /// the buffers checked in order: the first failure of either kind, in chain order, wins.
    chain_error walk(std::uint16_t head, expected& e) const {
        std::vector<raw_desc> data;
        chain_error end = chain_error::none;
        std::uint64_t table = q.desc.value;
        std::uint64_t entries = q.size, taken_from_table = 0;
        bool nested = false;
        std::uint64_t index = head;
        for (;;) {
            if (data.size() >= q.size) { end = chain_error::loop_or_too_long; break; }
            if (nested && taken_from_table++ >= entries) { end = chain_error::loop_or_too_long; break; }
            const raw_desc d = rd_desc(table + 16 * index);
            if (d.flags & vring_desc_f_indirect) {
                if (!f.indirect) end = chain_error::indirect_not_negotiated;
                else if (nested) end = chain_error::indirect_nested;
                else if (d.flags & vring_desc_f_next) end = chain_error::indirect_with_next;
                else if (d.len == 0 || d.len % 16 != 0) end = chain_error::indirect_bad_table;
                else if (!inside(d.addr, d.len)) end = chain_error::outside_memory;
                if (end != chain_error::none) break;
                nested = true;
                table = d.addr;
                entries = d.len / 16;
                index = 0;
                continue;
            }
            data.push_back(d);
            if (!(d.flags & vring_desc_f_next)) break;
            index = d.next;
            if (index >= entries) { end = chain_error::next_out_of_range; break; }
        }
        bool writing = false;
        std::uint64_t written = 0;
        for (const raw_desc& d : data) {
            const bool w = (d.flags & vring_desc_f_write) != 0;
            if (!w && writing) return chain_error::readable_after_writable;
            writing = w;
            if (d.len == 0) continue;
            if (!inside(d.addr, d.len)) return chain_error::outside_memory;
            if (w) {
                written += d.len;
                if (written > 0xffffffffu) return chain_error::too_large;
                e.writable.push_back(segment{pa_t{d.addr}, d.len});
            } else {
                if (e.readable.size() + d.len > max_readable) return chain_error::too_large;
                const std::size_t at = e.readable.size();
                e.readable.resize(at + d.len);
                FUZZ_CHECK(ram.read(pa_t{d.addr}, e.readable.data() + at, d.len), "reference read failed");
            }
        }
        return end;
    }
};

/// Scatter `data` into the RAM image `image` at byte `offset` of `segs`, one byte at a time
/// (later segments win where they overlap).
void scatter(bytes& image, std::uint64_t base, const std::vector<segment>& segs, std::uint64_t offset,
             const bytes& data) {
    std::uint64_t pos = 0;
    for (const segment& s : segs) {
        for (std::uint64_t k = 0; k < s.len; ++k, ++pos)
            if (pos >= offset && pos - offset < data.size()) image[s.addr.value + k - base] = data[pos - offset];
    }
}

void put16(bytes& image, std::uint64_t off, std::uint16_t v) {
    image[off] = static_cast<std::uint8_t>(v);
    image[off + 1] = static_cast<std::uint8_t>(v >> 8);
}

void run(const std::uint8_t* data, std::size_t size) {
    byte_reader in(data, size);
    const std::uint8_t mode = in.u8();
    const queue_features f{(mode & 1) != 0, (mode & 2) != 0};
    const bool tame = (mode & 4) != 0, raw_layout = (mode & 8) != 0;
    const auto qsize = static_cast<std::uint16_t>(1u << (in.u8() % 8));
    static constexpr std::uint32_t limits[4] = {0, 64, 4096, 1u << 20};
    const std::uint32_t max_readable = limits[in.u8() % 4];
    static constexpr std::uint64_t bases[3] = {0, std::uint64_t{1} << 30, ~std::uint64_t{0} - ram_size + 1};
    const std::uint64_t base = bases[in.u8() % 3];
    const std::uint16_t where[3] = {in.u16(), in.u16(), in.u16()};
    std::uint8_t choices[32];
    for (auto& c : choices) c = in.u8();
    std::size_t next_choice = 0;
    auto choice = [&] { return choices[next_choice++ % sizeof choices]; };

    guest_ram ram{ram_size, pa_t{base}};
    const auto contents = in.rest();
    if (!contents.empty()) {
        auto b = ram.bytes();
        for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::byte>(contents[i % contents.size()]);
    }

    queue_layout q = layout_at(pa_t{base + (where[0] % ram_size)}, qsize, f.event_idx);
    if (raw_layout) {
        q.desc = pa_t{base + where[0] % ram_size};
        q.avail = pa_t{base + where[1] % ram_size};
        q.used = pa_t{base + where[2] % ram_size};
    }
    const bool usable = valid_layout(ram, q, f);
    if (trace)
        std::fprintf(stderr, "size %u, indirect %d, event_idx %d, limit %u, layout %s\n", unsigned{qsize}, f.indirect,
                     f.event_idx, max_readable, usable ? "valid" : "invalid");

    if (tame && usable) {
        for (std::uint32_t i = 0; i < qsize; ++i) {
            vring_desc d;
            const pa_t at{q.desc.value + 16 * std::uint64_t{i}};
            ram.read(at, &d, sizeof d);
            d.addr = base + d.addr.get() % ram_size;
            d.len = d.len.get() % 512;
            d.next = static_cast<std::uint16_t>(d.next.get() % (qsize + 1u));
            ram.write(at, &d, sizeof d);
        }
        for (std::uint32_t i = 0; i < qsize; ++i) {
            const pa_t at{q.avail.value + 4 + 2 * std::uint64_t{i}};
            le16 h;
            ram.read(at, h.bytes.data(), 2);
            h = static_cast<std::uint16_t>(h.get() % (qsize + 1u));
            ram.write(at, h.bytes.data(), 2);
        }
        const le16 idx{static_cast<std::uint16_t>(choice() % (qsize + 2u))};
        ram.write(pa_t{q.avail.value + 2}, idx.bytes.data(), 2);
    }

    device_queue<guest_ram> dev(ram, q, f, max_readable);
    FUZZ_CHECK(dev.broken() == !usable, "valid_layout %d but broken %d", usable, dev.broken());
    if (!usable) {
        FUZZ_CHECK(dev.fault() == queue_fault::bad_layout, "fault %d", static_cast<int>(dev.fault()));
        bytes before;
        snapshot(ram, before);
        FUZZ_CHECK(!dev.pop(), "a broken queue popped");
        dev.push_used(0, 0);
        FUZZ_CHECK(!dev.needs_notify() && ram_is(ram, before), "a broken queue touched memory");
        return;
    }

    const reference ref{ram, q, f, max_readable};
    std::uint16_t last_avail = 0, used_idx = 0;
    std::uint64_t pops = 0, malformed = 0, pushed = 0;
    const std::uint64_t used_event_at = q.avail.value + 4 + 2 * std::uint64_t{qsize};
    const std::uint64_t avail_event_at = q.used.value + 4 + 8 * std::uint64_t{qsize};
    bytes before, expect;  // RAM images

    // At most 2·size + 8 pops: writes into the rings may keep making entries available.
    for (std::uint32_t round = 0; round < 2u * qsize + 8; ++round) {
        const auto want = ref.next(last_avail);
        snapshot(ram, before);
        auto p = dev.pop();
        FUZZ_CHECK(ram_is(ram, before), "pop wrote guest memory");
        if (want.what == reference::outcome::nothing) {
            FUZZ_CHECK(!p && !dev.broken(), "popped with nothing available");
            break;
        }
        if (want.what == reference::outcome::jump) {
            FUZZ_CHECK(!p && dev.fault() == queue_fault::avail_idx_jump, "avail idx jump not caught");
            break;
        }
        FUZZ_CHECK(p.has_value(), "nothing popped, %u expected", unsigned{want.head});
        ++pops;
        ++last_avail;
        FUZZ_CHECK(p->c.head == want.head, "head %u, expected %u", unsigned{p->c.head}, unsigned{want.head});
        if (want.what == reference::outcome::head_out_of_range) {
            ++malformed;
            FUZZ_CHECK(p->error == chain_error::head_out_of_range && dev.fault() == queue_fault::head_out_of_range,
                       "head %u out of range gave %d", unsigned{want.head}, static_cast<int>(p->error));
            dev.push_used(p->c.head, 0);  // refused: the queue is broken
            FUZZ_CHECK(ram_is(ram, before) && !dev.pop(), "a broken queue went on");
            break;
        }
        FUZZ_CHECK(p->error == want.error, "head %u: error %.*s, expected %.*s", unsigned{want.head},
                   static_cast<int>(to_string(p->error).size()), to_string(p->error).data(),
                   static_cast<int>(to_string(want.error).size()), to_string(want.error).data());
        FUZZ_CHECK(p->c.readable == want.readable, "readable bytes differ (%zu, expected %zu)", p->c.readable.size(),
                   want.readable.size());
        FUZZ_CHECK(p->c.writable.size() == want.writable.size(), "%zu writable segments, expected %zu",
                   p->c.writable.size(), want.writable.size());
        std::uint64_t total = 0;
        for (std::size_t k = 0; k < want.writable.size(); ++k) {
            const segment& s = p->c.writable[k];
            FUZZ_CHECK(s.addr == want.writable[k].addr && s.len == want.writable[k].len && s.len != 0,
                       "segment %zu differs", k);
            FUZZ_CHECK(ram.contains(s.addr, s.len), "segment %zu outside RAM", k);
            total += s.len;
        }
        FUZZ_CHECK(p->c.writable_len == total && total <= 0xffffffffu, "writable_len %" PRIu64 ", segments %" PRIu64,
                   p->c.writable_len, total);
        FUZZ_CHECK(p->c.readable.size() <= max_readable, "%zu readable bytes over the limit", p->c.readable.size());
        if (p->error != chain_error::none) ++malformed;
        if (trace)
            std::fprintf(stderr, "pop: head %u %.*s, %zu readable bytes, %zu writable segments (%" PRIu64 " bytes)\n",
                         unsigned{p->c.head}, static_cast<int>(to_string(p->error).size()), to_string(p->error).data(),
                         p->c.readable.size(), p->c.writable.size(), total);

        // Write: all of it, somewhere in it, past its end, or nothing.
        std::uint32_t written = 0;
        const std::uint8_t how = choice();
        std::uint64_t offset = 0, len = 0;
        switch (how % 4) {
        case 0: len = std::min<std::uint64_t>(total, 4096); break;
        case 1:
            offset = (how * 257u + choice()) % (total + 2);
            len = choice();
            break;
        case 2:
            offset = total + 1 - (choice() & 1);
            len = 1;
            break;
        default: break;
        }
        if (how % 4 != 3) {
            bytes data_out(len);
            for (std::size_t k = 0; k < data_out.size(); ++k) data_out[k] = static_cast<std::uint8_t>(how + 13 * k);
            snapshot(ram, expect);
            const bool fits = offset <= total && len <= total - offset;
            const bool ok = dev.write(p->c, offset, data_out);
            FUZZ_CHECK(ok == fits, "write of %" PRIu64 " at %" PRIu64 " into %" PRIu64 ": %d", len, offset, total, ok);
            if (ok) {
                scatter(expect, base, want.writable, offset, data_out);
                FUZZ_CHECK(ram_is(ram, expect),
                           "write changed bytes outside its segments (or wrong ones)");
                if (offset == 0) written = static_cast<std::uint32_t>(len);
            } else {
                FUZZ_CHECK(ram_is(ram, expect), "a refused write changed memory");
            }
        }

        // Return it: only the used element and the used idx change.
        bytes& expect_used = snapshot(ram, expect);
        const std::uint64_t elem = q.used.value + 4 + 8 * std::uint64_t{static_cast<std::uint16_t>(used_idx % qsize)} - base;
        for (int k = 0; k < 4; ++k) {
            expect_used[elem + k] = static_cast<std::uint8_t>(p->c.head >> (8 * k));
            expect_used[elem + 4 + k] = static_cast<std::uint8_t>(written >> (8 * k));
        }
        ++used_idx;
        ++pushed;
        put16(expect_used, q.used.value + 2 - base, used_idx);
        dev.push_used(p->c.head, written);
        FUZZ_CHECK(ram_is(ram, expect_used), "push_used wrote more than its element and idx");
        FUZZ_CHECK(!dev.broken(), "broken after a chain with a head in range");
    }

    FUZZ_CHECK(dev.chains() == pops && dev.malformed() == malformed, "counters %" PRIu64 "/%" PRIu64
               ", expected %" PRIu64 "/%" PRIu64, dev.chains(), dev.malformed(), pops, malformed);
    FUZZ_CHECK(dev.last_avail_idx() == last_avail && (dev.broken() || dev.used_idx() == used_idx), "indexes differ");

    // Notification: the decision, and with EVENT_IDX avail_event as the only write.
    if (trace) std::fprintf(stderr, "end: %" PRIu64 " chains, fault %s\n", pops, std::string(to_string(dev.fault())).c_str());
    if (dev.broken()) return;
    bytes& expect_notify = snapshot(ram, expect);
    bool notify = false;
    if (f.event_idx) {
        const std::uint16_t event = ref.rd16(used_event_at);
        notify = pushed != 0 && static_cast<std::uint16_t>(used_idx - event - 1) < used_idx;  // from 0
        put16(expect_notify, avail_event_at - base, last_avail);
    } else {
        notify = pushed != 0 && (ref.rd16(q.avail.value) & 1) == 0;
    }
    FUZZ_CHECK(dev.needs_notify() == notify, "needs_notify disagrees (pushed %" PRIu64 ")", pushed);
    FUZZ_CHECK(ram_is(ram, expect_notify), "needs_notify wrote more than avail_event");
    FUZZ_CHECK(!dev.needs_notify(), "a second needs_notify with nothing pushed notified");
}

} // namespace
} // namespace iopgtable::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    iopgtable::fuzz::run(data, size);
    return 0;
}
