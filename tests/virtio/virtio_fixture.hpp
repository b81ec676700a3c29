// SPDX-License-Identifier: MIT
#pragma once
// What the virtio device tests share (virtio_device.cpp, virtio_sharing.cpp): statuses that
// print by name, and the device-readable bytes of each request with every field settable
// (reserved bytes and flags included, so that refusals can be provoked).
#include <cstdint>
#include <cstring>
#include <ostream>
#include <vector>

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

} // namespace virtio_test
