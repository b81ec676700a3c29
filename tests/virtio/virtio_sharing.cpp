// SPDX-License-Identifier: MIT
// Page-table sharing through the virtio-iommu device (virtio/device.hpp, shared_space.hpp) end
// to end: the guest builds its own stage-1 table in its RAM (through stage 2, as a guest CPU
// would), shares it with ATTACH_TABLE and keeps the device in step with INVALIDATE, every
// request going through the requestq of the simulated VM (sim/machine.hpp). PROBE_TABLE,
// ATTACH_TABLE and INVALIDATE with their refusals; the IOTLB contract of shared tables for both
// translation modes (nested over stage 2, folded shadow); a hostile guest table (a DAG) against
// the folding budget; the Intel host's VT-d first-stage sharing.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/formats/vtd_fl.hpp>
#include <iopgtable/nested/stage2_view.hpp>
#include <iopgtable/sharing/negotiation.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/machine.hpp>

#include "virtio/virtio_fixture.hpp"

using namespace iopgtable;
using namespace iopgtable::virtio;

namespace {

using namespace virtio_test;
using nested::access_kind;
constexpr std::uint64_t page = 0x1000;
constexpr std::uint64_t dma = machine<arm_host>::dma_gpa;  // guest-physical memory free for DMA buffers
constexpr prot rw = prot::read | prot::write | prot::cache;

constexpr std::uint32_t vaddr = static_cast<std::uint32_t>(invalidate_kind::vaddr),
                        single = static_cast<std::uint32_t>(invalidate_kind::single),
                        table_kind = static_cast<std::uint32_t>(invalidate_kind::table);

machine_settings settings(shared_mode mode) {
    machine_settings s = small_machine();
    s.device.sharing = mode;
    return s;
}

/// The guest's own stage-1 table of format S1, in its table window, written through stage 2.
template <class Host, class S1>
struct guest_table {
    using gmem_type = nested::guest_table_memory<typename Host::stage2_format, guest_ram>;
    gmem_type gmem;
    std::optional<page_table<S1, gmem_type>> pt;

    explicit guest_table(machine<Host>& m, std::uint64_t window_offset = 0, const typename S1::config& cfg = {})
        : gmem(m.stage2_table(), ipa_t{machine<Host>::table_window_gpa + window_offset},
               machine<Host>::table_window_size / 2) {
        auto t = page_table<S1, gmem_type>::create(cfg, gmem);
        REQUIRE(t.ok());
        pt.emplace(std::move(*t));
    }
    std::uint64_t root() const { return pt->root().value; }
    req_attach_table request(std::uint32_t dom, std::uint32_t tag = 1) const {
        auto r = sharing::make_attach_table<S1>(pt->cfg(), pa_t{root()}, tag);
        REQUIRE(r.ok());
        r->address_space = dom;
        return *r;
    }
    void map(std::uint64_t iova, std::uint64_t gpa, std::uint64_t size, prot p = rw) {
        REQUIRE(pt->map(typename S1::input_address{iova}, pa_t{gpa}, length_t{size}, p).ok());
    }
    void unmap(std::uint64_t iova, std::uint64_t size) {
        REQUIRE(pt->unmap(typename S1::input_address{iova}, length_t{size}).ok());
    }
};
using lpae_table = guest_table<arm_host, arm_lpae_s1_4k>;

/// A machine sharing in `mode` whose endpoint 0 is in domain 1, and domain 1 holds the guest's
/// own LPAE table `g` (ATTACH, then ATTACH_TABLE).
struct shared_lpae_vm : vm<> {
    lpae_table g;
    explicit shared_lpae_vm(shared_mode mode) : vm(settings(mode)), g(*m) {
        REQUIRE(send(attach(1, 0)) == st::ok);
        REQUIRE(send(g.request(1)) == st::ok);
    }
};

/// translate() of one byte faults with MAPPING at `iova`.
template <class V>
void r_fault_at(V& v, std::uint64_t iova) {
    const dma_result r = v.dev().translate(0, iova, 1, access_kind::read);
    REQUIRE(r.fault);
    CHECK(r.fault->reason == fault_r_mapping);
    CHECK(r.fault->address == iova);
}

} // namespace

// ---------------------------------------------------------------------------------------------
// PROBE_TABLE, ATTACH_TABLE, INVALIDATE: answers and refusals
// ---------------------------------------------------------------------------------------------

TEST_CASE("virtio sharing: PROBE_TABLE", "[virtio]") {
    vm v(settings(shared_mode::nested));
    auto request = [](std::uint32_t ep, std::uint32_t flags) {
        req_probe_table r;
        r.head.type = static_cast<std::uint8_t>(req_type::probe_table);
        r.address_space = ep;
        r.flags = flags;
        bytes b(sizeof r);
        std::memcpy(b.data(), static_cast<const void*>(&r), sizeof r);
        return b;
    };
    const std::uint32_t writable = sizeof(probe_table_reply) + 8 * sizeof(pg_format) + sizeof(req_tail);
    bytes out(writable, 0xee);
    REQUIRE(v.m->raw(request(0, 0), writable, out) == writable);
    CHECK(out[writable - 4] == static_cast<std::uint8_t>(status::ok));
    auto reply = sharing::parse_probe_table(std::span(out).first(writable - 4));
    REQUIRE(reply.ok());
    CHECK(reply->nr_contexts == v.dev().settings().max_contexts);
    REQUIRE(reply->len >= 1);
    CHECK(reply->formats.size() == reply->len);
    bool arm = false;
    for (const auto& f : reply->formats) arm |= f.model.get() == sharing::model_arm;
    CHECK(arm);

    auto status_of = [&](const bytes& in, std::uint32_t w) {
        out.assign(w, 0xee);
        const std::uint32_t used = v.m->raw(in, w, out);
        REQUIRE(used == w);
        return named{static_cast<status>(out[w - 4])};
    };
    CHECK(status_of(request(0, 1), writable) == st::inval);   // flags
    CHECK(status_of(request(4, 0), writable) == st::noent);   // endpoint
    CHECK(status_of(request(0, 0), 8) == st::inval);          // no room for the reply header
    bytes longer = request(0, 0);
    longer.push_back(0);
    CHECK(status_of(longer, writable) == st::inval);
    CHECK(v.m->raw(std::span(longer).first(11), writable, out) == 0);
}

TEST_CASE("virtio sharing: ATTACH_TABLE refusals; a domain holds MAP/UNMAP mappings or a table, never both",
          "[virtio]") {
    vm v(settings(shared_mode::nested));
    lpae_table g(*v.m);
    g.map(0x100000, dma, page);
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(attach(2, 1, attach_f_bypass)) == st::ok);

    CHECK(v.send(g.request(9)) == st::noent);  // no such domain
    CHECK(v.send(g.request(2)) == st::inval);  // bypass domain
    REQUIRE(v.send(map(1, 0x200000, 0x200fff, dma)) == st::ok);
    CHECK(v.send(g.request(1)) == st::inval);  // holds a mapping
    REQUIRE(v.send(unmap(1, 0, ~std::uint64_t{0})) == st::ok);

    // Refusals of the request's own fields (formats/README.md), the domain unchanged by each.
    req_attach_table r = g.request(1);
    auto with = [&](auto change) {
        req_attach_table x = r;
        change(x);
        return v.send(x);
    };
    CHECK(with([](req_attach_table& x) { x.model = 0u; }) == st::inval);
    CHECK(with([](req_attach_table& x) { x.model = 99u; }) == st::unsupp);
    CHECK(with([](req_attach_table& x) { x.model = sharing::model_x86; }) == st::inval);
    CHECK(with([](req_attach_table& x) {  // a well-formed VT-d blob: no x86 format on this host
              x.model = sharing::model_x86;
              std::memset(x.config, 0, sizeof x.config);
              const le32 words[2] = {1u, 48u};  // variant, address width
              std::memcpy(x.config, words, sizeof words);
          }) == st::unsupp);
    CHECK(with([](req_attach_table& x) { x.flags = 1u << 7; }) == st::inval);
    CHECK(with([](req_attach_table& x) { x.flags = table_f_fault; }) == st::unsupp);
    CHECK(with([](req_attach_table& x) { x.nr_contexts = 2u; }) == st::inval);
    CHECK(with([](req_attach_table& x) {
              x.flags = table_f_indirect;
              x.nr_contexts = 0u;
          }) == st::range);
    CHECK(with([](req_attach_table& x) { x.table = x.table.get() + 8; }) == st::inval);   // misaligned
    CHECK(with([](req_attach_table& x) { x.table = 1ull << 40; }) == st::range);         // outside RAM
    CHECK(with([](req_attach_table& x) { x.config[60] = 1; }) == st::inval);              // reserved config
    CHECK(v.dev().shared(1) == nullptr);
    REQUIRE(v.dev().mappings(1) != nullptr);
    CHECK_FALSE(v.at(0, 0x100000));
    bytes longer = readable(r);
    longer.push_back(0);
    CHECK(v.send(longer) == st::inval);
    std::array<std::uint8_t, 4> out{};
    const bytes whole = readable(r);
    CHECK(v.m->submit(std::span(whole).first(91), out) == 0);

    // Accepted: the domain is a table domain from now on.
    REQUIRE(v.send(r) == st::ok);
    CHECK(v.dev().mappings(1) == nullptr);
    REQUIRE(v.dev().shared(1) != nullptr);
    CHECK(v.at(0, 0x100010) == v.hpa(dma + 0x10));
    CHECK(v.send(map(1, 0x300000, 0x300fff, dma)) == st::inval);
    CHECK(v.send(unmap(1, 0x100000, 0x100fff)) == st::inval);
    CHECK(v.at(0, 0x100010) == v.hpa(dma + 0x10));
    // Another endpoint joining the domain shares the table.
    REQUIRE(v.send(attach(1, 2)) == st::ok);
    CHECK(v.at(2, 0x100010) == v.hpa(dma + 0x10));

    SECTION("a new table replaces the old one, with none of its translations") {
        lpae_table h(*v.m, machine<arm_host>::table_window_size / 2);
        h.map(0x200000, dma + 0x5000, page);
        REQUIRE(v.send(h.request(1, 2)) == st::ok);
        CHECK_FALSE(v.at(0, 0x100010));
        CHECK(v.at(0, 0x200010) == v.hpa(dma + 0x5010));
    }
    SECTION("F_INDIRECT: context 0's slot must be valid (NOENT), INVALIDATE TABLE re-reads it") {
        lpae_table h(*v.m, machine<arm_host>::table_window_size / 2);
        h.map(0x200000, dma + 0x5000, page);
        const std::uint64_t ctx = machine<arm_host>::table_window_gpa + machine<arm_host>::table_window_size - page;
        const std::array<std::uint64_t, 2> zero_slots{0, 0};
        REQUIRE(v.m->guest().write(pa_t{ctx}, zero_slots.data(), sizeof zero_slots));
        auto x = sharing::make_attach_table<arm_lpae_s1_4k>(g.pt->cfg(), pa_t{ctx}, 3, table_f_indirect, 2);
        REQUIRE(x.ok());
        x->address_space = 1;
        CHECK(v.send(*x) == st::noent);
        CHECK(v.at(0, 0x100010) == v.hpa(dma + 0x10));  // the refused request changed nothing
        const le64 slot0{g.root() | 1};
        REQUIRE(v.m->guest().write(pa_t{ctx}, slot0.bytes.data(), 8));
        REQUIRE(v.send(*x) == st::ok);
        CHECK(v.at(0, 0x100010) == v.hpa(dma + 0x10));
        const le64 slot0b{h.root() | 1};
        REQUIRE(v.m->guest().write(pa_t{ctx}, slot0b.bytes.data(), 8));
        CHECK(v.send(invalidate(1, table_kind)) == st::ok);
        CHECK_FALSE(v.at(0, 0x100010));
        CHECK(v.at(0, 0x200010) == v.hpa(dma + 0x5010));
        CHECK(v.send(invalidate(1, vaddr, 0x200000, page, 1)) == st::ok);  // context 1: accepted
        CHECK(v.send(invalidate(1, single, 0, 0, 2)) == st::range);
    }
}

TEST_CASE("virtio sharing: INVALIDATE refusals", "[virtio]") {
    vm v(settings(shared_mode::nested));
    lpae_table g(*v.m);
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(attach(2, 1)) == st::ok);
    REQUIRE(v.send(attach(3, 2, attach_f_bypass)) == st::ok);
    REQUIRE(v.send(g.request(1)) == st::ok);

    CHECK(v.send(invalidate(9, vaddr, 0, page)) == st::noent);
    CHECK(v.send(invalidate(2, vaddr, 0, page)) == st::inval);   // a MAP/UNMAP domain
    CHECK(v.send(invalidate(3, single)) == st::inval);           // a bypass domain
    CHECK(v.send(invalidate(1, vaddr | 0x100, 0, page)) == st::inval);  // reserved flag bits
    CHECK(v.send(invalidate(1, 3)) == st::inval);                // unknown kind
    CHECK(v.send(invalidate(1, table_kind)) == st::inval);       // TABLE without F_INDIRECT
    CHECK(v.send(invalidate(1, single, 0, 0, 1)) == st::range);  // context
    CHECK(v.send(invalidate(1, vaddr, 0, 0)) == st::inval);      // empty range
    CHECK(v.send(invalidate(1, vaddr, ~std::uint64_t{0} - page + 2, page)) == st::range);  // wraps
    CHECK(v.send(invalidate(1, vaddr, 1ull << 48, page)) == st::range);  // beyond the IAS
    CHECK(v.send(invalidate(1, vaddr, (1ull << 48) - page, page)) == st::ok);
    CHECK(v.send(invalidate(1, vaddr, 0x1234, 1)) == st::ok);
    CHECK(v.send(invalidate(1, single)) == st::ok);
    bytes longer = invalidate(1, single);
    longer.push_back(0);
    CHECK(v.send(longer) == st::inval);
}

TEST_CASE("virtio sharing: TABLE_SHARING offered but not negotiated: its requests answer UNSUPP", "[virtio]") {
    // As every request of a feature the driver did not accept (MAP and UNMAP without MAP_UNMAP
    // negotiated, PROBE without PROBE): answered UNSUPP after the framing checks, nothing done.
    machine_settings s = settings(shared_mode::nested);
    s.driver_features = ~feature(f_table_sharing);
    vm v(s);
    REQUIRE(v.dev().offered(f_table_sharing));
    REQUIRE_FALSE(v.dev().negotiated(f_table_sharing));
    lpae_table g(*v.m);
    g.map(0x100000, dma, page);
    REQUIRE(v.send(attach(1, 0)) == st::ok);

    CHECK(v.send(g.request(1)) == st::unsupp);  // an ATTACH_TABLE that is fine otherwise
    CHECK(v.dev().shared(1) == nullptr);
    CHECK(v.dev().mappings(1) != nullptr);  // still a MAP/UNMAP domain
    CHECK_FALSE(v.at(0, 0x100000));
    CHECK(v.send(invalidate(1, single)) == st::unsupp);
    CHECK(v.send(invalidate(9, single)) == st::unsupp);  // before the domain lookup

    req_probe_table r;
    r.head.type = static_cast<std::uint8_t>(req_type::probe_table);
    r.address_space = 0;
    bytes in(sizeof r);
    std::memcpy(in.data(), static_cast<const void*>(&r), sizeof r);
    const std::uint32_t writable = sizeof(probe_table_reply) + 8 * sizeof(pg_format) + sizeof(req_tail);
    bytes out(writable, 0xee);
    REQUIRE(v.m->raw(in, writable, out) == writable);
    CHECK(out[writable - 4] == static_cast<std::uint8_t>(status::unsupp));
    for (std::uint32_t i = 0; i < writable - 4; ++i) CHECK(out[i] == 0);  // no format written
    in.pop_back();
    CHECK(v.m->raw(in, writable, out) == 0);  // framing first: too short is unanswered
    const auto& counts = v.dev().stats();
    for (auto t : {req_type::probe_table, req_type::attach_table, req_type::invalidate})
        CHECK(counts.by_type_status[static_cast<std::size_t>(t)][static_cast<std::size_t>(status::unsupp)] >= 1);
}

// ---------------------------------------------------------------------------------------------
// The IOTLB contract of shared tables, both modes
// ---------------------------------------------------------------------------------------------

TEST_CASE("virtio sharing: no stale translation after INVALIDATE; new entries per mode", "[virtio]") {
    const shared_mode mode = GENERATE(shared_mode::nested, shared_mode::folded);
    INFO("mode " << (mode == shared_mode::folded ? "folded" : "nested"));
    const bool folded = mode == shared_mode::folded;
    shared_lpae_vm v(mode);
    auto& g = v.g;
    REQUIRE((v.dev().shared(1)->mode() == mode));
    CHECK(v.dev().shared(1)->format_name() == arm_lpae_s1_4k::name);  // the format ATTACH_TABLE chose
    const std::uint64_t a = 0x100000, b = 0x101000, c = 0x300000;

    // A new guest entry: nested sees it at once; folded only after INVALIDATE (documented).
    g.map(a, dma, page);
    if (folded) {
        CHECK_FALSE(v.at(0, a + 0x10));
        REQUIRE(v.send(invalidate(1, vaddr, a, page)) == st::ok);
    }
    CHECK(v.at(0, a + 0x10) == v.hpa(dma + 0x10));
    CHECK(v.at(0, a + 0x10, access_kind::write) == v.hpa(dma + 0x10));

    // Removed: after INVALIDATE VADDR no stale translation (before it, either answer is fine).
    g.unmap(a, page);
    (void)v.at(0, a + 0x10);
    REQUIRE(v.send(invalidate(1, vaddr, a, page)) == st::ok);
    CHECK_FALSE(v.at(0, a + 0x10));
    CHECK_FALSE(v.at(0, a + 0x10, access_kind::write));

    // Remapped elsewhere (no INVALIDATE between unmap and map), then INVALIDATE: the new address.
    g.map(a, dma + 0x3000, page);
    REQUIRE(v.send(invalidate(1, vaddr, a, page)) == st::ok);
    CHECK(v.at(0, a + 0x10) == v.hpa(dma + 0x3010));
    g.unmap(a, page);
    g.map(a, dma + 0x8000, page);
    REQUIRE(v.send(invalidate(1, vaddr, a + 0x800, 1)) == st::ok);  // any byte of the page
    CHECK(v.at(0, a + 0x10) == v.hpa(dma + 0x8010));

    // Read-only now: writes fault after INVALIDATE.
    g.unmap(a, page);
    g.map(a, dma + 0x8000, page, prot::read | prot::cache);
    REQUIRE(v.send(invalidate(1, vaddr, a, page)) == st::ok);
    CHECK(v.at(0, a + 0x10) == v.hpa(dma + 0x8010));
    CHECK_FALSE(v.at(0, a + 0x10, access_kind::write));

    // INVALIDATE SINGLE: everything.
    g.map(b, dma + 0x9000, page);
    g.map(c, dma + 0xa000, page);
    REQUIRE(v.send(invalidate(1, single)) == st::ok);
    CHECK(v.at(0, b) == v.hpa(dma + 0x9000));
    CHECK(v.at(0, c) == v.hpa(dma + 0xa000));
    g.unmap(a, page);
    g.unmap(b, page);
    g.unmap(c, page);
    REQUIRE(v.send(invalidate(1, single)) == st::ok);
    CHECK_FALSE(v.at(0, a));
    CHECK_FALSE(v.at(0, b));
    CHECK_FALSE(v.at(0, c));

    // Guest-physical addresses stage 2 does not map (beyond guest RAM), as a leaf or as a table.
    const std::uint64_t ram = v.m->guest().size();
    g.map(0x500000, ram, page);
    g.map(0x501000, ram - page, page);
    REQUIRE(v.send(invalidate(1, vaddr, 0x500000, 2 * page)) == st::ok);
    r_fault_at(v, 0x500010);
    CHECK(v.at(0, 0x501010) == v.hpa(ram - page + 0x10));
    g.unmap(0x500000, 2 * page);
    REQUIRE(v.send(invalidate(1, vaddr, 0x500000, 2 * page)) == st::ok);

    // DETACH of the last endpoint: the domain and its table are gone.
    g.map(a, dma, page);
    REQUIRE(v.send(invalidate(1, vaddr, a, page)) == st::ok);
    REQUIRE(v.at(0, a) == v.hpa(dma));
    REQUIRE(v.send(detach(1, 0)) == st::ok);
    dma_result r = v.dev().translate(0, a, 1, access_kind::read);
    REQUIRE(r.fault);
    CHECK(r.fault->reason == fault_r_domain);
    REQUIRE(v.send(attach(1, 0)) == st::ok);  // a new, empty MAP/UNMAP domain 1
    CHECK_FALSE(v.at(0, a));
    CHECK(v.dev().shared(1) == nullptr);
}

TEST_CASE("virtio sharing: INVALIDATE of any address in a 2 MiB block drops the whole block", "[virtio]") {
    const shared_mode mode = GENERATE(shared_mode::nested, shared_mode::folded);
    INFO("mode " << (mode == shared_mode::folded ? "folded" : "nested"));
    shared_lpae_vm v(mode);
    auto& g = v.g;
    const std::uint64_t block = 0x40000000, gpa = dma + 0x200000;
    g.map(block, gpa, 0x200000);
    REQUIRE(g.pt->lookup(iova_t{block}).size_lg2 == 21);
    REQUIRE(v.send(invalidate(1, vaddr, block, 0x200000)) == st::ok);
    REQUIRE(v.at(0, block + 0x80010) == v.hpa(gpa + 0x80010));  // cached
    REQUIRE(v.at(0, block + 0x1ff010) == v.hpa(gpa + 0x1ff010));
    g.unmap(block, 0x200000);
    // Arm TLBI by VA semantics: the last page's address names the block.
    REQUIRE(v.send(invalidate(1, vaddr, block + 0x1ff000, page)) == st::ok);
    CHECK_FALSE(v.at(0, block + 0x80010));
    CHECK_FALSE(v.at(0, block + 0x1ff010));
    CHECK_FALSE(v.at(0, block + 0x100000));
}

TEST_CASE("virtio sharing: a folded shadow beyond max_table_bytes answers NOMEM, never translates wrong",
          "[virtio]") {
    machine_settings s = settings(shared_mode::folded);
    s.device.max_table_bytes = 4 * 4096;  // the shadow's top table and one path below it
    vm v(s);
    lpae_table g(*v.m);
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(attach(2, 1)) == st::ok);
    const std::uint64_t far = 1ull << 39;  // another top-level entry: three more shadow tables
    g.map(0x100000, dma, page);
    g.map(far, dma + 0x4000, page);
    CHECK(v.send(g.request(1)) == st::nomem);
    CHECK(v.dev().shared(1) == nullptr);
    CHECK(v.dev().mappings(1) != nullptr);
    CHECK_FALSE(v.at(0, 0x100000));
    g.unmap(far, page);
    REQUIRE(v.send(g.request(1)) == st::ok);
    CHECK(v.at(0, 0x100010) == v.hpa(dma + 0x10));
    g.map(far, dma + 0x4000, page);
    CHECK(v.send(invalidate(1, vaddr, far, page)) == st::nomem);
    CHECK_FALSE(v.at(0, far));
    CHECK(v.at(0, 0x100010) == v.hpa(dma + 0x10));
    CHECK(v.send(invalidate(1, single)) == st::nomem);
    if (const auto h = v.at(0, 0x100010)) CHECK(*h == v.hpa(dma + 0x10));
    CHECK_FALSE(v.at(0, far));
}

TEST_CASE("virtio sharing: a 2 MiB block broken into pages: no stale block translation", "[virtio]") {
    const shared_mode mode = GENERATE(shared_mode::nested, shared_mode::folded);
    INFO("mode " << (mode == shared_mode::folded ? "folded" : "nested"));
    shared_lpae_vm v(mode);
    auto& g = v.g;
    const std::uint64_t block = 0x40000000, old_gpa = dma + 0x200000, new_gpa = dma + 0x600000;
    g.map(block, old_gpa, 0x200000);
    REQUIRE(v.send(invalidate(1, vaddr, block, 0x200000)) == st::ok);
    for (std::uint64_t off : {0x0ull, 0x80000ull, 0x1ff000ull}) REQUIRE(v.at(0, block + off) == v.hpa(old_gpa + off));
    // Break-before-make: the block goes, pages to other memory come, one INVALIDATE of one page.
    g.unmap(block, 0x200000);
    g.map(block, new_gpa, 0x200000 - page);  // not block-aligned in size: pages
    REQUIRE(g.pt->lookup(iova_t{block}).size_lg2 == 12);
    REQUIRE(v.send(invalidate(1, vaddr, block + 0x10000, page)) == st::ok);
    for (std::uint64_t off : {0x0ull, 0x10000ull, 0x80000ull, 0x1fe000ull, 0x1ff000ull}) {
        INFO("offset " << off);
        const auto h = v.at(0, block + off + 0x10);
        if (h) CHECK(*h == v.hpa(new_gpa + off + 0x10));  // never the old block's memory
        if (mode == shared_mode::nested || off == 0x10000) CHECK(h.has_value() == (off != 0x1ff000));
    }
}

TEST_CASE("virtio sharing: stage-1 blocks over stage-2 pages translate page by page (MAP and shared)", "[virtio]") {
    // The VMM maps one 2 MiB of guest RAM in 4 KiB stage-2 pages with the first two swapped.
    const shared_mode mode = GENERATE(shared_mode::nested, shared_mode::folded);
    const bool shared = GENERATE(false, true);
    INFO("mode " << (mode == shared_mode::folded ? "folded" : "nested") << (shared ? ", shared table" : ", MAP domain"));
    vm v(settings(mode));
    const std::uint64_t gpa = dma + 0x400000, block = 0x40000000;
    auto& s2 = v.m->stage2();
    REQUIRE(s2.unmap(ipa_t{gpa}, length_t{0x200000}).ok());
    for (std::uint64_t i = 0; i < 512; ++i) {
        const std::uint64_t to = i == 0 ? 1 : i == 1 ? 0 : i;
        REQUIRE(s2.map(ipa_t{gpa + i * page}, pa_t{v.hpa(gpa + to * page)}, length_t{page}, prot::read | prot::write | prot::cache).ok());
    }
    lpae_table g(*v.m);
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    if (shared) {
        g.map(block, gpa, 0x200000);
        REQUIRE(v.send(g.request(1)) == st::ok);
    } else {
        REQUIRE(v.send(map(1, block, block + 0x1fffff, gpa)) == st::ok);
        REQUIRE(v.dev().mappings(1)->lookup(block).size_lg2 == 21);
    }
    for (int pass = 0; pass < 2; ++pass) {  // the second from the IOTLB
        INFO("pass " << pass);
        const dma_result r = v.dev().translate(0, block + 0x800, 0x2800, access_kind::read);
        REQUIRE(r.ok());
        REQUIRE(r.count == 3);
        CHECK(r.ranges[0].hpa == v.hpa(gpa + page + 0x800));
        CHECK(r.ranges[0].length == 0x800);
        CHECK(r.ranges[1].hpa == v.hpa(gpa));
        CHECK(r.ranges[1].length == page);
        CHECK(r.ranges[2].hpa == v.hpa(gpa + 2 * page));
        CHECK(r.ranges[2].length == page);
        CHECK(v.at(0, block + 0x1ff008) == v.hpa(gpa + 0x1ff008));
    }
}

// ---------------------------------------------------------------------------------------------
// A hostile guest table
// ---------------------------------------------------------------------------------------------

namespace {

/// A 4-level LPAE 4K stage-1 table in which every entry of every level points at the same
/// next-level table (a DAG: 2^36 pages reachable through four tables), every page to `target`.
/// Written as raw descriptors into guest memory. Returns the root's GPA.
std::uint64_t write_dag(machine<arm_host>& m, std::uint64_t at, std::uint64_t target) {
    using F = arm_lpae_s1_4k;
    const lpae_config cfg{};
    std::vector<std::uint64_t> words(512);
    for (unsigned level = 0; level < 4; ++level) {
        const std::uint64_t here = at + (3 - level) * page;  // root (level 3) first
        const std::uint64_t next = here + page;
        const std::uint64_t w = level == 0 ? F::make_leaf(cfg, 0, 12, target, rw) : F::make_table(cfg, level, next);
        for (auto& x : words) x = w;
        REQUIRE(m.guest().write(pa_t{here}, words.data(), words.size() * 8));
    }
    return at;
}

} // namespace

TEST_CASE("virtio sharing: a DAG-shaped guest table runs the folding budget out, never translates wrong",
          "[virtio]") {
    const std::uint64_t dag = machine<arm_host>::table_window_gpa + 0x100000;
    machine_settings s = settings(shared_mode::folded);
    s.device.fold_fetch_budget = 4096;
    using clock = std::chrono::steady_clock;

    SECTION("folded: ATTACH_TABLE answers NOMEM, the domain stays as it was") {
        vm v(s);
        REQUIRE(v.send(attach(1, 0)) == st::ok);
        write_dag(*v.m, dag, dma);
        auto req = sharing::make_attach_table<arm_lpae_s1_4k>(lpae_config{}, pa_t{dag}, 1);
        REQUIRE(req.ok());
        req->address_space = 1;
        const auto t0 = clock::now();
        CHECK(v.send(*req) == st::nomem);
        CHECK(clock::now() - t0 < std::chrono::seconds(2));
        CHECK(v.dev().shared(1) == nullptr);
        for (std::uint64_t iova : {0x0ull, 0x1234000ull, 0x7fff00000000ull}) {
            const dma_result r = v.dev().translate(0, iova, 1, access_kind::read);
            REQUIRE(r.fault);
            CHECK(r.fault->reason == fault_r_mapping);
        }
    }
    SECTION("folded: a shared table rewritten into a DAG: INVALIDATE answers NOMEM; translations fault or are right") {
        vm v(s);
        lpae_table g(*v.m);
        REQUIRE(v.send(attach(1, 0)) == st::ok);
        g.map(0x100000, dma + 0x5000, page);
        REQUIRE(v.send(g.request(1)) == st::ok);
        REQUIRE(v.at(0, 0x100010) == v.hpa(dma + 0x5010));
        // Every entry of the guest's root now points at the DAG's level-2 table.
        write_dag(*v.m, dag, dma);
        std::vector<std::uint64_t> words(512, arm_lpae_s1_4k::make_table(lpae_config{}, 3, dag + page));
        REQUIRE(v.m->guest().write(pa_t{g.root()}, words.data(), words.size() * 8));
        const auto t0 = clock::now();
        CHECK(v.send(invalidate(1, single)) == st::nomem);
        CHECK(v.send(invalidate(1, vaddr, 0, 1ull << 47)) == st::nomem);
        CHECK(clock::now() - t0 < std::chrono::seconds(2));
        unsigned translated = 0;
        for (std::uint64_t i = 0; i < 256; ++i) {
            const std::uint64_t iova = (i * 0x9e3779b97f4a7c15ull) & ((1ull << 48) - 1);
            const dma_result r = v.dev().translate(0, iova, 1, access_kind::read);
            if (r.ok()) {
                ++translated;
                CHECK(r.ranges[0].hpa == v.hpa(dma + (iova & 0xfff)));
            } else {
                CHECK(r.fault->reason == fault_r_mapping);
            }
        }
        (void)translated;
        if (const auto h = v.at(0, 0x100010)) CHECK(*h == v.hpa(dma + 0x10));  // never the old entry
        // The guest's own engine would walk the DAG when it tears its table down: empty the root.
        std::fill(words.begin(), words.end(), 0);
        REQUIRE(v.m->guest().write(pa_t{g.root()}, words.data(), words.size() * 8));
    }
    SECTION("nested: the same table translates each address in bounded time") {
        vm v(settings(shared_mode::nested));
        REQUIRE(v.send(attach(1, 0)) == st::ok);
        write_dag(*v.m, dag, dma);
        auto req = sharing::make_attach_table<arm_lpae_s1_4k>(lpae_config{}, pa_t{dag}, 1);
        REQUIRE(req.ok());
        req->address_space = 1;
        REQUIRE(v.send(*req) == st::ok);
        const auto t0 = clock::now();
        for (std::uint64_t i = 0; i < 2000; ++i) {
            const std::uint64_t iova = (i * 0x9e3779b97f4a7c15ull) & ((1ull << 48) - 1);
            const dma_result r = v.dev().translate(0, iova, 1, access_kind::write);
            REQUIRE(r.ok());
            CHECK(r.ranges[0].hpa == v.hpa(dma + (iova & 0xfff)));
        }
        CHECK(clock::now() - t0 < std::chrono::seconds(2));
        CHECK(v.send(invalidate(1, single)) == st::ok);
        CHECK(v.send(invalidate(1, vaddr, 0, 1ull << 47)) == st::ok);
    }
}

// ---------------------------------------------------------------------------------------------
// Intel host
// ---------------------------------------------------------------------------------------------

TEST_CASE("virtio sharing: Intel host, VT-d first-stage table sharing", "[virtio]") {
    const shared_mode mode = GENERATE(shared_mode::nested, shared_mode::folded);
    INFO("mode " << (mode == shared_mode::folded ? "folded" : "nested"));
    vm<intel_host> v(settings(mode));
    guest_table<intel_host, vtd_fl> g(*v.m);
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    g.map(0x100000, dma, 0x4000);
    g.map(0x200000, dma + 0x10000, page, prot::read | prot::cache);
    REQUIRE(v.send(g.request(1)) == st::ok);
    CHECK(v.at(0, 0x102010, access_kind::write) == v.hpa(dma + 0x2010));
    CHECK(v.at(0, 0x200010) == v.hpa(dma + 0x10010));
    CHECK_FALSE(v.at(0, 0x200010, access_kind::write));
    const dma_result r = v.dev().translate(0, 0x100000, 0x4000, access_kind::read);
    REQUIRE(r.ok());
    CHECK(r.count == 1);
    CHECK(r.ranges[0].length == 0x4000);
    g.unmap(0x100000, 0x4000);
    REQUIRE(v.send(invalidate(1, vaddr, 0x100000, 0x4000)) == st::ok);
    CHECK_FALSE(v.at(0, 0x102010));
    CHECK(v.send(map(1, 0x100000, 0x100fff, dma)) == st::inval);
}

// ---------------------------------------------------------------------------------------------
// machine::reset: what fuzz_device runs every input on
// ---------------------------------------------------------------------------------------------

namespace {

/// A guest's session on a machine, every answer written down: MAP/UNMAP, PROBE, faults on the
/// eventq, an LPAE table of its own attached, changed and invalidated, writes at both ends of
/// its RAM, and the device's and memory's counters.
std::vector<std::uint64_t> session(machine<arm_host>& m) {
    std::vector<std::uint64_t> t;
    auto note_reply = [&](const bytes& in, std::uint32_t writable) {
        bytes out(writable, 0xee);
        const std::uint32_t used = m.raw(in, writable, out);
        t.push_back(used);
        t.insert(t.end(), out.begin(), out.begin() + std::min<std::size_t>(used, out.size()));
    };
    auto note_dma = [&](std::uint32_t ep, std::uint64_t iova, std::uint64_t size, access_kind a) {
        const dma_result r = m.dev().translate(ep, iova, size, a);
        t.push_back(r.count);
        t.push_back(r.covered);
        for (unsigned i = 0; i < r.count; ++i) t.insert(t.end(), {r.ranges[i].iova, r.ranges[i].hpa, r.ranges[i].length});
        t.push_back(r.fault ? r.fault->reason + 0x100u * r.fault->delivered : 0xffu);
        for (const virtio::fault& f : m.take_events()) t.insert(t.end(), {f.reason, f.flags.get(), f.endpoint.get(), f.address.get()});
    };
    note_reply(attach(1, 0), 4);
    note_reply(map(1, 0x100000, 0x10ffff, dma), 4);
    note_reply(map(1, 0x200000, 0x200fff, dma + 0x20000, map_f_read), 4);
    note_dma(0, 0x100ff0, 0x40, access_kind::write);
    note_dma(0, 0x200000, 1, access_kind::write);  // read-only: a fault on the eventq
    note_dma(0, 0x300000, 1, access_kind::read);   // unmapped
    note_reply(probe_request(0, m.dev().settings().probe_size).readable, m.dev().settings().probe_size + 4);
    note_reply(unmap(1, 0x100000, 0x10ffff), 4);
    note_dma(0, 0x100000, 1, access_kind::read);

    lpae_table g(m);
    g.map(0x40000000, dma + 0x1000, 0x2000);
    g.map(0x40200000, dma + 0x200000, 0x200000);
    note_reply(attach(2, 1), 4);
    note_reply(readable(g.request(2)), 4);
    note_dma(1, 0x40000000, 0x3000, access_kind::read);
    note_dma(1, 0x40300000, 1, access_kind::write);
    g.unmap(0x40000000, 0x1000);
    note_reply(invalidate(2, vaddr, 0x40000000, page), 4);
    note_dma(1, 0x40000000, 1, access_kind::read);
    note_dma(3, 0, 1, access_kind::read);  // not attached: bypass or a DOMAIN fault

    const std::uint64_t ends[] = {0x1122334455667788, 0x99aabbccddeeff00};
    REQUIRE(m.guest().write(pa_t{0}, &ends[0], 8));
    REQUIRE(m.guest().write(pa_t{m.guest().size() - 8}, &ends[1], 8));
    REQUIRE(m.guest().write(pa_t{0x2800ffc}, &ends[0], 8));  // across a page boundary
    const request_stats& rs = m.dev().stats();
    t.insert(t.end(), {rs.total(), m.dev().domain_count(), m.dev().dma_stats().faults, m.dev().dma_stats().faults_delivered,
                       m.dev().iotlb().hits(), m.dev().iotlb().misses(), std::as_const(m).host().bytes_in_use(), m.dev().bypass()});
    return t;
}

/// Every byte of both machines' host memories is the same (read through the const view, which
/// leaves a machine's stage 2 counted as untouched).
bool same_bytes(const machine<arm_host>& a, const machine<arm_host>& b) {
    const guest_ram &x = a.host(), &y = b.host();
    if (x.base() != y.base() || x.size() != y.size()) return false;
    std::vector<std::uint8_t> cx(1u << 20), cy(1u << 20);
    for (std::uint64_t at = 0; at < x.size(); at += cx.size()) {
        const std::uint64_t n = std::min<std::uint64_t>(cx.size(), x.size() - at);
        if (!x.read(pa_t{x.base().value + at}, cx.data(), n) || !y.read(pa_t{y.base().value + at}, cy.data(), n) ||
            std::memcmp(cx.data(), cy.data(), n) != 0)
            return false;
    }
    return true;
}

} // namespace

TEST_CASE("virtio machine: a reset machine holds and answers exactly what a new one does", "[virtio]") {
    const shared_mode mode = GENERATE(shared_mode::nested, shared_mode::folded);
    INFO("mode " << (mode == shared_mode::folded ? "folded" : "nested"));
    machine_settings want = settings(mode);
    want.event_buffers = 2;
    auto fresh = machine<arm_host>::create(want);
    REQUIRE(fresh.ok());

    // Another machine of the same host memory, set up differently, used hard and broken.
    machine_settings other = settings(mode == shared_mode::nested ? shared_mode::folded : shared_mode::nested);
    other.queue_size = 16;
    other.event_buffers = 7;
    other.device.boot_bypass = true;
    other.device.page_size_mask = 0x10000;
    other.driver_features = ~feature(f_event_idx);
    auto used = machine<arm_host>::create(other);
    REQUIRE(used.ok());
    machine<arm_host>& u = **used;
    (void)session(u);
    std::vector<std::uint8_t> junk(0x3000, 0xa5);
    REQUIRE(u.guest().write(pa_t{machine<arm_host>::requestq_gpa}, junk.data(), junk.size()));  // rings
    REQUIRE(u.guest().write(pa_t{machine<arm_host>::dma_gpa + 0x123}, junk.data(), junk.size()));
    const std::uint64_t host_end = u.host().base().value + u.host().size();
    REQUIRE(u.host().write(pa_t{host_end - 3}, junk.data(), 3));  // the last bytes of the stage-2 pool
    u.dev().process_requests();
    REQUIRE(u.dev().needs_reset());  // avail idx jumped
    CHECK_FALSE(same_bytes(u, **fresh));

    SECTION("reset to the same settings as the new machine") {
        REQUIRE_FALSE(u.reset(want));
        CHECK(same_bytes(u, **fresh));  // every byte: guest RAM, rings, stage-2 tables, the pool
        CHECK(std::as_const(u).host().bytes_in_use() == std::as_const(**fresh).host().bytes_in_use());
        CHECK_FALSE(u.dev().needs_reset());
        CHECK(u.dev().driver_features() == (*fresh)->dev().driver_features());
        CHECK(u.dev().bypass() == 0);
        const auto expected = session(**fresh);
        CHECK(session(u) == expected);
        CHECK(same_bytes(u, **fresh));
        // And again, from a machine that ran the session: stage 2 is kept this time.
        const std::uint64_t root = u.stage2_table().root.value;
        REQUIRE_FALSE(u.reset(want));
        auto again = machine<arm_host>::create(want);
        REQUIRE(again.ok());
        CHECK(same_bytes(u, **again));
        CHECK(u.stage2_table().root.value == root);
        CHECK(session(u) == expected);
        // A stage 2 changed by hand is built again.
        REQUIRE(u.stage2().unmap(ipa_t{0}, length_t{1ull << 21}).ok());
        REQUIRE(u.stage2().map(ipa_t{0}, pa_t{u.guest().hpa_base() + 0x1000}, length_t{page}, prot::read).ok());
        REQUIRE_FALSE(u.reset(want));
        auto third = machine<arm_host>::create(want);
        REQUIRE(third.ok());
        CHECK(same_bytes(u, **third));
        CHECK(session(u) == expected);
    }
    SECTION("a different host memory is refused and changes nothing") {
        machine_settings bigger = want;
        bigger.ram_size += 1ull << 20;
        auto copy = machine<arm_host>::create(other);
        REQUIRE(copy.ok());
        (void)session(**copy);
        REQUIRE(copy.value()->guest().write(pa_t{machine<arm_host>::requestq_gpa}, junk.data(), junk.size()));
        REQUIRE(copy.value()->guest().write(pa_t{machine<arm_host>::dma_gpa + 0x123}, junk.data(), junk.size()));
        REQUIRE(copy.value()->host().write(pa_t{host_end - 3}, junk.data(), 3));
        copy.value()->dev().process_requests();
        REQUIRE(same_bytes(u, **copy));
        const auto why = u.reset(bigger);
        REQUIRE(why);
        CHECK(why->code == status::inval);
        CHECK(why->field == "host memory");
        CHECK(same_bytes(u, **copy));
        CHECK(u.dev().needs_reset());
        CHECK(u.dev().domain_count() == 2);
    }
}

TEST_CASE("virtio machine: the smallest RAM holds the fixed layout; a reset clears what the guest wrote", "[virtio]") {
    machine_settings s = settings(shared_mode::nested);
    s.ram_size = machine<arm_host>::min_ram_size - page;
    auto refused = machine<arm_host>::create(s);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.why().field == "ram_size");
    s.ram_size = machine<arm_host>::min_ram_size;
    s.stage2_pool = 256u << 10;
    vm<arm_host> v(s);
    const std::uint64_t buf = 0x180000;  // above the fixed layout, inside 2 MiB
    REQUIRE(v.send(attach(1, 0)) == st::ok);
    REQUIRE(v.send(map(1, 0x40000000, 0x40000fff, buf)) == st::ok);
    CHECK(v.at(0, 0x40000010) == v.hpa(buf + 0x10));
    CHECK(v.send(map(1, 0x40001000, 0x40001fff, machine<arm_host>::min_ram_size)) == st::ok);
    CHECK_FALSE(v.at(0, 0x40001000));  // beyond RAM: stage 2 does not map it
    const std::uint64_t mark = 0x5a5a5a5a5a5a5a5a;
    REQUIRE(v.m->guest().write(pa_t{buf}, &mark, 8));
    REQUIRE_FALSE(v.m->reset(s));
    std::uint64_t back = 1;
    REQUIRE(v.m->guest().read(pa_t{buf}, &back, 8));
    CHECK(back == 0);
    CHECK_FALSE(v.dev().domain_of(0));
    CHECK_FALSE(v.at(0, 0x40000010));
    CHECK(v.send(attach(1, 0)) == st::ok);
}

TEST_CASE("virtio sharing: the VMM moves a guest page in stage 2; after stage2_changed no old host address",
          "[virtio]") {
    const shared_mode mode = GENERATE(shared_mode::nested, shared_mode::folded);
    INFO("mode " << (mode == shared_mode::folded ? "folded" : "nested"));
    shared_lpae_vm v(mode);
    auto& g = v.g;
    const std::uint64_t a = 0x100000;
    g.map(a, dma, page);
    REQUIRE(v.send(invalidate(1, vaddr, a, page)) == st::ok);
    REQUIRE(v.at(0, a + 0x10) == v.hpa(dma + 0x10));

    // The VMM backs guest page `dma` with another host page (the guest's RAM slot at +1 MiB).
    const std::uint64_t moved = v.hpa(dma + 0x100000);
    REQUIRE(v.m->stage2().unmap(ipa_t{dma}, length_t{page}, unmap_mode::split).ok());
    REQUIRE(v.m->stage2().map(ipa_t{dma}, pa_t{moved}, length_t{page}, rw).ok());
    v.dev().stage2_changed(dma, page);
    CHECK(v.at(0, a + 0x10) == moved + 0x10);
    CHECK(v.at(0, a + 0x10, access_kind::write) == moved + 0x10);

    // ... and takes it away: the access faults, nothing reaches either host page.
    REQUIRE(v.m->stage2().unmap(ipa_t{dma}, length_t{page}).ok());
    v.dev().stage2_changed(dma, page);
    CHECK_FALSE(v.at(0, a + 0x10));

    // Given back write-only (LPAE stage 2 says so in S2AP; stage 1 cannot): reads fault; the
    // nested walk translates writes, a shadow in LPAE stage-1 format cannot say write-only
    // and drops the page (nested/README.md, "Folding": never more than both stages allow).
    REQUIRE(v.m->stage2().map(ipa_t{dma}, pa_t{v.hpa(dma)}, length_t{page}, prot::write).ok());
    v.dev().stage2_changed(dma, page);
    CHECK_FALSE(v.at(0, a + 0x10));
    if (mode == shared_mode::nested) CHECK(v.at(0, a + 0x10, access_kind::write) == v.hpa(dma + 0x10));
    else CHECK_FALSE(v.at(0, a + 0x10, access_kind::write));
    REQUIRE(v.m->stage2().unmap(ipa_t{dma}, length_t{page}).ok());
    v.dev().stage2_changed(dma, page);

    // Given back where it was: the first host page again.
    REQUIRE(v.m->stage2().map(ipa_t{dma}, pa_t{v.hpa(dma)}, length_t{page}, rw).ok());
    v.dev().stage2_changed(dma, page);
    CHECK(v.at(0, a + 0x10) == v.hpa(dma + 0x10));

    // The VMM moves the page holding the guest's leaf table (its bytes copied), then the guest
    // changes its entry there (through the new page) and invalidates: no walk may still read
    // the old host page.
    const std::uint64_t leaf_table = g.pt->lookup(iova_t{a}).entry_address.value & ~(page - 1);
    const std::uint64_t old_hpa = v.hpa(leaf_table), new_hpa = v.hpa(dma + 0x200000);
    std::vector<std::uint8_t> bytes(page);
    REQUIRE(v.m->host().read(pa_t{old_hpa}, bytes.data(), page));
    REQUIRE(v.m->host().write(pa_t{new_hpa}, bytes.data(), page));
    REQUIRE(v.m->stage2().unmap(ipa_t{leaf_table}, length_t{page}, unmap_mode::split).ok());
    REQUIRE(v.m->stage2().map(ipa_t{leaf_table}, pa_t{new_hpa}, length_t{page}, rw).ok());
    v.dev().stage2_changed(leaf_table, page);
    g.unmap(a, page);
    g.map(a, dma + 0x5000, page);
    REQUIRE(v.send(invalidate(1, vaddr, a, page)) == st::ok);
    CHECK(v.at(0, a + 0x10) == v.hpa(dma + 0x5010));
}
