// SPDX-License-Identifier: MIT
// The device's fast protocol (include/iopgtable/virtio/README.md "Fast protocol"): relaxed
// MAP/UNMAP (rules 1–3 and UNMAP carving), MAP_SG (all or nothing, framing), grouped requests
// (atomic, bounded, framing, G/L ignored without GROUPED), config_fast, and a rapidcheck
// property of relaxed MAP/UNMAP sequences against a page model. Every request goes through the
// simulated VM's requestq.
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <vector>

#include <catch2/catch.hpp>
#include <iopgtable/sim/machine.hpp>
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include "virtio/virtio_fixture.hpp"

using namespace iopgtable;
using namespace iopgtable::virtio;

namespace {

using namespace virtio_test;
using arm_machine = machine<arm_host>;
constexpr std::uint64_t page = 0x1000;
constexpr std::uint32_t rw = map_f_read | map_f_write;
constexpr std::uint64_t dma = arm_machine::dma_gpa;
constexpr std::uint64_t fast = feature(f_relaxed) | feature(f_map_sg) | feature(f_grouped);

/// A small machine offering the fast features; the driver accepts those in `accept`.
machine_settings settings(std::uint64_t accept = fast) {
    machine_settings s = small_machine();
    s.device.features |= fast;
    s.device.group_max = 8;
    s.device.map_sg_max = 16;
    s.driver_features = ~fast | accept;
    return s;
}

struct fast_vm {
    std::unique_ptr<arm_machine> m;
    explicit fast_vm(const machine_settings& s = settings()) {
        auto r = arm_machine::create(s);
        REQUIRE(r.ok());
        m = std::move(*r);
    }
    device<arm_host>& dev() { return m->dev(); }
    /// The used length and the status byte of a request with a 4-byte writable part.
    std::pair<std::uint32_t, named> raw(const bytes& in) {
        std::array<std::uint8_t, 4> out{0xee, 0xee, 0xee, 0xee};
        const std::uint32_t used = m->submit(in, out);
        return {used, named{static_cast<status>(out[0])}};
    }
    named send(const bytes& in) {
        auto [used, s] = raw(in);
        REQUIRE(used == 4);
        return s;
    }
    std::uint64_t hpa(std::uint64_t gpa) { return m->guest().hpa_base() + gpa; }
    std::optional<std::uint64_t> at(std::uint32_t ep, std::uint64_t iova) {
        const dma_result r = dev().translate(ep, iova, 1, nested::access_kind::read);
        if (!r.ok()) return std::nullopt;
        return r.ranges[0].hpa;
    }
    std::vector<mapping> mappings(std::uint32_t dom) {
        std::vector<mapping> v;
        const auto* t = dev().mappings(dom);
        REQUIRE(t != nullptr);
        for (const auto& [first, mp] : t->mappings()) v.push_back(mp);
        return v;
    }
};

bytes map_sg(std::uint32_t dom, std::uint64_t start, std::uint64_t size, std::uint32_t flags,
             const std::vector<std::uint64_t>& phys, std::optional<std::uint32_t> nr = std::nullopt) {
    req_map_sg r;
    r.head.type = static_cast<std::uint8_t>(req_type::map_sg);
    r.domain = dom;
    r.virt_start = start;
    r.size = size;
    r.flags = flags;
    r.nr_elems = nr.value_or(static_cast<std::uint32_t>(phys.size()));
    bytes v(sizeof r + phys.size() * 8);
    std::memcpy(v.data(), static_cast<const void*>(&r), sizeof r);
    for (std::size_t i = 0; i < phys.size(); ++i)
        for (unsigned b = 0; b < 8; ++b) v[sizeof r + i * 8 + b] = static_cast<std::uint8_t>(phys[i] >> (8 * b));
    return v;
}
/// Requests as one group: G on each, L on the last.
bytes group(const std::vector<bytes>& parts) {
    bytes v;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        bytes p = parts[i];
        p[1] = static_cast<std::uint8_t>(p[1] | (req_f_group >> 8) | (i + 1 == parts.size() ? req_f_last >> 8 : 0));
        v.insert(v.end(), p.begin(), p.end());
    }
    return v;
}
bytes with_head_bits(bytes b, std::uint32_t bits) {
    b[1] = static_cast<std::uint8_t>(b[1] | (bits >> 8));
    b[2] = static_cast<std::uint8_t>(b[2] | (bits >> 16));
    b[3] = static_cast<std::uint8_t>(b[3] | (bits >> 24));
    return b;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Relaxed MAP / UNMAP
// ---------------------------------------------------------------------------------------------

TEST_CASE("relaxed: (1) a MAP over nothing maps as usual; strict MAP over a mapping is still INVAL", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    CHECK(v.send(map(1, 0x10000, 0x1ffff, dma)) == st::ok);
    CHECK(v.at(0, 0x10000) == v.hpa(dma));
    CHECK(v.dev().iotlb_invalidations() == 0);

    fast_vm strict(settings(feature(f_map_sg) | feature(f_grouped)));  // RELAXED offered, not accepted
    REQUIRE(strict.send(attach(1, 0)) == st::ok);
    REQUIRE(strict.send(map(1, 0x10000, 0x1ffff, dma)) == st::ok);
    CHECK(strict.send(map(1, 0x18000, 0x27fff, dma + 0x100000)) == st::inval);
    CHECK(strict.send(unmap(1, 0x10000, 0x10fff)) == st::range);
}

TEST_CASE("relaxed: (2) a MAP over older mappings replaces the overlapped parts and invalidates them", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(map(1, 0x10000, 0x1ffff, dma)) == st::ok);            // A
    REQUIRE(v.send(map(1, 0x30000, 0x3ffff, dma + 0x40000, map_f_read)) == st::ok);  // B
    // Warm the IOTLB on the part that will change.
    REQUIRE(v.at(0, 0x18000) == v.hpa(dma + 0x8000));
    REQUIRE(v.at(0, 0x30000) == v.hpa(dma + 0x40000));
    // New: [0x18000, 0x33fff] overlaps A's tail and B's head.
    CHECK(v.send(map(1, 0x18000, 0x33fff, dma + 0x200000)) == st::ok);
    CHECK(v.dev().iotlb_invalidations() == 1);
    CHECK(v.dev().fast_stats().relaxed_replaced == 1);
    const auto ms = v.mappings(1);
    REQUIRE(ms.size() == 3);
    CHECK(ms[0] == mapping{0x10000, 0x17fff, dma, rw});
    CHECK(ms[1] == mapping{0x18000, 0x33fff, dma + 0x200000, rw});
    CHECK(ms[2] == mapping{0x34000, 0x3ffff, dma + 0x44000, map_f_read});
    CHECK(v.at(0, 0x17fff) == v.hpa(dma + 0x7fff));
    CHECK(v.at(0, 0x18000) == v.hpa(dma + 0x200000));  // not the stale IOTLB entry
    CHECK(v.at(0, 0x30000) == v.hpa(dma + 0x218000));
    CHECK(v.at(0, 0x34000) == v.hpa(dma + 0x44000));
    CHECK(v.at(0, 0x20000) == v.hpa(dma + 0x208000));  // the hole between A and B is mapped now
    // A write to B's remaining part is still refused (read-only kept).
    CHECK_FALSE(v.dev().translate(0, 0x34000, 1, nested::access_kind::write).ok());
}

TEST_CASE("relaxed: (2) a MAP inside one mapping splits it, a 2 MiB block included", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    const std::uint64_t base = 0x40000000, phys = dma & ~((std::uint64_t{2} << 20) - 1);
    REQUIRE(phys + (2u << 20) <= (48ull << 20));
    REQUIRE(v.send(map(1, base, base + (2u << 20) - 1, phys)) == st::ok);  // one 2 MiB block
    REQUIRE(v.dev().mappings(1)->lookup(base).size_lg2 == 21);
    CHECK(v.send(map(1, base + 0x5000, base + 0x5fff, dma + 0x300000)) == st::ok);
    const auto ms = v.mappings(1);
    REQUIRE(ms.size() == 3);
    CHECK(ms[0] == mapping{base, base + 0x4fff, phys, rw});
    CHECK(ms[1] == mapping{base + 0x5000, base + 0x5fff, dma + 0x300000, rw});
    CHECK(ms[2] == mapping{base + 0x6000, base + (2u << 20) - 1, phys + 0x6000, rw});
    for (std::uint64_t off : {0x0ull, 0x4fffull, 0x6000ull, (2ull << 20) - 1})
        CHECK(v.at(0, base + off) == v.hpa(phys + off));
    CHECK(v.at(0, base + 0x5800) == v.hpa(dma + 0x300800));
}

TEST_CASE("relaxed: (3) an exact repeat keeps the mapping and invalidates nothing", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(map(1, 0x10000, 0x1ffff, dma)) == st::ok);
    REQUIRE(v.at(0, 0x10000) == v.hpa(dma));
    const auto hits = v.dev().iotlb().hits();
    CHECK(v.send(map(1, 0x10000, 0x1ffff, dma)) == st::ok);
    CHECK(v.dev().fast_stats().relaxed_exact == 1);
    CHECK(v.dev().iotlb_invalidations() == 0);
    CHECK(v.at(0, 0x10000) == v.hpa(dma));
    CHECK(v.dev().iotlb().hits() == hits + 1);  // the cached translation survived
    // Same range and phys, other flags: not exact, replaced.
    CHECK(v.send(map(1, 0x10000, 0x1ffff, dma, map_f_read)) == st::ok);
    CHECK(v.dev().fast_stats().relaxed_exact == 1);
    CHECK(v.dev().iotlb_invalidations() == 1);
    CHECK_FALSE(v.dev().translate(0, 0x10000, 1, nested::access_kind::write).ok());
}

TEST_CASE("relaxed: UNMAP splits mappings and carves holes", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(map(1, 0x10000, 0x1ffff, dma)) == st::ok);
    REQUIRE(v.send(map(1, 0x20000, 0x2ffff, dma + 0x100000)) == st::ok);
    REQUIRE(v.at(0, 0x14000));
    CHECK(v.send(unmap(1, 0x14000, 0x14fff)) == st::ok);  // a hole inside the first
    CHECK(v.send(unmap(1, 0x1c000, 0x23fff)) == st::ok);  // across both
    CHECK(v.dev().iotlb_invalidations() == 2);
    const auto ms = v.mappings(1);
    REQUIRE(ms.size() == 3);
    CHECK(ms[0] == mapping{0x10000, 0x13fff, dma, rw});
    CHECK(ms[1] == mapping{0x15000, 0x1bfff, dma + 0x5000, rw});
    CHECK(ms[2] == mapping{0x24000, 0x2ffff, dma + 0x104000, rw});
    CHECK_FALSE(v.at(0, 0x14000));
    CHECK_FALSE(v.at(0, 0x20000));
    CHECK(v.at(0, 0x15000) == v.hpa(dma + 0x5000));
    CHECK(v.at(0, 0x24000) == v.hpa(dma + 0x104000));
    // Nothing there: OK, nothing invalidated.
    CHECK(v.send(unmap(1, 0x80000, 0x8ffff)) == st::ok);
    CHECK(v.dev().iotlb_invalidations() == 2);
}

TEST_CASE("relaxed: a MAP or UNMAP that needs more mappings than the cap is NOMEM and changes nothing",
          "[virtio][fast]") {
    machine_settings s = settings();
    s.device.max_mappings = 2;
    fast_vm v(s);
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(map(1, 0x10000, 0x1ffff, dma)) == st::ok);
    CHECK(v.send(map(1, 0x14000, 0x14fff, dma + 0x100000)) == st::nomem);  // would be 3
    CHECK(v.send(unmap(1, 0x14000, 0x14fff)) == st::ok);                    // 2: fits
    CHECK(v.send(unmap(1, 0x11000, 0x11fff)) == st::nomem);                 // 3
    const auto ms = v.mappings(1);
    REQUIRE(ms.size() == 2);
    CHECK(v.at(0, 0x11000) == v.hpa(dma + 0x1000));
}

// ---------------------------------------------------------------------------------------------
// MAP_SG
// ---------------------------------------------------------------------------------------------

TEST_CASE("MAP_SG maps virt_start + i*size to phys[i]", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    CHECK(v.send(map_sg(1, 0x100000, 0x2000, rw, {dma + 0x10000, dma + 0x4000, dma + 0x80000})) == st::ok);
    const auto ms = v.mappings(1);
    REQUIRE(ms.size() == 3);
    CHECK(ms[1] == mapping{0x102000, 0x103fff, dma + 0x4000, rw});
    CHECK(v.at(0, 0x100000) == v.hpa(dma + 0x10000));
    CHECK(v.at(0, 0x103fff) == v.hpa(dma + 0x5fff));
    CHECK(v.at(0, 0x104000) == v.hpa(dma + 0x80000));
    CHECK(v.dev().fast_stats().map_sg == 1);
    CHECK(v.dev().fast_stats().map_sg_elems == 3);
}

TEST_CASE("MAP_SG is all or nothing", "[virtio][fast]") {
    fast_vm v(settings(feature(f_map_sg)));  // strict MAP rules
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(map(1, 0x106000, 0x106fff, dma)) == st::ok);
    // The fourth element overlaps the existing mapping: INVAL, the first three undone.
    CHECK(v.send(map_sg(1, 0x100000, 0x2000, rw, {dma, dma + 0x2000, dma + 0x4000, dma + 0x6000})) == st::inval);
    CHECK(v.mappings(1).size() == 1);
    CHECK_FALSE(v.at(0, 0x100000));
    // A misaligned phys in the middle: RANGE, nothing stays.
    CHECK(v.send(map_sg(1, 0x200000, 0x1000, rw, {dma, dma + 0x1800, dma + 0x3000})) == st::range);
    CHECK(v.mappings(1).size() == 1);
    CHECK_FALSE(v.at(0, 0x200000));
    CHECK(v.dev().fast_stats().rollbacks >= 3);
}

TEST_CASE("MAP_SG with relaxed rules: elements replace, a failure restores what they replaced", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(map(1, 0x100000, 0x10ffff, dma)) == st::ok);
    // The fourth element lies beyond the input range: the three before it are undone.
    const std::uint64_t beyond = std::uint64_t{1} << 48;
    CHECK(v.send(map_sg(1, beyond - 0x3000, 0x1000, rw, {dma + 0x300000, dma + 0x301000, dma + 0x302000, dma})) ==
          st::range);
    // The third has a misaligned phys: the two before it replaced parts of the mapping, and
    // those parts are back.
    REQUIRE(v.at(0, 0x104000) == v.hpa(dma + 0x4000));
    CHECK(v.send(map_sg(1, 0x104000, 0x1000, rw, {dma + 0x300000, dma + 0x301000, dma + 0x800})) == st::range);
    const auto ms = v.mappings(1);
    REQUIRE(ms.size() == 1);
    CHECK(ms[0] == mapping{0x100000, 0x10ffff, dma, rw});
    CHECK(v.at(0, 0x104000) == v.hpa(dma + 0x4000));
    // A good one replaces.
    CHECK(v.send(map_sg(1, 0x104000, 0x1000, rw, {dma + 0x300000, dma + 0x301000})) == st::ok);
    CHECK(v.at(0, 0x104000) == v.hpa(dma + 0x300000));
    CHECK(v.mappings(1).size() == 4);
}

TEST_CASE("MAP_SG framing and refusals", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    CHECK(v.send(map_sg(1, 0x100000, 0x1000, rw, {})) == st::inval);  // nr_elems 0
    CHECK(v.send(map_sg(1, 0x100000, 0x1000, rw, std::vector<std::uint64_t>(17, dma))) == st::inval);  // > map_sg_max
    CHECK(v.send(map_sg(1, 0x100000, 0x1000, rw, {dma, dma + 0x1000}, 3)) == st::inval);  // shorter than nr_elems says
    CHECK(v.send(map_sg(1, 0x100000, 0x1000, rw, {dma, dma + 0x1000}, 1)) == st::inval);  // longer
    CHECK(v.send(map_sg(1, 0x100000, 0, rw, {dma})) == st::inval);                       // size 0
    CHECK(v.send(map_sg(1, 0x100000, 0x1000, rw | 0x100, {dma})) == st::inval);          // unknown flag
    CHECK(v.send(map_sg(1, ~std::uint64_t{0} - 0x1fff, 0x1000, rw, {dma, dma, dma})) == st::range);  // wraps
    CHECK(v.send(map_sg(9, 0x100000, 0x1000, rw, {dma})) == st::noent);
    CHECK(v.mappings(1).empty());
    // Shorter than the fixed part: unanswered.
    bytes short_req = map_sg(1, 0x100000, 0x1000, rw, {dma});
    short_req.resize(20);
    CHECK(v.raw(short_req).first == 0);
    // Offered but not negotiated: UNSUPP; not offered: unanswered.
    fast_vm off(settings(feature(f_relaxed)));
    REQUIRE(off.send(attach(1, 0)) == st::ok);
    CHECK(off.send(map_sg(1, 0x100000, 0x1000, rw, {dma})) == st::unsupp);
    machine_settings none = settings();
    none.device.features &= ~feature(f_map_sg);
    fast_vm no(none);
    CHECK(no.raw(map_sg(1, 0x100000, 0x1000, rw, {dma})).first == 0);
}

// ---------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------

TEST_CASE("group: all succeed, one tail OK", "[virtio][fast]") {
    fast_vm v;
    const auto [used, s] = v.raw(group({attach(1, 0), map(1, 0x10000, 0x10fff, dma), map(1, 0x20000, 0x20fff, dma + 0x1000),
                                        attach(2, 1), map(2, 0x10000, 0x10fff, dma + 0x2000)}));
    CHECK(used == 4);
    CHECK(s == st::ok);
    CHECK(v.at(0, 0x20000) == v.hpa(dma + 0x1000));
    CHECK(v.at(1, 0x10000) == v.hpa(dma + 0x2000));
    CHECK(v.dev().fast_stats().groups == 1);
    CHECK(v.dev().stats().by_type_status[static_cast<std::uint8_t>(req_type::map)][0] == 3);
}

TEST_CASE("group: a failure in the middle leaves no trace", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(map(1, 0x10000, 0x1ffff, dma)) == st::ok);
    REQUIRE(v.send(attach(3, 2)) == st::ok);
    REQUIRE(v.send(map(3, 0x50000, 0x50fff, dma + 0x9000)) == st::ok);
    REQUIRE(v.at(0, 0x10000) == v.hpa(dma));
    const auto before1 = v.mappings(1), before3 = v.mappings(3);
    // Moves endpoint 0 into a new domain 2 (domain 1 is freed), unmaps part of domain 3, detaches
    // endpoint 2 (domain 3 is freed), maps in 2 and replaces in 1 ... then a MAP to an unknown
    // domain fails: NOENT, and everything is as before.
    const auto [used, s] = v.raw(group({attach(2, 0), map(2, 0x10000, 0x10fff, dma + 0x5000),
                                        unmap(3, 0x50000, 0x50fff), detach(3, 2), map(2, 0x30000, 0x30fff, dma),
                                        map(9, 0, 0xfff, dma)}));
    CHECK(used == 4);
    CHECK(s == st::noent);
    CHECK(v.dev().fast_stats().groups_failed == 1);
    CHECK(v.dev().domain_of(0) == 1u);
    CHECK(v.dev().domain_of(2) == 3u);
    CHECK(v.dev().mappings(2) == nullptr);
    CHECK(v.mappings(1) == before1);
    CHECK(v.mappings(3) == before3);
    CHECK(v.dev().domain_count() == 2);
    CHECK(v.at(0, 0x10000) == v.hpa(dma));
    CHECK(v.at(2, 0x50000) == v.hpa(dma + 0x9000));
    // The restored domains still work: a DETACH frees domain 3 for real.
    CHECK(v.send(detach(3, 2)) == st::ok);
    CHECK(v.dev().domain_count() == 1);
}

TEST_CASE("group: relaxed replacements and MAP_SG inside a failing group are undone", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(map(1, 0x100000, 0x1fffff, dma)) == st::ok);
    const auto before = v.mappings(1);
    REQUIRE(v.at(0, 0x180000) == v.hpa(dma + 0x80000));
    const auto [used, s] =
        v.raw(group({map(1, 0x180000, 0x180fff, dma + 0x400000), unmap(1, 0x100000, 0x13ffff),
                     map_sg(1, 0x1f0000, 0x1000, rw, {dma + 0x500000, dma + 0x501000}),
                     map(1, 0x1000, 0x1fff, dma + 0x800, rw)}));  // misaligned phys: RANGE
    CHECK(used == 4);
    CHECK(s == st::range);
    CHECK(v.mappings(1) == before);
    for (std::uint64_t off = 0; off < 0x100000; off += 0x10000) CHECK(v.at(0, 0x100000 + off) == v.hpa(dma + off));
    CHECK(v.at(0, 0x180000) == v.hpa(dma + 0x80000));  // not the undone replacement (IOTLB too)
}

TEST_CASE("group: framing refusals run nothing", "[virtio][fast]") {
    fast_vm v;
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    std::vector<bytes> nine;
    for (std::uint64_t i = 0; i < 9; ++i) nine.push_back(map(1, i * page, i * page + page - 1, dma + i * page));
    CHECK(v.send(group(nine)) == st::inval);  // group_max is 8
    nine.pop_back();
    bytes no_last = group(nine);
    no_last[no_last.size() - offsetof(req_map, tail) + 1] &= static_cast<std::uint8_t>(~(req_f_last >> 8));
    CHECK(v.send(no_last) == st::inval);
    bytes trailing = group({map(1, 0, 0xfff, dma)});
    trailing.push_back(0);
    CHECK(v.send(trailing) == st::inval);
    bytes no_g = group({map(1, 0, 0xfff, dma), map(1, 0x1000, 0x1fff, dma)});
    no_g[offsetof(req_map, tail) + 1] = static_cast<std::uint8_t>(req_f_last >> 8);  // second: L without G
    CHECK(v.send(no_g) == st::inval);
    CHECK(v.send(with_head_bits(group({map(1, 0, 0xfff, dma)}), 1u << 10)) == st::inval);  // unknown head bit
    bytes probe_in_group(sizeof(req_probe), 0);
    probe_in_group[0] = static_cast<std::uint8_t>(req_type::probe);
    CHECK(v.send(group({map(1, 0, 0xfff, dma), probe_in_group})) == st::inval);  // not groupable
    CHECK(v.send(group({map(1, 0, 0xfff, dma), invalidate(1, 0)})) == st::inval);
    CHECK(v.mappings(1).empty());
    CHECK(v.dev().fast_stats().groups == 0);
    // Eight fit.
    CHECK(v.send(group(nine)) == st::ok);
    CHECK(v.mappings(1).size() == 8);
}

TEST_CASE("group: G and L are ignored without GROUPED, refused alone with it when unknown", "[virtio][fast]") {
    fast_vm v(settings(feature(f_relaxed)));  // GROUPED offered, not negotiated
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    CHECK(v.send(with_head_bits(map(1, 0, 0xfff, dma), req_f_group | req_f_last | (1u << 12))) == st::ok);
    CHECK(v.mappings(1).size() == 1);
    fast_vm g;
    REQUIRE(g.send(attach(1, 0)) == st::ok);
    CHECK(g.send(with_head_bits(map(1, 0, 0xfff, dma), req_f_last)) == st::inval);  // L without G
    CHECK(g.send(with_head_bits(map(1, 0, 0xfff, dma), 1u << 20)) == st::inval);    // reserved bit
    CHECK(g.mappings(1).empty());
    CHECK(g.send(with_head_bits(map(1, 0, 0xfff, dma), req_f_group | req_f_last)) == st::ok);  // a group of one
    CHECK(g.mappings(1).size() == 1);
}

TEST_CASE("config_fast follows the spec's 40 bytes, fields of features not offered zero", "[virtio][fast]") {
    machine_settings s = settings();
    s.device.relaxed_window_us = 7000;
    fast_vm v(s);
    std::array<std::uint8_t, 16> b{};
    v.dev().read_config(config_fast_offset, b);
    config_fast c;
    std::memcpy(static_cast<void*>(&c), b.data(), sizeof c);
    CHECK(c.relaxed_window_us.get() == 7000);
    CHECK(c.group_max.get() == 8);
    CHECK(c.map_sg_max.get() == 16);
    machine_settings plain = settings();
    plain.device.features &= ~fast;
    fast_vm p(plain);
    p.dev().read_config(config_fast_offset, b);
    CHECK(std::all_of(b.begin(), b.end(), [](std::uint8_t x) { return x == 0; }));
}

// ---------------------------------------------------------------------------------------------
// Relaxed MAP / UNMAP against a page model
// ---------------------------------------------------------------------------------------------

TEST_CASE("relaxed MAP/UNMAP sequences agree with a page model", "[virtio][fast][property]") {
    rc::prop("translations and the mapping list follow the relaxed rules", [] {
        fast_vm v;
        RC_ASSERT(v.send(attach(1, 0)) == st::ok);
        constexpr std::uint64_t pages = 48, base = 0x40000000;
        struct cell {
            std::uint64_t phys;
            std::uint32_t flags;
        };
        std::map<std::uint64_t, cell> model;  // page index → translation
        const auto ops = *rc::gen::container<std::vector<std::tuple<int, unsigned, unsigned, unsigned, int>>>(
            rc::gen::tuple(rc::gen::inRange(0, 4), rc::gen::inRange(0u, unsigned{pages}), rc::gen::inRange(1u, 17u),
                           rc::gen::inRange(0u, 64u), rc::gen::inRange(0, 3)));
        for (const auto& [kind, first, count, target, fl] : ops) {
            const unsigned n = std::min<unsigned>(count, unsigned{pages} - first);
            const std::uint64_t va = base + first * page, last = va + n * page - 1;
            // 2 MiB-aligned targets now and then, so that blocks appear and get split.
            const std::uint64_t phys = dma + (fl == 2 ? 0x100000 : 0) + target * page;
            const std::uint32_t flags = fl == 1 ? map_f_read : rw;
            if (kind == 3) {  // a 2 MiB block over the whole window, split by what follows
                const std::uint64_t block = (dma & ~0x1fffffull) + (2u << 20);
                RC_ASSERT(v.send(map(1, base, base + (2u << 20) - 1, block, rw)) == st::ok);
                for (std::uint64_t i = 0; i < 512; ++i) model[i] = cell{block + i * page, rw};
            } else if (kind == 2) {
                RC_ASSERT(v.send(unmap(1, va, last)) == st::ok);
                for (unsigned i = 0; i < n; ++i) model.erase(first + i);
            } else {
                RC_ASSERT(v.send(map(1, va, last, phys, flags)) == st::ok);
                for (unsigned i = 0; i < n; ++i) model[first + i] = cell{phys + i * page, flags};
            }
            for (std::uint64_t p = 0; p < pages; ++p) {
                const auto got = v.dev().translate(0, base + p * page, 1, nested::access_kind::read);
                const auto w = v.dev().translate(0, base + p * page, 1, nested::access_kind::write);
                auto it = model.find(p);
                if (it == model.end()) {
                    RC_ASSERT(!got.ok());
                } else {
                    RC_ASSERT(got.ok());
                    RC_ASSERT(got.ranges[0].hpa == v.hpa(it->second.phys));
                    RC_ASSERT(w.ok() == (it->second.flags == rw));
                }
            }
            // The list: disjoint, covering exactly the model's pages, each consistent with it.
            std::uint64_t covered = 0, prev_last = 0;
            bool first_m = true;
            for (const auto& m : v.mappings(1)) {
                RC_ASSERT((first_m || m.first > prev_last));
                first_m = false;
                prev_last = m.last;
                for (std::uint64_t a = m.first; a <= m.last; a += page) {
                    auto it = model.find((a - base) / page);
                    RC_ASSERT(it != model.end());
                    RC_ASSERT(it->second.phys == m.phys + (a - m.first));
                    RC_ASSERT(it->second.flags == m.flags);
                    ++covered;
                }
            }
            RC_ASSERT(covered == model.size());
        }
    });
}
