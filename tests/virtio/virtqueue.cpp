// SPDX-License-Identifier: MIT
// Split virtqueues (virtio/virtqueue.hpp): the wire structures against <linux/virtio_ring.h>;
// driver → device → driver round trips for chains of every shape (split at odd boundaries,
// merged, zero-length descriptors, indirect tables), with a check that the device changed
// nothing but the used ring and the writable buffers; 16-bit index wrap-around; notification
// suppression with and without EVENT_IDX; one hand-crafted hostile descriptor table per
// chain_error; broken rings on both sides.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#define VIRTIO_RING_NO_LEGACY  // the legacy vring helpers are C only
#include <linux/virtio_ring.h>
#pragma GCC diagnostic pop

#include <catch2/catch.hpp>
#include <iopgtable/mem/guest_ram.hpp>
#include <iopgtable/virtio/guest_memory.hpp>
#include <iopgtable/virtio/virtqueue.hpp>

using namespace iopgtable;
using namespace iopgtable::virtio;

namespace {

using bytes = std::vector<std::uint8_t>;

constexpr std::uint64_t ram_base = 0x4000'0000;
constexpr std::uint64_t ram_size = 1 << 20;
constexpr std::uint64_t data_area = ram_base + 0x20000;  // buffers and indirect tables

// ---- the wire structures against Linux's ----
static_assert(sizeof(virtio::vring_desc) == sizeof(::vring_desc));
static_assert(offsetof(virtio::vring_desc, addr) == offsetof(::vring_desc, addr));
static_assert(offsetof(virtio::vring_desc, len) == offsetof(::vring_desc, len));
static_assert(offsetof(virtio::vring_desc, flags) == offsetof(::vring_desc, flags));
static_assert(offsetof(virtio::vring_desc, next) == offsetof(::vring_desc, next));
static_assert(sizeof(virtio::vring_used_elem) == sizeof(::vring_used_elem));
static_assert(offsetof(virtio::vring_used_elem, len) == offsetof(::vring_used_elem, len));
static_assert(vring_desc_f_next == VRING_DESC_F_NEXT && vring_desc_f_write == VRING_DESC_F_WRITE &&
              vring_desc_f_indirect == VRING_DESC_F_INDIRECT);
static_assert(vring_avail_f_no_interrupt == VRING_AVAIL_F_NO_INTERRUPT && vring_used_f_no_notify == VRING_USED_F_NO_NOTIFY);
static_assert(f_indirect_desc == VIRTIO_RING_F_INDIRECT_DESC && f_event_idx == VIRTIO_RING_F_EVENT_IDX);
static_assert(queue_features::from_bits(std::uint64_t{1} << 28).indirect && !queue_features::from_bits(std::uint64_t{1} << 28).event_idx);
static_assert(queue_features::from_bits(std::uint64_t{3} << 28).event_idx);

void put(guest_ram& ram, std::uint64_t gpa, const bytes& b) { REQUIRE(ram.write(pa_t{gpa}, b.data(), b.size())); }
bytes get(guest_ram& ram, std::uint64_t gpa, std::size_t len) {
    bytes b(len);
    REQUIRE(ram.read(pa_t{gpa}, b.data(), len));
    return b;
}
std::uint16_t get16(guest_ram& ram, std::uint64_t gpa) {
    le16 v;
    REQUIRE(ram.read(pa_t{gpa}, v.bytes.data(), 2));
    return v.get();
}
void put16(guest_ram& ram, std::uint64_t gpa, std::uint16_t value) {
    const le16 v{value};
    REQUIRE(ram.write(pa_t{gpa}, v.bytes.data(), 2));
}
bytes pattern(std::size_t n, std::uint8_t seed) {
    bytes b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(seed + 7 * i);
    return b;
}

bytes snapshot(guest_ram& ram) {
    auto b = ram.bytes();
    bytes v(b.size());
    std::memcpy(v.data(), b.data(), b.size());
    return v;
}
struct byte_range {
    std::uint64_t addr, len;
};
/// The first guest address whose byte differs from `before` and lies in none of `allowed`.
std::optional<std::uint64_t> changed_outside(guest_ram& ram, const bytes& before, const std::vector<byte_range>& allowed) {
    auto now = ram.bytes();
    for (std::size_t i = 0; i < before.size(); ++i) {
        if (static_cast<std::uint8_t>(now[i]) == before[i]) continue;
        const std::uint64_t gpa = ram_base + i;
        const bool ok = std::any_of(allowed.begin(), allowed.end(),
                                    [&](const byte_range& r) { return gpa >= r.addr && gpa - r.addr < r.len; });
        if (!ok) return gpa;
    }
    return std::nullopt;
}

/// A driver and a device over one guest RAM.
struct rig {
    guest_ram ram{ram_size, pa_t{ram_base}};
    queue_layout q;
    queue_features f;
    driver_queue<guest_ram> drv;
    device_queue<guest_ram> dev;
    rig(std::uint16_t size, queue_features features, std::uint32_t max_readable = 1u << 20)
        : q(layout_at(pa_t{ram_base}, size, features.event_idx)), f(features), drv(ram, q, f),
          dev(ram, q, f, max_readable) {}
    byte_range used_ring() const { return {q.used.value, used_bytes(q.size, f.event_idx)}; }
};

/// A request's shape: lengths of its readable pieces, then of its writable pieces.
struct shape {
    const char* name;
    std::vector<std::uint32_t> readable, writable;
};

std::vector<shape> shapes() {
    return {
        {"one readable descriptor", {16}, {}},
        {"one writable descriptor", {}, {4}},
        {"head and tail merged into two descriptors", {4 + 20}, {4}},
        {"a big merged request", {4000}, {3000}},
        {"split at odd byte boundaries", {1, 3, 7, 2, 13}, {1, 2, 5}},
        {"zero-length descriptors among others", {0, 5, 0, 3, 0}, {0, 4, 0, 0, 2}},
        {"only zero-length descriptors", {0}, {0}},
        {"one byte per descriptor", std::vector<std::uint32_t>(20, 1), std::vector<std::uint32_t>(11, 1)},
    };
}

/// Place `s` at `area` (pieces 3 bytes apart, so boundaries fall at odd addresses), make it
/// available, let the device handle it and the driver collect it; checks every step.
void round_trip(rig& r, const shape& s, bool indirect, std::uint64_t area, std::uint8_t seed) {
    std::vector<driver_queue<guest_ram>::buffer> bufs;
    bytes payload;
    std::vector<byte_range> writable_pieces;
    std::uint64_t at = area + 1;
    for (std::size_t k = 0; k < s.readable.size(); ++k) {
        const bytes piece = pattern(s.readable[k], static_cast<std::uint8_t>(seed + k));
        put(r.ram, at, piece);
        payload.insert(payload.end(), piece.begin(), piece.end());
        bufs.push_back({pa_t{at}, s.readable[k], false});
        at += s.readable[k] + 3;
    }
    std::uint64_t writable_total = 0;
    for (std::uint32_t len : s.writable) {
        put(r.ram, at, bytes(len, 0xEE));
        bufs.push_back({pa_t{at}, len, true});
        if (len != 0) writable_pieces.push_back({at, len});
        writable_total += len;
        at += len + 3;
    }
    const std::uint64_t table = (at + 15) & ~std::uint64_t{15};

    const std::uint16_t free_before = r.drv.free_descriptors();
    auto head = r.drv.add(bufs, indirect, pa_t{table});
    REQUIRE(head);
    CHECK(r.drv.free_descriptors() == free_before - (indirect ? std::size_t{1} : bufs.size()));

    const bytes before = snapshot(r.ram);
    auto p = r.dev.pop();
    REQUIRE(p);
    REQUIRE(p->error == chain_error::none);
    CHECK(p->c.head == *head);
    CHECK(p->c.readable == payload);
    CHECK(p->c.writable_len == writable_total);
    REQUIRE(p->c.writable.size() == writable_pieces.size());
    for (std::size_t k = 0; k < writable_pieces.size(); ++k) {
        CHECK(p->c.writable[k].addr.value == writable_pieces[k].addr);
        CHECK(p->c.writable[k].len == writable_pieces[k].len);
    }
    CHECK_FALSE(r.dev.pop());

    // The reply in two writes split at an odd offset; too long or too far: refused.
    const bytes reply = pattern(writable_total, static_cast<std::uint8_t>(seed ^ 0x5a));
    const std::size_t cut = writable_total / 3 | 1;
    if (writable_total > 0) {
        CHECK_FALSE(r.dev.write(p->c, 1, reply));
        CHECK(r.dev.write(p->c, cut, std::span(reply).subspan(std::min(cut, reply.size()))));
        CHECK(r.dev.write(p->c, 0, std::span(reply).first(std::min(cut, reply.size()))));
    }
    CHECK(r.dev.write(p->c, writable_total, {}));
    CHECK_FALSE(r.dev.write(p->c, writable_total + 1, {}));
    CHECK_FALSE(r.dev.write(p->c, 0, bytes(writable_total + 1, 1)));
    r.dev.push_used(p->c.head, static_cast<std::uint32_t>(writable_total));

    std::vector<byte_range> allowed = writable_pieces;
    allowed.push_back(r.used_ring());
    const auto where = changed_outside(r.ram, before, allowed);
    INFO("changed at " << (where ? *where : 0));
    CHECK_FALSE(where);

    auto u = r.drv.get_used();
    REQUIRE(u);
    CHECK(u->id == *head);
    CHECK(u->len == writable_total);
    CHECK(r.drv.free_descriptors() == free_before);
    CHECK_FALSE(r.drv.get_used());
    bytes written;
    for (const byte_range& w : writable_pieces) {
        const bytes b = get(r.ram, w.addr, w.len);
        written.insert(written.end(), b.begin(), b.end());
    }
    CHECK(written == reply);
}

} // namespace

TEST_CASE("virtqueue: layout packs the parts at their alignments", "[virtqueue]") {
    for (std::uint32_t size = 1; size <= max_queue_size; size *= 2) {
        const auto n = static_cast<std::uint16_t>(size);
        for (bool ei : {false, true}) {
            const queue_layout q = layout_at(pa_t{0x1000}, n, ei);
            CHECK(q.size == n);
            CHECK(q.desc.value == 0x1000);
            CHECK(q.avail.value == 0x1000 + 16 * std::uint64_t{size});
            CHECK(q.used.value % 4 == 0);
            CHECK(q.used.value >= q.avail.value + avail_bytes(n, ei));
            CHECK(q.used.value < q.avail.value + avail_bytes(n, ei) + 4);
            CHECK(layout_bytes(n, ei) == q.used.value + used_bytes(n, ei) - 0x1000);
        }
    }
    // The spec's table: 16·QS, 6 + 2·QS, 6 + 8·QS (with the event fields).
    CHECK(avail_bytes(256, true) == 6 + 2 * 256);
    CHECK(used_bytes(256, true) == 6 + 8 * 256);
    CHECK(avail_bytes(256, false) == 4 + 2 * 256);
    // Size 1 with EVENT_IDX: avail ends at 16 + 8 = 24, already 4-aligned.
    CHECK(layout_at(pa_t{0}, 1, true).used.value == 24);
    CHECK(layout_at(pa_t{0}, 2, false).used.value == 32 + 8);
    CHECK(layout_at(pa_t{0}, 2, true).used.value == 32 + 12);
    CHECK(layout_at(pa_t{1}, 4, false).desc.value == 16);  // base rounded up

    guest_ram ram{ram_size, pa_t{ram_base}};
    const queue_features none{};
    CHECK(valid_layout(ram, layout_at(pa_t{ram_base}, 256, true), queue_features{false, true}));
    const std::uint64_t last_fit = ram_base + ram_size - ((layout_bytes(8, false) + 15) & ~std::uint64_t{15});
    CHECK(valid_layout(ram, layout_at(pa_t{last_fit}, 8, false), none));  // ends within 16 bytes of RAM's end
    CHECK_FALSE(valid_layout(ram, layout_at(pa_t{last_fit + 16}, 8, false), none));
    CHECK_FALSE(valid_layout(ram, layout_at(pa_t{ram_base}, 3, false), none));   // not a power of two
    CHECK_FALSE(valid_layout(ram, layout_at(pa_t{ram_base}, 0, false), none));
    auto q = layout_at(pa_t{ram_base}, 8, false);
    q.desc.value += 8;
    CHECK_FALSE(valid_layout(ram, q, none));  // descriptor table not 16-aligned
    q = layout_at(pa_t{ram_base}, 8, false);
    q.used.value += 2;
    CHECK_FALSE(valid_layout(ram, q, none));  // used ring not 4-aligned
    q = layout_at(pa_t{ram_base}, 8, false);
    q.used = q.desc;
    CHECK_FALSE(valid_layout(ram, q, none));  // overlapping parts
    q = layout_at(pa_t{ram_base}, 8, false);
    q.avail = pa_t{q.used.value + used_bytes(8, false) - 2};
    CHECK_FALSE(valid_layout(ram, q, none));
    q = layout_at(pa_t{ram_base}, 8, false);
    q.used = pa_t{~std::uint64_t{3}};
    CHECK_FALSE(valid_layout(ram, q, none));  // wraps 2^64
}

TEST_CASE("virtqueue: need_event agrees with Linux's vring_need_event", "[virtqueue]") {
    std::uint32_t x = 12345;
    auto next = [&] { return static_cast<std::uint16_t>((x = x * 1103515245u + 12345u) >> 16); };
    int disagreements = 0;
    for (int i = 0; i < 100000; ++i) {
        const std::uint16_t e = next(), o = next();
        const auto n = static_cast<std::uint16_t>(o + (i % 3 == 0 ? next() : next() % 8));
        if (need_event(e, n, o) != (vring_need_event(e, n, o) != 0)) ++disagreements;
    }
    CHECK(disagreements == 0);
    // The spec's example: used_event 0 asks for a notification after the first buffer.
    CHECK(need_event(0, 1, 0));
    CHECK_FALSE(need_event(0, 2, 1));
    CHECK(need_event(0xffff, 1, 0xfffe));  // across the wrap
    CHECK_FALSE(need_event(5, 5, 5));
}

TEST_CASE("virtqueue: round trips for chains of every shape", "[virtqueue]") {
    const bool indirect = GENERATE(false, true);
    const bool event_idx = GENERATE(false, true);
    const auto all = shapes();
    const std::size_t i = GENERATE(Catch::Generators::range(std::size_t{0}, std::size_t{8}));
    REQUIRE(all.size() == 8);
    const shape& s = all[i];
    INFO(s.name << (indirect ? ", indirect" : ", direct") << (event_idx ? ", EVENT_IDX" : ""));
    rig r{32, {indirect, event_idx}};
    // Twice through the same descriptors and ring slots, then once more after other chains
    // moved the free list around.
    round_trip(r, s, indirect, data_area, 1);
    round_trip(r, s, indirect, data_area + 0x4000, 2);
    round_trip(r, shapes()[4], false, data_area + 0x8000, 3);
    round_trip(r, s, indirect, data_area + 0xc000, 4);
    CHECK(r.dev.chains() == 4);
    CHECK(r.dev.malformed() == 0);
    CHECK_FALSE(r.dev.broken());
}

TEST_CASE("virtqueue: a full queue completes out of order", "[virtqueue]") {
    const bool indirect = GENERATE(false, true);
    rig r{8, {indirect, false}};
    using buffer = driver_queue<guest_ram>::buffer;
    std::vector<std::uint16_t> heads;
    // Direct: two descriptors each, so four chains fill the table; indirect: eight chains.
    const std::size_t chains = indirect ? 8 : 4;
    for (std::size_t k = 0; k < chains; ++k) {
        const std::uint64_t at = data_area + 0x100 * k;
        put(r.ram, at, bytes(8, static_cast<std::uint8_t>(k)));
        const buffer b[2] = {{pa_t{at}, 8, false}, {pa_t{at + 8}, 8, true}};
        auto h = r.drv.add(b, indirect, pa_t{data_area + 0x10000 + 0x100 * k});
        REQUIRE(h);
        heads.push_back(*h);
    }
    CHECK(r.drv.free_descriptors() == 0);
    const buffer one[1] = {{pa_t{data_area}, 1, false}};
    CHECK_FALSE(r.drv.add(one));
    CHECK_FALSE(r.drv.add(one, true, pa_t{data_area + 0x20000}));

    std::vector<chain> got;
    while (auto p = r.dev.pop()) {
        REQUIRE(p->error == chain_error::none);
        CHECK(p->c.readable == bytes(8, static_cast<std::uint8_t>(got.size())));
        got.push_back(std::move(p->c));
    }
    REQUIRE(got.size() == chains);
    std::reverse(got.begin(), got.end());
    for (const chain& c : got) {
        REQUIRE(r.dev.write(c, 0, bytes(8, static_cast<std::uint8_t>(0x80 | c.head))));
        r.dev.push_used(c.head, 8);
    }
    for (const chain& c : got) {
        auto u = r.drv.get_used();
        REQUIRE(u);
        CHECK(u->id == c.head);
        CHECK(u->len == 8);
    }
    CHECK(r.drv.free_descriptors() == 8);
    // The descriptors come back usable, in a different order.
    const buffer two[2] = {{pa_t{data_area}, 8, false}, {pa_t{data_area + 8}, 8, true}};
    for (std::size_t k = 0; k < 4; ++k) REQUIRE(r.drv.add(two));
    CHECK(r.drv.free_descriptors() == 0);
}

TEST_CASE("virtqueue: the 16-bit indexes wrap around", "[virtqueue]") {
    const queue_features f = GENERATE(queue_features{false, false}, queue_features{true, false},
                                      queue_features{false, true}, queue_features{true, true});
    INFO("indirect " << f.indirect << ", event_idx " << f.event_idx);
    rig r{8, f};  // direct: two chains of three descriptors in flight; indirect: eight (a full ring)
    using buffer = driver_queue<guest_ram>::buffer;
    constexpr std::uint32_t total = 70000;
    std::uint32_t sent = 0, received = 0;
    std::size_t bad = 0, notifications = 0;
    std::uint32_t rounds = 0;
    std::size_t most_popped = 0;
    std::vector<std::uint32_t> in_flight(8);  // per head: the request's number
    while (received < total) {
        // Fill the queue (with indirect, avail idx - last avail reaches the queue size).
        for (;;) {
            if (sent == total) break;
            const std::uint64_t at = data_area + 0x40 * (sent % 16);
            le32 number{sent};
            REQUIRE(r.ram.write(pa_t{at}, number.bytes.data(), 4));
            const buffer b[3] = {{pa_t{at}, 3, false}, {pa_t{at + 3}, 1, false}, {pa_t{at + 8}, 4, true}};
            auto h = r.drv.add(b, f.indirect, pa_t{data_area + 0x1000 + 0x40 * (sent % 16)});
            if (!h) break;
            in_flight[*h] = sent++;
        }
        r.drv.should_kick();
        std::size_t popped = 0;
        while (auto p = r.dev.pop()) {
            ++popped;
            if (p->error != chain_error::none || p->c.readable.size() != 4) {
                ++bad;
                continue;
            }
            le32 number;
            std::memcpy(number.bytes.data(), p->c.readable.data(), 4);
            if (number.get() != in_flight[p->c.head]) ++bad;
            const le32 reply{number.get() + 1};
            if (!r.dev.write(p->c, 0, reply.bytes)) ++bad;
            r.dev.push_used(p->c.head, 4);
        }
        most_popped = std::max(most_popped, popped);
        if (r.dev.needs_notify()) ++notifications;
        while (auto u = r.drv.get_used()) {
            le32 reply;
            REQUIRE(r.ram.read(pa_t{data_area + 0x40 * (in_flight[u->id] % 16) + 8}, reply.bytes.data(), 4));
            if (u->len != 4 || reply.get() != in_flight[u->id] + 1) ++bad;
            ++received;
        }
        REQUIRE(++rounds <= total);  // every round completes at least one request
    }
    CHECK(bad == 0);
    CHECK(most_popped == (f.indirect ? 8 : 2));
    CHECK(r.dev.chains() == total);
    CHECK(r.dev.malformed() == 0);
    CHECK(r.dev.last_avail_idx() == total % 65536);
    CHECK(r.dev.used_idx() == total % 65536);
    CHECK(r.drv.avail_idx() == total % 65536);
    CHECK(get16(r.ram, r.q.avail.value + 2) == total % 65536);
    CHECK(get16(r.ram, r.q.used.value + 2) == total % 65536);
    CHECK(r.drv.free_descriptors() == 8);
    CHECK(notifications > 0);
    CHECK_FALSE(r.dev.broken());
    CHECK_FALSE(r.drv.broken());
}

TEST_CASE("virtqueue: notification suppression without EVENT_IDX", "[virtqueue]") {
    rig r{8, {false, false}};
    using buffer = driver_queue<guest_ram>::buffer;
    const buffer b[1] = {{pa_t{data_area}, 4, true}};
    auto cycle = [&] {
        REQUIRE(r.drv.add(b));
        auto p = r.dev.pop();
        REQUIRE(p);
        r.dev.push_used(p->c.head, 0);
        REQUIRE(r.drv.get_used());
    };

    SECTION("used buffer notifications (avail.flags NO_INTERRUPT)") {
        CHECK_FALSE(r.dev.needs_notify());  // nothing pushed
        cycle();
        CHECK(r.dev.needs_notify());
        CHECK_FALSE(r.dev.needs_notify());  // tracking reset
        r.drv.set_no_interrupt(true);
        CHECK(get16(r.ram, r.q.avail.value) == vring_avail_f_no_interrupt);
        cycle();
        cycle();
        CHECK_FALSE(r.dev.needs_notify());
        r.drv.set_no_interrupt(false);
        CHECK_FALSE(r.dev.needs_notify());  // nothing new since
        cycle();
        CHECK(r.dev.needs_notify());
        // used_event is ignored without EVENT_IDX (and has no room: set_used_event writes nothing).
        const bytes before = snapshot(r.ram);
        r.drv.set_used_event(100);
        CHECK_FALSE(changed_outside(r.ram, before, {}));
    }
    SECTION("available buffer notifications (used.flags NO_NOTIFY)") {
        CHECK_FALSE(r.drv.should_kick());  // nothing added
        REQUIRE(r.drv.add(b));
        CHECK(r.drv.should_kick());
        CHECK_FALSE(r.drv.should_kick());
        r.dev.set_no_notify(true);
        CHECK(get16(r.ram, r.q.used.value) == vring_used_f_no_notify);
        REQUIRE(r.drv.add(b));
        CHECK_FALSE(r.drv.should_kick());
        r.dev.set_no_notify(false);
        REQUIRE(r.drv.add(b));
        CHECK(r.drv.should_kick());
        // avail_event is ignored without EVENT_IDX: the device does not write it.
        while (auto p = r.dev.pop()) r.dev.push_used(p->c.head, 0);
        const bytes before = snapshot(r.ram);
        r.dev.needs_notify();
        CHECK_FALSE(changed_outside(r.ram, before, {}));
    }
}

TEST_CASE("virtqueue: notification suppression with EVENT_IDX", "[virtqueue]") {
    rig r{8, {false, true}};
    using buffer = driver_queue<guest_ram>::buffer;
    const buffer b[1] = {{pa_t{data_area}, 4, true}};
    auto cycle = [&] {
        REQUIRE(r.drv.add(b));
        auto p = r.dev.pop();
        REQUIRE(p);
        r.dev.push_used(p->c.head, 0);
        REQUIRE(r.drv.get_used());
    };
    const std::uint64_t used_event = r.q.avail.value + 4 + 2 * 8;
    const std::uint64_t avail_event = r.q.used.value + 4 + 8 * 8;

    SECTION("used_event: notify when the used idx passes it") {
        // used_event 0 (as initialised): notify after the first buffer, not the second.
        cycle();
        CHECK(r.dev.needs_notify());
        cycle();
        CHECK_FALSE(r.dev.needs_notify());
        // Ask for a notification when used idx reaches 5 (used_event 4): pushes 3 and 4 stay quiet.
        r.drv.set_used_event(4);
        CHECK(get16(r.ram, used_event) == 4);
        cycle();
        CHECK_FALSE(r.dev.needs_notify());
        cycle();
        CHECK_FALSE(r.dev.needs_notify());
        cycle();  // used idx 4 → 5
        CHECK(r.dev.needs_notify());
        // A batch that jumps over used_event notifies once.
        r.drv.set_used_event(6);
        cycle();
        cycle();
        cycle();  // 5 → 8
        CHECK(r.dev.needs_notify());
        CHECK_FALSE(r.dev.needs_notify());
        // NO_INTERRUPT is ignored with EVENT_IDX (set_no_interrupt writes nothing; a raw write
        // of the bit changes nothing either).
        r.drv.set_no_interrupt(true);
        CHECK(get16(r.ram, r.q.avail.value) == 0);
        put16(r.ram, r.q.avail.value, vring_avail_f_no_interrupt);
        r.drv.set_used_event(8);
        cycle();
        CHECK(r.dev.needs_notify());
    }
    SECTION("avail_event: the device asks for a kick at the next index it reads") {
        REQUIRE(r.drv.add(b));
        CHECK(r.drv.should_kick());  // avail_event 0, avail idx 0 → 1
        REQUIRE(r.drv.add(b));
        CHECK_FALSE(r.drv.should_kick());  // the device has not asked for 1
        while (auto p = r.dev.pop()) r.dev.push_used(p->c.head, 0);
        r.dev.needs_notify();
        CHECK(get16(r.ram, avail_event) == 2);
        REQUIRE(r.drv.add(b));
        CHECK(r.drv.should_kick());  // avail idx 2 → 3 passes avail_event 2
        REQUIRE(r.drv.add(b));
        REQUIRE(r.drv.add(b));
        CHECK_FALSE(r.drv.should_kick());
        // NO_NOTIFY is ignored with EVENT_IDX: set_no_notify does nothing, a raw bit changes nothing.
        r.dev.set_no_notify(true);
        CHECK(get16(r.ram, r.q.used.value) == 0);
        put16(r.ram, r.q.used.value, vring_used_f_no_notify);
        while (auto p = r.dev.pop()) r.dev.push_used(p->c.head, 0);
        r.dev.needs_notify();
        CHECK(get16(r.ram, avail_event) == 5);
        REQUIRE(r.drv.add(b));
        CHECK(r.drv.should_kick());
        while (r.drv.get_used()) {
        }
        CHECK(r.drv.free_descriptors() == 7);
    }
}

// ---- hostile descriptor tables ----

namespace {

/// A device over a ring written by hand (no driver_queue).
struct hostile {
    guest_ram ram{ram_size, pa_t{ram_base}};
    queue_layout q;
    device_queue<guest_ram> dev;
    std::uint16_t avail = 0;
    hostile(std::uint16_t size, queue_features f, std::uint32_t max_readable = 1u << 20)
        : q(layout_at(pa_t{ram_base}, size, f.event_idx)), dev(ram, q, f, max_readable) {}

    void desc_in(std::uint64_t table, std::uint32_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                 std::uint16_t next = 0) {
        virtio::vring_desc d;
        d.addr = addr;
        d.len = len;
        d.flags = flags;
        d.next = next;
        REQUIRE(ram.write(pa_t{table + 16 * std::uint64_t{i}}, &d, sizeof d));
    }
    void desc(std::uint32_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags, std::uint16_t next = 0) {
        desc_in(q.desc.value, i, addr, len, flags, next);
    }
    /// Make `head` available (ring entry, then idx).
    void post(std::uint16_t head) {
        put16(ram, q.avail.value + 4 + 2 * std::uint64_t{static_cast<std::uint16_t>(avail % q.size)}, head);
        put16(ram, q.avail.value + 2, ++avail);
    }
    device_queue<guest_ram>::popped pop() {
        auto p = dev.pop();
        REQUIRE(p);
        return std::move(*p);
    }
    /// Pop one chain that must fail with `e`, keep its head, return it with length 0; then a
    /// well-formed chain (descriptor q.size - 1) must still go through.
    void expect(chain_error e, std::uint16_t head = 0) {
        const std::uint64_t malformed_before = dev.malformed();
        auto p = pop();
        INFO("expected " << std::string(to_string(e)) << ", got " << std::string(to_string(p.error)));
        CHECK(p.error == e);
        CHECK(p.c.head == head);
        CHECK(p.c.readable.empty());
        CHECK(p.c.writable.empty());
        CHECK(p.c.writable_len == 0);
        CHECK(dev.malformed() == malformed_before + 1);
        CHECK_FALSE(dev.broken());
        CHECK_FALSE(dev.write(p.c, 0, bytes(1, 1)));
        const std::uint16_t used_before = get16(ram, q.used.value + 2);
        dev.push_used(p.c.head, 0);
        CHECK(get16(ram, q.used.value + 2) == static_cast<std::uint16_t>(used_before + 1));
        virtio::vring_used_elem u;
        REQUIRE(ram.read(pa_t{q.used.value + 4 + 8 * std::uint64_t{static_cast<std::uint16_t>(used_before % q.size)}}, &u, sizeof u));
        CHECK(u.id.get() == head);
        CHECK(u.len.get() == 0);

        const auto good = static_cast<std::uint16_t>(q.size - 1);
        put(ram, data_area + 0x8000, bytes{1, 2, 3});
        desc(good, data_area + 0x8000, 3, 0);
        post(good);
        auto ok = pop();
        CHECK(ok.error == chain_error::none);
        CHECK(ok.c.readable == bytes{1, 2, 3});
        CHECK_FALSE(dev.pop());
    }
};

constexpr std::uint16_t NEXT = vring_desc_f_next, WRITE = vring_desc_f_write, INDIRECT = vring_desc_f_indirect;
constexpr std::uint64_t table_area = data_area + 0x1000;

} // namespace

TEST_CASE("virtqueue: a chain that loops is loop_or_too_long", "[virtqueue]") {
    hostile h{8, {true, false}};
    SECTION("self loop") {
        h.desc(0, data_area, 4, NEXT, 0);
        h.post(0);
        h.expect(chain_error::loop_or_too_long);
    }
    SECTION("two-descriptor cycle, writable") {
        h.desc(0, data_area, 4, WRITE | NEXT, 1);
        h.desc(1, data_area + 4, 4, WRITE | NEXT, 0);
        h.post(0);
        h.expect(chain_error::loop_or_too_long);
    }
    SECTION("cycle of zero-length descriptors") {
        h.desc(2, 0, 0, NEXT, 3);
        h.desc(3, 0, 0, NEXT, 4);
        h.desc(4, 0, 0, NEXT, 2);
        h.post(2);
        h.expect(chain_error::loop_or_too_long, 2);
    }
    SECTION("loop inside an indirect table") {
        h.desc(0, table_area, 4 * 16, INDIRECT);
        h.desc_in(table_area, 0, data_area, 1, NEXT, 1);
        h.desc_in(table_area, 1, data_area, 1, NEXT, 0);
        h.post(0);
        h.expect(chain_error::loop_or_too_long);
    }
    SECTION("an indirect chain longer than the queue size") {
        h.desc(0, table_area, 9 * 16, INDIRECT);
        for (std::uint16_t i = 0; i < 9; ++i)
            h.desc_in(table_area, i, data_area + i, 1, i < 8 ? NEXT : 0, static_cast<std::uint16_t>(i + 1));
        h.post(0);
        h.expect(chain_error::loop_or_too_long);
    }
    SECTION("an indirect chain of exactly the queue size is fine") {
        h.desc(0, table_area, 8 * 16, INDIRECT);
        for (std::uint16_t i = 0; i < 8; ++i)
            h.desc_in(table_area, i, data_area + i, 1, i < 7 ? NEXT : 0, static_cast<std::uint16_t>(i + 1));
        put(h.ram, data_area, pattern(8, 9));
        h.post(0);
        auto p = h.pop();
        CHECK(p.error == chain_error::none);
        CHECK(p.c.readable == pattern(8, 9));
    }
}

TEST_CASE("virtqueue: a next index out of range is next_out_of_range", "[virtqueue]") {
    hostile h{8, {true, false}};
    SECTION("direct: next == queue size") {
        h.desc(0, data_area, 4, NEXT, 8);
        h.post(0);
        h.expect(chain_error::next_out_of_range);
    }
    SECTION("direct: next 0xffff") {
        h.desc(5, data_area, 4, WRITE | NEXT, 0xffff);
        h.post(5);
        h.expect(chain_error::next_out_of_range, 5);
    }
    SECTION("indirect: next == table entries (the queue would have room)") {
        h.desc(0, table_area, 3 * 16, INDIRECT);
        h.desc_in(table_area, 0, data_area, 1, NEXT, 3);
        h.post(0);
        h.expect(chain_error::next_out_of_range);
    }
}

TEST_CASE("virtqueue: buffers outside memory are outside_memory", "[virtqueue]") {
    hostile h{8, {true, false}};
    const std::uint64_t end = ram_base + ram_size;
    SECTION("addr + len wraps past 2^64") {
        h.desc(0, ~std::uint64_t{0} - 7, 16, 0);
        h.post(0);
        h.expect(chain_error::outside_memory);
    }
    SECTION("writable addr + len wraps past 2^64") {
        h.desc(0, data_area, 4, NEXT, 1);
        h.desc(1, ~std::uint64_t{0}, 2, WRITE);
        h.post(0);
        h.expect(chain_error::outside_memory);
    }
    SECTION("straddling the end of RAM") {
        h.desc(0, end - 8, 16, 0);
        h.post(0);
        h.expect(chain_error::outside_memory);
    }
    SECTION("below RAM") {
        h.desc(0, ram_base - 4, 4, WRITE);
        h.post(0);
        h.expect(chain_error::outside_memory);
    }
    SECTION("indirect table outside RAM") {
        h.desc(0, end - 16, 32, INDIRECT);
        h.post(0);
        h.expect(chain_error::outside_memory);
    }
    SECTION("a buffer in an indirect table outside RAM") {
        h.desc(0, table_area, 32, INDIRECT);
        h.desc_in(table_area, 0, data_area, 4, NEXT, 1);
        h.desc_in(table_area, 1, end, 1, WRITE);
        h.post(0);
        h.expect(chain_error::outside_memory);
    }
    SECTION("up to the last byte of RAM is fine; zero-length anywhere is fine") {
        put(h.ram, end - 16, pattern(16, 3));
        h.desc(0, end - 16, 16, NEXT, 1);
        h.desc(1, ~std::uint64_t{0}, 0, NEXT, 2);
        h.desc(2, 0, 0, WRITE);
        h.post(0);
        auto p = h.pop();
        CHECK(p.error == chain_error::none);
        CHECK(p.c.readable == pattern(16, 3));
        CHECK(p.c.writable.empty());
    }
}

TEST_CASE("virtqueue: INDIRECT without the feature is indirect_not_negotiated", "[virtqueue]") {
    hostile h{8, {false, false}};
    h.desc(0, table_area, 16, INDIRECT);
    h.desc_in(table_area, 0, data_area, 4, 0);
    h.post(0);
    h.expect(chain_error::indirect_not_negotiated);
}

TEST_CASE("virtqueue: an indirect table inside one is indirect_nested", "[virtqueue]") {
    hostile h{8, {true, false}};
    h.desc(0, table_area, 32, INDIRECT);
    h.desc_in(table_area, 0, data_area, 4, NEXT, 1);
    h.desc_in(table_area, 1, table_area + 0x100, 16, INDIRECT);
    h.desc_in(table_area + 0x100, 0, data_area, 4, 0);
    h.post(0);
    h.expect(chain_error::indirect_nested);
}

TEST_CASE("virtqueue: INDIRECT with NEXT is indirect_with_next", "[virtqueue]") {
    hostile h{8, {true, false}};
    h.desc(0, table_area, 16, INDIRECT | NEXT, 1);
    h.desc_in(table_area, 0, data_area, 4, 0);
    h.desc(1, data_area, 4, WRITE);
    h.post(0);
    h.expect(chain_error::indirect_with_next);
}

TEST_CASE("virtqueue: an indirect table of 0 or not 16·n bytes is indirect_bad_table", "[virtqueue]") {
    hostile h{8, {true, false}};
    const std::uint32_t len = GENERATE(0u, 8u, 24u, 17u, 0xfffffff8u);
    INFO("table length " << len);
    h.desc(0, table_area, len, INDIRECT);
    h.post(0);
    h.expect(chain_error::indirect_bad_table);
}

TEST_CASE("virtqueue: legal indirect forms", "[virtqueue]") {
    hostile h{8, {true, false}};
    put(h.ram, data_area, pattern(64, 1));
    SECTION("WRITE on the descriptor pointing at the table is ignored") {
        h.desc(0, table_area, 32, INDIRECT | WRITE);
        h.desc_in(table_area, 0, data_area, 5, NEXT, 1);
        h.desc_in(table_area, 1, data_area + 0x100, 6, WRITE);
        h.post(0);
        auto p = h.pop();
        REQUIRE(p.error == chain_error::none);
        CHECK(p.c.readable == pattern(5, 1));
        CHECK(p.c.writable_len == 6);
    }
    SECTION("direct descriptors followed by an indirect one (2.7.5.3.2)") {
        h.desc(3, data_area, 2, NEXT, 6);
        h.desc(6, data_area + 2, 3, NEXT, 1);
        h.desc(1, table_area, 48, INDIRECT);
        h.desc_in(table_area, 0, data_area + 5, 4, NEXT, 2);  // table entries chained out of order
        h.desc_in(table_area, 2, data_area + 9, 0, NEXT, 1);
        h.desc_in(table_area, 1, data_area + 0x100, 6, WRITE);
        h.post(3);
        auto p = h.pop();
        REQUIRE(p.error == chain_error::none);
        CHECK(p.c.head == 3);
        CHECK(p.c.readable == pattern(9, 1));
        REQUIRE(p.c.writable.size() == 1);
        CHECK(p.c.writable[0].addr.value == data_area + 0x100);
    }
}

TEST_CASE("virtqueue: a readable descriptor after a writable one is readable_after_writable", "[virtqueue]") {
    hostile h{8, {true, false}};
    SECTION("direct") {
        h.desc(0, data_area, 4, NEXT, 1);
        h.desc(1, data_area + 4, 4, WRITE | NEXT, 2);
        h.desc(2, data_area + 8, 4, 0);
        h.post(0);
        h.expect(chain_error::readable_after_writable);
    }
    SECTION("zero-length readable after writable") {
        h.desc(0, data_area, 4, WRITE | NEXT, 1);
        h.desc(1, data_area, 0, 0);
        h.post(0);
        h.expect(chain_error::readable_after_writable);
    }
    SECTION("writable direct, readable in the indirect table") {
        h.desc(0, data_area, 4, WRITE | NEXT, 1);
        h.desc(1, table_area, 16, INDIRECT);
        h.desc_in(table_area, 0, data_area + 8, 4, 0);
        h.post(0);
        h.expect(chain_error::readable_after_writable);
    }
}

namespace {

/// A memory of 2^40 bytes: the first 64 KiB real, the rest reads as zeros and drops writes.
/// Lets a test build buffers of gigabytes without allocating them.
struct vast_memory {
    static constexpr std::uint64_t size = std::uint64_t{1} << 40;
    guest_ram real{64 * 1024};
    bool contains(pa_t a, std::uint64_t len) const noexcept { return a.value <= size && len <= size - a.value; }
    bool read(pa_t a, void* out, std::uint64_t len) const noexcept {
        if (!contains(a, len)) return false;
        if (real.contains(a, len)) return real.read(a, out, len);
        std::memset(out, 0, len);
        return true;
    }
    bool write(pa_t a, const void* in, std::uint64_t len) noexcept {
        if (!contains(a, len)) return false;
        if (real.contains(a, len)) return real.write(a, in, len);
        return true;
    }
};
static_assert(queue_memory<vast_memory>);
static_assert(queue_memory<guest_ram> && queue_memory<guest_view>);

} // namespace

TEST_CASE("virtqueue: too many bytes is too_large", "[virtqueue]") {
    SECTION("readable bytes over the queue's limit") {
        hostile h{8, {true, false}, 100};
        put(h.ram, data_area, pattern(200, 4));
        h.desc(0, data_area, 60, NEXT, 1);
        h.desc(1, data_area + 60, 41, 0);
        h.post(0);
        h.expect(chain_error::too_large);
        // Exactly the limit is fine.
        h.desc(0, data_area, 60, NEXT, 1);
        h.desc(1, data_area + 60, 40, NEXT, 2);
        h.desc(2, data_area + 100, 50, WRITE);
        h.post(0);
        auto p = h.pop();
        CHECK(p.error == chain_error::none);
        CHECK(p.c.readable == pattern(100, 4));
        // One descriptor of 4 GiB - 1 against the limit (no allocation attempted).
        h.desc(0, data_area, 0xffffffffu, 0);
        h.post(0);
        p = h.pop();
        CHECK(p.error == chain_error::outside_memory);  // RAM is 1 MiB: caught first
    }
    SECTION("huge buffers in a vast memory") {
        vast_memory mem;
        const queue_layout q = layout_at(pa_t{0}, 4, false);
        device_queue<vast_memory> dev(mem, q, {});
        driver_queue<vast_memory> drv(mem, q, {});
        using buffer = driver_queue<vast_memory>::buffer;
        // Readable: 3 GiB over the default 1 MiB limit, refused before reading.
        const buffer big_read[1] = {{pa_t{std::uint64_t{1} << 32}, 0xc0000000u, false}};
        REQUIRE(drv.add(big_read));
        auto p = dev.pop();
        REQUIRE(p);
        CHECK(p->error == chain_error::too_large);
        dev.push_used(p->c.head, 0);
        REQUIRE(drv.get_used());
        // Writable: 2 × 3 GiB is over 2^32 - 1 bytes (the used len cannot say it).
        const buffer big_write[2] = {{pa_t{std::uint64_t{1} << 32}, 0xc0000000u, true},
                                     {pa_t{std::uint64_t{1} << 34}, 0xc0000000u, true}};
        REQUIRE(drv.add(big_write));
        p = dev.pop();
        REQUIRE(p);
        CHECK(p->error == chain_error::too_large);
        dev.push_used(p->c.head, 0);
        REQUIRE(drv.get_used());
        // One writable of 4 GiB - 1 is fine, and a write at its far end lands there.
        const buffer max_write[1] = {{pa_t{std::uint64_t{1} << 32}, 0xffffffffu, true}};
        REQUIRE(drv.add(max_write));
        p = dev.pop();
        REQUIRE(p);
        CHECK(p->error == chain_error::none);
        CHECK(p->c.writable_len == 0xffffffffu);
        CHECK(dev.write(p->c, 0xffffffffu - 4, bytes(4, 1)));
        CHECK_FALSE(dev.write(p->c, 0xffffffffu - 4, bytes(5, 1)));
    }
}

TEST_CASE("virtqueue: a head out of range breaks the queue", "[virtqueue]") {
    hostile h{8, {true, false}};
    h.desc(0, data_area, 4, 0);
    h.post(0);
    h.post(8);  // out of range
    h.post(0);
    CHECK(h.pop().error == chain_error::none);
    auto p = h.pop();
    CHECK(p.error == chain_error::head_out_of_range);
    CHECK(p.c.head == 8);
    CHECK(h.dev.broken());
    CHECK(h.dev.fault() == queue_fault::head_out_of_range);
    CHECK(to_string(h.dev.fault()) == "head_out_of_range");
    CHECK_FALSE(h.dev.pop());  // the valid entry after it is not taken
    const bytes before = snapshot(h.ram);
    h.dev.push_used(0, 4);  // nothing is pushed any more
    CHECK_FALSE(h.dev.needs_notify());
    CHECK_FALSE(changed_outside(h.ram, before, {}));
    CHECK(h.dev.chains() == 2);
    CHECK(h.dev.malformed() == 1);
}

TEST_CASE("virtqueue: an avail idx jumping by more than the queue size breaks the queue", "[virtqueue]") {
    hostile h{8, {false, false}};
    for (std::uint16_t i = 0; i < 8; ++i) {
        h.desc(i, data_area + i, 1, 0);
        put16(h.ram, h.q.avail.value + 4 + 2 * i, i);
    }
    SECTION("exactly the queue size ahead: all eight taken") {
        put16(h.ram, h.q.avail.value + 2, 8);
        for (std::uint16_t i = 0; i < 8; ++i) CHECK(h.pop().c.head == i);
        CHECK_FALSE(h.dev.pop());
        CHECK_FALSE(h.dev.broken());
    }
    SECTION("nine ahead") {
        put16(h.ram, h.q.avail.value + 2, 9);
        CHECK_FALSE(h.dev.pop());
        CHECK(h.dev.broken());
        CHECK(h.dev.fault() == queue_fault::avail_idx_jump);
        put16(h.ram, h.q.avail.value + 2, 1);
        CHECK_FALSE(h.dev.pop());  // stays broken
    }
    SECTION("moving backwards looks like a jump of almost 2^16") {
        put16(h.ram, h.q.avail.value + 2, 2);
        CHECK(h.pop().c.head == 0);
        CHECK(h.pop().c.head == 1);
        put16(h.ram, h.q.avail.value + 2, 1);
        CHECK_FALSE(h.dev.pop());
        CHECK(h.dev.fault() == queue_fault::avail_idx_jump);
    }
}

TEST_CASE("virtqueue: an unusable layout gives broken queues", "[virtqueue]") {
    guest_ram ram{ram_size, pa_t{ram_base}};
    auto q = layout_at(pa_t{ram_base + ram_size - 64}, 8, false);  // runs past the end of RAM
    device_queue<guest_ram> dev(ram, q, {});
    CHECK(dev.broken());
    CHECK(dev.fault() == queue_fault::bad_layout);
    CHECK_FALSE(dev.pop());
    driver_queue<guest_ram> drv(ram, q, {});
    CHECK(drv.broken());
    const driver_queue<guest_ram>::buffer b[1] = {{pa_t{ram_base}, 1, false}};
    CHECK_FALSE(drv.add(b));
    q = layout_at(pa_t{ram_base}, 6, false);  // not a power of two
    CHECK(device_queue<guest_ram>(ram, q, {}).broken());
}

TEST_CASE("virtqueue: the driver refuses bad requests and distrusts the device", "[virtqueue]") {
    rig r{4, {false, false}};
    using buffer = driver_queue<guest_ram>::buffer;
    SECTION("add refusals change nothing") {
        const bytes before = snapshot(r.ram);
        CHECK_FALSE(r.drv.add({}));
        const buffer wrong_order[2] = {{pa_t{data_area}, 4, true}, {pa_t{data_area + 4}, 4, false}};
        CHECK_FALSE(r.drv.add(wrong_order));
        const buffer five[5] = {};
        CHECK_FALSE(r.drv.add(five));  // more than the free descriptors
        const buffer one[1] = {{pa_t{data_area}, 4, false}};
        CHECK_FALSE(r.drv.add(one, true, pa_t{table_area}));  // indirect not negotiated
        CHECK(r.drv.free_descriptors() == 4);
        CHECK(r.drv.avail_idx() == 0);
        CHECK_FALSE(changed_outside(r.ram, before, {}));
    }
    SECTION("indirect refusals") {
        rig ri{4, {true, false}};
        const buffer one[1] = {{pa_t{data_area}, 4, false}};
        CHECK_FALSE(ri.drv.add(one, true, pa_t{ram_base + ram_size - 8}));  // table leaves RAM
        const buffer five[5] = {};
        CHECK_FALSE(ri.drv.add(five, true, pa_t{table_area}));  // longer than the queue size
        CHECK(ri.drv.add(one, true, pa_t{table_area}));
        CHECK(ri.drv.free_descriptors() == 3);
    }
    SECTION("a used id not in flight breaks the driver") {
        const buffer one[1] = {{pa_t{data_area}, 4, true}};
        auto h = r.drv.add(one);
        REQUIRE(h);
        virtio::vring_used_elem e;
        e.id = static_cast<std::uint32_t>(*h + 1);
        e.len = 4;
        REQUIRE(r.ram.write(pa_t{r.q.used.value + 4}, &e, sizeof e));
        put16(r.ram, r.q.used.value + 2, 1);
        CHECK_FALSE(r.drv.get_used());
        CHECK(r.drv.broken());
        CHECK_FALSE(r.drv.add(one));
    }
    SECTION("a used idx jumping by more than the queue size breaks the driver") {
        put16(r.ram, r.q.used.value + 2, 5);
        CHECK_FALSE(r.drv.get_used());
        CHECK(r.drv.broken());
    }
    SECTION("the same head returned twice breaks the driver") {
        const buffer one[1] = {{pa_t{data_area}, 4, true}};
        REQUIRE(r.drv.add(one));
        auto p = r.dev.pop();
        REQUIRE(p);
        r.dev.push_used(p->c.head, 0);
        r.dev.push_used(p->c.head, 0);
        CHECK(r.drv.get_used());
        CHECK_FALSE(r.drv.get_used());
        CHECK(r.drv.broken());
    }
}

TEST_CASE("virtqueue: chain_error names", "[virtqueue]") {
    CHECK(to_string(chain_error::none) == "none");
    CHECK(to_string(chain_error::loop_or_too_long) == "loop_or_too_long");
    CHECK(to_string(chain_error::too_large) == "too_large");
    CHECK(to_string(chain_error::indirect_bad_table) == "indirect_bad_table");
    CHECK(to_string(static_cast<chain_error>(200)) == "unknown");
}

TEST_CASE("virtqueue: both sides through a guest_view (GPA ≠ HPA)", "[virtqueue]") {
    guest_ram host{ram_size, pa_t{ram_base}};
    guest_view gpa_space{host, 0x8000'0000, ram_base + 0x10000, 0x10000};  // 64 KiB slot
    const queue_layout q = layout_at(pa_t{0x8000'0000}, 16, true);
    driver_queue<guest_view> drv(gpa_space, q, {true, true});
    device_queue<guest_view> dev(gpa_space, q, {true, true});
    using buffer = driver_queue<guest_view>::buffer;
    const bytes request = pattern(12, 3);
    REQUIRE(gpa_space.write(pa_t{0x8000'1000}, request.data(), request.size()));
    const buffer b[3] = {{pa_t{0x8000'1000}, 5, false}, {pa_t{0x8000'1005}, 7, false}, {pa_t{0x8000'2000}, 4, true}};
    auto head = drv.add(b, true, pa_t{0x8000'3000});
    REQUIRE(head);
    // A buffer at the HPA instead of the GPA is outside the slot.
    const buffer at_hpa[1] = {{pa_t{ram_base + 0x11000}, 4, false}};
    REQUIRE(drv.add(at_hpa));
    auto p = dev.pop();
    REQUIRE(p);
    REQUIRE(p->error == chain_error::none);
    CHECK(p->c.readable == request);
    CHECK(dev.write(p->c, 0, bytes{9, 8, 7, 6}));
    dev.push_used(p->c.head, 4);
    auto bad = dev.pop();
    REQUIRE(bad);
    CHECK(bad->error == chain_error::outside_memory);
    dev.push_used(bad->c.head, 0);
    CHECK(dev.needs_notify());
    CHECK(get(host, ram_base + 0x10000 + 0x2000, 4) == bytes{9, 8, 7, 6});  // landed at the HPA
    auto u = drv.get_used();
    REQUIRE(u);
    CHECK(u->id == *head);
    CHECK(u->len == 4);
    REQUIRE(drv.get_used());
    CHECK(drv.free_descriptors() == 16);
}
