// SPDX-License-Identifier: MIT
// The guest side of virtio-iommu (virtio/driver.hpp): request builders byte for byte against
// the specification's layouts and <linux/virtio_iommu.h>; feature negotiation; PROBE property
// and fault-event parsing against hostile input; the driver and a shared stage-1 table against
// a fake transport that records every request and answers with a chosen status.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include <endian.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"  // virtio_iommu_req_probe's flexible array member
#include <linux/virtio_iommu.h>
#pragma GCC diagnostic pop

#include <catch2/catch.hpp>
#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/formats/vtd_fl.hpp>
#include <iopgtable/formats/vtd_sl.hpp>
#include <iopgtable/mem/guest_ram.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

using namespace iopgtable;
using namespace iopgtable::virtio;

namespace {

using bytes = std::vector<std::uint8_t>;

template <class T>
T get_le(const bytes& b, std::size_t at) {
    REQUIRE(at + sizeof(T) <= b.size());
    le<T> v;
    std::memcpy(v.bytes.data(), b.data() + at, sizeof(T));
    return v.get();
}
template <class T>
void put_le(bytes& b, std::size_t at, T value) {
    const le<T> v{value};
    std::memcpy(b.data() + at, v.bytes.data(), sizeof(T));
}

/// The first `n` bytes of a Linux UAPI struct.
template <class L>
bytes prefix(const L& l, std::size_t n) {
    bytes b(n);
    std::memcpy(b.data(), &l, n);
    return b;
}

constexpr std::uint64_t fbit(unsigned n) { return std::uint64_t{1} << n; }

/// Records every request; writes `answer` into the tail (the last 4 writable bytes) and
/// reports `used` (default: the whole writable part). `fill` (if set) writes the rest first.
struct fake_transport {
    struct seen {
        bytes readable;
        std::size_t writable_len;
    };
    std::vector<seen> log;
    std::uint8_t answer = 0;
    std::optional<std::uint32_t> used;
    bool write_tail = true;
    std::function<void(std::span<const std::uint8_t>, std::span<std::uint8_t>)> fill;

    std::uint32_t submit(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        log.push_back({bytes(in.begin(), in.end()), out.size()});
        if (fill) fill(in, out);
        if (write_tail && out.size() >= 4) out[out.size() - 4] = answer;
        return used.value_or(static_cast<std::uint32_t>(out.size()));
    }
    std::size_t count(req_type t) const {
        std::size_t n = 0;
        for (const auto& s : log) n += !s.readable.empty() && s.readable[0] == static_cast<std::uint8_t>(t);
        return n;
    }
};
static_assert(request_transport<fake_transport>);

/// A property: header (type word, length) then `value`.
bytes property(std::uint16_t type_word, std::uint16_t length, const bytes& value = {}) {
    bytes b(4 + value.size());
    put_le<std::uint16_t>(b, 0, type_word);
    put_le<std::uint16_t>(b, 2, length);
    for (std::size_t i = 0; i < value.size(); ++i) b[4 + i] = value[i];
    return b;
}
/// A RESV_MEM value of `length` bytes (>= 20 to hold the fields; shorter is truncated).
bytes resv_value(std::uint8_t subtype, std::uint64_t start, std::uint64_t end, std::size_t length = 20) {
    bytes v(std::max<std::size_t>(length, 20), 0);
    v[0] = subtype;
    put_le<std::uint64_t>(v, 4, start);
    put_le<std::uint64_t>(v, 12, end);
    v.resize(length);
    return v;
}
bytes resv_mem(std::uint8_t subtype, std::uint64_t start, std::uint64_t end) {
    return property(probe_t_resv_mem, 20, resv_value(subtype, start, end));
}
bytes cat(std::initializer_list<bytes> parts, std::size_t pad_to = 0) {
    bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    if (out.size() < pad_to) out.resize(pad_to, 0);
    return out;
}
sharing::checked<probe_info> parse(const bytes& b) { return parse_probe(std::span<const std::uint8_t>(b)); }

} // namespace

// ---------------------------------------------------------------------------------------------

TEST_CASE("driver: request builders lay out the specification's requests", "[driver][wire]") {
    SECTION("ATTACH against virtio_iommu_req_attach") {
        const auto r = attach_request(0x11223344, 0x55667788, true);
        virtio_iommu_req_attach l{};
        l.head.type = VIRTIO_IOMMU_T_ATTACH;
        l.domain = htole32(0x11223344);
        l.endpoint = htole32(0x55667788);
        l.flags = htole32(VIRTIO_IOMMU_ATTACH_F_BYPASS);
        CHECK(r.readable == prefix(l, offsetof(virtio_iommu_req_attach, tail)));
        CHECK(r.readable.size() == 20);
        CHECK(r.writable_len == sizeof(virtio_iommu_req_tail));
        CHECK(get_le<std::uint32_t>(attach_request(1, 2, false).readable, 12) == 0);
    }
    SECTION("DETACH against virtio_iommu_req_detach") {
        const auto r = detach_request(7, 9);
        virtio_iommu_req_detach l{};
        l.head.type = VIRTIO_IOMMU_T_DETACH;
        l.domain = htole32(7);
        l.endpoint = htole32(9);
        CHECK(r.readable == prefix(l, offsetof(virtio_iommu_req_detach, tail)));
        CHECK(r.writable_len == 4);
    }
    SECTION("MAP against virtio_iommu_req_map, and by offset") {
        const auto r = map_request(3, 0x1000, 0x1fff, 0xa000, map_f_read | map_f_write);
        virtio_iommu_req_map l{};
        l.head.type = VIRTIO_IOMMU_T_MAP;
        l.domain = htole32(3);
        l.virt_start = htole64(0x1000);
        l.virt_end = htole64(0x1fff);
        l.phys_start = htole64(0xa000);
        l.flags = htole32(VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE);
        CHECK(r.readable == prefix(l, offsetof(virtio_iommu_req_map, tail)));
        REQUIRE(r.readable.size() == 36);
        CHECK(r.readable[0] == 3);
        CHECK((r.readable[1] | r.readable[2] | r.readable[3]) == 0);
        CHECK(get_le<std::uint32_t>(r.readable, 4) == 3);
        CHECK(get_le<std::uint64_t>(r.readable, 8) == 0x1000);
        CHECK(get_le<std::uint64_t>(r.readable, 16) == 0x1fff);
        CHECK(get_le<std::uint64_t>(r.readable, 24) == 0xa000);
        CHECK(get_le<std::uint32_t>(r.readable, 32) == 3);
        CHECK(r.writable_len == 4);
    }
    SECTION("UNMAP against virtio_iommu_req_unmap") {
        const auto r = unmap_request(5, 0x2000, 0x3fff);
        virtio_iommu_req_unmap l{};
        l.head.type = VIRTIO_IOMMU_T_UNMAP;
        l.domain = htole32(5);
        l.virt_start = htole64(0x2000);
        l.virt_end = htole64(0x3fff);
        CHECK(r.readable == prefix(l, offsetof(virtio_iommu_req_unmap, tail)));
        CHECK(r.readable.size() == 28);
        CHECK(r.writable_len == 4);
    }
    SECTION("PROBE against virtio_iommu_req_probe: properties then the tail are writable") {
        const auto r = probe_request(0x42, 512);
        virtio_iommu_req_probe l{};
        l.head.type = VIRTIO_IOMMU_T_PROBE;
        l.endpoint = htole32(0x42);
        CHECK(r.readable == prefix(l, offsetof(virtio_iommu_req_probe, properties)));
        CHECK(r.readable.size() == 72);
        CHECK(r.writable_len == 512 + 4);
        CHECK(probe_request(1, 0).writable_len == 4);
    }
    SECTION("PROBE_TABLE (registry): endpoint, flags; reply header, n formats, tail") {
        const auto r = probe_table_request(0x99, table_f_native, 3);
        REQUIRE(r.readable.size() == 12);
        CHECK(r.readable[0] == 0x40);
        CHECK((r.readable[1] | r.readable[2] | r.readable[3]) == 0);
        CHECK(get_le<std::uint32_t>(r.readable, 4) == 0x99);
        CHECK(get_le<std::uint32_t>(r.readable, 8) == table_f_native);
        CHECK(r.writable_len == 8 + 3 * 68 + 4);
    }
    SECTION("ATTACH_TABLE: the struct as given, with its head set") {
        req_attach_table in;
        in.head.type = 0;
        in.head.reserved[1] = 0xee;  // a caller's garbage: the builder zeroes it
        in.address_space = 12;
        in.flags = table_f_indirect;
        in.table = 0x123456789000;
        in.nr_contexts = 4;
        in.model = 1;
        for (int i = 0; i < 64; ++i) in.config[i] = static_cast<std::uint8_t>(i + 1);
        const auto r = attach_table_request(in);
        REQUIRE(r.readable.size() == 92);
        CHECK(r.readable[0] == 0x41);
        CHECK((r.readable[1] | r.readable[2] | r.readable[3]) == 0);
        CHECK(get_le<std::uint32_t>(r.readable, 4) == 12);
        CHECK(get_le<std::uint32_t>(r.readable, 8) == table_f_indirect);
        CHECK(get_le<std::uint64_t>(r.readable, 12) == 0x123456789000);
        CHECK(get_le<std::uint32_t>(r.readable, 20) == 4);
        CHECK(get_le<std::uint32_t>(r.readable, 24) == 1);
        CHECK(std::memcmp(r.readable.data() + 28, in.config, 64) == 0);
        CHECK(r.writable_len == 4);
    }
    SECTION("INVALIDATE (registry): domain, context, kind, range; opaque zero") {
        const auto r = invalidate_request(8, 2, invalidate_kind::vaddr, 0x40000, 0x3000);
        REQUIRE(r.readable.size() == 96);
        CHECK(r.readable[0] == 0x42);
        CHECK(get_le<std::uint32_t>(r.readable, 4) == 8);
        CHECK(get_le<std::uint32_t>(r.readable, 8) == 2);
        CHECK(get_le<std::uint32_t>(r.readable, 12) == 0);
        CHECK(get_le<std::uint64_t>(r.readable, 16) == 0x40000);
        CHECK(get_le<std::uint64_t>(r.readable, 24) == 0x3000);
        for (std::size_t i = 32; i < 96; ++i) CHECK(r.readable[i] == 0);
        CHECK(get_le<std::uint32_t>(invalidate_request(8, 0, invalidate_kind::single).readable, 12) == 1);
        CHECK(r.writable_len == 4);
    }
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("driver: feature negotiation follows the driver rules", "[driver][features]") {
    const std::uint64_t v1 = fbit(f_version_1), mu = fbit(f_map_unmap), ts = fbit(f_table_sharing);
    const std::uint64_t ranges = fbit(f_input_range) | fbit(f_domain_range) | fbit(f_probe);

    CHECK(negotiate_features(mu | ranges, ~std::uint64_t{0}) == 0);  // no VERSION_1
    CHECK(negotiate_features(v1 | mu, mu) == (v1 | mu));
    // INPUT_RANGE, DOMAIN_RANGE and PROBE are taken when offered, wanted or not.
    CHECK(negotiate_features(v1 | mu | ranges, mu) == (v1 | mu | ranges));
    // A driver that cannot MAP/UNMAP does not negotiate it; nothing else to work with: unusable.
    CHECK(negotiate_features(v1 | mu | ranges, 0) == 0);
    // Table sharing alone is a way to work.
    CHECK(negotiate_features(v1 | ts, ts) == (v1 | ts));
    CHECK(negotiate_features(v1 | mu | ts, ts) == (v1 | ts));
    // Never both bypass features: BYPASS_CONFIG supersedes BYPASS.
    const std::uint64_t both = fbit(f_bypass) | fbit(f_bypass_config);
    CHECK(negotiate_features(v1 | mu | both, mu | both) == (v1 | mu | fbit(f_bypass_config)));
    CHECK(negotiate_features(v1 | mu | fbit(f_bypass), mu | both) == (v1 | mu | fbit(f_bypass)));
    CHECK(negotiate_features(v1 | mu | both, mu) == (v1 | mu));
    // MMIO is a MAP flag: not without MAP_UNMAP.
    CHECK(negotiate_features(v1 | mu | ts | fbit(f_mmio), ts | fbit(f_mmio)) == (v1 | ts));
    CHECK(negotiate_features(v1 | mu | fbit(f_mmio), mu | fbit(f_mmio)) == (v1 | mu | fbit(f_mmio)));
    // Transport bits pass when offered and wanted; bits not offered are never taken.
    CHECK(negotiate_features(v1 | mu | fbit(f_event_idx), mu | fbit(f_event_idx) | fbit(f_indirect_desc)) ==
          (v1 | mu | fbit(f_event_idx)));
    static_assert(negotiate_features(fbit(32) | fbit(2), fbit(2)) == (fbit(32) | fbit(2)));
}

TEST_CASE("driver: property: negotiated features", "[driver][features][property]") {
    rc::prop("accepted ⊆ offered, VERSION_1 and a way to map, one bypass", [](std::uint64_t offered, std::uint64_t wanted) {
        const std::uint64_t a = negotiate_features(offered, wanted);
        RC_ASSERT((a & ~offered) == 0u);
        if (a == 0) return;
        RC_ASSERT((a & fbit(f_version_1)) != 0u);
        RC_ASSERT((a & (fbit(f_map_unmap) | fbit(f_table_sharing)) & wanted) != 0u);
        RC_ASSERT((a & fbit(f_bypass)) == 0u || (a & fbit(f_bypass_config)) == 0u);
        RC_ASSERT((a & ~wanted & ~(fbit(f_version_1) | fbit(f_input_range) | fbit(f_domain_range) | fbit(f_probe)))  == 0u);
        for (unsigned f : {f_input_range, f_domain_range, f_probe})
            RC_ASSERT((offered & fbit(f)) == (a & fbit(f)));
    });
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("driver: PROBE properties as a driver must read them", "[driver][probe]") {
    SECTION("an all-zero area (type 0 at once) and an empty one") {
        auto z = parse(bytes(64, 0));
        REQUIRE(z.ok());
        CHECK(z->regions.empty());
        auto e = parse(bytes{});
        REQUIRE(e.ok());
        CHECK(e->regions.empty());
    }
    SECTION("RESV_MEM MSI and RESERVED, zero padding after") {
        auto p = parse(cat({resv_mem(resv_mem_t_msi, 0xfee00000, 0xfeefffff), resv_mem(resv_mem_t_reserved, 0, 0xfff)}, 128));
        REQUIRE(p.ok());
        REQUIRE(p->regions.size() == 2);
        CHECK(p->regions[0] == resv_region{0xfee00000, 0xfeefffff, resv_mem_t_msi});
        CHECK(p->regions[1] == resv_region{0, 0xfff, resv_mem_t_reserved});
        CHECK(p->unknown == 0);
        CHECK(p->ignored == 0);
    }
    SECTION("unknown types are skipped by their length, not their type") {
        // type 2 (PAGE_SIZE_MASK in drafts, 16 bytes there) with an unusual length of 8
        auto p = parse(cat({property(2, 8, bytes(8, 0xff)), property(0x7ff, 0), resv_mem(resv_mem_t_msi, 0x1000, 0x1fff)}));
        REQUIRE(p.ok());
        CHECK(p->unknown == 2);
        REQUIRE(p->regions.size() == 1);
        CHECK(p->regions[0].start == 0x1000);
    }
    SECTION("reserved header bits: the property is ignored, parsing goes on") {
        auto p = parse(cat({property(0x1000 | probe_t_resv_mem, 20, resv_value(0, 0x5000, 0x5fff)),
                            property(0x8000 | 7, 4, bytes(4, 1)), resv_mem(0, 0x8000, 0x8fff)}));
        REQUIRE(p.ok());
        CHECK(p->ignored == 2);
        CHECK(p->unknown == 0);
        REQUIRE(p->regions.size() == 1);
        CHECK(p->regions[0].start == 0x8000);
    }
    SECTION("zero-length properties, RESV_MEM too short or longer than its fields") {
        auto p = parse(cat({property(probe_t_resv_mem, 0), property(probe_t_resv_mem, 12, resv_value(0, 1, 2, 12)),
                            property(probe_t_resv_mem, 28, resv_value(resv_mem_t_msi, 0x9000, 0x9fff, 28)),
                            resv_mem(0, 0xa000, 0xafff)}));
        REQUIRE(p.ok());
        CHECK(p->ignored == 2);
        REQUIRE(p->regions.size() == 2);
        CHECK(p->regions[0] == resv_region{0x9000, 0x9fff, resv_mem_t_msi});
        CHECK(p->regions[1] == resv_region{0xa000, 0xafff, resv_mem_t_reserved});
    }
    SECTION("unknown subtype reads as RESERVED; reserved bytes ignored; start > end ignored") {
        bytes v = resv_value(9, 0x1000, 0x1fff);
        v[1] = v[2] = v[3] = 0xaa;
        auto p = parse(cat({property(probe_t_resv_mem, 20, v), resv_mem(0, 0x3000, 0x2fff)}));
        REQUIRE(p.ok());
        REQUIRE(p->regions.size() == 1);
        CHECK(p->regions[0] == resv_region{0x1000, 0x1fff, resv_mem_t_reserved});
        CHECK(p->ignored == 1);
    }
    SECTION("type 0 ends the list, whatever follows and whatever its reserved bits") {
        auto p = parse(cat({resv_mem(0, 0, 0xfff), property(0, 20, resv_value(0, 0x1000, 0x1fff)), resv_mem(0, 0x2000, 0x2fff)}));
        REQUIRE(p.ok());
        CHECK(p->regions.size() == 1);
        auto q = parse(cat({property(0xf000, 0), resv_mem(0, 0x2000, 0x2fff)}));
        REQUIRE(q.ok());
        CHECK(q->regions.empty());
    }
    SECTION("a value running past the end is refused; exactly to the end is fine") {
        bytes exact = resv_mem(0, 0x4000, 0x4fff);  // 24 bytes, length 20
        auto ok = parse(exact);
        REQUIRE(ok.ok());
        CHECK(ok->regions.size() == 1);
        bytes over = exact;
        put_le<std::uint16_t>(over, 2, 21);
        auto bad = parse(over);
        REQUIRE_FALSE(bad.ok());
        CHECK(bad.why().code == status::ioerr);
        bytes huge = cat({resv_mem(0, 0, 0xfff), property(5, 0xffff)}, 64);
        CHECK_FALSE(parse(huge).ok());
        bytes cut(exact.begin(), exact.begin() + 10);  // the header fits, the value does not
        CHECK_FALSE(parse(cut).ok());
    }
    SECTION("1-3 trailing bytes cannot hold a header: the end") {
        for (std::size_t extra = 1; extra <= 3; ++extra) {
            bytes b = cat({resv_mem(0, 0, 0xfff)});
            b.insert(b.end(), extra, 0xff);
            auto p = parse(b);
            REQUIRE(p.ok());
            CHECK(p->regions.size() == 1);
        }
    }
    SECTION("overlapping regions are kept as reported") {
        auto p = parse(cat({resv_mem(0, 0x1000, 0x2fff), resv_mem(resv_mem_t_msi, 0x2000, 0x3fff)}));
        REQUIRE(p.ok());
        REQUIRE(p->regions.size() == 2);
        CHECK(overlaps(*p, 0x3000, 0x3000));
        CHECK(overlaps(*p, 0, 0x1000));
        CHECK_FALSE(overlaps(*p, 0x4000, 0xffff));
        CHECK_FALSE(overlaps(*p, 0, 0xfff));
    }
}

TEST_CASE("driver: property: any bytes parse without reading past them", "[driver][probe][property]") {
    // Exact-size heap copy so that a sanitizer sees any overread.
    auto check = [](const bytes& raw) {
        const auto copy = std::make_unique<std::uint8_t[]>(std::max<std::size_t>(raw.size(), 1));
        if (!raw.empty()) std::memcpy(copy.get(), raw.data(), raw.size());
        auto p = parse_probe(std::span<const std::uint8_t>(copy.get(), raw.size()));
        if (!p) {
            RC_ASSERT(p.why().code == status::ioerr);
            return;
        }
        for (const auto& r : p->regions) {
            RC_ASSERT(r.start <= r.end);
            RC_ASSERT(r.subtype <= resv_mem_t_msi);
        }
        RC_ASSERT(p->regions.size() * 24 <= raw.size());
    };
    rc::prop("random bytes", [&] { check(*rc::gen::arbitrary<bytes>()); });
    rc::prop("near-valid property lists, cut anywhere", [&] {
        const auto n = *rc::gen::inRange(0, 8);
        bytes raw;
        for (int i = 0; i < n; ++i) {
            const auto type = *rc::gen::element<std::uint16_t>(0, 1, 1, 1, 2, 0x1001, 0x8000, 0xfff);
            const auto length = *rc::gen::element<std::uint16_t>(0, 4, 12, 20, 20, 28, 40);
            bytes value = *rc::gen::container<bytes>(length, rc::gen::arbitrary<std::uint8_t>());
            const bytes prop = property(type, length, value);
            raw.insert(raw.end(), prop.begin(), prop.end());
        }
        const auto cut = *rc::gen::inRange<std::size_t>(0, raw.size() + 1);
        raw.resize(cut);
        check(raw);
    });
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("driver: fault events as Linux reads them", "[driver][fault]") {
    virtio_iommu_fault l{};
    l.reason = VIRTIO_IOMMU_FAULT_R_MAPPING;
    l.flags = htole32(VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS);
    l.endpoint = htole32(0x77);
    l.address = htole64(0xdead0000);
    bytes b = prefix(l, sizeof l);
    REQUIRE(b.size() == 24);

    auto e = parse_fault(b);
    REQUIRE(e);
    CHECK(e->reason == fault_r_mapping);
    CHECK(e->flags == (fault_f_write | fault_f_address));
    CHECK(e->endpoint == 0x77);
    REQUIRE(e->address);
    CHECK(*e->address == 0xdead0000);

    SECTION("no ADDRESS flag: no address") {
        put_le<std::uint32_t>(b, 4, fault_f_read);
        auto f = parse_fault(b);
        REQUIRE(f);
        CHECK_FALSE(f->address);
    }
    SECTION("reserved bytes of the first word set: ignored") {
        for (std::size_t i = 1; i <= 3; ++i) {
            bytes c = b;
            c[i] = 1;
            CHECK_FALSE(parse_fault(c));
        }
    }
    SECTION("unknown reason reads as UNKNOWN; undefined flags and reserved1 ignored") {
        b[0] = 9;
        put_le<std::uint32_t>(b, 4, 0xfffffe00u | fault_f_read | fault_f_exec);
        b[12] = b[15] = 0xff;
        auto f = parse_fault(b);
        REQUIRE(f);
        CHECK(f->reason == fault_r_unknown);
        CHECK(f->flags == (fault_f_read | fault_f_exec));
        CHECK(f->endpoint == 0x77);
    }
    SECTION("DOMAIN reason") {
        b[0] = VIRTIO_IOMMU_FAULT_R_DOMAIN;
        CHECK(parse_fault(b)->reason == fault_r_domain);
    }
    SECTION("a buffer that is not the 24-byte event") {
        CHECK_FALSE(parse_fault(std::span<const std::uint8_t>(b).first(23)));
        bytes longer = b;
        longer.push_back(0);
        CHECK_FALSE(parse_fault(longer));
        CHECK_FALSE(parse_fault(bytes{}));
    }
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("driver: statuses and used lengths", "[driver]") {
    fake_transport t;
    driver<fake_transport> d(t);

    CHECK(d.attach(1, 2) == status::ok);
    REQUIRE(t.log.size() == 1);
    CHECK(t.log[0].readable == attach_request(1, 2).readable);
    CHECK(t.log[0].writable_len == 4);
    CHECK(d.last_used() == 4);

    t.answer = static_cast<std::uint8_t>(status::noent);
    CHECK(d.detach(1, 2) == status::noent);
    t.answer = static_cast<std::uint8_t>(status::range);
    CHECK(d.map(1, 0x1000, 0x1fff, 0x8000, map_f_read) == status::range);
    t.answer = 0;
    CHECK(d.unmap(1, 0x1000, 0x1fff) == status::ok);

    SECTION("used length 0: the device did not answer, IOERR") {
        t.used = 0;
        CHECK(d.map(1, 0, 0xfff, 0, map_f_read) == status::ioerr);
        CHECK(d.last_used() == 0);
    }
    SECTION("a used length shorter than the writable part, or longer: IOERR") {
        t.used = 2;
        CHECK(d.attach(1, 2) == status::ioerr);
        t.used = 5;
        CHECK(d.attach(1, 2) == status::ioerr);
    }
    SECTION("a full used length without a written tail: IOERR (preset)") {
        t.write_tail = false;
        CHECK(d.attach(1, 2) == status::ioerr);
    }
    SECTION("a status the spec does not define: IOERR; the tail's reserved bytes ignored") {
        t.answer = 9;
        CHECK(d.attach(1, 2) == status::ioerr);
        t.answer = 0;
        t.fill = [](auto, std::span<std::uint8_t> out) { std::fill(out.begin(), out.end(), std::uint8_t{0xff}); };
        CHECK(d.attach(1, 2) == status::ok);
    }
    SECTION("counters by type") {
        CHECK(d.sent(req_type::attach) == 1);
        CHECK(d.sent(req_type::detach) == 1);
        CHECK(d.sent(req_type::map) == 1);
        CHECK(d.sent(req_type::unmap) == 1);
        CHECK(d.sent(req_type::probe) == 0);
        CHECK(d.failures() == 2);
    }
}

TEST_CASE("driver: PROBE and PROBE_TABLE through the driver", "[driver][probe]") {
    fake_transport t;
    driver<fake_transport> d(t);

    SECTION("PROBE: properties parsed from the writable part, tail at probe_size") {
        const bytes props = cat({resv_mem(resv_mem_t_msi, 0xfee00000, 0xfeefffff)});
        t.fill = [&](std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
            REQUIRE(in.size() == 72);
            REQUIRE(out.size() == 256 + 4);
            std::copy(props.begin(), props.end(), out.begin());
        };
        auto p = d.probe(3, 256);
        REQUIRE(p.ok());
        REQUIRE(p->regions.size() == 1);
        CHECK(p->regions[0].subtype == resv_mem_t_msi);
        CHECK(get_le<std::uint32_t>(t.log.back().readable, 4) == 3);
        CHECK(d.sent(req_type::probe) == 1);

        t.answer = static_cast<std::uint8_t>(status::noent);
        auto n = d.probe(4, 256);
        REQUIRE_FALSE(n.ok());
        CHECK(n.why().code == status::noent);

        t.answer = 0;
        t.used = 4;  // only a tail's worth: not the full writable part
        auto s = d.probe(3, 256);
        REQUIRE_FALSE(s.ok());
        CHECK(s.why().code == status::ioerr);
    }
    SECTION("PROBE: a hostile probe_size is not sent") {
        auto p = d.probe(1, max_probe_size + 1);
        REQUIRE_FALSE(p.ok());
        CHECK(p.why().code == status::inval);
        CHECK(t.log.empty());
    }
    SECTION("PROBE: a broken property list is an IOERR") {
        t.fill = [](auto, std::span<std::uint8_t> out) {
            out[0] = 1;
            out[2] = 0xff;  // length 255 in a 64-byte area
        };
        auto p = d.probe(1, 64);
        REQUIRE_FALSE(p.ok());
        CHECK(p.why().code == status::ioerr);
    }
    SECTION("PROBE_TABLE: the reply header and formats before the tail") {
        pg_format f;
        f.model = 1;
        f.format[0] = 1;
        const std::vector<pg_format> offered{f, f, f};
        t.fill = [&](std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
            REQUIRE(in.size() == 12);
            REQUIRE(out.size() == 8 + 2 * 68 + 4);
            CHECK(sharing::write_probe_table(offered, 16, out.first(out.size() - 4)) == out.size() - 4);
        };
        auto r = d.probe_table(5, 2);
        REQUIRE(r.ok());
        CHECK(r->len == 3);  // more exist than fit
        CHECK(r->nr_contexts == 16);
        CHECK(r->formats.size() == 2);
        CHECK(get_le<std::uint32_t>(t.log.back().readable, 4) == 5);

        t.answer = static_cast<std::uint8_t>(status::unsupp);
        auto u = d.probe_table(5, 2);
        REQUIRE_FALSE(u.ok());
        CHECK(u.why().code == status::unsupp);
        CHECK_FALSE(d.probe_table(5, max_probe_formats + 1).ok());
        CHECK(d.sent(req_type::probe_table) == 2);
    }
    SECTION("ATTACH_TABLE and INVALIDATE name the domain") {
        req_attach_table a;
        a.address_space = 999;  // overridden
        a.model = 2;
        CHECK(d.attach_table(17, a) == status::ok);
        CHECK(t.log.back().readable[0] == 0x41);
        CHECK(get_le<std::uint32_t>(t.log.back().readable, 4) == 17);
        CHECK(d.invalidate(17, 0, invalidate_kind::single) == status::ok);
        CHECK(t.log.back().readable == invalidate_request(17, 0, invalidate_kind::single).readable);
        CHECK(d.sent(req_type::attach_table) == 1);
        CHECK(d.sent(req_type::invalidate) == 1);
    }
}

namespace {
/// A device model stand-in with the `handle` shape of device.hpp.
struct echo_device {
    std::uint8_t answer = 0;
    unsigned calls = 0;
    std::uint32_t handle(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        ++calls;
        if (in.empty() || in[0] > 5) return 0;  // unknown type: unanswered
        out[out.size() - 4] = answer;
        return static_cast<std::uint32_t>(out.size());
    }
};
} // namespace

TEST_CASE("driver: direct_transport calls the device's handle", "[driver]") {
    echo_device dev;
    direct_transport<echo_device> t{&dev};
    static_assert(request_transport<direct_transport<echo_device>>);
    driver<direct_transport<echo_device>> d(t);
    CHECK(d.attach(1, 1) == status::ok);
    CHECK(d.invalidate(1, 0, invalidate_kind::single) == status::ioerr);  // used length 0
    CHECK(dev.calls == 2);
}

// ---------------------------------------------------------------------------------------------

namespace {

/// Host RAM with a stage-2 table that maps the guest's table window readable and writable.
template <class S2>
struct stage2_world {
    static constexpr std::uint64_t host_base = 0x100000000, pool = 0x400000;
    static constexpr std::uint64_t window_ipa = 0x40000000, window_size = 0x200000;
    guest_ram host{pool + window_size, pa_t{host_base}};
    std::optional<page_table<S2, guest_ram>> s2;

    stage2_world() {
        host.set_table_pool(pa_t{host_base}, pool);
        auto t = page_table<S2, guest_ram>::create(typename S2::config{}, host);
        REQUIRE(t.ok());
        s2.emplace(std::move(*t));
        const std::uint64_t page = s2->min_page();
        REQUIRE(s2->map_pages(ipa_t{window_ipa}, pa_t{host_base + pool}, length_t{page}, window_size / page,
                              prot::read | prot::write)
                    .ok());
    }
    nested::stage_table<S2, guest_ram> stage2() const { return nested::stage_table<S2, guest_ram>::of(*s2); }
};

} // namespace

TEST_CASE("driver: a shared stage-1 table sends INVALIDATE after removals only", "[driver][sharing]") {
    using S1 = arm_lpae_s1_4k;
    using S2 = arm_lpae_s2_4k;
    using table = shared_table<S1, S2, guest_ram, fake_transport>;
    stage2_world<S2> w;
    fake_transport t;
    driver<fake_transport> d(t);
    const std::uint32_t domain = 6;
    const auto rw = prot::read | prot::write;

    auto st = table::create(d, w.stage2(), ipa_t{w.window_ipa}, w.window_size, lpae_config{.ias = 48, .oas = 48}, domain, 3);
    REQUIRE(st.ok());
    table& s = *st;

    // One ATTACH_TABLE naming the domain, the table's guest-physical root and the ARM model.
    REQUIRE(t.log.size() == 1);
    const bytes& at = t.log[0].readable;
    REQUIRE(at.size() == 92);
    CHECK(at[0] == 0x41);
    CHECK(get_le<std::uint32_t>(at, 4) == domain);
    CHECK(get_le<std::uint64_t>(at, 12) == s.root().value);
    CHECK(s.root().value >= w.window_ipa);
    CHECK(s.root().value < w.window_ipa + w.window_size);
    CHECK(get_le<std::uint32_t>(at, 24) == sharing::model_arm);
    CHECK(get_le<std::uint32_t>(at, 28) == sharing::arm_lpae64);  // config variant
    CHECK(get_le<std::uint32_t>(at, 28 + 24) == 3);                // config asid
    t.log.clear();

    SECTION("map sends nothing; unmap sends exactly one INVALIDATE VADDR of its range") {
        auto m = s.map(iova_t{0x10000}, ipa_t{0x80000000}, length_t{0x3000}, rw);
        REQUIRE(m.ok());
        CHECK(m->value == 0x3000);
        CHECK(t.log.empty());
        CHECK(s.table().iova_to_phys(iova_t{0x11000}) == pa_t{0x80001000});

        auto u = s.unmap(iova_t{0x10000}, length_t{0x2000});
        REQUIRE(u.ok());
        CHECK(u->value == 0x2000);
        REQUIRE(t.log.size() == 1);
        CHECK(t.log[0].readable == invalidate_request(domain, 0, invalidate_kind::vaddr, 0x10000, 0x2000).readable);
        CHECK(s.invalidations() == 1);
        CHECK(d.sent(req_type::invalidate) == 1);
        CHECK_FALSE(s.table().iova_to_phys(iova_t{0x10000}));
        CHECK(s.table().iova_to_phys(iova_t{0x12000}) == pa_t{0x80002000});
    }
    SECTION("unmapping nothing changes nothing and sends nothing") {
        REQUIRE(s.map(iova_t{0x10000}, ipa_t{0x80000000}, length_t{0x1000}, rw).ok());
        auto u = s.unmap(iova_t{0x20000}, length_t{0x1000});
        REQUIRE(u.ok());
        CHECK(u->value == 0);
        CHECK(t.log.empty());
    }
    SECTION("engine errors: refused, nothing sent") {
        REQUIRE(s.map(iova_t{0x10000}, ipa_t{0x80000000}, length_t{0x1000}, rw).ok());
        auto e = s.map(iova_t{0x10000}, ipa_t{0x90000000}, length_t{0x1000}, rw);
        REQUIRE_FALSE(e.ok());
        CHECK(e.why().code == status::inval);
        CHECK(e.why().field == "exists");
        auto m = s.unmap(iova_t{0x10800}, length_t{0x1000});
        REQUIRE_FALSE(m.ok());
        CHECK(m.why().code == status::inval);
        CHECK(t.log.empty());
    }
    SECTION("the device refusing the INVALIDATE fails the unmap (the entry is gone)") {
        REQUIRE(s.map(iova_t{0x10000}, ipa_t{0x80000000}, length_t{0x1000}, rw).ok());
        t.answer = static_cast<std::uint8_t>(status::range);
        auto u = s.unmap(iova_t{0x10000}, length_t{0x1000});
        REQUIRE_FALSE(u.ok());
        CHECK(u.why().code == status::range);
        CHECK(u.why().field == "INVALIDATE");
        CHECK(t.log.size() == 1);
        CHECK_FALSE(s.table().iova_to_phys(iova_t{0x10000}));
        t.used = 0;
        CHECK(s.invalidate_all() == status::ioerr);
    }
    SECTION("a block replacing an empty table needs one INVALIDATE of the block") {
        REQUIRE(s.map(iova_t{0x200000}, ipa_t{0x80000000}, length_t{0x1000}, rw).ok());
        REQUIRE(s.unmap(iova_t{0x200000}, length_t{0x1000}).ok());  // the last-level table stays, empty
        t.log.clear();
        auto b = s.map(iova_t{0x200000}, ipa_t{0x80200000}, length_t{0x200000}, rw);
        REQUIRE(b.ok());
        REQUIRE(t.log.size() == 1);
        CHECK(t.log[0].readable == invalidate_request(domain, 0, invalidate_kind::vaddr, 0x200000, 0x200000).readable);
        CHECK(s.table().lookup(iova_t{0x200000}).size_lg2 == 21);
    }
    SECTION("invalidate_all sends INVALIDATE SINGLE") {
        CHECK(s.invalidate_all() == status::ok);
        REQUIRE(t.log.size() == 1);
        CHECK(t.log[0].readable == invalidate_request(domain, 0, invalidate_kind::single).readable);
        CHECK(s.invalidations() == 1);
    }
    SECTION("tables live in the window, written through stage 2") {
        REQUIRE(s.map(iova_t{0x7f0000000000}, ipa_t{0x80000000}, length_t{0x1000}, rw).ok());
        CHECK(s.mem().bytes_in_use() == 4 * 0x1000);
        CHECK(s.table().iova_to_phys(iova_t{0x7f0000000000}) == pa_t{0x80000000});
    }
}

TEST_CASE("driver: a shared table refused by the device is not created", "[driver][sharing]") {
    stage2_world<arm_lpae_s2_4k> w;
    fake_transport t;
    t.answer = static_cast<std::uint8_t>(status::unsupp);
    driver<fake_transport> d(t);
    auto st = shared_table<arm_lpae_s1_4k, arm_lpae_s2_4k, guest_ram, fake_transport>::create(
        d, w.stage2(), ipa_t{w.window_ipa}, w.window_size, lpae_config{}, 1);
    REQUIRE_FALSE(st.ok());
    CHECK(st.why().code == status::unsupp);
    CHECK(st.why().field == "ATTACH_TABLE");

    SECTION("a window stage 2 does not map: the table cannot be built, nothing sent") {
        t.log.clear();
        auto none = shared_table<arm_lpae_s1_4k, arm_lpae_s2_4k, guest_ram, fake_transport>::create(
            d, w.stage2(), ipa_t{0x10000000}, 0x100000, lpae_config{}, 1);
        REQUIRE_FALSE(none.ok());
        CHECK(none.why().field == "table");
        CHECK(t.log.empty());
    }
}

TEST_CASE("driver: a shared VT-d first-stage table over VT-d second stage", "[driver][sharing]") {
    stage2_world<vtd_sl> w;
    fake_transport t;
    driver<fake_transport> d(t);
    auto st = shared_table<vtd_fl, vtd_sl, guest_ram, fake_transport>::create(d, w.stage2(), ipa_t{w.window_ipa},
                                                                             w.window_size, vtd_fl::config{}, 2, 5);
    REQUIRE(st.ok());
    REQUIRE(t.log.size() == 1);
    CHECK(get_le<std::uint32_t>(t.log[0].readable, 24) == sharing::model_x86);
    REQUIRE(st->map(iova_t{0x1000}, ipa_t{0x5000}, length_t{0x1000}, prot::read).ok());
    REQUIRE(st->unmap(iova_t{0x1000}, length_t{0x1000}).ok());
    CHECK(t.log.size() == 2);
    CHECK(t.log[1].readable == invalidate_request(2, 0, invalidate_kind::vaddr, 0x1000, 0x1000).readable);
}
