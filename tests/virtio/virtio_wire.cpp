// SPDX-License-Identifier: MIT
// The virtio-iommu wire structures of virtio/wire.hpp against Linux's <linux/virtio_iommu.h>
// (the specification's structures as the kernel declares them): every size, field offset and
// field size, the constants, and the bytes a field puts on the wire. Then this project's
// page-table-sharing structures against the registry (formats/README.md), and le16/le32/le64.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <endian.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"  // virtio_iommu_req_probe's flexible array member
#include <linux/virtio_config.h>
#include <linux/virtio_iommu.h>
#define VIRTIO_RING_NO_LEGACY  // the legacy vring helpers are C only
#include <linux/virtio_ring.h>
#pragma GCC diagnostic pop

#include <catch2/catch.hpp>
#include <iopgtable/formats/sharing_models.hpp>
#include <iopgtable/virtio/wire.hpp>

using namespace iopgtable;

namespace {

/// Offset and size of `field` in our struct `ours` equal those in Linux's `theirs`.
#define SAME_FIELD(ours, theirs, field)                                                             \
    static_assert(offsetof(virtio::ours, field) == offsetof(theirs, field), #ours "." #field " offset"); \
    static_assert(sizeof(virtio::ours::field) == sizeof(theirs::field), #ours "." #field " size")

#define SAME_SIZE(ours, theirs) static_assert(sizeof(virtio::ours) == sizeof(theirs), #ours " size")

// ---- requests, config space and fault event of the specification ----
SAME_SIZE(req_head, virtio_iommu_req_head);
SAME_FIELD(req_head, virtio_iommu_req_head, type);
SAME_FIELD(req_head, virtio_iommu_req_head, reserved);
SAME_SIZE(req_tail, virtio_iommu_req_tail);
SAME_FIELD(req_tail, virtio_iommu_req_tail, status);
SAME_FIELD(req_tail, virtio_iommu_req_tail, reserved);

SAME_SIZE(range64, virtio_iommu_range_64);
SAME_FIELD(range64, virtio_iommu_range_64, start);
SAME_FIELD(range64, virtio_iommu_range_64, end);
SAME_SIZE(range32, virtio_iommu_range_32);
SAME_FIELD(range32, virtio_iommu_range_32, start);
SAME_FIELD(range32, virtio_iommu_range_32, end);

SAME_SIZE(config, virtio_iommu_config);
SAME_FIELD(config, virtio_iommu_config, page_size_mask);
SAME_FIELD(config, virtio_iommu_config, input_range);
SAME_FIELD(config, virtio_iommu_config, domain_range);
SAME_FIELD(config, virtio_iommu_config, probe_size);
SAME_FIELD(config, virtio_iommu_config, bypass);
SAME_FIELD(config, virtio_iommu_config, reserved);

SAME_SIZE(req_attach, virtio_iommu_req_attach);
SAME_FIELD(req_attach, virtio_iommu_req_attach, head);
SAME_FIELD(req_attach, virtio_iommu_req_attach, domain);
SAME_FIELD(req_attach, virtio_iommu_req_attach, endpoint);
SAME_FIELD(req_attach, virtio_iommu_req_attach, flags);
SAME_FIELD(req_attach, virtio_iommu_req_attach, reserved);
SAME_FIELD(req_attach, virtio_iommu_req_attach, tail);

SAME_SIZE(req_detach, virtio_iommu_req_detach);
SAME_FIELD(req_detach, virtio_iommu_req_detach, head);
SAME_FIELD(req_detach, virtio_iommu_req_detach, domain);
SAME_FIELD(req_detach, virtio_iommu_req_detach, endpoint);
SAME_FIELD(req_detach, virtio_iommu_req_detach, reserved);
SAME_FIELD(req_detach, virtio_iommu_req_detach, tail);

SAME_SIZE(req_map, virtio_iommu_req_map);
SAME_FIELD(req_map, virtio_iommu_req_map, head);
SAME_FIELD(req_map, virtio_iommu_req_map, domain);
SAME_FIELD(req_map, virtio_iommu_req_map, virt_start);
SAME_FIELD(req_map, virtio_iommu_req_map, virt_end);
SAME_FIELD(req_map, virtio_iommu_req_map, phys_start);
SAME_FIELD(req_map, virtio_iommu_req_map, flags);
SAME_FIELD(req_map, virtio_iommu_req_map, tail);

SAME_SIZE(req_unmap, virtio_iommu_req_unmap);
SAME_FIELD(req_unmap, virtio_iommu_req_unmap, head);
SAME_FIELD(req_unmap, virtio_iommu_req_unmap, domain);
SAME_FIELD(req_unmap, virtio_iommu_req_unmap, virt_start);
SAME_FIELD(req_unmap, virtio_iommu_req_unmap, virt_end);
SAME_FIELD(req_unmap, virtio_iommu_req_unmap, reserved);
SAME_FIELD(req_unmap, virtio_iommu_req_unmap, tail);

// PROBE: Linux's struct ends in the flexible `properties`; ours stops before it.
SAME_SIZE(req_probe, virtio_iommu_req_probe);
SAME_FIELD(req_probe, virtio_iommu_req_probe, head);
SAME_FIELD(req_probe, virtio_iommu_req_probe, endpoint);
SAME_FIELD(req_probe, virtio_iommu_req_probe, reserved);
static_assert(offsetof(virtio_iommu_req_probe, properties) == sizeof(virtio::req_probe));

SAME_SIZE(probe_property, virtio_iommu_probe_property);
SAME_FIELD(probe_property, virtio_iommu_probe_property, type);
SAME_FIELD(probe_property, virtio_iommu_probe_property, length);

SAME_SIZE(probe_resv_mem, virtio_iommu_probe_resv_mem);
SAME_FIELD(probe_resv_mem, virtio_iommu_probe_resv_mem, head);
SAME_FIELD(probe_resv_mem, virtio_iommu_probe_resv_mem, subtype);
SAME_FIELD(probe_resv_mem, virtio_iommu_probe_resv_mem, reserved);
SAME_FIELD(probe_resv_mem, virtio_iommu_probe_resv_mem, start);
SAME_FIELD(probe_resv_mem, virtio_iommu_probe_resv_mem, end);

SAME_SIZE(fault, virtio_iommu_fault);
SAME_FIELD(fault, virtio_iommu_fault, reason);
SAME_FIELD(fault, virtio_iommu_fault, reserved);
SAME_FIELD(fault, virtio_iommu_fault, flags);
SAME_FIELD(fault, virtio_iommu_fault, endpoint);
SAME_FIELD(fault, virtio_iommu_fault, reserved2);
SAME_FIELD(fault, virtio_iommu_fault, address);

// Nested fields of the config space.
static_assert(offsetof(virtio::config, input_range.end) == offsetof(virtio_iommu_config, input_range.end));
static_assert(offsetof(virtio::config, domain_range.end) == offsetof(virtio_iommu_config, domain_range.end));

// ---- constants ----
static_assert(virtio::f_input_range == VIRTIO_IOMMU_F_INPUT_RANGE);
static_assert(virtio::f_domain_range == VIRTIO_IOMMU_F_DOMAIN_RANGE);
static_assert(virtio::f_map_unmap == VIRTIO_IOMMU_F_MAP_UNMAP);
static_assert(virtio::f_bypass == VIRTIO_IOMMU_F_BYPASS);
static_assert(virtio::f_probe == VIRTIO_IOMMU_F_PROBE);
static_assert(virtio::f_mmio == VIRTIO_IOMMU_F_MMIO);
static_assert(virtio::f_bypass_config == VIRTIO_IOMMU_F_BYPASS_CONFIG);
static_assert(virtio::f_version_1 == VIRTIO_F_VERSION_1);
static_assert(virtio::f_indirect_desc == VIRTIO_RING_F_INDIRECT_DESC);
static_assert(virtio::f_event_idx == VIRTIO_RING_F_EVENT_IDX);

static_assert(static_cast<unsigned>(virtio::req_type::attach) == VIRTIO_IOMMU_T_ATTACH);
static_assert(static_cast<unsigned>(virtio::req_type::detach) == VIRTIO_IOMMU_T_DETACH);
static_assert(static_cast<unsigned>(virtio::req_type::map) == VIRTIO_IOMMU_T_MAP);
static_assert(static_cast<unsigned>(virtio::req_type::unmap) == VIRTIO_IOMMU_T_UNMAP);
static_assert(static_cast<unsigned>(virtio::req_type::probe) == VIRTIO_IOMMU_T_PROBE);

static_assert(static_cast<unsigned>(virtio::status::ok) == VIRTIO_IOMMU_S_OK);
static_assert(static_cast<unsigned>(virtio::status::ioerr) == VIRTIO_IOMMU_S_IOERR);
static_assert(static_cast<unsigned>(virtio::status::unsupp) == VIRTIO_IOMMU_S_UNSUPP);
static_assert(static_cast<unsigned>(virtio::status::deverr) == VIRTIO_IOMMU_S_DEVERR);
static_assert(static_cast<unsigned>(virtio::status::inval) == VIRTIO_IOMMU_S_INVAL);
static_assert(static_cast<unsigned>(virtio::status::range) == VIRTIO_IOMMU_S_RANGE);
static_assert(static_cast<unsigned>(virtio::status::noent) == VIRTIO_IOMMU_S_NOENT);
static_assert(static_cast<unsigned>(virtio::status::fault) == VIRTIO_IOMMU_S_FAULT);
static_assert(static_cast<unsigned>(virtio::status::nomem) == VIRTIO_IOMMU_S_NOMEM);

static_assert(virtio::attach_f_bypass == VIRTIO_IOMMU_ATTACH_F_BYPASS);
static_assert(virtio::map_f_read == VIRTIO_IOMMU_MAP_F_READ);
static_assert(virtio::map_f_write == VIRTIO_IOMMU_MAP_F_WRITE);
static_assert(virtio::map_f_mmio == VIRTIO_IOMMU_MAP_F_MMIO);
static_assert(virtio::map_f_mask == VIRTIO_IOMMU_MAP_F_MASK);
static_assert(virtio::probe_t_none == VIRTIO_IOMMU_PROBE_T_NONE);
static_assert(virtio::probe_t_resv_mem == VIRTIO_IOMMU_PROBE_T_RESV_MEM);
static_assert(virtio::probe_t_mask == VIRTIO_IOMMU_PROBE_T_MASK);
static_assert(virtio::resv_mem_t_reserved == VIRTIO_IOMMU_RESV_MEM_T_RESERVED);
static_assert(virtio::resv_mem_t_msi == VIRTIO_IOMMU_RESV_MEM_T_MSI);
static_assert(virtio::fault_r_unknown == VIRTIO_IOMMU_FAULT_R_UNKNOWN);
static_assert(virtio::fault_r_domain == VIRTIO_IOMMU_FAULT_R_DOMAIN);
static_assert(virtio::fault_r_mapping == VIRTIO_IOMMU_FAULT_R_MAPPING);
static_assert(virtio::fault_f_read == VIRTIO_IOMMU_FAULT_F_READ);
static_assert(virtio::fault_f_write == VIRTIO_IOMMU_FAULT_F_WRITE);
static_assert(virtio::fault_f_exec == VIRTIO_IOMMU_FAULT_F_EXEC);
static_assert(virtio::fault_f_address == VIRTIO_IOMMU_FAULT_F_ADDRESS);

// ---- this project's structures (formats/README.md) ----
static_assert(sizeof(virtio::pg_format) == 68 && offsetof(virtio::pg_format, model) == 0 &&
              offsetof(virtio::pg_format, format) == 4 && sizeof(virtio::pg_format::format) == 64);
static_assert(sizeof(virtio::req_probe_table) == 12 && offsetof(virtio::req_probe_table, address_space) == 4 &&
              offsetof(virtio::req_probe_table, flags) == 8);
static_assert(sizeof(virtio::probe_table_reply) == 8 && offsetof(virtio::probe_table_reply, len) == 0 &&
              offsetof(virtio::probe_table_reply, nr_contexts) == 4);
// ATTACH_TABLE: 92 device-readable bytes, then the tail.
static_assert(offsetof(virtio::req_attach_table, head) == 0 && offsetof(virtio::req_attach_table, address_space) == 4 &&
              offsetof(virtio::req_attach_table, flags) == 8 && offsetof(virtio::req_attach_table, table) == 12 &&
              offsetof(virtio::req_attach_table, nr_contexts) == 20 && offsetof(virtio::req_attach_table, model) == 24 &&
              offsetof(virtio::req_attach_table, config) == 28 && sizeof(virtio::req_attach_table::config) == 64 &&
              offsetof(virtio::req_attach_table, tail) == 92 && sizeof(virtio::req_attach_table) == 96);
// INVALIDATE: 96 device-readable bytes, then the tail.
static_assert(offsetof(virtio::req_invalidate, address_space) == 4 && offsetof(virtio::req_invalidate, context) == 8 &&
              offsetof(virtio::req_invalidate, flags) == 12 && offsetof(virtio::req_invalidate, virt_addr) == 16 &&
              offsetof(virtio::req_invalidate, range_size) == 24 && offsetof(virtio::req_invalidate, opaque) == 32 &&
              sizeof(virtio::req_invalidate::opaque) == 64 && offsetof(virtio::req_invalidate, tail) == 96 &&
              sizeof(virtio::req_invalidate) == 100);

// Request types and the feature bit avoid the specification's (types 1-5, features 0-6), the
// earlier drafts' (types 6-8, features 5-9) and the transport's (features 24 and up).
static_assert(static_cast<unsigned>(virtio::req_type::probe_table) == 0x40);
static_assert(static_cast<unsigned>(virtio::req_type::attach_table) == 0x41);
static_assert(static_cast<unsigned>(virtio::req_type::invalidate) == 0x42);
static_assert(virtio::f_table_sharing == 23);
static_assert(virtio::table_f_indirect == 1 && virtio::table_f_native == 2 && virtio::table_f_fault == 4 &&
              virtio::table_f_mask == 7);
static_assert(static_cast<unsigned>(virtio::invalidate_kind::vaddr) == 0 &&
              static_cast<unsigned>(virtio::invalidate_kind::single) == 1 &&
              static_cast<unsigned>(virtio::invalidate_kind::table) == 2 && virtio::invalidate_kind_mask == 0xff);
// The model registry (formats/sharing_models.hpp) as formats/README.md records it.
static_assert(sharing::model_arm == 1 && sharing::model_x86 == 2 && !sharing::find_model(0));

// Wire structures: byte-aligned, copyable as bytes, nothing hidden.
template <class T>
constexpr bool wire_struct = alignof(T) == 1 && std::is_trivially_copyable_v<T> && std::is_standard_layout_v<T>;
static_assert(wire_struct<virtio::config> && wire_struct<virtio::req_attach> && wire_struct<virtio::req_detach> &&
              wire_struct<virtio::req_map> && wire_struct<virtio::req_unmap> && wire_struct<virtio::req_probe> &&
              wire_struct<virtio::probe_resv_mem> && wire_struct<virtio::fault> && wire_struct<virtio::pg_format> &&
              wire_struct<virtio::req_probe_table> && wire_struct<virtio::probe_table_reply> &&
              wire_struct<virtio::req_attach_table> && wire_struct<virtio::req_invalidate>);

// ---- le16 / le32 / le64 ----
static_assert(sizeof(le16) == 2 && sizeof(le32) == 4 && sizeof(le64) == 8);
static_assert(alignof(le16) == 1 && alignof(le32) == 1 && alignof(le64) == 1);
static_assert(std::is_trivially_copyable_v<le64>);
static_assert(le16{0x1122}.bytes == std::array<std::uint8_t, 2>{0x22, 0x11});
static_assert(le32{0x11223344}.bytes == std::array<std::uint8_t, 4>{0x44, 0x33, 0x22, 0x11});
static_assert(le64{0x1122334455667788}.bytes ==
              std::array<std::uint8_t, 8>{0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11});
static_assert(le64{0x8000000000000001}.get() == 0x8000000000000001 && le16{0xffff}.get() == 0xffff);

/// `v` written into our struct at `field`, read back through Linux's struct with leNNtoh.
template <class Ours, class Theirs>
Theirs as_linux(const Ours& ours) {
    static_assert(sizeof(Ours) == sizeof(Theirs));
    Theirs t;
    std::memcpy(&t, &ours, sizeof t);
    return t;
}

} // namespace

TEST_CASE("wire: fields land where Linux's structures read them", "[wire]") {
    virtio::req_map m;
    m.head.type = static_cast<std::uint8_t>(virtio::req_type::map);
    m.domain = 0x01020304;
    m.virt_start = 0x1122334455667788;
    m.virt_end = 0x99aabbccddeeff00;
    m.phys_start = 0x0123456789abcdef;
    m.flags = virtio::map_f_read | virtio::map_f_mmio;
    m.tail.status = static_cast<std::uint8_t>(virtio::status::range);
    const auto lm = as_linux<virtio::req_map, virtio_iommu_req_map>(m);
    CHECK(lm.head.type == VIRTIO_IOMMU_T_MAP);
    CHECK(le32toh(lm.domain) == 0x01020304u);
    CHECK(le64toh(lm.virt_start) == 0x1122334455667788u);
    CHECK(le64toh(lm.virt_end) == 0x99aabbccddeeff00u);
    CHECK(le64toh(lm.phys_start) == 0x0123456789abcdefu);
    CHECK(le32toh(lm.flags) == (VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_MMIO));
    CHECK(lm.tail.status == VIRTIO_IOMMU_S_RANGE);

    virtio::config c;
    c.page_size_mask = 0xfffffffffffff000;
    c.input_range.start = 0x1000;
    c.input_range.end = 0xffffffffffff;
    c.domain_range.start = 1;
    c.domain_range.end = 0xffff;
    c.probe_size = 0x200;
    c.bypass = 1;
    const auto lc = as_linux<virtio::config, virtio_iommu_config>(c);
    CHECK(le64toh(lc.page_size_mask) == 0xfffffffffffff000u);
    CHECK(le64toh(lc.input_range.start) == 0x1000u);
    CHECK(le64toh(lc.input_range.end) == 0xffffffffffffu);
    CHECK(le32toh(lc.domain_range.start) == 1u);
    CHECK(le32toh(lc.domain_range.end) == 0xffffu);
    CHECK(le32toh(lc.probe_size) == 0x200u);
    CHECK(lc.bypass == 1);

    virtio::fault f;
    f.reason = virtio::fault_r_mapping;
    f.flags = virtio::fault_f_write | virtio::fault_f_address;
    f.endpoint = 0x42;
    f.address = 0xdead0000beef;
    const auto lf = as_linux<virtio::fault, virtio_iommu_fault>(f);
    CHECK(lf.reason == VIRTIO_IOMMU_FAULT_R_MAPPING);
    CHECK(le32toh(lf.flags) == (VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS));
    CHECK(le32toh(lf.endpoint) == 0x42u);
    CHECK(le64toh(lf.address) == 0xdead0000beefu);

    virtio::probe_resv_mem r;
    r.head.type = virtio::probe_t_resv_mem;
    r.head.length = sizeof r - sizeof r.head;
    r.subtype = virtio::resv_mem_t_msi;
    r.start = 0x8000000;
    r.end = 0x80fffff;
    const auto lr = as_linux<virtio::probe_resv_mem, virtio_iommu_probe_resv_mem>(r);
    CHECK(le16toh(lr.head.type) == VIRTIO_IOMMU_PROBE_T_RESV_MEM);
    CHECK(le16toh(lr.head.length) == 20);
    CHECK(lr.subtype == VIRTIO_IOMMU_RESV_MEM_T_MSI);
    CHECK(le64toh(lr.start) == 0x8000000u);
    CHECK(le64toh(lr.end) == 0x80fffffu);

    virtio::req_attach a;
    a.domain = 7;
    a.endpoint = 9;
    a.flags = virtio::attach_f_bypass;
    const auto la = as_linux<virtio::req_attach, virtio_iommu_req_attach>(a);
    CHECK(le32toh(la.domain) == 7u);
    CHECK(le32toh(la.endpoint) == 9u);
    CHECK(le32toh(la.flags) == VIRTIO_IOMMU_ATTACH_F_BYPASS);
}

TEST_CASE("wire: le16/le32/le64 are little-endian byte arrays on any host", "[wire]") {
    const le64 v{0x0102030405060708};
    unsigned char raw[8];
    std::memcpy(raw, &v, 8);
    for (int i = 0; i < 8; ++i) CHECK(raw[i] == 8 - i);
    // Reading back from bytes.
    le32 w;
    const unsigned char in[4] = {0xef, 0xbe, 0xad, 0xde};
    std::memcpy(&w, in, 4);
    CHECK(w.get() == 0xdeadbeefu);
    CHECK(static_cast<std::uint32_t>(w) == 0xdeadbeefu);
    w.set(0x01);
    CHECK(w.bytes == std::array<std::uint8_t, 4>{1, 0, 0, 0});
    const le16 h{0xabcd};
    CHECK(h.bytes == std::array<std::uint8_t, 2>{0xcd, 0xab});
    CHECK(le32{5} == le32{5});
    CHECK_FALSE(le32{5} == le32{6});
    // An ATTACH_TABLE's table field as bytes on the wire, at offset 12.
    virtio::req_attach_table req;
    req.table = 0x0000123456789000;
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(&req);
    const std::uint8_t want[8] = {0x00, 0x90, 0x78, 0x56, 0x34, 0x12, 0x00, 0x00};
    CHECK(std::memcmp(bytes + 12, want, 8) == 0);
}
