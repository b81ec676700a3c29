// SPDX-License-Identifier: MIT
#pragma once
/// @file driver.hpp
/// The guest side of virtio-iommu: what a driver puts on the request queue and how it reads
/// what comes back, following the specification's driver rules (virtio 1.2/1.3, 5.13), plus
/// this project's page-table sharing (formats/README.md, "Page-table sharing registry").
///
/// - request builders: the exact bytes of each request's device-readable part and the size of
///   its device-writable part (5.13.6 "Device operations" and its subsections);
/// - `negotiate_features`: the feature bits a driver accepts (5.13.3.1, 5.13.5.1);
/// - `parse_probe`, `parse_fault`: PROBE properties and fault events as a driver must read
///   them from a device it does not trust (5.13.6.7.1, 5.13.6.8.1.1, 5.13.6.9.1);
/// - `driver`: one request at a time over a `request_transport`, with the used-length rules
///   (5.13.6.1) and counters;
/// - `shared_table`: a guest stage-1 table shared with the device (ATTACH_TABLE), written
///   through stage 2, with the invalidations the sharing protocol asks for;
/// - the fast protocol (README.md, "Fast protocol"): `map_sg_request`, `group_request`,
///   `parse_config_fast`, `driver::map_sg` / `driver::send_group`, and `deferred_unmapper`,
///   a relaxed guest's buffer of unmaps sent within the vulnerability window;
/// - page requests (README.md "Page requests"): `parse_page_request`, `page_reply_request`,
///   `driver::page_reply`, and `shared_table::resolve`, the guest's fault handler's way to map
///   the page and reply.
///
/// Section numbers are those of the specification's `device-types/iommu/description.tex`:
/// 5.13.6.1 driver requirements of all requests, .3 ATTACH, .4 DETACH, .5 MAP, .6 UNMAP,
/// .7 PROBE, .8 PROBE properties (.8.1 RESV_MEM), .9 fault reporting.
#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/address.hpp"
#include "../core/le.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"
#include "../engine/flush.hpp"
#include "../engine/format.hpp"
#include "../engine/page_table.hpp"
#include "../mem/memory.hpp"
#include "../nested/stage.hpp"
#include "../nested/stage2_view.hpp"
#include "../nested/walk_cache.hpp"
#include "../sharing/descriptors.hpp"
#include "../sharing/negotiation.hpp"
#include "wire.hpp"

namespace iopgtable::virtio {

// ---------------------------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------------------------

/// One request as a driver queues it: the device-readable bytes (head and body, 5.13.6), and
/// how many device-writable bytes follow them (the tail, preceded by PROBE's properties or
/// PROBE_TABLE's reply). The writable part is the driver's buffer; only its size is here.
struct request {
    std::vector<std::uint8_t> readable;
    std::uint32_t writable_len = 0;
};

namespace detail {
/// The first `readable` bytes of the wire struct `r` (head reserved bytes zero, as 5.13.6.1 asks).
template <class R>
request make_request(const R& r, std::size_t readable, std::uint32_t writable) {
    static_assert(std::is_trivially_copyable_v<R>);
    request out;
    out.readable.resize(readable);
    std::memcpy(out.readable.data(), &r, readable);
    out.writable_len = writable;
    return out;
}
constexpr std::uint64_t bit(unsigned n) noexcept { return std::uint64_t{1} << n; }
} // namespace detail

/// ATTACH (5.13.6.3): `endpoint` into `domain`; `bypass` sets ATTACH_F_BYPASS (only with
/// BYPASS_CONFIG negotiated, and exactly when the domain is or becomes a bypass domain).
/// 20 readable bytes, 4 writable (the tail). Reserved fields zero.
inline request attach_request(std::uint32_t domain, std::uint32_t endpoint, bool bypass = false) {
    req_attach r;
    r.head.type = static_cast<std::uint8_t>(req_type::attach);
    r.domain = domain;
    r.endpoint = endpoint;
    r.flags = bypass ? attach_f_bypass : 0u;
    return detail::make_request(r, offsetof(req_attach, tail), sizeof(req_tail));
}

/// DETACH (5.13.6.4): `endpoint` from `domain`. 20 readable bytes, 4 writable.
inline request detach_request(std::uint32_t domain, std::uint32_t endpoint) {
    req_detach r;
    r.head.type = static_cast<std::uint8_t>(req_type::detach);
    r.domain = domain;
    r.endpoint = endpoint;
    return detail::make_request(r, offsetof(req_detach, tail), sizeof(req_tail));
}

/// MAP (5.13.6.5): [virt_start, virt_end] (inclusive) to phys_start with `flags` (map_f_*).
/// Built as given: the driver rules (virt_end > virt_start, READ when reads are wanted, MMIO
/// only with F_MMIO, within input_range) are the caller's. 36 readable bytes, 4 writable.
inline request map_request(std::uint32_t domain, std::uint64_t virt_start, std::uint64_t virt_end,
                           std::uint64_t phys_start, std::uint32_t flags) {
    req_map r;
    r.head.type = static_cast<std::uint8_t>(req_type::map);
    r.domain = domain;
    r.virt_start = virt_start;
    r.virt_end = virt_end;
    r.phys_start = phys_start;
    r.flags = flags;
    return detail::make_request(r, offsetof(req_map, tail), sizeof(req_tail));
}

/// UNMAP (5.13.6.6): every mapping of `domain` entirely inside [virt_start, virt_end]
/// (inclusive). 28 readable bytes, 4 writable.
inline request unmap_request(std::uint32_t domain, std::uint64_t virt_start, std::uint64_t virt_end) {
    req_unmap r;
    r.head.type = static_cast<std::uint8_t>(req_type::unmap);
    r.domain = domain;
    r.virt_start = virt_start;
    r.virt_end = virt_end;
    return detail::make_request(r, offsetof(req_unmap, tail), sizeof(req_tail));
}

/// PROBE (5.13.6.7) of `endpoint`: 72 readable bytes; writable: `probe_size` bytes of
/// properties (the config field; the spec says exactly that many), then the tail.
/// Precondition: probe_size <= 2^32 - 5 (`driver::probe` caps it far lower).
inline request probe_request(std::uint32_t endpoint, std::uint32_t probe_size) {
    req_probe r;
    r.head.type = static_cast<std::uint8_t>(req_type::probe);
    r.endpoint = endpoint;
    return detail::make_request(r, sizeof(req_probe), probe_size + std::uint32_t{sizeof(req_tail)});
}

/// PROBE_TABLE (this project's) of `endpoint` with `flags` (table_f_*): 12 readable bytes;
/// writable: the 8-byte reply header, room for `n_formats` pg_format entries (68 bytes each),
/// then the tail. Precondition: n_formats <= (2^32 - 12) / 68.
inline request probe_table_request(std::uint32_t endpoint, std::uint32_t flags, std::uint32_t n_formats) {
    req_probe_table r;
    r.head.type = static_cast<std::uint8_t>(req_type::probe_table);
    r.address_space = endpoint;
    r.flags = flags;
    const auto writable = static_cast<std::uint32_t>(sizeof(probe_table_reply) + std::size_t{n_formats} * sizeof(pg_format) +
                                                     sizeof(req_tail));
    return detail::make_request(r, sizeof(req_probe_table), writable);
}

/// ATTACH_TABLE (this project's): `req` as given (address_space = the domain, as
/// `sharing::make_attach_table` leaves it to the caller), with head.type set to ATTACH_TABLE
/// and the head's reserved bytes zeroed. 92 readable bytes, 4 writable.
inline request attach_table_request(const req_attach_table& req) {
    req_attach_table r = req;
    r.head = req_head{};
    r.head.type = static_cast<std::uint8_t>(req_type::attach_table);
    return detail::make_request(r, offsetof(req_attach_table, tail), sizeof(req_tail));
}

/// INVALIDATE (this project's) in the table attached to `domain`: `kind` VADDR names
/// [virt_addr, virt_addr + range_size) of `context`; SINGLE all of `context` (address and size
/// then 0 by convention); TABLE the context table. `opaque` zero. 96 readable bytes, 4 writable.
inline request invalidate_request(std::uint32_t domain, std::uint32_t context, invalidate_kind kind,
                                  std::uint64_t virt_addr = 0, std::uint64_t range_size = 0) {
    req_invalidate r;
    r.head.type = static_cast<std::uint8_t>(req_type::invalidate);
    r.address_space = domain;
    r.context = context;
    r.flags = static_cast<std::uint32_t>(kind);
    r.virt_addr = virt_addr;
    r.range_size = range_size;
    return detail::make_request(r, offsetof(req_invalidate, tail), sizeof(req_tail));
}

/// PAGE_REPLY (this project's, feature PAGE_REQUESTS; README.md "Page requests"): the answer
/// to page request `id`, which named `domain`: `reply` page_reply_handled (the guest mapped
/// the page at guest-physical `paddr` and invalidated as usual) or page_reply_failed.
/// Reserved bytes zero. 28 readable bytes, 4 writable.
inline request page_reply_request(std::uint32_t domain, std::uint32_t id, std::uint32_t reply, std::uint64_t paddr = 0) {
    req_page_reply r;
    r.head.type = static_cast<std::uint8_t>(req_type::page_reply);
    r.address_space = domain;
    r.id = id;
    r.reply = reply;
    r.paddr = paddr;
    return detail::make_request(r, offsetof(req_page_reply, tail), sizeof(req_tail));
}

/// MAP_SG (this project's, feature MAP_SG; README.md "Fast protocol"): maps
/// [virt_start + i·size, virt_start + (i+1)·size) to phys[i] for each i, all or nothing, with
/// `flags` (map_f_*). Readable: the 32 fixed bytes of req_map_sg, then phys[] as le64, so
/// 32 + 8·phys.size() bytes; writable: the tail. Built as given (size, alignment, the device's
/// map_sg_max are the caller's). Precondition: phys.size() < 2^32.
inline request map_sg_request(std::uint32_t domain, std::uint64_t virt_start, std::uint64_t size, std::uint32_t flags,
                              std::span<const std::uint64_t> phys) {
    req_map_sg r;
    r.head.type = static_cast<std::uint8_t>(req_type::map_sg);
    r.domain = domain;
    r.virt_start = virt_start;
    r.size = size;
    r.flags = flags;
    r.nr_elems = static_cast<std::uint32_t>(phys.size());
    request out = detail::make_request(r, sizeof(req_map_sg), sizeof(req_tail));
    out.readable.resize(sizeof(req_map_sg) + phys.size() * sizeof(le64));
    std::uint8_t* at = out.readable.data() + sizeof(req_map_sg);
    for (const std::uint64_t p : phys) {
        const le64 v{p};
        std::memcpy(at, v.bytes.data(), sizeof v);
        at += sizeof v;
    }
    return out;
}

/// One grouped chain (feature GROUPED; README.md "Fast protocol") of `parts` in order: each
/// part's readable bytes back to back, the head's first le32 word of each with bits 8–31
/// replaced by G (and L on the last), then ONE tail as the whole writable part. The device
/// answers one status: OK, or the first failing part's, after undoing the whole group.
/// Refusals (INVAL, nothing built): no part ("group: empty"); a part whose writable part is
/// not exactly a tail, or whose readable part is shorter than a head ("group: part"), such as
/// PROBE or PROBE_TABLE. A part of a type the device does not group (`groupable`) is built as
/// given, so that tests can send what a buggy guest would; the device's group_max likewise.
inline checked<request> group_request(std::span<const request> parts) {
    if (parts.empty()) return refusal{status::inval, "group: empty"};
    request out;
    out.writable_len = sizeof(req_tail);
    for (std::size_t i = 0; i < parts.size(); ++i) {
        const request& p = parts[i];
        if (p.writable_len != sizeof(req_tail) || p.readable.size() < sizeof(req_head))
            return refusal{status::inval, "group: part"};
        const std::size_t at = out.readable.size();
        out.readable.insert(out.readable.end(), p.readable.begin(), p.readable.end());
        const std::uint32_t flags = req_f_group | (i + 1 == parts.size() ? req_f_last : 0u);
        out.readable[at + 1] = static_cast<std::uint8_t>(flags >> 8);
        out.readable[at + 2] = static_cast<std::uint8_t>(flags >> 16);
        out.readable[at + 3] = static_cast<std::uint8_t>(flags >> 24);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Features
// ---------------------------------------------------------------------------------------------

/// The feature bits a driver accepts from the device's `offered`, for a driver able to use
/// `wanted` (a mask of 1 << f_* bits, virtio transport bits included). Rules (5.13.3.1,
/// 5.13.5.1, 5.13.3.2):
/// - nothing without VIRTIO_F_VERSION_1 offered (the device MUST offer it; Linux refuses it);
///   VERSION_1 is always accepted;
/// - INPUT_RANGE, DOMAIN_RANGE and PROBE are accepted whenever offered (SHOULD), wanted or not:
///   the driver then honours the ranges and probes endpoints before attaching them;
/// - every other bit only when offered and wanted: MAP_UNMAP (MUST NOT be negotiated by a
///   driver that cannot send MAP and UNMAP), TABLE_SHARING, BYPASS_CONFIG, MMIO, the fast
///   protocol's RELAXED, MAP_SG and GROUPED (README.md "Fast protocol"), transport bits. A
///   driver wants RELAXED only if it accepts giving up isolation for the vulnerability window
///   (config_fast.relaxed_window_us): it must not be accepted by default;
/// - never both BYPASS and BYPASS_CONFIG: BYPASS_CONFIG supersedes the legacy BYPASS;
/// - MMIO (a MAP flag), RELAXED (rules of MAP and UNMAP) and MAP_SG (a kind of MAP) are
///   dropped without MAP_UNMAP; GROUPED stays (a group may hold ATTACH and DETACH alone);
///   PAGE_REQUESTS (wanted like any other) is dropped without TABLE_SHARING (it is about
///   shared tables).
/// Returns 0 when the device is unusable: no VERSION_1, or neither MAP_UNMAP nor table
/// sharing accepted (the spec asks drivers to fail gracefully then).
constexpr std::uint64_t negotiate_features(std::uint64_t offered, std::uint64_t wanted) noexcept {
    using detail::bit;
    if ((offered & bit(f_version_1)) == 0) return 0;
    std::uint64_t accepted = offered & wanted;
    accepted |= offered & (bit(f_version_1) | bit(f_input_range) | bit(f_domain_range) | bit(f_probe));
    if ((accepted & bit(f_bypass_config)) != 0) accepted &= ~bit(f_bypass);
    if ((accepted & bit(f_map_unmap)) == 0) accepted &= ~(bit(f_mmio) | bit(f_relaxed) | bit(f_map_sg));
    if ((accepted & bit(f_table_sharing)) == 0) accepted &= ~bit(f_page_requests);
    if ((accepted & (bit(f_map_unmap) | bit(f_table_sharing))) == 0) return 0;
    return accepted;
}

/// The fast protocol's config fields (config_fast at config offset 40) as a driver may use
/// them: each is the device's value when its feature was negotiated, 0 otherwise (the field
/// then means nothing to this driver).
struct fast_config {
    std::uint32_t relaxed_window_us = 0;  ///< RELAXED: the vulnerability window
    std::uint32_t group_max = 0;          ///< GROUPED: requests per group, at most
    std::uint32_t map_sg_max = 0;         ///< MAP_SG: elements per MAP_SG, at most
    friend bool operator==(const fast_config&, const fast_config&) = default;
};

/// Reads config_fast from `bytes`, the config space from offset 40 (config_fast_offset) as the
/// device presented it, for the `negotiated` features (1 << f_* bits). Nothing is trusted:
/// fewer than 16 bytes give the fields they hold (missing bytes read as 0), extra bytes and the
/// reserved ones are ignored. A field of a feature not negotiated reads 0.
inline fast_config parse_config_fast(std::span<const std::uint8_t> bytes, std::uint64_t negotiated) noexcept {
    std::array<std::uint8_t, sizeof(config_fast)> raw{};
    if (!bytes.empty()) std::memcpy(raw.data(), bytes.data(), std::min(bytes.size(), raw.size()));
    const auto field = [&](std::size_t at, unsigned feature) -> std::uint32_t {
        if ((negotiated & detail::bit(feature)) == 0) return 0;
        return detail::load<std::uint32_t>(raw, at);
    };
    fast_config c;
    c.relaxed_window_us = field(offsetof(config_fast, relaxed_window_us), f_relaxed);
    c.group_max = field(offsetof(config_fast, group_max), f_grouped);
    c.map_sg_max = field(offsetof(config_fast, map_sg_max), f_map_sg);
    return c;
}

// ---------------------------------------------------------------------------------------------
// PROBE properties
// ---------------------------------------------------------------------------------------------

/// One RESV_MEM region (5.13.6.8.1): [start, end], end inclusive. `subtype` is
/// resv_mem_t_reserved or resv_mem_t_msi; an unknown subtype reads as reserved (SHOULD).
struct resv_region {
    std::uint64_t start = 0, end = 0;
    std::uint8_t subtype = resv_mem_t_reserved;
    friend bool operator==(const resv_region&, const resv_region&) = default;
};

/// What a PROBE reply says about an endpoint. `unknown`: properties of a type this driver does
/// not know (skipped); `ignored`: properties it had to ignore (reserved header bits set, a
/// RESV_MEM too short for its fields or with start > end).
struct probe_info {
    std::vector<resv_region> regions;
    std::uint32_t unknown = 0, ignored = 0;
};

/// Parses the `properties` area of a PROBE reply (exactly probe_size bytes, 5.13.6.7) with the
/// driver rules of 5.13.6.7.1 and 5.13.6.8.1.1, trusting nothing:
/// - a property is a 4-byte header (type: bits 0-11 of the first le16, bits 12-15 reserved;
///   length: the second le16, not counting the header) and `length` value bytes; the next
///   starts right after. The length is always the header's, never inferred from the type;
/// - the list ends at a type 0 (NONE, whatever its reserved bits, as Linux masks them), or
///   where fewer than 4 bytes remain;
/// - a property with reserved header bits set is ignored (MUST); an unknown type is skipped
///   (SHOULD); both keep the parse going;
/// - RESV_MEM: its value's first 20 bytes are subtype, 3 reserved (ignored), start, end; a
///   longer value is a later extension (the rest skipped), a shorter one or start > end is
///   ignored. Overlapping regions are kept as reported (each is reserved; see `overlaps`).
/// Refusal (IOERR, "properties: ..."): a property whose value runs past the end of the area.
/// Nothing is read outside `properties`.
inline checked<probe_info> parse_probe(std::span<const std::uint8_t> properties) {
    probe_info info;
    constexpr std::size_t header = sizeof(probe_property);
    constexpr std::size_t resv_value = sizeof(probe_resv_mem) - sizeof(probe_property);  // 20
    std::size_t pos = 0;
    while (properties.size() - pos >= header) {
        const auto raw_type = detail::load<std::uint16_t>(properties, pos);
        const std::size_t length = detail::load<std::uint16_t>(properties, pos + 2);
        const auto type = static_cast<std::uint16_t>(raw_type & probe_t_mask);
        if (type == probe_t_none) break;
        const std::size_t value = pos + header;
        if (length > properties.size() - value)
            return refusal{status::ioerr, "properties: a property runs past the end"};
        if ((raw_type & ~probe_t_mask) != 0) {
            ++info.ignored;
        } else if (type == probe_t_resv_mem) {
            if (length < resv_value) {
                ++info.ignored;
            } else {
                resv_region r;
                const std::uint8_t sub = properties[value];
                r.subtype = sub == resv_mem_t_msi ? resv_mem_t_msi : resv_mem_t_reserved;
                r.start = detail::load<std::uint64_t>(properties, value + 4);
                r.end = detail::load<std::uint64_t>(properties, value + 12);
                if (r.start > r.end) ++info.ignored;
                else info.regions.push_back(r);
            }
        } else {
            ++info.unknown;
        }
        pos = value + length;
    }
    return info;
}

/// True when [first, last] (inclusive) meets a region of `info`: addresses a driver SHOULD
/// NOT map (5.13.6.8.1.1).
inline bool overlaps(const probe_info& info, std::uint64_t first, std::uint64_t last) noexcept {
    for (const auto& r : info.regions)
        if (first <= r.end && r.start <= last) return true;
    return false;
}

// ---------------------------------------------------------------------------------------------
// Fault events
// ---------------------------------------------------------------------------------------------

/// A fault report from the event queue (5.13.6.9), as a driver may use it. `reason` is one of
/// fault_r_unknown / fault_r_domain / fault_r_mapping; `flags` keeps only the known bits
/// (fault_f_read, _write, _exec, _address); `address` is set only with fault_f_address.
struct fault_event {
    std::uint8_t reason = fault_r_unknown;
    std::uint32_t flags = 0;
    std::uint32_t endpoint = 0;
    std::optional<std::uint64_t> address;
};

/// Reads one event buffer as the device left it (`event`: the used length's bytes) with the
/// rules of 5.13.6.9.1 and Linux's viommu_event_handler: nothing when the buffer is not exactly
/// the 24-byte virtio_iommu_fault (Linux rejects longer ones; a shorter one cannot hold the
/// fields), nothing when the reserved bytes 1-3 (bits 8-31 of the first le32) are not zero
/// (MUST ignore). An unknown reason reads as UNKNOWN (SHOULD); reserved1 and undefined flag
/// bits are ignored (MUST).
inline std::optional<fault_event> parse_fault(std::span<const std::uint8_t> event) noexcept {
    if (event.size() != sizeof(fault)) return std::nullopt;
    if ((detail::load<std::uint32_t>(event, 0) & 0xffffff00u) != 0) return std::nullopt;
    fault_event e;
    const std::uint8_t reason = event[offsetof(fault, reason)];
    e.reason = reason == fault_r_domain || reason == fault_r_mapping ? reason : fault_r_unknown;
    e.flags = detail::load<std::uint32_t>(event, offsetof(fault, flags)) &
              (fault_f_read | fault_f_write | fault_f_exec | fault_f_address);
    e.endpoint = detail::load<std::uint32_t>(event, offsetof(fault, endpoint));
    if ((e.flags & fault_f_address) != 0) e.address = detail::load<std::uint64_t>(event, offsetof(fault, address));
    return e;
}

/// A page request from the event queue (README.md "Page requests"), as a driver may use it:
/// the access (`flags`: fault_f_read / _write / _exec only), where (endpoint, context, page-
/// aligned `address`), the domain a reply must name, and the id.
struct page_request_info {
    std::uint32_t id = 0;
    std::uint32_t endpoint = 0;
    std::uint32_t address_space = 0;
    std::uint32_t context = 0;
    std::uint64_t address = 0;
    std::uint32_t flags = 0;
};

/// Reads one event buffer (`event`: the used length's bytes) as a page request, trusting
/// nothing: exactly the 32-byte page_request_event, reason PAGE_REQUEST, reserved bytes 1–3
/// zero, ADDRESS set (a page request without its address cannot be served); otherwise nothing
/// (a fault event is `parse_fault`'s). Undefined flag bits are ignored.
inline std::optional<page_request_info> parse_page_request(std::span<const std::uint8_t> event) noexcept {
    if (event.size() != sizeof(page_request_event)) return std::nullopt;
    if (detail::load<std::uint32_t>(event, 0) != fault_r_page_request) return std::nullopt;
    const std::uint32_t flags = detail::load<std::uint32_t>(event, offsetof(page_request_event, flags));
    if ((flags & fault_f_address) == 0) return std::nullopt;
    page_request_info p;
    p.flags = flags & (fault_f_read | fault_f_write | fault_f_exec);
    p.endpoint = detail::load<std::uint32_t>(event, offsetof(page_request_event, endpoint));
    p.context = detail::load<std::uint32_t>(event, offsetof(page_request_event, context));
    p.address = detail::load<std::uint64_t>(event, offsetof(page_request_event, address));
    p.address_space = detail::load<std::uint32_t>(event, offsetof(page_request_event, address_space));
    p.id = detail::load<std::uint32_t>(event, offsetof(page_request_event, id));
    return p;
}
/// The same from the event struct (machine::take_page_requests).
inline std::optional<page_request_info> parse_page_request(const page_request_event& ev) noexcept {
    return parse_page_request(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(&ev), sizeof ev));
}

// ---------------------------------------------------------------------------------------------
// Transport and driver
// ---------------------------------------------------------------------------------------------

/// How a driver reaches a device: `submit(in, out)` delivers one request (the device-readable
/// bytes `in`, the device-writable buffer `out`) and returns the used length, the bytes the
/// device wrote at the start of `out` (0: not answered). A virtqueue, or a direct call.
template <class T>
concept request_transport = requires(T& t, std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
    { t.submit(in, out) } -> std::same_as<std::uint32_t>;
};

/// A transport that calls the device model directly: `dev->handle(in, out)` (device.hpp's
/// `device::handle`). `dev` must outlive the transport.
template <class D>
struct direct_transport {
    D* dev = nullptr;
    std::uint32_t submit(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        return dev->handle(in, out);
    }
};

/// What came back for one request.
struct reply {
    /// The tail's status, or IOERR when the used length is not the writable size (0: the
    /// device did not answer; shorter: it did not write the tail) or the status byte is not a
    /// status the spec defines (Linux maps those to EIO).
    status code = status::ioerr;
    std::uint32_t used = 0;               ///< the used length the transport reported
    std::vector<std::uint8_t> writable;   ///< the device-writable part as the device left it
    bool ok() const noexcept { return code == status::ok; }
};

/// Most properties bytes `driver::probe` accepts (probe_size comes from a config space the
/// driver does not trust) and most pg_format entries `driver::probe_table` makes room for.
inline constexpr std::uint32_t max_probe_size = 1u << 20;
inline constexpr std::uint32_t max_probe_formats = 1024;

/// A virtio-iommu driver's request side over the transport `T`: builds each request, submits
/// it, reads the status as 5.13.6.1 says. It sends what it is asked to: the driver rules on
/// field values (ranges, flags, domains) are the caller's, so that tests can also send what a
/// buggy guest would. Not thread-safe (one request at a time); `T` must outlive it.
template <request_transport T>
class driver {
public:
    explicit driver(T& transport) noexcept : t_(&transport) {}

    /// Submits `r`: a zeroed writable buffer of r.writable_len bytes whose tail status byte is
    /// preset to IOERR (so a device that reports the full length without writing the tail
    /// fails), then the used-length and status rules of `reply::code`. Counted by type.
    reply send(const request& r) {
        if (!r.readable.empty()) ++sent_[slot(r.readable[0])];
        return deliver(r);
    }

    /// MAP_SG (README.md "Fast protocol"): [virt_start + i·size, +size) → phys[i] for each i,
    /// all or nothing (map_sg_request). Returns the device's status.
    status map_sg(std::uint32_t domain, std::uint64_t virt_start, std::uint64_t size, std::uint32_t flags,
                  std::span<const std::uint64_t> phys) {
        return send(map_sg_request(domain, virt_start, size, flags, phys)).code;
    }

    /// Sends `parts` as one grouped chain (group_request) and returns the one status: OK, or
    /// the first failing part's (the device undid the whole group), IOERR as in `reply::code`.
    /// INVAL without sending anything when group_request refuses `parts`. Each part counts
    /// under its type in `sent`, the chain once in `groups`.
    status send_group(std::span<const request> parts) {
        auto g = group_request(parts);
        if (!g) return g.why().code;
        for (const auto& p : parts) ++sent_[slot(p.readable[0])];
        ++groups_;
        return deliver(*g).code;
    }

    /// ATTACH (5.13.6.3). Returns the device's status (IOERR as in `reply::code`).

    status attach(std::uint32_t domain, std::uint32_t endpoint, bool bypass = false) {
        return send(attach_request(domain, endpoint, bypass)).code;
    }
    /// DETACH (5.13.6.4).
    status detach(std::uint32_t domain, std::uint32_t endpoint) { return send(detach_request(domain, endpoint)).code; }
    /// MAP (5.13.6.5) of [virt_start, virt_end] (inclusive) to phys_start, `flags` map_f_*.
    status map(std::uint32_t domain, std::uint64_t virt_start, std::uint64_t virt_end, std::uint64_t phys_start,
               std::uint32_t flags) {
        return send(map_request(domain, virt_start, virt_end, phys_start, flags)).code;
    }
    /// UNMAP (5.13.6.6) of [virt_start, virt_end] (inclusive).
    status unmap(std::uint32_t domain, std::uint64_t virt_start, std::uint64_t virt_end) {
        return send(unmap_request(domain, virt_start, virt_end)).code;
    }
    /// PROBE (5.13.6.7) of `endpoint` with `probe_size` bytes of properties (the config
    /// field), parsed by `parse_probe`. Refusals: probe_size above max_probe_size (INVAL, not
    /// sent), the device's status ("PROBE"), parse_probe's.
    checked<probe_info> probe(std::uint32_t endpoint, std::uint32_t probe_size) {
        if (probe_size > max_probe_size) return refusal{status::inval, "probe_size"};
        auto r = send(probe_request(endpoint, probe_size));
        if (!r.ok()) return refusal{r.code, "PROBE"};
        return parse_probe(std::span<const std::uint8_t>(r.writable).first(probe_size));
    }
    /// PROBE_TABLE of `endpoint` with room for `n_formats` entries (formats/README.md).
    /// Refusals: n_formats above max_probe_formats (INVAL, not sent), the device's status
    /// ("PROBE_TABLE"), sharing::parse_probe_table's.
    checked<sharing::probe_table_result> probe_table(std::uint32_t endpoint, std::uint32_t n_formats,
                                                     std::uint32_t flags = 0) {
        if (n_formats > max_probe_formats) return refusal{status::inval, "n_formats"};
        auto r = send(probe_table_request(endpoint, flags, n_formats));
        if (!r.ok()) return refusal{r.code, "PROBE_TABLE"};
        const std::size_t bytes = sizeof(probe_table_reply) + std::size_t{n_formats} * sizeof(pg_format);
        return sharing::parse_probe_table(std::span<const std::uint8_t>(r.writable).first(bytes));
    }
    /// ATTACH_TABLE of `req` (from sharing::make_attach_table) to `domain`, which an endpoint
    /// was attached to with ATTACH: address_space is set to `domain`.
    status attach_table(std::uint32_t domain, const req_attach_table& req) {
        req_attach_table r = req;
        r.address_space = domain;
        return send(attach_table_request(r)).code;
    }
    /// INVALIDATE in the table attached to `domain` (see invalidate_request).
    status invalidate(std::uint32_t domain, std::uint32_t context, invalidate_kind kind, std::uint64_t virt_addr = 0,
                      std::uint64_t range_size = 0) {
        return send(invalidate_request(domain, context, kind, virt_addr, range_size)).code;
    }

    /// PAGE_REPLY to page request `id` of `domain` (page_reply_request).
    status page_reply(std::uint32_t domain, std::uint32_t id, std::uint32_t reply, std::uint64_t paddr = 0) {
        return send(page_reply_request(domain, id, reply, paddr)).code;
    }

    /// Requests of type `t` sent (by head.type; types outside req_type count under 0).
    std::uint64_t sent(req_type t) const noexcept { return sent_[slot(static_cast<std::uint8_t>(t))]; }
    /// Grouped chains sent (send_group).
    std::uint64_t groups() const noexcept { return groups_; }
    /// Requests (or groups) sent whose code was not OK.
    std::uint64_t failures() const noexcept { return failed_; }
    /// The used length of the last request.
    std::uint32_t last_used() const noexcept { return last_used_; }
    T& transport() const noexcept { return *t_; }

private:
    /// One chain: the writable buffer, the transport, the status rules (see `send`).
    reply deliver(const request& r) {
        reply out;
        out.writable.assign(r.writable_len, 0);
        const bool has_tail = r.writable_len >= sizeof(req_tail);
        const std::size_t tail_at = has_tail ? r.writable_len - sizeof(req_tail) : 0;
        if (has_tail) out.writable[tail_at] = static_cast<std::uint8_t>(status::ioerr);
        out.used = t_->submit(std::span<const std::uint8_t>(r.readable), std::span<std::uint8_t>(out.writable));
        last_used_ = out.used;
        if (has_tail && out.used == r.writable_len) {
            const std::uint8_t s = out.writable[tail_at];
            out.code = s <= static_cast<std::uint8_t>(status::nomem) ? static_cast<status>(s) : status::ioerr;
        }
        if (out.code != status::ok) ++failed_;
        return out;
    }

    static constexpr std::size_t slot(std::uint8_t type) noexcept {
        if (type >= 1 && type <= 5) return type;
        if (type >= 0x40 && type <= 0x44) return std::size_t{type} - 0x40 + 6;
        return 0;
    }

    T* t_;
    std::array<std::uint64_t, 11> sent_{};
    std::uint64_t groups_ = 0;
    std::uint64_t failed_ = 0;
    std::uint32_t last_used_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Relaxed mode, guest side: deferred unmaps
// ---------------------------------------------------------------------------------------------

/// How a `deferred_unmapper` times and batches its unmaps.
struct deferral_settings {
    /// Unmaps per grouped chain `deferral_settings::from` allows at most, whatever the device's
    /// group_max says (a chain of 256 UNMAPs is 7 KiB of readable bytes).
    static constexpr std::uint32_t max_group = 256;

    /// The vulnerability window in ns: the longest an unmap may wait after its release
    /// (config_fast.relaxed_window_us · 1000). 0: nothing waits (strict mode).
    std::uint64_t window_ns = 0;
    /// The safety margin in ns: an unmap is due once its age reaches window_ns − margin_ns,
    /// and `poll` sends what is due. No unmap then waits longer than the window provided the
    /// guest calls `poll` (or `release`) at least once every margin_ns and a send takes less
    /// than what is left of the margin. margin_ns ≥ window_ns: every unmap is due at once.
    std::uint64_t margin_ns = 0;
    /// Unmaps one grouped chain may carry (GROUPED negotiated: the device's group_max); 0 or 1:
    /// one UNMAP request each.
    std::uint32_t group_max = 0;
    /// Deferred unmaps held at most: a release that finds this many flushes them first. Bounds
    /// the memory and the work of one poll.
    std::size_t max_pending = 4096;

    /// The settings a relaxed guest derives from the `negotiated` features and `c`
    /// (parse_config_fast): the window of RELAXED (0 without it: nothing deferred), a margin of
    /// half the window (a guest polling from a timer tick of up to 5 ms keeps the device's
    /// default 10 ms window), the device's group_max capped at max_group with GROUPED (0
    /// without it).
    static deferral_settings from(const fast_config& c, std::uint64_t negotiated) noexcept {
        deferral_settings s;
        if ((negotiated & detail::bit(f_relaxed)) != 0) {
            s.window_ns = std::uint64_t{c.relaxed_window_us} * 1000;
            s.margin_ns = s.window_ns / 2;
        }
        if ((negotiated & detail::bit(f_grouped)) != 0) s.group_max = std::min(c.group_max, max_group);
        return s;
    }
};

/// What a deferred_unmapper did.
struct deferral_stats {
    std::uint64_t deferred = 0;        ///< unmaps `release` recorded
    std::uint64_t sent = 0;            ///< unmaps the device completed (OK)
    std::uint64_t failed = 0;          ///< unmaps the device refused (reported, then dropped)
    std::uint64_t requests = 0;        ///< chains that carried them: UNMAP requests and groups
    std::uint64_t groups = 0;          ///< of which grouped chains
    std::uint64_t group_retries = 0;   ///< groups the device refused, sent again one UNMAP each
    std::uint64_t replaced = 0;        ///< pending unmaps dropped or trimmed by a MAP over their range
    std::uint64_t forgotten = 0;       ///< pending unmaps dropped by `forget`
    std::uint64_t flushes = 0;         ///< `flush` calls
    std::uint64_t overflows = 0;       ///< releases that found max_pending unmaps and flushed them
    std::uint64_t max_delay_ns = 0;    ///< the longest an unmap waited from release to send
    std::uint64_t oldest_at_flush_ns = 0;  ///< the age of the oldest pending unmap at the last flush (0: none)
};

/// A relaxed guest's unmaps (feature RELAXED; README.md "Fast protocol"), deferred and sent
/// within the vulnerability window: the DMA layer calls `release` when it is done with an IOVA
/// range instead of sending UNMAP, and `poll` from a timer; the unmaps go out late, batched in
/// groups when GROUPED was negotiated. Until an unmap is sent, the device still translates
/// the old range: **a device may DMA into pages the guest has reused**. That is the isolation
/// a relaxed guest gives up, for at most the window.
///
/// Timing: an unmap released at t is due at t + window_ns − margin_ns (deferral_settings);
/// `poll(now)` and `release(now)` send every due unmap, `flush(now)` all of them. With a window
/// of 0 (RELAXED not negotiated) `release` sends at once. Due unmaps go out in release order,
/// in groups of up to group_max (one UNMAP when a single one is due, or without GROUPED); a
/// group the device refuses is sent again one UNMAP at a time, so that one bad unmap (its
/// domain gone: NOENT) does not hold back the others; refused unmaps are counted and dropped.
///
/// Re-mapping before the flush. In relaxed mode a MAP over a range with a deferred unmap needs
/// no UNMAP first: the device replaces the overlapped part of the old mapping (and drops its
/// translations). But the deferred UNMAP, sent later, would then remove the NEW mapping. So
/// every MAP of a range that may hold deferred unmaps must go through `map` / `map_sg` here
/// (or be reported with `remapped` once the device answered OK): the pending unmaps of that
/// domain lose the mapped range — dropped when inside it, trimmed to what lies outside (split
/// in two when the new range is inside), keeping their release time. An exact repeat (same
/// range, phys and flags: the device keeps the old mapping) drops the unmap likewise: the
/// range is in use again. A MAP the device refused changes nothing here, since the old
/// mapping stands. Likewise `forget(domain)` (or `flush`) before a domain ID is freed and
/// reused: a later UNMAP would hit the new domain's mappings.
///
/// Not thread-safe; `drv` must outlive it. Times are the caller's clock in ns; a clock going
/// backwards reads as age 0.
template <request_transport T>
class deferred_unmapper {
public:
    struct pending_unmap {
        std::uint32_t domain = 0;
        std::uint64_t first = 0, last = 0;  ///< inclusive, as UNMAP's virt_start / virt_end
        std::uint64_t released_ns = 0;
        friend bool operator==(const pending_unmap&, const pending_unmap&) = default;
    };

    deferred_unmapper(driver<T>& drv, deferral_settings s) noexcept : drv_(&drv), set_(s) {}
    // The index holds iterators into the list: moving keeps them valid, copying would not.
    deferred_unmapper(const deferred_unmapper&) = delete;
    deferred_unmapper& operator=(const deferred_unmapper&) = delete;
    deferred_unmapper(deferred_unmapper&&) noexcept = default;
    deferred_unmapper& operator=(deferred_unmapper&&) noexcept = default;

    /// Records the unmap of [first, last] (inclusive) of `domain` released at `now_ns`, after
    /// sending what is due (as `poll`); with max_pending unmaps already held, flushes them
    /// first; with nothing to wait for (window_ns ≤ margin_ns) sends it at once. Returns OK,
    /// or the first status other than OK of what it sent.
    status release(std::uint32_t domain, std::uint64_t first, std::uint64_t last, std::uint64_t now_ns) {
        ++stats_.deferred;
        status s = poll(now_ns);
        if (set_.max_pending == 0 || pending_.size() >= set_.max_pending) {
            ++stats_.overflows;
            keep_first(s, send_all(now_ns));
        }
        if (!pending_.empty() && now_ns < pending_.back().p.released_ns) unordered_ = true;  // the clock went back
        add(pending_.end(), {domain, first, last, now_ns});
        if (budget() == 0) keep_first(s, send_all(now_ns));
        return s;
    }

    /// Sends every unmap whose age at `now_ns` reached window_ns − margin_ns. Returns OK, or
    /// the first status other than OK.
    /// Unmaps are held in release order and a piece left by `remapped` keeps its place, so the
    /// due ones are a prefix: one look at the oldest when nothing is due.
    status poll(std::uint64_t now_ns) {
        if (unordered_) return poll_all(now_ns);
        if (pending_.empty() || age(pending_.front().p, now_ns) < budget()) return status::ok;
        std::vector<pending_unmap> due;
        while (!pending_.empty() && age(pending_.front().p, now_ns) >= budget()) {
            due.push_back(pending_.front().p);
            drop(pending_.begin());
        }
        return send(due, now_ns);
    }

    /// Sends every pending unmap now (before a DETACH, on memory pressure, on demand).
    status flush(std::uint64_t now_ns) {
        ++stats_.flushes;
        std::uint64_t oldest = 0;
        for (const auto& n : pending_) oldest = std::max(oldest, age(n.p, now_ns));
        stats_.oldest_at_flush_ns = oldest;
        return send_all(now_ns);
    }

    /// The device mapped [first, last] of `domain` (a MAP or MAP_SG it answered OK): pending
    /// unmaps of that domain lose that range (see the class comment). first > last: nothing.
    /// Only unmaps starting at most the longest pending range before `first` can intersect:
    /// the index is searched from there, so a MAP costs a lookup, not a pass over every unmap.
    void remapped(std::uint32_t domain, std::uint64_t first, std::uint64_t last) {
        if (first > last || pending_.empty()) return;
        const std::uint64_t from = first >= longest_ ? first - (longest_ - 1) : 0;
        std::vector<typename node_list::iterator> hit;
        for (auto it = index_.lower_bound({domain, from}); it != index_.end() && it->first.first == domain &&
                                                            it->first.second <= last;
             ++it)
            if (it->second->p.last >= first) hit.push_back(it->second);
        for (auto n : hit) {
            ++stats_.replaced;
            const pending_unmap p = n->p;
            const auto next = std::next(n);
            drop(n);
            if (p.first < first) add(next, {p.domain, p.first, first - 1, p.released_ns});
            if (p.last > last) add(next, {p.domain, last + 1, p.last, p.released_ns});
        }
    }

    /// MAP through the driver, then `remapped` when the device answered OK.
    status map(std::uint32_t domain, std::uint64_t virt_start, std::uint64_t virt_end, std::uint64_t phys_start,
               std::uint32_t flags) {
        const status s = drv_->map(domain, virt_start, virt_end, phys_start, flags);
        if (s == status::ok) remapped(domain, virt_start, virt_end);
        return s;
    }

    /// MAP_SG through the driver, then `remapped` of [virt_start, virt_start + n·size − 1]
    /// when the device answered OK.
    status map_sg(std::uint32_t domain, std::uint64_t virt_start, std::uint64_t size, std::uint32_t flags,
                  std::span<const std::uint64_t> phys) {
        const status s = drv_->map_sg(domain, virt_start, size, flags, phys);
        if (s == status::ok && size != 0 && !phys.empty()) {
            const std::uint64_t n = phys.size(), room = ~std::uint64_t{0} - virt_start;
            // Beyond 2^64 only when virt_start + n·size is exactly 2^64 (the device refuses more).
            remapped(domain, virt_start, size <= room / n ? virt_start + (size * n - 1) : ~std::uint64_t{0});
        }
        return s;
    }

    /// Drops the pending unmaps of `domain` unsent: its mappings are gone (the domain was freed
    /// with its last endpoint's DETACH), and its ID may come back with new mappings.
    void forget(std::uint32_t domain) {
        const auto before = pending_.size();
        while (true) {
            auto it = index_.lower_bound({domain, 0});
            if (it == index_.end() || it->first.first != domain) break;
            drop(it->second);
        }
        stats_.forgotten += before - pending_.size();
    }

    /// When `poll` will next have something to send (the earliest due time), or nothing.
    std::optional<std::uint64_t> next_due() const noexcept {
        std::optional<std::uint64_t> t;
        for (const auto& n : pending_) {
            const std::uint64_t due =
                n.p.released_ns > ~std::uint64_t{0} - budget() ? ~std::uint64_t{0} : n.p.released_ns + budget();
            if (!t || due < *t) t = due;
        }
        return t;
    }

    /// The unmaps waiting, in release order (a copy).
    std::vector<pending_unmap> pending() const {
        std::vector<pending_unmap> v;
        v.reserve(pending_.size());
        for (const auto& n : pending_) v.push_back(n.p);
        return v;
    }
    const deferral_stats& stats() const noexcept { return stats_; }
    const deferral_settings& settings() const noexcept { return set_; }

private:
    std::uint64_t budget() const noexcept { return set_.window_ns > set_.margin_ns ? set_.window_ns - set_.margin_ns : 0; }
    static std::uint64_t age(const pending_unmap& p, std::uint64_t now_ns) noexcept {
        return now_ns >= p.released_ns ? now_ns - p.released_ns : 0;
    }
    static void keep_first(status& into, status s) noexcept {
        if (into == status::ok) into = s;
    }

    /// poll after the clock went back: release order is not time order, so every unmap is looked at.
    status poll_all(std::uint64_t now_ns) {
        std::vector<pending_unmap> due;
        for (auto it = pending_.begin(); it != pending_.end();) {
            auto next = std::next(it);
            if (age(it->p, now_ns) >= budget()) {
                due.push_back(it->p);
                drop(it);
            }
            it = next;
        }
        if (due.empty()) return status::ok;
        return send(due, now_ns);
    }

    status send_all(std::uint64_t now_ns) {
        std::vector<pending_unmap> all = pending();
        pending_.clear();
        index_.clear();
        longest_ = 0;
        unordered_ = false;
        return send(all, now_ns);
    }

    // The pending unmaps: a list in release order, indexed by (domain, first).
    struct node;
    using node_list = std::list<node>;
    using key = std::pair<std::uint32_t, std::uint64_t>;
    using index_type = std::multimap<key, typename node_list::iterator>;
    struct node {
        pending_unmap p;
        typename index_type::iterator at;
    };
    void add(typename node_list::iterator before, const pending_unmap& p) {
        auto n = pending_.insert(before, node{p, {}});
        n->at = index_.emplace(key{p.domain, p.first}, n);
        const std::uint64_t len = p.last - p.first + 1;
        longest_ = len == 0 ? ~std::uint64_t{0} : std::max(longest_, len);  // 0: the whole space
    }
    void drop(typename node_list::iterator n) {
        index_.erase(n->at);
        pending_.erase(n);
        if (pending_.empty()) {
            longest_ = 0;
            unordered_ = false;
        }
    }

    /// Sends `batch` in order: groups of up to group_max, or one UNMAP each.
    status send(const std::vector<pending_unmap>& batch, std::uint64_t now_ns) {
        status first = status::ok;
        for (const auto& p : batch) stats_.max_delay_ns = std::max(stats_.max_delay_ns, age(p, now_ns));
        const std::size_t per = set_.group_max >= 2 ? set_.group_max : 1;
        for (std::size_t at = 0; at < batch.size(); at += per) {
            const std::size_t n = std::min(per, batch.size() - at);
            const std::span<const pending_unmap> chunk(batch.data() + at, n);
            if (n == 1) {
                keep_first(first, send_one(chunk[0]));
                continue;
            }
            std::vector<request> parts;
            parts.reserve(n);
            for (const auto& p : chunk) parts.push_back(unmap_request(p.domain, p.first, p.last));
            ++stats_.requests;
            ++stats_.groups;
            const status s = drv_->send_group(parts);
            if (s == status::ok) {
                stats_.sent += n;
                continue;
            }
            ++stats_.group_retries;  // the device undid the group: one at a time
            for (const auto& p : chunk) keep_first(first, send_one(p));
        }
        return first;
    }
    status send_one(const pending_unmap& p) {
        ++stats_.requests;
        const status s = drv_->unmap(p.domain, p.first, p.last);
        if (s == status::ok) ++stats_.sent;
        else ++stats_.failed;
        return s;
    }

    driver<T>* drv_;
    deferral_settings set_;
    node_list pending_;
    index_type index_;
    std::uint64_t longest_ = 0;  ///< the longest range pending since the list was last empty
    bool unordered_ = false;     ///< a release stamped earlier than the one before it (since last empty)
    deferral_stats stats_;
};

// ---------------------------------------------------------------------------------------------
// Page-table sharing, guest side
// ---------------------------------------------------------------------------------------------

/// A guest's stage-1 table of format S1 shared with the device through `driver<T>`: its tables
/// come from an IPA window and are written through the stage-2 table `stage2` (format S2 in
/// host memory HM, nested::guest_table_memory), as a guest in a VM writes them; the device
/// walks them after ATTACH_TABLE binds the table to a domain (context 0, no F_INDIRECT).
///
/// Contract (formats/README.md): the guest must invalidate after changing or removing entries;
/// new mappings in empty space need none. `map` and `unmap` keep it: `map` sends nothing
/// unless it had to free an empty table to put a block in its place (then one INVALIDATE VADDR
/// of that span, since the device may cache the table's address); `unmap` sends one
/// INVALIDATE VADDR of the range when anything was removed. Not thread-safe. Destroy it only
/// after every endpoint left the domain (DETACH): the tables go back to the window.
template <page_table_format S1, page_table_format S2, table_reader HM, request_transport T>
class shared_table {
public:
    using memory = nested::guest_table_memory<S2, HM>;
    using table_type = page_table<S1, memory>;
    using input_address = typename S1::input_address;

    /// Builds an empty table in [window, window + window_size) of the guest's IPA space (which
    /// `stage2` must map readable and writable; `cache` may be null, see guest_table_memory)
    /// and attaches it to `domain` with ATTACH_TABLE (sharing::make_attach_table<S1>, `tag` the
    /// ASID / domain id). An endpoint must already be attached to `domain` (ATTACH).
    /// `attach_flags` are ATTACH_TABLE's flags: table_f_fault asks for page requests (feature
    /// PAGE_REQUESTS; serve them with `resolve`).
    /// Refusals: the table's (engine error as a status, "table"), make_attach_table's, the
    /// device's status ("ATTACH_TABLE").
    static checked<shared_table> create(driver<T>& drv, const nested::stage_table<S2, HM>& stage2, ipa_t window,
                                        std::uint64_t window_size, const typename S1::config& cfg,
                                        std::uint32_t domain, std::uint32_t tag = 0,
                                        nested::walk_cache* cache = nullptr, std::uint32_t attach_flags = 0) {
        auto st = std::make_unique<state>(stage2, window, window_size, cache);
        auto t = table_type::create(cfg, st->mem, st->gather.hooks());
        if (!t) return refusal{to_status(t.error()), "table"};
        auto req = sharing::make_attach_table<S1>(cfg, t->root(), tag);
        if (!req) return req.why();
        req->flags = req->flags.get() | attach_flags;
        const status s = drv.attach_table(domain, *req);
        if (s != status::ok) return refusal{s, "ATTACH_TABLE"};
        return shared_table(drv, std::move(st), std::move(*t), domain);
    }

    /// Maps [iova, iova + size) to [ipa, ipa + size) (page_table::map: all or nothing).
    /// Returns `size`. Refusals: the engine's error as a status (field: the errc's name), or
    /// the device's status for the one INVALIDATE a table freed on the way needs ("INVALIDATE";
    /// the mapping stands).
    checked<length_t> map(input_address iova, ipa_t ipa, length_t size, prot p) {
        st_->gather.reset();
        auto r = table_.map(iova, pa_t{ipa.value}, size, p);
        if (!r) return refusal{to_status(r.error()), iopgtable::to_string(r.error())};
        if (st_->gather.walks != 0) {
            const status s = invalidate(st_->gather.start, st_->gather.last - st_->gather.start + 1);
            if (s != status::ok) return refusal{s, "INVALIDATE"};
        }
        return size;
    }

    /// Unmaps [iova, iova + size) (page_table::unmap, exact: a range that would cut a leaf
    /// changes nothing), then, when anything was removed, sends INVALIDATE VADDR of
    /// [iova, iova + size). Returns the bytes removed. Refusals: the engine's error as a status,
    /// or the device's status for the INVALIDATE ("INVALIDATE": the entries are gone but the
    /// device may still use them; retry, invalidate_all, or detach).
    checked<length_t> unmap(input_address iova, length_t size) {
        st_->gather.reset();
        auto r = table_.unmap(iova, size);
        if (!r) return refusal{to_status(r.error()), iopgtable::to_string(r.error())};
        if (!st_->gather.empty()) {
            const status s = invalidate(iova.value, size.value);
            if (s != status::ok) return refusal{s, "INVALIDATE"};
        }
        return *r;
    }

    /// INVALIDATE VADDR of [first, first + size) in context 0: for changes made another way.
    status invalidate(std::uint64_t first, std::uint64_t size) {
        ++invalidations_;
        return drv_->invalidate(domain_, 0, invalidate_kind::vaddr, first, size);
    }
    /// INVALIDATE SINGLE: everything the device caches of context 0.
    status invalidate_all() {
        ++invalidations_;
        return drv_->invalidate(domain_, 0, invalidate_kind::single);
    }

    /// What a guest's fault handler decides for a page request: map the page to `ipa` with
    /// `perm`, or (nothing) fail it.
    struct page_grant {
        ipa_t ipa;
        prot perm = prot::read | prot::write | prot::cache;
    };
    /// Serves page request `req` of this table's domain (README.md "Page requests"):
    /// `handler(req)` returns a page_grant or nothing; with a grant, the 4 KiB page at
    /// req.address is mapped to grant.ipa (`map`) and invalidated (INVALIDATE VADDR: as usual;
    /// a folded device re-reads it then), and the reply is HANDLED with paddr = the ipa; a
    /// handler that declines, a map the table refuses (a page already mapped there: the access
    /// lacked permission) or an INVALIDATE refused make it FAILED. Returns the PAGE_REPLY's
    /// status. Refusal without sending anything: a request of another domain or context
    /// (INVAL: not this table's).
    template <class Handler>
    status resolve(const page_request_info& req, Handler&& handler) {
        if (req.address_space != domain_ || req.context != 0) return status::inval;
        constexpr std::uint64_t page = 0x1000;
        const std::uint64_t va = req.address & ~(page - 1);
        std::optional<page_grant> g = handler(req);
        bool handled = false;
        if (g) {
            auto r = map(input_address{va}, g->ipa, length_t{page}, g->perm);
            handled = r && invalidate(va, page) == status::ok;
        }
        ++(handled ? resolved_ : declined_);
        return drv_->page_reply(domain_, req.id, handled ? page_reply_handled : page_reply_failed,
                                handled ? g->ipa.value : 0);
    }
    /// Page requests `resolve` answered HANDLED / FAILED.
    std::uint64_t resolved() const noexcept { return resolved_; }
    std::uint64_t declined() const noexcept { return declined_; }

    /// The table, to walk (lookup, iova_to_phys). Changing it directly is allowed only with
    /// the invalidations of the contract above.
    const table_type& table() const noexcept { return table_; }
    /// The guest-physical address of the top table (what ATTACH_TABLE sent).
    ipa_t root() const noexcept { return ipa_t{table_.root().value}; }
    std::uint32_t domain() const noexcept { return domain_; }
    /// INVALIDATE requests this table sent (whatever the device answered).
    std::uint64_t invalidations() const noexcept { return invalidations_; }
    /// The table memory (window, bytes in use, stage-2 invalidation).
    memory& mem() const noexcept { return st_->mem; }

private:
    /// Heap-pinned: the table points at the memory, the hooks at the gather.
    struct state {
        state(const nested::stage_table<S2, HM>& s2, ipa_t window, std::uint64_t size, nested::walk_cache* cache)
            : mem(s2, window, size, cache) {}
        memory mem;
        iotlb_gather gather;
    };

    shared_table(driver<T>& drv, std::unique_ptr<state> st, table_type t, std::uint32_t domain) noexcept
        : drv_(&drv), st_(std::move(st)), table_(std::move(t)), domain_(domain) {}

    driver<T>* drv_;
    std::unique_ptr<state> st_;  // before table_: destroyed after it
    table_type table_;
    std::uint32_t domain_;
    std::uint64_t invalidations_ = 0;
    std::uint64_t resolved_ = 0, declined_ = 0;
};

} // namespace iopgtable::virtio
