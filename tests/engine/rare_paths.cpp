// SPDX-License-Identifier: MIT
// Behaviour that the rest of the suite and the fuzz corpora did not reach (scripts/coverage.sh
// listed these lines): VT-d register decoding, the stage-2 FWB memory types, the nested IOTLB
// when it is full, the names printed for enumerators, the length literals.
#include <catch2/catch.hpp>

#include <algorithm>
#include <utility>
#include <vector>

#include <iopgtable/core/address.hpp>
#include <iopgtable/engine/page_table.hpp>
#include <iopgtable/formats/arm_v7s.hpp>
#include <iopgtable/mem/default_memory.hpp>
#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/formats/vtd_fl.hpp>
#include <iopgtable/formats/vtd_sl.hpp>
#include <iopgtable/nested/iotlb.hpp>
#include <iopgtable/nested/types.hpp>
#include <iopgtable/nested/walk_cache.hpp>
#include <iopgtable/formats/sharing_models.hpp>
#include <iopgtable/virtio/guest_memory.hpp>
#include <iopgtable/virtio/iotlb.hpp>
#include <iopgtable/virtio/page_requests.hpp>
#include <iopgtable/virtio/status.hpp>
#include <iopgtable/virtio/virtqueue.hpp>
#include <iopgtable/virtio/wire.hpp>

using namespace iopgtable;
using namespace iopgtable::literals;

namespace {

register_set regs(std::initializer_list<std::pair<std::string_view, std::uint64_t>> l) {
    register_set r;
    for (auto& [n, v] : l) r.add(n, v);
    return r;
}

} // namespace

TEST_CASE("VT-d second stage: config_from_registers reads AW and checks the root (VT-d 9.3, 11.4.2)", "[vtd][registers]") {
    for (unsigned aw : {39u, 48u, 57u}) {
        vtd_sl_config c;
        c.aw = aw;
        auto g = vtd_sl::make_geometry(c);
        REQUIRE(g.ok());
        const auto r = vtd_sl::registers(c, *g, pa_t{0x12345000});
        CHECK(r.get("aw") == std::optional<std::uint64_t>{(aw - 30) / 9});
        std::string_view why;
        auto back = vtd_sl::config_from_registers(r, why);
        REQUIRE(back.ok());
        CHECK(back->aw == aw);
    }
    std::string_view why;
    CHECK(vtd_sl::config_from_registers(regs({}), why).error() == errc::invalid);
    CHECK(why == "aw missing");
    for (std::uint64_t bad : {0u, 4u, 7u}) {
        CHECK(vtd_sl::config_from_registers(regs({{"aw", bad}}), why).error() == errc::invalid);
        CHECK(why == "AW not 1, 2 or 3 (39/48/57-bit)");
    }
    CHECK(vtd_sl::config_from_registers(regs({{"aw", 2}, {"root", 0x1234}}), why).error() == errc::invalid);
    CHECK(why == "root not 4K aligned");
    CHECK(vtd_sl::config_from_registers(regs({{"aw", 2}, {"root", std::uint64_t{1} << 52}}), why).error() == errc::range);
    CHECK(why == "root above 52 bits");
    CHECK(vtd_sl::config_from_registers(regs({{"aw", 1}, {"root", (std::uint64_t{1} << 52) - 0x1000}}), why).ok());
}

TEST_CASE("VT-d first stage: config_from_registers reads FLPM and checks the root (VT-d 9.6)", "[vtd][registers]") {
    std::string_view why;
    for (std::uint64_t flpm : {0u, 1u}) {
        auto c = vtd_fl::config_from_registers(regs({{"flpm", flpm}, {"root", 0x7000}}), why);
        REQUIRE(c.ok());
        CHECK(c->levels == 4 + flpm);
    }
    CHECK(vtd_fl::config_from_registers(regs({{"root", 0x7000}}), why).error() == errc::invalid);
    CHECK(why == "flpm missing");
    CHECK(vtd_fl::config_from_registers(regs({{"flpm", 2}}), why).error() == errc::invalid);
    CHECK(why == "FLPM reserved (not 0 or 1)");
    CHECK(vtd_fl::config_from_registers(regs({{"flpm", 0}, {"root", 0x7008}}), why).error() == errc::invalid);
    CHECK(why == "root not 4K aligned");
    CHECK(vtd_fl::config_from_registers(regs({{"flpm", 0}, {"root", std::uint64_t{3} << 52}}), why).error() ==
          errc::range);
    CHECK(why == "root above 52 bits");
}

TEST_CASE("LPAE stage 2 with FEAT_S2FWB: MemAttr[2] clear is Device, [1:0] = 01 Non-cacheable, 1x Write-back",
          "[arm_lpae][memory_type]") {
    using F = arm_lpae_s2_4k;
    lpae_config c;
    c.ias = 40;
    c.oas = 40;
    c.quirks = lpae_quirk::s2fwb;
    // A level-0 (4K) page descriptor: valid, page, AF, MemAttr in bits [5:2] (Arm ARM D8.3).
    auto page = [](unsigned memattr) { return F::word{0x40000000u | 0b11u | (1u << 10) | (memattr << 2)}; };
    for (unsigned m = 0; m < 16; ++m) {
        INFO("MemAttr " << m);
        const auto t = F::leaf_memory_type(c, 0, page(m));
        if ((m & 0b0100) == 0) CHECK(t == memory_type::device);
        else if ((m & 0b11) == 0b01) CHECK(t == memory_type::non_cacheable);
        else if ((m & 0b11) == 0b00) CHECK(t == memory_type::device);  // reserved: most restrictive
        else CHECK(t == memory_type::write_back);
    }
    // The encoder writes what the decoder reads back.
    const auto mmio = F::make_leaf(c, 0, 12, 0x40000000, prot::read | prot::mmio);
    const auto cached = F::make_leaf(c, 0, 12, 0x40000000, prot::read | prot::cache);
    const auto plain = F::make_leaf(c, 0, 12, 0x40000000, prot::read);
    CHECK(F::leaf_memory_type(c, 0, mmio) == memory_type::device);
    CHECK(F::leaf_memory_type(c, 0, cached) == memory_type::write_back);
    CHECK(F::leaf_memory_type(c, 0, plain) == memory_type::non_cacheable);
}

TEST_CASE("nested translation cache: a full cache drops an entry to make room and counts hits and misses",
          "[nested][iotlb]") {
    nested::translation_cache tlb(2);
    CHECK(tlb.capacity() == 2);
    auto entry = [](std::uint64_t iova) {
        nested::iotlb_entry e;
        e.context = 1;
        e.iova_base = iova;
        e.size_lg2 = 12;
        e.mapping_lg2 = 12;
        e.ipa_base = iova + 0x100000;
        e.pa_base = iova + 0x200000;
        e.s1.size_lg2 = e.s2.size_lg2 = 12;
        e.s1.input_base = iova;
        e.s2.input_base = e.ipa_base;
        return e;
    };
    for (std::uint64_t a : {0x1000u, 0x2000u, 0x3000u}) tlb.insert(entry(a));
    CHECK(tlb.size() == 2);  // one of the first two made room
    REQUIRE(tlb.find(1, 0x3abc) != nullptr);
    CHECK(tlb.find(1, 0x3abc)->pa_base == 0x203000);
    const int kept = (tlb.find(1, 0x1000) != nullptr) + (tlb.find(1, 0x2000) != nullptr);
    CHECK(kept == 1);
    CHECK(tlb.find(2, 0x3000) == nullptr);  // another context
    CHECK(tlb.hits() == 3);
    CHECK(tlb.misses() == 2);
    tlb.reset_counters();
    CHECK(tlb.hits() == 0);
    CHECK(tlb.misses() == 0);
    CHECK(tlb.size() == 2);

    nested::walk_cache wc(8);
    CHECK(wc.capacity() == 8);
    wc.reset_counters();
    CHECK(wc.hits() == 0);
    CHECK(wc.misses() == 0);
}

TEST_CASE("enumerator names, as tools and logs print them", "[names]") {
    CHECK(nested::to_string(nested::access_kind::read) == "read");
    CHECK(nested::to_string(nested::access_kind::write) == "write");
    CHECK(nested::to_string(nested::access_kind::exec) == "exec");
    CHECK(nested::to_string(nested::fault_reason::translation) == "translation");
    CHECK(nested::to_string(nested::fault_reason::permission) == "permission");
    CHECK(nested::to_string(nested::fault_reason::address_size) == "address-size");
    CHECK(nested::to_string(nested::fault_reason::access_flag) == "access-flag");
    CHECK(nested::to_string(nested::fault_reason::walk_abort) == "walk-abort");
    CHECK(nested::to_string(memory_type::device) == "device");
    CHECK(nested::to_string(memory_type::non_cacheable) == "non-cacheable");
    CHECK(nested::to_string(memory_type::write_through) == "write-through");
    CHECK(nested::to_string(memory_type::write_back) == "write-back");
    CHECK(virtio::to_string(virtio::status::ioerr) == "IOERR");
    CHECK(virtio::to_string(virtio::status::deverr) == "DEVERR");
    CHECK(virtio::to_string(static_cast<virtio::status>(200)) == "UNKNOWN");
    CHECK(virtio::to_string(virtio::queue_fault::none) == "none");
    CHECK(virtio::to_string(virtio::queue_fault::bad_layout) == "bad_layout");
    CHECK(virtio::to_string(virtio::queue_fault::avail_idx_jump) == "avail_idx_jump");
    CHECK(virtio::to_string(virtio::queue_fault::head_out_of_range) == "head_out_of_range");
    CHECK(virtio::to_string(virtio::queue_fault::ring_unreadable) == "ring_unreadable");
    CHECK(virtio::to_string(virtio::chain_error::head_out_of_range) == "head_out_of_range");
    CHECK(to_string(static_cast<errc>(100)) == "unknown");
    // A value outside the enumeration (a corrupted log record, a cast from the wire) prints as
    // unknown, never as one of the names.
    CHECK(nested::to_string(static_cast<nested::access_kind>(200)) == "unknown");
    CHECK(nested::to_string(static_cast<nested::fault_reason>(200)) == "unknown");
    CHECK(nested::to_string(static_cast<memory_type>(200)) == "unknown");
    CHECK(virtio::to_string(static_cast<virtio::queue_fault>(200)) == "unknown");
}

TEST_CASE("engine errors as virtio status (virtio-iommu 5.13.6.3), and out-of-enumeration inputs", "[names]") {
    CHECK(virtio::to_status(errc::partial) == virtio::status::range);  // an UNMAP splitting a mapping
    CHECK(virtio::to_status(errc::fault) == virtio::status::fault);
    CHECK(virtio::to_status(errc::nomem) == virtio::status::nomem);
    CHECK(virtio::to_status(static_cast<errc>(100)) == virtio::status::deverr);
    // An access kind or permission rule outside the enumerations allows nothing.
    const nested::access_rights all{7, 7};
    CHECK(nested::permits(all, {nested::access_kind::write, true}));
    CHECK_FALSE(nested::permits(all, {static_cast<nested::access_kind>(200), true}));
    CHECK(nested::rights_of(prot::read | prot::write, static_cast<permission_rule>(200)) == nested::access_rights{});
    // The sharing registry knows no variant 99 of the ARM model, nor any variant of model 99.
    CHECK(sharing::find_variant(sharing::model_arm, 99) == nullptr);
    CHECK(sharing::find_variant(99, 1) == nullptr);
    CHECK(sharing::find_variant(sharing::model_arm, 1) != nullptr);
}

TEST_CASE("device IOTLB: its size is a power of two, at least 16, and it counts range invalidations", "[iotlb]") {
    virtio::device_iotlb small(3), odd(1000);
    CHECK(small.capacity() == 16);
    CHECK(odd.capacity() == 1024);
    small.insert(1, 0x5000, 0x9000, 12, 3);
    CHECK(small.find(1, 0x5008) != nullptr);
    small.invalidate(1, 0x4000, 0x4fff);  // the page before: the entry stays
    CHECK(small.find(1, 0x5008) != nullptr);
    small.invalidate(1, 0x6000, 0x5000);  // empty range (last < first): counted, nothing dropped
    CHECK(small.find(1, 0x5008) != nullptr);
    small.invalidate(1, 0x5fff, 0x5fff);
    CHECK(small.find(1, 0x5008) == nullptr);
    CHECK(small.range_invalidations() == 3);
}

TEST_CASE("page request book: limits as given, clear forgets every request and waiting access", "[page-requests]") {
    virtio::page_request_limits lim;
    lim.total = 2;
    lim.per_endpoint = 1;
    lim.accesses = 3;
    virtio::page_request_book book(lim);
    CHECK(book.limits().total == 2);
    CHECK(book.limits().per_endpoint == 1);
    CHECK(book.limits().accesses == 3);
    virtio::page_request r;
    r.id = book.next_id();
    r.endpoint = 4;
    r.page = 0x7000;
    REQUIRE(book.can_open(4));
    REQUIRE(book.open(r, virtio::stalled_access{11, 4, 0x7010, 0x7013}));
    CHECK_FALSE(book.can_open(4));  // one per endpoint
    virtio::page_request* open = book.find(4, 0, 0x7000);
    REQUIRE(open != nullptr);
    REQUIRE(book.join(*open, virtio::stalled_access{12, 4, 0x7020, 0x7027}));
    CHECK(book.size() == 1);
    CHECK(book.stalled() == 2);
    book.clear();
    CHECK(book.size() == 0);
    CHECK(book.stalled() == 0);
    CHECK(book.find(4, 0, 0x7000) == nullptr);
    CHECK(book.can_open(4));
}

TEST_CASE("guest_view: GPA to HPA inside the slot only, and the host memory behind it", "[guest-memory]") {
    guest_ram host{0x10000, pa_t{0x4000'0000}};
    virtio::guest_view v{host, 0x8000'0000, 0x4000'2000, 0x4000};
    CHECK(&v.host() == &host);
    CHECK(v.hpa_of(pa_t{0x8000'0000}) == std::optional<std::uint64_t>{0x4000'2000});
    CHECK(v.hpa_of(pa_t{0x8000'3fff}) == std::optional<std::uint64_t>{0x4000'5fff});
    CHECK_FALSE(v.hpa_of(pa_t{0x8000'4000}));  // the slot's end
    CHECK_FALSE(v.hpa_of(pa_t{0x7fff'ffff}));  // below it
    // A slot that does not lie inside its host memory is empty.
    virtio::guest_view outside{host, 0x8000'0000, 0x4000'e000, 0x4000};
    CHECK(outside.size() == 0);
    CHECK_FALSE(outside.hpa_of(pa_t{0x8000'0000}));
}

TEST_CASE("length literals and length arithmetic", "[core]") {
    CHECK(5_B == length_t{5});
    CHECK(4_KiB == length_t{4096});
    CHECK(2_MiB == length_t{std::uint64_t{2} << 20});
    CHECK(1_GiB == length_t{std::uint64_t{1} << 30});
    CHECK(3_TiB == length_t{std::uint64_t{3} << 40});
    CHECK(2_MiB - 4_KiB == length_t{0x1ff000});
    CHECK(is_aligned_lg2(0x200000, 21));
    CHECK_FALSE(is_aligned_lg2(0x201000, 21));
    prot p = prot::read | prot::write;
    p &= prot::write;
    CHECK(p == prot::write);
}

TEST_CASE("v7s: a range unmap removes replicated leaves (64K large pages, 16M supersections) whole, once each",
          "[arm_v7s][unmap]") {
    struct log {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> leaves;
    } removed;
    flush_hooks hooks;
    hooks.cookie = &removed;
    hooks.leaf_removed = [](void* c, std::uint64_t iova, std::uint64_t size) {
        static_cast<log*>(c)->leaves.emplace_back(iova, size);
    };
    auto mem = make_default_memory<arm_v7s>();
    auto pt = page_table<arm_v7s, default_memory_t<arm_v7s>>::create(v7s_config{}, *mem, hooks);
    REQUIRE(pt.ok());
    const prot rw = prot::read | prot::write;
    REQUIRE(pt->map(iova_t{0x1000000}, pa_t{0x5000000}, length_t{0x1000000}, rw).ok());  // a supersection
    REQUIRE(pt->map(iova_t{0x2010000}, pa_t{0x6010000}, length_t{0x10000}, rw).ok());    // a large page
    REQUIRE(pt->map(iova_t{0x2020000}, pa_t{0x6020000}, length_t{0x1000}, rw).ok());     // a small page
    // Neither end of the range is a table's edge, so the leaves are removed one by one.
    auto r = pt->unmap(iova_t{0xff000}, length_t{0x2030000 - 0xff000});
    REQUIRE(r.ok());
    CHECK(r->value == 0x1000000 + 0x10000 + 0x1000);
    std::sort(removed.leaves.begin(), removed.leaves.end());
    using leaf = std::pair<std::uint64_t, std::uint64_t>;
    CHECK(removed.leaves == std::vector<leaf>{{0x1000000, 0x1000000}, {0x2010000, 0x10000}, {0x2020000, 0x1000}});
    for (std::uint64_t a : {0x1000000u, 0x1ffffffu, 0x2010000u, 0x201ffffu, 0x2020000u})
        CHECK_FALSE(pt->iova_to_phys(iova_t{a}).has_value());
}
