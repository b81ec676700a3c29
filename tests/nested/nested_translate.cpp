// SPDX-License-Identifier: MIT
// The nested translator: results, access counts, every fault kind, and every format pair.
#include <array>
#include <cstdint>
#include <tuple>

#include <catch2/catch.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/length.hpp>
#include <iopgtable/formats/all.hpp>
#include <iopgtable/formats/amd_v1.hpp>
#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/formats/arm_v7s.hpp>
#include <iopgtable/formats/vtd_fl.hpp>
#include <iopgtable/formats/vtd_sl.hpp>

#include "nested/nested_fixture.hpp"
#include "virtio/virtio_fixture.hpp"

using namespace iopgtable;
using namespace iopgtable::test;
using nested::access_kind;
using nested::fault_reason;
using iopgtable::memory_type;

namespace {

using lpae_pair = two_stage<arm_lpae_s1_4k, arm_lpae_s2_4k>;
using vtd_pair = two_stage<vtd_fl, vtd_sl>;

/// Checks a fault's identifying fields (not its access count).
void check_fault(const nested::translate_result& r, unsigned stage, unsigned level, std::uint64_t address,
                 fault_reason reason, bool table_fetch = false) {
    REQUIRE_FALSE(r.ok());
    const auto& f = r.error();
    CHECK(f.stage == stage);
    CHECK(f.level == level);
    CHECK(f.address == address);
    CHECK(f.reason == reason);
    CHECK(f.table_fetch == table_fetch);
}

} // namespace

TEST_CASE("a cold 4-level-over-4-level walk reads 24 entries", "[nested]") {
    SECTION("LPAE 4K stage 1 over LPAE 4K stage 2") {
        lpae_pair w;
        REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
        REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
        REQUIRE(w.s1->geo().levels == 4);
        REQUIRE(w.s2->geo().levels == 4);
        auto t = w.make_translator();
        auto r = t.translate(iova_t{0x1abc}, rd);
        REQUIRE(r.ok());
        CHECK(r->output.value == data_hpa + 0xabc);
        CHECK(r->accesses == 24);  // 4 stage-1 entries, each fetched through a 4-level stage-2 walk, then 4
        CHECK(t.translate(iova_t{0x1abc}, rd)->accesses == 24);  // no cache: cold every time
    }
    SECTION("VT-d first stage over second stage, 4 levels each") {
        vtd_pair w;
        REQUIRE(w.s1->map(iova_t{0x7000}, pa_t{0x300000}, length_t{0x1000}, rw).ok());
        REQUIRE(w.s2->map(ipa_t{0x300000}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
        auto t = w.make_translator();
        auto r = t.translate(iova_t{0x7010}, wr);
        REQUIRE(r.ok());
        CHECK(r->output.value == data_hpa + 0x10);
        CHECK(r->accesses == 24);
    }
    SECTION("3 levels over 3 levels (LPAE IAS 39 over a concatenated IAS 40 stage 2): 3 x 4 + 3") {
        lpae_config c1, c2;
        c1.ias = 39;
        c2.ias = 40;
        c2.oas = 40;
        two_stage<arm_lpae_s1_4k, arm_lpae_s2_4k> w(c1, c2);
        REQUIRE(w.s1->geo().levels == 3);
        REQUIRE(w.s2->geo().levels == 3);
        REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
        REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{0x8000000000 - 0x1000}, length_t{0x1000}, rw).ok());
        CHECK(w.make_translator().translate(iova_t{0x1000}, rd)->accesses == 15);
    }
}

TEST_CASE("caches cut the accesses: walk cache for table fetches, IOTLB for whole translations", "[nested]") {
    lpae_pair w;
    REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x2000}, rw).ok());
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x2000}, rw).ok());
    nested::walk_cache wc;
    SECTION("walk cache only") {
        auto t = w.make_translator({&wc, nullptr, 0});
        CHECK(t.translate(iova_t{0x1000}, rd)->accesses == 24);
        // The four stage-1 tables' stage-2 translations are cached: 4 stage-1 reads + 4 final stage-2 reads.
        CHECK(t.translate(iova_t{0x2000}, rd)->accesses == 8);
        CHECK(wc.hits() == 4);
    }
    SECTION("IOTLB") {
        nested::translation_cache tlb;
        auto t = w.make_translator({&wc, &tlb, 7});
        auto cold = t.translate(iova_t{0x1008}, rd);
        REQUIRE(cold.ok());
        CHECK_FALSE(cold->cached);
        auto hot = t.translate(iova_t{0x1ff0}, wr);
        REQUIRE(hot.ok());
        CHECK(hot->cached);
        CHECK(hot->accesses == 0);
        CHECK(hot->output.value == data_hpa + 0xff0);
        CHECK(t.stats().walks == 1);
        CHECK(t.stats().translations == 2);
        CHECK(tlb.hits() == 1);
    }
}

TEST_CASE("a translation's size is the smaller leaf, permissions are kept per stage and combined", "[nested]") {
    lpae_pair w;
    auto t = w.make_translator();
    SECTION("stage-1 block over stage-2 pages") {
        REQUIRE(w.s1->map(iova_t{0x40000000}, pa_t{0x200000}, length_t{0x200000}, prot::read).ok());
        REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
        auto r = t.translate(iova_t{0x40000123}, rd);
        REQUIRE(r.ok());
        CHECK(r->size_lg2 == 12);
        CHECK(r->s1.size_lg2 == 21);
        CHECK(r->s1.level == 1);
        CHECK(r->s2.size_lg2 == 12);
        CHECK(r->ipa.value == 0x200123);
        CHECK(r->iova_base() == 0x40000000);
        CHECK(has(r->s1.perm, prot::read));
        CHECK_FALSE(has(r->s1.perm, prot::write));
        CHECK(has(r->s2.perm, prot::write));
        CHECK_FALSE(has(r->perm, prot::write));
        CHECK(has(r->perm, prot::read));
    }
    SECTION("stage-1 page over a stage-2 1G block; both 2M") {
        REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x40805000}, length_t{0x1000}, rw).ok());
        REQUIRE(w.s1->map(iova_t{0x200000}, pa_t{0x80200000}, length_t{0x200000}, rw).ok());
        REQUIRE(w.s2->map(ipa_t{0x80000000}, pa_t{data_hpa}, length_t{0x40000000}, rw).ok());
        REQUIRE(w.s2->map(ipa_t{0x40000000 + window_size}, pa_t{data_hpa + 0x40000000 + window_size},
                          length_t{0x40000000 - window_size}, rw).ok());
        auto small = t.translate(iova_t{0x1000}, rd);
        REQUIRE(small.ok());
        CHECK(small->size_lg2 == 12);
        CHECK(small->s2.size_lg2 == 21);  // the window's neighbourhood is mapped with 2M blocks
        auto big = t.translate(iova_t{0x3fffff}, wr);
        REQUIRE(big.ok());
        CHECK(big->size_lg2 == 21);
        CHECK(big->s2.size_lg2 == 30);
        CHECK(big->output.value == data_hpa + 0x3fffff);
    }
}

TEST_CASE("translate_leaf: the DMA path's walk answers output, flags, rights and size, or no translation", "[nested]") {
    lpae_pair w;
    nested::walk_cache wc;
    auto t = w.make_translator({&wc, nullptr, 0});
    REQUIRE(w.s1->map(iova_t{0x40000000}, pa_t{0x200000}, length_t{0x200000}, prot::read).ok());
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
    for (int pass = 0; pass < 2; ++pass) {  // cold, then with the stage-1 tables' pages in the walk cache
        const auto l = t.translate_leaf(iova_t{0x40000123});
        REQUIRE(l.mapped());
        CHECK(l.output == data_hpa + 0x123);
        CHECK(l.size_lg2 == 12);  // the stage-2 page, inside the stage-1 2M block
        CHECK(has(l.perm, prot::read));
        CHECK_FALSE(has(l.perm, prot::write));  // read-only in stage 1
        CHECK(nested::permits(l.rights, rd));
        CHECK_FALSE(nested::permits(l.rights, wr));
        // Stage 1 stops at its level-1 block: 3 entries, each fetched through a 4-level stage-2
        // walk while cold, then the final 4-level stage-2 walk.
        CHECK(l.accesses == (pass == 0 ? 3 * 5 + 4 : 3 + 4));
    }
    // Stage 2 does not map the next page: no translation, and the walk's entries still counted.
    const auto miss = t.translate_leaf(iova_t{0x40001000});
    CHECK_FALSE(miss.mapped());
    CHECK(miss.output == ~std::uint64_t{0});
    CHECK(miss.accesses == 3 + 4);
    // Stage 1 does not map it.
    CHECK_FALSE(t.translate_leaf(iova_t{0x80000000}).mapped());
    // Beyond stage 1's input size: nothing read.
    const auto far = t.translate_leaf(iova_t{std::uint64_t{1} << 48});
    CHECK_FALSE(far.mapped());
    CHECK(far.accesses == 0);
    CHECK(t.stats().translations == 5);
    CHECK(t.stats().walks == 5);
}

TEST_CASE("lookup_stop stops where lookup stops, with the same entry and count", "[nested][walk]") {
    lpae_pair w;
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x200000}, rw).ok());
    REQUIRE(w.s2->map(ipa_t{0x40000000 + 0x10000000}, pa_t{data_hpa + 0x400000}, length_t{0x1000}, prot::read).ok());
    const auto st = nested::stage_table<arm_lpae_s2_4k, guest_ram>::of(*w.s2);
    // A 2M block (level 1), a 4K page (level 0), empty at levels 0, 1 and 3, beyond the input size.
    for (const std::uint64_t ipa : {std::uint64_t{0x200123}, std::uint64_t{0x50000fff}, std::uint64_t{0x50001000},
                                    std::uint64_t{0x600000}, std::uint64_t{0x8000000000}, std::uint64_t{1} << 48}) {
        const auto e = lookup<arm_lpae_s2_4k>(st.cfg, st.geo, *st.mem, st.root, ipa);
        const auto s = lookup_stop<arm_lpae_s2_4k>(st.cfg, st.geo, *st.mem, st.root, ipa);
        CHECK(s.status == e.status);
        CHECK(s.level == e.level);
        CHECK(s.raw == e.raw);
        CHECK(s.accesses == e.accesses);
    }
    // A table address the memory does not back: both stop at the level whose entry is unread.
    guest_ram small{0x2000, pa_t{0}};
    std::uint64_t top[512] = {};
    top[0] = 0x7000 | 0b11;  // a table outside `small`
    REQUIRE(small.write(pa_t{0}, top, sizeof top));
    const auto geo = *arm_lpae_s2_4k::make_geometry(arm_lpae_s2_4k::config{});
    const auto e = lookup<arm_lpae_s2_4k>(arm_lpae_s2_4k::config{}, geo, small, pa_t{0}, 0x1000);
    const auto s = lookup_stop<arm_lpae_s2_4k>(arm_lpae_s2_4k::config{}, geo, small, pa_t{0}, 0x1000);
    CHECK(e.status == walk_status::bad_table);
    CHECK(s.status == e.status);
    CHECK(s.level == e.level);
    CHECK(s.accesses == e.accesses);
    CHECK(s.accesses == 1);
}

TEST_CASE("memory types combine to the more restrictive", "[nested]") {
    lpae_pair w;
    auto t = w.make_translator();
    auto type_of = [&](prot p1, prot p2) {
        REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, p1).ok());
        REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, p2).ok());
        auto r = t.translate(iova_t{0x1000}, rd);
        REQUIRE(w.s1->unmap(iova_t{0x1000}, length_t{0x1000}).ok());
        REQUIRE(w.s2->unmap(ipa_t{0x200000}, length_t{0x1000}).ok());
        REQUIRE(r.ok());
        return std::tuple{r->s1.memory, r->s2.memory, r->memory, r->perm};
    };
    const prot c = prot::cache, m = prot::mmio;
    CHECK(type_of(rw | c, rw | c) == std::tuple{memory_type::write_back, memory_type::write_back, memory_type::write_back, rw | c});
    CHECK(std::get<2>(type_of(rw | c, rw)) == memory_type::non_cacheable);
    CHECK(std::get<2>(type_of(rw, rw | c)) == memory_type::non_cacheable);
    CHECK(std::get<2>(type_of(rw | c, rw | m)) == memory_type::device);
    CHECK(std::get<3>(type_of(rw | m, rw | c)) == (rw | m));
    // A stage whose format has no memory types (VT-d) does not restrict the other.
    vtd_pair v;
    REQUIRE(v.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
    REQUIRE(v.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
    CHECK(v.make_translator().translate(iova_t{0x1000}, rd)->memory == memory_type::write_back);
}

TEST_CASE("stage-1 faults", "[nested][fault]") {
    lpae_pair w;
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x200000}, rw).ok());
    auto t = w.make_translator();
    SECTION("translation: nothing mapped stops at the top level, a hole in a table at its level") {
        check_fault(t.translate(iova_t{0x5000}, rd), 1, 3, 0x5000, fault_reason::translation);
        REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
        check_fault(t.translate(iova_t{0x5000}, wr), 1, 0, 0x5000, fault_reason::translation);
        CHECK(t.translate(iova_t{0x5000}, wr).error().access == access_kind::write);
        check_fault(t.translate(iova_t{0x40000000}, rd), 1, 2, 0x40000000, fault_reason::translation);
    }
    SECTION("translation: beyond the input address size, at Arm's level 0 (our 3)") {
        check_fault(t.translate(iova_t{std::uint64_t{1} << 48}, rd), 1, 3, std::uint64_t{1} << 48, fault_reason::translation);
        CHECK(t.translate(iova_t{std::uint64_t{1} << 48}, rd).accesses() == 0);
        // A walk that starts lower still reports level 0: 3 levels (IAS 39), top level 2.
        lpae_config c1;
        c1.ias = 39;
        lpae_pair n(c1);
        REQUIRE(n.s1->geo().levels == 3);
        check_fault(n.make_translator().translate(iova_t{std::uint64_t{1} << 39}, rd), 1, 3, std::uint64_t{1} << 39,
                    fault_reason::translation);
        // 64K granule, IAS 42: two levels (Arm 2 and 3); Arm level 0 is still our 3.
        lpae_config c64;
        c64.ias = 42;
        two_stage<arm_lpae_s1_64k, arm_lpae_s2_4k> g(c64);
        REQUIRE(g.s1->geo().levels == 2);
        check_fault(g.make_translator().translate(iova_t{std::uint64_t{1} << 42}, wr), 1, 3, std::uint64_t{1} << 42,
                    fault_reason::translation);
    }
    SECTION("permission: write to read-only, exec of no-exec, unprivileged access to privileged") {
        REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, prot::read).ok());
        REQUIRE(w.s1->map(iova_t{0x2000}, pa_t{0x201000}, length_t{0x1000}, rw | prot::noexec).ok());
        REQUIRE(w.s1->map(iova_t{0x3000}, pa_t{0x202000}, length_t{0x1000}, rw | prot::priv).ok());
        CHECK(t.translate(iova_t{0x1000}, rd).ok());
        CHECK(t.translate(iova_t{0x1000}, ex).ok());
        check_fault(t.translate(iova_t{0x1000}, wr), 1, 0, 0x1000, fault_reason::permission);
        check_fault(t.translate(iova_t{0x2000}, ex), 1, 0, 0x2000, fault_reason::permission);
        CHECK(t.translate(iova_t{0x2000}, wr).ok());
        check_fault(t.translate(iova_t{0x3000}, rd), 1, 0, 0x3000, fault_reason::permission);
        CHECK(t.translate(iova_t{0x3000}, {access_kind::write, true}).ok());
    }
    SECTION("access flag: a leaf the guest wrote with AF clear") {
        REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
        auto* e = w.s1_entry(0x1000);
        *e &= ~arm_lpae_s1_4k::af::mask;
        check_fault(t.translate(iova_t{0x1000}, rd), 1, 0, 0x1000, fault_reason::access_flag);
    }
    SECTION("address size: a leaf output or a table address beyond stage 1's output size") {
        lpae_config c1;
        c1.oas = 40;
        lpae_pair n(c1);
        REQUIRE(n.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x200000}, rw).ok());
        REQUIRE(n.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
        REQUIRE(n.s1->map(iova_t{0x400000}, pa_t{0x201000}, length_t{0x1000}, rw).ok());
        auto nt = n.make_translator();
        *n.s1_entry(0x1000) |= std::uint64_t{1} << 44;  // OA bit 44 with a 40-bit IPA space
        check_fault(nt.translate(iova_t{0x1000}, rd), 1, 0, 0x1000, fault_reason::address_size);
        // Make the level-1 entry covering 0x400000 point at a table above 2^40: root entry 0 →
        // level-2 table, its entry 0 → level-1 table, whose entry 2 covers 0x400000.
        std::uint64_t* l2_entry = n.gmem->entry<std::uint64_t>(pa_t{arm_lpae_s1_4k::table_address(c1, 3,
            *n.gmem->entry<std::uint64_t>(n.s1->root()))});
        REQUIRE(l2_entry != nullptr);
        std::uint64_t* l1_entry = n.gmem->entry<std::uint64_t>(pa_t{arm_lpae_s1_4k::table_address(c1, 2, *l2_entry) + 2 * 8});
        REQUIRE(l1_entry != nullptr);
        REQUIRE(arm_lpae_s1_4k::classify(c1, 1, *l1_entry) == entry_kind::table);
        *l1_entry |= std::uint64_t{1} << 45;
        auto f = nt.translate(iova_t{0x400000}, rd);
        check_fault(f, 1, 0, 0x400000, fault_reason::address_size, true);
        CHECK(f.error().table_level == 0);
    }
}

TEST_CASE("stage-2 faults on the final IPA", "[nested][fault]") {
    lpae_pair w;
    auto t = w.make_translator();
    REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x2000}, rw).ok());
    SECTION("translation: the IPA is not mapped") {
        check_fault(t.translate(iova_t{0x1040}, rd), 2, 2, 0x200040, fault_reason::translation);  // only the window's 1G is mapped
        REQUIRE(w.s2->map(ipa_t{0x201000}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
        check_fault(t.translate(iova_t{0x1040}, rd), 2, 0, 0x200040, fault_reason::translation);
        CHECK(t.translate(iova_t{0x2040}, rd).ok());
    }
    SECTION("translation: an IPA beyond stage 2's input size") {
        lpae_config c2;
        c2.ias = 36;
        c2.oas = 40;
        lpae_pair n({}, c2);
        REQUIRE(n.s1->map(iova_t{0x1000}, pa_t{std::uint64_t{1} << 36}, length_t{0x1000}, rw).ok());
        REQUIRE(n.s2->geo().levels == 3);
        // Arm level 0 (IPAIsOutOfRange), our 3: above the 3-level table's top level.
        check_fault(n.make_translator().translate(iova_t{0x1000}, rd), 2, 3, std::uint64_t{1} << 36,
                    fault_reason::translation);
    }
    SECTION("permission: read-only, write-only and no-exec stage-2 leaves") {
        REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, prot::read | prot::noexec).ok());
        REQUIRE(w.s2->map(ipa_t{0x201000}, pa_t{data_hpa + 0x1000}, length_t{0x1000}, prot::write).ok());
        CHECK(t.translate(iova_t{0x1000}, rd).ok());
        check_fault(t.translate(iova_t{0x1000}, wr), 2, 0, 0x200000, fault_reason::permission);
        check_fault(t.translate(iova_t{0x1000}, ex), 2, 0, 0x200000, fault_reason::permission);
        check_fault(t.translate(iova_t{0x2000}, rd), 2, 0, 0x201000, fault_reason::permission);
        CHECK(t.translate(iova_t{0x2000}, wr).ok());
    }
    SECTION("stage-1 permission comes first") {
        REQUIRE(w.s1->map(iova_t{0x10000}, pa_t{0x300000}, length_t{0x1000}, prot::read).ok());
        check_fault(t.translate(iova_t{0x10000}, wr), 1, 0, 0x10000, fault_reason::permission);
    }
    SECTION("access flag and address size of the stage-2 leaf") {
        REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x2000}, rw).ok());
        *w.s2_leaf_entry(0x200000) &= ~arm_lpae_s2_4k::af::mask;
        check_fault(t.translate(iova_t{0x1000}, rd), 2, 0, 0x200000, fault_reason::access_flag);
        *w.s2_leaf_entry(0x201000) |= std::uint64_t{1} << 47;  // fine: OAS 48
        CHECK(t.translate(iova_t{0x2000}, rd).ok());
        lpae_config c2;
        c2.oas = 40;
        c2.ias = 40;
        lpae_pair n({}, c2);
        REQUIRE(n.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
        REQUIRE(n.s2->map(ipa_t{0x200000}, pa_t{0x1000000}, length_t{0x1000}, rw).ok());
        *n.s2_leaf_entry(0x200000) |= std::uint64_t{1} << 41;
        check_fault(n.make_translator().translate(iova_t{0x1000}, rd), 2, 0, 0x200000, fault_reason::address_size);
    }
}

TEST_CASE("stage-2 faults while fetching a stage-1 table", "[nested][fault]") {
    lpae_pair w;
    REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
    nested::walk_cache wc;
    auto t = w.make_translator({&wc, nullptr, 0});
    REQUIRE(t.translate(iova_t{0x1000}, rd).ok());
    // The top table is the first table allocated in the window; the level-0 table is the last.
    const std::uint64_t root = w.root().value;
    const auto leaf_table = w.s1->lookup(iova_t{0x1000}).entry_address.value & ~std::uint64_t{0xfff};
    REQUIRE(root == window_ipa);
    REQUIRE(leaf_table != root);
    SECTION("translation: the host unmapped the page holding the level-0 table") {
        REQUIRE(w.s2->unmap(ipa_t{leaf_table}, length_t{0x1000}).ok());
        t.invalidate_stage2(ipa_t{leaf_table}, length_t{0x1000});
        auto r = t.translate(iova_t{0x1000}, wr);
        check_fault(r, 2, 0, leaf_table + 8, fault_reason::translation, true);
        CHECK(r.error().table_level == 0);
        CHECK(r.error().access == access_kind::write);
    }
    SECTION("translation: the root itself") {
        REQUIRE(w.s2->unmap(ipa_t{root}, length_t{0x1000}).ok());
        t.invalidate_stage2(ipa_t{root}, length_t{0x1000});
        auto r = t.translate(iova_t{0x1000}, rd);
        check_fault(r, 2, 0, root, fault_reason::translation, true);
        CHECK(r.error().table_level == 3);
        CHECK(r.error().accesses == 4);
    }
    SECTION("permission: a write-only stage-2 page cannot be walked") {
        REQUIRE(w.s2->unmap(ipa_t{leaf_table}, length_t{0x1000}).ok());
        REQUIRE(w.s2->map(ipa_t{leaf_table}, pa_t{window_hpa + (leaf_table - window_ipa)}, length_t{0x1000}, prot::write).ok());
        t.invalidate_stage2(ipa_t{leaf_table}, length_t{0x1000});
        check_fault(t.translate(iova_t{0x1000}, rd), 2, 0, leaf_table + 8, fault_reason::permission, true);
    }
    SECTION("access flag of the stage-2 leaf mapping a table") {
        *w.s2_leaf_entry(leaf_table) &= ~arm_lpae_s2_4k::af::mask;
        t.invalidate_stage2(ipa_t{leaf_table}, length_t{0x1000});
        check_fault(t.translate(iova_t{0x1000}, rd), 2, 0, leaf_table + 8, fault_reason::access_flag, true);
    }
    SECTION("walk abort: stage 2 maps the table's page outside host memory: a stage-1 fault") {
        REQUIRE(w.s2->unmap(ipa_t{leaf_table}, length_t{0x1000}).ok());
        REQUIRE(w.s2->map(ipa_t{leaf_table}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
        t.invalidate_stage2(ipa_t{leaf_table}, length_t{0x1000});
        // SMMUv3 F_WALK_EABT with S2 = 0: stage 1, the level being fetched, the input address.
        auto r = t.translate(iova_t{0x1000}, rd);
        check_fault(r, 1, 0, 0x1000, fault_reason::walk_abort, true);
        CHECK(r.error().table_level == 0);
    }
    SECTION("walk abort on the root's fetch: stage 1 at the top level") {
        REQUIRE(w.s2->unmap(ipa_t{root}, length_t{0x1000}).ok());
        REQUIRE(w.s2->map(ipa_t{root}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
        t.invalidate_stage2(ipa_t{root}, length_t{0x1000});
        auto r = t.translate(iova_t{0x1000}, wr);
        check_fault(r, 1, 3, 0x1000, fault_reason::walk_abort, true);
        CHECK(r.error().table_level == 3);
    }
    SECTION("Device memory under a table: STE.S2PTW = 1 (the default) is a stage-2 permission fault") {
        REQUIRE(w.s2->unmap(ipa_t{leaf_table}, length_t{0x1000}).ok());
        REQUIRE(w.s2->map(ipa_t{leaf_table}, pa_t{window_hpa + (leaf_table - window_ipa)}, length_t{0x1000},
                          rw | prot::mmio).ok());
        t.invalidate_stage2(ipa_t{leaf_table}, length_t{0x1000});
        CHECK(t.settings().protected_table_walk);
        check_fault(t.translate(iova_t{0x1000}, rd), 2, 0, leaf_table + 8, fault_reason::permission, true);
        check_fault(t.translate(iova_t{0x1000}, rd), 2, 0, leaf_table + 8, fault_reason::permission, true);  // cached
        // S2PTW = 0: the walk goes through, and fills the walk cache with the Device page ...
        nested::walk_cache shared;
        auto off = nested::nested_translator<arm_lpae_s1_4k, arm_lpae_s2_4k, guest_ram>::create(
            w.s1_cfg, w.root(), w.stage2(), {&shared, nullptr, 0}, nested::nested_settings{.protected_table_walk = false});
        REQUIRE(off.ok());
        CHECK(off->translate(iova_t{0x1000}, rd).ok());
        // ... which a translator with S2PTW = 1 refuses from the cache too.
        auto on = nested::nested_translator<arm_lpae_s1_4k, arm_lpae_s2_4k, guest_ram>::create(
            w.s1_cfg, w.root(), w.stage2(), {&shared, nullptr, 0});
        REQUIRE(on.ok());
        const auto hits = shared.hits();
        check_fault(on->translate(iova_t{0x1000}, rd), 2, 0, leaf_table + 8, fault_reason::permission, true);
        CHECK(shared.hits() > hits);
    }
    SECTION("without the host's invalidation the walk cache still holds the old translation") {
        REQUIRE(w.s2->unmap(ipa_t{leaf_table}, length_t{0x1000}).ok());
        CHECK(t.translate(iova_t{0x1000}, rd).ok());  // stale, as on hardware: the contract needs the invalidation
        t.invalidate_stage2(ipa_t{leaf_table}, length_t{0x1000});
        CHECK_FALSE(t.translate(iova_t{0x1000}, rd).ok());
    }
}

TEST_CASE("v7s over LPAE: access flag and permissions of the short descriptor", "[nested][fault]") {
    two_stage<arm_v7s, arm_lpae_s2_4k> w;
    REQUIRE(w.s1->map(iova_t{0x100000}, pa_t{0x200000}, length_t{0x100000}, prot::read).ok());  // a section
    REQUIRE(w.s1->map(iova_t{0x10000}, pa_t{0x400000}, length_t{0x10000}, rw | prot::cache).ok());  // a large page
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x400000}, rw | prot::cache).ok());
    auto t = w.make_translator();
    auto section = t.translate(iova_t{0x1abcde}, rd);
    REQUIRE(section.ok());
    CHECK(section->output.value == data_hpa + 0xabcde);
    CHECK(section->size_lg2 == 20);
    CHECK(section->memory == memory_type::non_cacheable);
    CHECK(section->accesses == 1 * 5 + 3);  // one stage-1 fetch through 4 stage-2 levels, then a 2M stage-2 block
    check_fault(t.translate(iova_t{0x100000}, wr), 1, 1, 0x100000, fault_reason::permission);
    auto large = t.translate(iova_t{0x1f000}, wr);
    REQUIRE(large.ok());
    CHECK(large->size_lg2 == 16);  // a 64K large page over a 2M block
    CHECK(large->s1.size_lg2 == 16);
    CHECK(large->memory == memory_type::write_back);
    // Clear AP[0] (the access flag) in every copy of the large page.
    for (std::uint64_t i = 0; i < 16; ++i) *w.s1_entry(0x10000 + i * 0x1000) &= ~(1u << 4);
    check_fault(t.translate(iova_t{0x13000}, rd), 1, 0, 0x13000, fault_reason::access_flag);
}

TEST_CASE("VT-d first stage over second stage: faults", "[nested][fault]") {
    vtd_pair w;
    REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, prot::read).ok());
    REQUIRE(w.s1->map(iova_t{0x2000}, pa_t{0x201000}, length_t{0x1000}, rw).ok());
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
    REQUIRE(w.s2->map(ipa_t{0x201000}, pa_t{data_hpa + 0x1000}, length_t{0x1000}, prot::read).ok());
    auto t = w.make_translator();
    check_fault(t.translate(iova_t{0x1000}, wr), 1, 0, 0x1000, fault_reason::permission);
    check_fault(t.translate(iova_t{0x2000}, wr), 2, 0, 0x201000, fault_reason::permission);
    CHECK(t.translate(iova_t{0x2000}, ex).ok());  // neither stage encodes execute permission here
    check_fault(t.translate(iova_t{0x3000}, rd), 1, 0, 0x3000, fault_reason::translation);
    check_fault(t.translate(iova_t{std::uint64_t{1} << 47}, rd), 1, 3, std::uint64_t{1} << 47, fault_reason::translation);
    REQUIRE(w.s2->unmap(ipa_t{window_ipa}, length_t{0x1000}).ok());
    check_fault(t.translate(iova_t{0x1000}, rd), 2, 0, window_ipa, fault_reason::translation, true);
}

TEST_CASE("Arm permissions: instruction fetches as the architecture decides them", "[nested][fault]") {
    // Arm ARM D8.4.1 / AArch64.S1DirectBasePermissions, S2DirectBasePermissions; SMMUv3 13.7.
    lpae_pair w;
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x200000}, rw).ok());
    auto t = w.make_translator();
    const nested::access_request prd{access_kind::read, true}, pex{access_kind::exec, true};
    SECTION("a PRIV stage-1 page: unprivileged fetches are governed by UXN alone") {
        REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw | prot::priv).ok());  // 0x23
        check_fault(t.translate(iova_t{0x1000}, rd), 1, 0, 0x1000, fault_reason::permission);
        auto x = t.translate(iova_t{0x1000}, ex);
        REQUIRE(x.ok());
        CHECK(x->output.value == data_hpa);
        CHECK(t.translate(iova_t{0x1000}, prd).ok());
        CHECK(t.translate(iova_t{0x1000}, pex).ok());
        using R = nested::access_rights;
        CHECK(x->rights == R{R::read | R::write | R::exec, R::exec});
    }
    SECTION("a page unprivileged accesses can write is never privileged-executable") {
        REQUIRE(w.s1->map(iova_t{0x2000}, pa_t{0x201000}, length_t{0x1000}, rw).ok());
        CHECK(t.translate(iova_t{0x2000}, ex).ok());
        check_fault(t.translate(iova_t{0x2000}, pex), 1, 0, 0x2000, fault_reason::permission);
        REQUIRE(w.s1->map(iova_t{0x3000}, pa_t{0x202000}, length_t{0x1000}, prot::read).ok());
        CHECK(t.translate(iova_t{0x3000}, pex).ok());
    }
    SECTION("stage 2 executes by XN alone: a write-only stage-2 page under an executable stage-1 page") {
        REQUIRE(w.s2->map(ipa_t{0x400000}, pa_t{data_hpa + 0x400000}, length_t{0x1000}, prot::write).ok());
        REQUIRE(w.s1->map(iova_t{0x4000}, pa_t{0x400000}, length_t{0x1000}, prot::read).ok());
        CHECK(t.translate(iova_t{0x4000}, ex).ok());
        check_fault(t.translate(iova_t{0x4000}, rd), 2, 0, 0x400000, fault_reason::permission);
    }
    SECTION("stage-2 NOEXEC is XN = 0b11: with FEAT_XNX, privileged fetches pass") {
        REQUIRE(w.s2->map(ipa_t{0x401000}, pa_t{data_hpa + 0x401000}, length_t{0x1000}, rw | prot::noexec).ok());
        REQUIRE(w.s1->map(iova_t{0x5000}, pa_t{0x401000}, length_t{0x1000}, rw | prot::priv).ok());
        check_fault(t.translate(iova_t{0x5000}, ex), 2, 0, 0x401000, fault_reason::permission);
        CHECK(t.translate(iova_t{0x5000}, pex).ok());
    }
    SECTION("stage-1 NOEXEC refuses both") {
        REQUIRE(w.s1->map(iova_t{0x6000}, pa_t{0x203000}, length_t{0x1000}, rw | prot::priv | prot::noexec).ok());
        check_fault(t.translate(iova_t{0x6000}, ex), 1, 0, 0x6000, fault_reason::permission);
        check_fault(t.translate(iova_t{0x6000}, pex), 1, 0, 0x6000, fault_reason::permission);
    }
    SECTION("the IOTLB answers with the same rights") {
        nested::walk_cache wc;
        nested::translation_cache tlb;
        auto c = w.make_translator({&wc, &tlb, 1});
        REQUIRE(w.s1->map(iova_t{0x7000}, pa_t{0x204000}, length_t{0x1000}, rw).ok());
        REQUIRE(c.translate(iova_t{0x7000}, rd).ok());
        CHECK(c.translate(iova_t{0x7000}, ex)->cached);
        check_fault(c.translate(iova_t{0x7000}, pex), 1, 0, 0x7000, fault_reason::permission);
    }
}

TEST_CASE("VT-d keeps its own rule: an execute request needs read", "[nested][fault]") {
    // VT-d 3.6.1 / 3.7.1 access rights: a second-stage page without R refuses execute requests.
    vtd_pair w;
    REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, prot::write).ok());
    auto t = w.make_translator();
    check_fault(t.translate(iova_t{0x1000}, ex), 2, 0, 0x200000, fault_reason::permission);
    CHECK(t.translate(iova_t{0x1000}, wr).ok());
}

TEST_CASE("the virtio device's MAP domains combine stages with the nested rule", "[nested][virtio]") {
    // device::walk_domain uses nested::combine_prot: a stage-2 NOEXEC page refuses the
    // device's (unprivileged) instruction fetches through a MAP domain, as nested tables do.
    using arm_machine = virtio::machine<virtio::arm_host>;
    virtio::machine_settings ms;
    ms.ram_size = 48ull << 20;
    ms.stage2_pool = 1ull << 20;
    ms.device.endpoints = 1;
    auto made = arm_machine::create(ms);
    REQUIRE(made.ok());
    auto& m = **made;
    auto send = [&](const virtio_test::bytes& in) {
        std::array<std::uint8_t, 4> out{0xee, 0xee, 0xee, 0xee};
        REQUIRE(m.submit(in, out) == 4);
        return static_cast<virtio::status>(out[0]);
    };
    constexpr std::uint64_t dma = arm_machine::dma_gpa;
    REQUIRE(send(virtio_test::attach(1, 0)) == virtio::status::ok);
    REQUIRE(send(virtio_test::map(1, 0x100000, 0x100fff, dma)) == virtio::status::ok);
    CHECK(m.dev().translate(0, 0x100000, 4, access_kind::exec).ok());
    // The host makes the page no-exec in stage 2.
    const std::uint64_t hpa = m.guest().hpa_base() + dma;
    REQUIRE(m.stage2().unmap(ipa_t{dma}, length_t{0x1000}, unmap_mode::split).ok());
    REQUIRE(m.stage2().map(ipa_t{dma}, pa_t{hpa}, length_t{0x1000}, rw | prot::cache | prot::noexec).ok());
    m.dev().stage2_changed(dma, 0x1000);
    CHECK(m.dev().translate(0, 0x100000, 4, access_kind::read).ok());
    const auto x = m.dev().translate(0, 0x100000, 4, access_kind::exec);
    REQUIRE_FALSE(x.ok());
    REQUIRE(x.fault);
    CHECK(x.fault->reason == virtio::fault_r_mapping);
}

// ---------------------------------------------------------------------------- every pair

namespace {

/// Maps one stage-1 range and one stage-2 range, then checks translations inside, at the
/// edges and in the holes against the composition of the two maps.
template <class S1, class S2>
void check_pair(typename S1::config c1 = {}, typename S2::config c2 = {}) {
    two_stage<S1, S2> w(c1, c2);
    const std::uint64_t unit = std::max(w.s1->min_page(), w.s2->min_page());
    const std::uint64_t iova = 16 * unit, ipa = 64 * unit, size = 32 * unit;
    const std::uint64_t pa = data_hpa + 8 * unit;
    REQUIRE(w.s1->map(iova_t{iova}, pa_t{ipa}, length_t{size}, rw).ok());
    REQUIRE(w.s2->map(ipa_t{ipa + unit}, pa_t{pa}, length_t{size - unit}, prot::read).ok());
    auto t = w.make_translator();
    INFO(S1::name << " over " << S2::name);
    for (std::uint64_t off : {std::uint64_t{0}, unit - 1, unit, unit + 8, size / 2 + 0x10, size - 1, size}) {
        INFO("offset " << off);
        auto r = t.translate(iova_t{iova + off}, rd);
        if (off >= size) {
            check_fault(r, 1, r.ok() ? 0 : r.error().level, iova + off, fault_reason::translation);
        } else if (off < unit) {
            check_fault(r, 2, r.ok() ? 0 : r.error().level, ipa + off, fault_reason::translation);
        } else {
            REQUIRE(r.ok());
            CHECK(r->output.value == pa + (off - unit));
            CHECK(r->ipa.value == ipa + off);
            CHECK(r->size_lg2 <= std::min(r->s1.size_lg2, r->s2.size_lg2));
            check_fault(t.translate(iova_t{iova + off}, wr), 2, r->s2.level, ipa + off, fault_reason::permission);
        }
    }
}

} // namespace

TEST_CASE("every stage pair translates", "[nested]") {
    // Every pair of the format list (formats/all.hpp nested_pairs), at default configurations.
    boost::hana::for_each(nested_pairs, [](auto t) {
        using P = typename decltype(t)::type;
        check_pair<typename P::stage1, typename P::stage2>();
    });
    static_assert(decltype(boost::hana::length(nested_pairs))::value >= 14);
    // Deeper tables, and pairs across architectures: the walker does not care whose they are.
    check_pair<vtd_fl, vtd_sl>(vtd_fl_config{5}, vtd_sl_config{57});
    check_pair<vtd_fl, amd_v1>(vtd_fl_config{5}, amd_v1_config{6});
    check_pair<arm_lpae_s1_4k, vtd_sl>();
    check_pair<vtd_fl, arm_lpae_s2_4k>();
}
