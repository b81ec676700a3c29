// SPDX-License-Identifier: MIT
#pragma once
/// @file wire.hpp
/// virtio-iommu wire structures: the requests, config space and fault event of the virtio
/// specification (5.13 "IOMMU device", v1.2/1.3), and this project's page-table-sharing
/// requests PROBE_TABLE, ATTACH_TABLE and INVALIDATE (registry: formats/README.md).
/// All fields little-endian, alignment 1, sizes and offsets checked by static_assert here and
/// against <linux/virtio_iommu.h> in the tests.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include "../core/le.hpp"
#include "status.hpp"

namespace iopgtable::virtio {

// ---- feature bits (5.13.3) ----
inline constexpr unsigned f_input_range = 0;
inline constexpr unsigned f_domain_range = 1;
inline constexpr unsigned f_map_unmap = 2;
inline constexpr unsigned f_bypass = 3;
inline constexpr unsigned f_probe = 4;
inline constexpr unsigned f_mmio = 5;
inline constexpr unsigned f_bypass_config = 6;
/// This project's page-table sharing (PROBE_TABLE / ATTACH_TABLE / INVALIDATE). Bit 23 is the
/// last of the low device-specific range; drafts used 5–9 and collide with the spec.
inline constexpr unsigned f_table_sharing = 23;
/// This project's fast protocol (the design's relaxed operations and MAP_SG / grouped requests;
/// registry: include/iopgtable/virtio/README.md "Fast protocol"). Device-specific bits below 23,
/// clear of the spec's 0–6 and the drafts' 5–9.
inline constexpr unsigned f_relaxed = 20;
inline constexpr unsigned f_map_sg = 21;
inline constexpr unsigned f_grouped = 22;
/// This project's page requests (README.md "Page requests"): shared tables attached with
/// F_FAULT stall DMA that misses and ask the guest for the page. Bit 19: device-specific, clear
/// of the spec's 0–6, the drafts' 5–9 and this project's 20–23.
inline constexpr unsigned f_page_requests = 19;
inline constexpr unsigned f_version_1 = 32;
inline constexpr unsigned f_indirect_desc = 28;
inline constexpr unsigned f_event_idx = 29;

// ---- request types and status (5.13.6) ----
enum class req_type : std::uint8_t {
    attach = 1,
    detach = 2,
    map = 3,
    unmap = 4,
    probe = 5,
    /// This project's; far from the spec's 1–5 and from the drafts' 6–8.
    probe_table = 0x40,
    attach_table = 0x41,
    invalidate = 0x42,
    /// MAP_SG (feature MAP_SG): one virtual range, one physical address per element.
    map_sg = 0x43,
    /// PAGE_REPLY (feature PAGE_REQUESTS): the guest's answer to a page request. Not the draft's
    /// PAGE_RESP (8).
    page_reply = 0x44,
};

struct req_head {
    std::uint8_t type = 0;
    std::uint8_t reserved[3]{};
};
/// Grouped requests (feature GROUPED): flags in the head's first le32 word, above the type byte.
/// G: this request is part of a group; L: it is the group's last. Bits 10–31 stay reserved.
/// Without GROUPED negotiated the device ignores the whole word above the type byte, as before.
inline constexpr std::uint32_t req_f_group = 1u << 8;
inline constexpr std::uint32_t req_f_last = 1u << 9;
inline constexpr std::uint32_t req_f_mask = req_f_group | req_f_last;
struct req_tail {
    std::uint8_t status = 0;
    std::uint8_t reserved[3]{};
};

// ---- config space (5.13.4), 40 bytes ----
struct range64 {
    le64 start, end;
};
struct range32 {
    le32 start, end;
};
struct config {
    le64 page_size_mask;
    range64 input_range;
    range32 domain_range;
    le32 probe_size;
    std::uint8_t bypass = 0;
    std::uint8_t reserved[3]{};
};

/// This project's config fields after the spec's 40 bytes (offset 40), each valid when its
/// feature is offered (zero otherwise). The spec's `config` stays the 40 bytes Linux knows.
struct config_fast {
    /// RELAXED: the vulnerability window, in microseconds: the longest a relaxed driver may keep
    /// an unmap to itself after the DMA layer released the mapping. Until the driver sends the
    /// UNMAP (or a MAP over the range), the device keeps the old translation: a device may still
    /// DMA into pages the guest has reused. Accepting RELAXED means accepting that window.
    le32 relaxed_window_us;
    le32 group_max;    ///< GROUPED: the most requests one group may hold
    le32 map_sg_max;   ///< MAP_SG: the most elements one MAP_SG may carry
    std::uint8_t reserved[4]{};
};
inline constexpr std::uint32_t config_fast_offset = 40;

// ---- requests of the specification (5.13.6) ----
inline constexpr std::uint32_t attach_f_bypass = 1u << 0;
struct req_attach {
    req_head head;
    le32 domain, endpoint, flags;
    std::uint8_t reserved[4]{};
    req_tail tail;
};
struct req_detach {
    req_head head;
    le32 domain, endpoint;
    std::uint8_t reserved[8]{};
    req_tail tail;
};
inline constexpr std::uint32_t map_f_read = 1u << 0, map_f_write = 1u << 1, map_f_mmio = 1u << 2;
inline constexpr std::uint32_t map_f_mask = map_f_read | map_f_write | map_f_mmio;
struct req_map {
    req_head head;
    le32 domain;
    le64 virt_start, virt_end, phys_start;
    le32 flags;
    req_tail tail;
};
struct req_unmap {
    req_head head;
    le32 domain;
    le64 virt_start, virt_end;
    std::uint8_t reserved[4]{};
    req_tail tail;
};
/// The device-readable part of PROBE; properties (probe_size bytes) and the tail follow.
struct req_probe {
    req_head head;
    le32 endpoint;
    std::uint8_t reserved[64]{};
};
inline constexpr std::uint16_t probe_t_none = 0, probe_t_resv_mem = 1, probe_t_mask = 0xfff;
struct probe_property {
    le16 type, length;
};
inline constexpr std::uint8_t resv_mem_t_reserved = 0, resv_mem_t_msi = 1;
struct probe_resv_mem {
    probe_property head;
    std::uint8_t subtype = 0;
    std::uint8_t reserved[3]{};
    le64 start, end;
};

/// MAP_SG, device-readable part: the fixed 32 bytes, then le64 phys[nr_elems]; writable: the
/// tail. Maps [virt_start + i·size, virt_start + (i+1)·size) → phys[i] for each i, all or
/// nothing, with MAP's flags and rules for every element (relaxed rules with RELAXED).
struct req_map_sg {
    req_head head;
    le32 domain;
    le64 virt_start;
    le64 size;  ///< bytes per element (a multiple of the granule, not 0)
    le32 flags;
    le32 nr_elems;
};

// ---- fault event (5.13.6.9), 24 bytes ----
inline constexpr std::uint8_t fault_r_unknown = 0, fault_r_domain = 1, fault_r_mapping = 2;
inline constexpr std::uint32_t fault_f_read = 1u << 0, fault_f_write = 1u << 1, fault_f_exec = 1u << 2,
                               fault_f_address = 1u << 8;
struct fault {
    std::uint8_t reason = 0;
    std::uint8_t reserved[3]{};
    le32 flags, endpoint;
    std::uint8_t reserved2[4]{};
    le64 address;
};

// ---- this project's page requests (README.md "Page requests"), 32 bytes ----
/// The event's reason: beside the spec's fault reasons 0–2 (5.13.6.9), far from them.
inline constexpr std::uint8_t fault_r_page_request = 0x40;
/// A page request on the eventq: the fault event's first 24 bytes (reason PAGE_REQUEST, R/W/X
/// and ADDRESS flags, endpoint, the context in the spec's reserved1 word, the address), then
/// the domain (the address space the reply must name) and the request's id. 32 bytes: a
/// driver that does not know it never sees one (feature PAGE_REQUESTS), and one reading fault
/// events as Linux does ignores a buffer longer than 24 bytes.
struct page_request_event {
    std::uint8_t reason = fault_r_page_request;
    std::uint8_t reserved[3]{};
    le32 flags;    ///< fault_f_read / _write / _exec, fault_f_address
    le32 endpoint;
    le32 context;  ///< the context (slot of an F_INDIRECT table; 0 otherwise)
    le64 address;  ///< the virtual address that missed (page-aligned)
    le32 address_space;  ///< the domain the table is attached to
    le32 id;             ///< the request's id: the reply names it
};
/// PAGE_REPLY's `reply`.
inline constexpr std::uint32_t page_reply_handled = 0, page_reply_failed = 1;
/// PAGE_REPLY: everything up to the tail is device-readable (28 bytes).
struct req_page_reply {
    req_head head;
    le32 address_space;  ///< the domain the page request named
    le32 id;
    le32 reply;          ///< page_reply_handled or page_reply_failed
    le64 paddr;          ///< handled: the guest-physical page the guest mapped (informational)
    std::uint8_t reserved[4]{};
    req_tail tail;
};

// ---- this project's page-table sharing (registry: formats/README.md) ----
/// PROBE_TABLE / ATTACH_TABLE flags.
inline constexpr std::uint32_t table_f_indirect = 1u << 0;  ///< `table` is a context table (slot i = context i)
inline constexpr std::uint32_t table_f_native = 1u << 1;    ///< the guest's MMU format
inline constexpr std::uint32_t table_f_fault = 1u << 2;     ///< recoverable faults reported to the guest
inline constexpr std::uint32_t table_f_mask = table_f_indirect | table_f_native | table_f_fault;

/// One format the device's IOMMU walks: the model (registry: formats/sharing_models.hpp) and a
/// model-defined 64-byte descriptor.
struct pg_format {
    le32 model;
    std::uint8_t format[64]{};
};

/// PROBE_TABLE, device-readable part: head, address_space, flags.
struct req_probe_table {
    req_head head;
    le32 address_space;
    le32 flags;
};
/// PROBE_TABLE, device-writable part before the formats: the device writes `len` = how many
/// formats exist (possibly more than fit) and `nr_contexts` = the most contexts a table may
/// have; then as many pg_format entries as the writable buffer holds (unused ones zeroed, model
/// 0), then the tail.
struct probe_table_reply {
    le32 len;
    le32 nr_contexts;
};

/// ATTACH_TABLE: everything up to the tail is device-readable.
struct req_attach_table {
    req_head head;
    le32 address_space;
    le32 flags;
    le64 table;        ///< guest-physical address of the page directory (or context table)
    le32 nr_contexts;  ///< with F_INDIRECT: slots in the context table; otherwise 0 or 1
    le32 model;
    std::uint8_t config[64]{};
    req_tail tail;
};

/// INVALIDATE kinds (flags bits 7:0); other flag bits are reserved.
enum class invalidate_kind : std::uint8_t {
    vaddr = 0,   ///< [virt_addr, virt_addr + range_size) in one context
    single = 1,  ///< everything of one context
    table = 2,   ///< re-read the context table (F_INDIRECT only)
};
inline constexpr std::uint32_t invalidate_kind_mask = 0xff;

struct req_invalidate {
    req_head head;
    le32 address_space;
    le32 context;
    le32 flags;
    le64 virt_addr;
    le64 range_size;
    std::uint8_t opaque[64]{};
    req_tail tail;
};

/// The request types a group may hold (README.md "Fast protocol"): ATTACH, DETACH, MAP, UNMAP,
/// MAP_SG. The device refuses a group holding another (INVAL, nothing done); the driver builds
/// what it is given.
constexpr bool groupable(std::uint8_t type) noexcept {
    switch (static_cast<req_type>(type)) {
    case req_type::attach:
    case req_type::detach:
    case req_type::map:
    case req_type::unmap:
    case req_type::map_sg: return true;
    default: return false;
    }
}

namespace detail {
/// The little-endian T at byte `at` of `in` (the caller has checked that it fits).
template <class T>
T load(std::span<const std::uint8_t> in, std::size_t at) noexcept {
    le<T> v;
    std::memcpy(v.bytes.data(), in.data() + at, sizeof(T));
    return v.get();
}
} // namespace detail

static_assert(sizeof(req_head) == 4 && sizeof(req_tail) == 4);
static_assert(sizeof(config) == 40 && offsetof(config, bypass) == 36);
static_assert(sizeof(req_attach) == 24 && sizeof(req_detach) == 24);
static_assert(sizeof(req_map) == 40 && offsetof(req_map, flags) == 32);
static_assert(sizeof(req_unmap) == 32);
static_assert(sizeof(req_probe) == 72);
static_assert(sizeof(config_fast) == 16);
static_assert(sizeof(req_map_sg) == 32 && offsetof(req_map_sg, virt_start) == 8 && offsetof(req_map_sg, flags) == 24 &&
              offsetof(req_map_sg, nr_elems) == 28);
static_assert(sizeof(probe_resv_mem) == 24);
static_assert(sizeof(fault) == 24 && offsetof(fault, address) == 16);
static_assert(sizeof(page_request_event) == 32 && offsetof(page_request_event, context) == 12 &&
              offsetof(page_request_event, address) == 16 && offsetof(page_request_event, id) == 28);
static_assert(sizeof(req_page_reply) == 32 && offsetof(req_page_reply, paddr) == 16 &&
              offsetof(req_page_reply, tail) == 28);
static_assert(sizeof(pg_format) == 68);
static_assert(sizeof(req_probe_table) == 12 && sizeof(probe_table_reply) == 8);
static_assert(sizeof(req_attach_table) == 96 && offsetof(req_attach_table, table) == 12 &&
              offsetof(req_attach_table, config) == 28 && offsetof(req_attach_table, tail) == 92);
static_assert(sizeof(req_invalidate) == 100 && offsetof(req_invalidate, virt_addr) == 16 &&
              offsetof(req_invalidate, opaque) == 32);

} // namespace iopgtable::virtio
