// SPDX-License-Identifier: MIT
#pragma once
// What the virtio device tests share (virtio_device.cpp, virtio_sharing.cpp, ...): statuses
// that print by name, the device-readable bytes of each request with every field settable
// (reserved bytes and flags included, so that refusals can be provoked), and `vm`, a simulated
// machine driven through its request queue.
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include <iopgtable/sim/machine.hpp>

namespace virtio_test {

using namespace iopgtable;
using namespace iopgtable::virtio;

/// A status as Catch prints it (by name). A type of these tests only: a StringMaker or
/// operator<< for virtio::status itself would clash with other test files (ODR).
struct named {
    status s;
    friend bool operator==(named a, named b) noexcept { return a.s == b.s; }
    friend std::ostream& operator<<(std::ostream& os, named n) { return os << to_string(n.s); }
};
namespace st {
constexpr named ok{status::ok}, unsupp{status::unsupp}, inval{status::inval}, range{status::range},
    noent{status::noent}, nomem{status::nomem};
} // namespace st

using bytes = std::vector<std::uint8_t>;

// ---- wire helpers (the device-readable part of each request) ----

template <class Req>
bytes readable(const Req& r) {
    bytes v(sizeof(Req) - sizeof(req_tail));
    std::memcpy(v.data(), static_cast<const void*>(&r), v.size());
    return v;
}
inline bytes attach(std::uint32_t dom, std::uint32_t ep, std::uint32_t flags = 0, std::uint8_t reserved = 0) {
    req_attach r;
    r.head.type = static_cast<std::uint8_t>(req_type::attach);
    r.domain = dom;
    r.endpoint = ep;
    r.flags = flags;
    r.reserved[3] = reserved;
    return readable(r);
}
inline bytes detach(std::uint32_t dom, std::uint32_t ep, std::uint8_t reserved = 0) {
    req_detach r;
    r.head.type = static_cast<std::uint8_t>(req_type::detach);
    r.domain = dom;
    r.endpoint = ep;
    r.reserved[7] = reserved;
    return readable(r);
}
inline bytes map(std::uint32_t dom, std::uint64_t first, std::uint64_t last, std::uint64_t phys,
                 std::uint32_t flags = map_f_read | map_f_write) {
    req_map r;
    r.head.type = static_cast<std::uint8_t>(req_type::map);
    r.domain = dom;
    r.virt_start = first;
    r.virt_end = last;
    r.phys_start = phys;
    r.flags = flags;
    return readable(r);
}
inline bytes unmap(std::uint32_t dom, std::uint64_t first, std::uint64_t last, std::uint8_t reserved = 0) {
    req_unmap r;
    r.head.type = static_cast<std::uint8_t>(req_type::unmap);
    r.domain = dom;
    r.virt_start = first;
    r.virt_end = last;
    r.reserved[0] = reserved;
    return readable(r);
}
inline bytes invalidate(std::uint32_t dom, std::uint32_t flags, std::uint64_t va = 0, std::uint64_t size = 0,
                 std::uint32_t context = 0) {
    req_invalidate r;
    r.head.type = static_cast<std::uint8_t>(req_type::invalidate);
    r.address_space = dom;
    r.context = context;
    r.flags = flags;
    r.virt_addr = va;
    r.range_size = size;
    return readable(r);
}

// ---- a machine ----

/// A small machine: 48 MiB of guest RAM, a 1 MiB stage-2 pool, four endpoints.
inline machine_settings small_machine() {
    machine_settings s;
    s.ram_size = 48ull << 20;
    s.stage2_pool = 1ull << 20;
    s.device.endpoints = 4;
    return s;
}

/// A machine and the guest's view of it: requests through the requestq, DMA translations.
template <class Host = arm_host>
struct vm {
    std::unique_ptr<machine<Host>> m;
    explicit vm(const machine_settings& s = small_machine()) {
        auto r = machine<Host>::create(s);
        REQUIRE(r.ok());
        m = std::move(*r);
    }
    device<Host>& dev() { return m->dev(); }
    /// Sends a request whose writable part is the tail; requires used length 4 and a zero
    /// tail.reserved; returns the status.
    named send(const bytes& in) {
        std::array<std::uint8_t, 4> out{0xee, 0xee, 0xee, 0xee};
        const std::uint32_t used = m->submit(in, out);
        REQUIRE(used == 4);
        CHECK(out[1] == 0);
        CHECK(out[2] == 0);
        CHECK(out[3] == 0);
        return named{static_cast<status>(out[0])};
    }
    named send(const req_attach_table& r) { return send(readable(r)); }
    /// The used length of a request with `writable` bytes of writable space (reply in `out`).
    std::uint32_t used(std::span<const std::uint8_t> in, std::uint32_t writable, bytes* out = nullptr) {
        bytes local(writable, 0xee);
        bytes& o = out ? *out : local;
        o.assign(writable, 0xee);
        return m->raw(in, writable, o);
    }
    std::uint64_t hpa(std::uint64_t gpa) { return m->guest().hpa_base() + gpa; }
    dma_result tr(std::uint32_t ep, std::uint64_t iova, std::uint64_t size = 1,
                  nested::access_kind a = nested::access_kind::read) {
        return dev().translate(ep, iova, size, a);
    }
    /// The host-physical address of one byte, or nothing when it faults.
    std::optional<std::uint64_t> at(std::uint32_t ep, std::uint64_t iova, nested::access_kind a = nested::access_kind::read) {
        const dma_result r = tr(ep, iova, 1, a);
        if (!r.ok()) return std::nullopt;
        REQUIRE(r.count == 1);
        return r.ranges[0].hpa;
    }
    /// The mappings of a MAP domain as (first, last) pairs.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> mappings(std::uint32_t dom) {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> v;
        const auto* t = dev().mappings(dom);
        REQUIRE(t != nullptr);
        for (const auto& [first, mp] : t->mappings()) v.emplace_back(first, mp.last);
        return v;
    }
};

} // namespace virtio_test
