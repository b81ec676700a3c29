// SPDX-License-Identifier: MIT
#pragma once
/// @file nested_fixture.hpp
/// A two-stage world for the nested tests: host RAM (guest_ram standing for host physical
/// memory) holding the stage-2 tables and the pages that back the guest's stage-1 table window;
/// a stage-2 table; the guest's stage-1 table, allocated from an IPA window that stage 2 maps
/// and written through stage 2.
#include <cstdint>
#include <optional>

#include <catch2/catch.hpp>
#include <iopgtable/engine/page_table.hpp>
#include <iopgtable/mem/guest_ram.hpp>
#include <iopgtable/nested/stage.hpp>
#include <iopgtable/nested/stage2_view.hpp>
#include <iopgtable/nested/translator.hpp>

namespace iopgtable::test {

/// Host-physical layout: [host_base, + stage2_pool) stage-2 tables, then the window's backing,
/// then spare pages (host memory the guest does not own until stage 2 maps it).
inline constexpr std::uint64_t host_base = 0x100000000;
inline constexpr std::uint64_t stage2_pool = 0x1000000;
inline constexpr std::uint64_t window_hpa = host_base + stage2_pool;
/// Guest-physical window for stage-1 tables (below 4 GiB, so v7s can point at it).
inline constexpr std::uint64_t window_ipa = 0x40000000;
inline constexpr std::uint64_t window_size = 0x400000;
inline constexpr std::uint64_t spare_hpa = window_hpa + window_size;
inline constexpr std::uint64_t spare_size = 0x100000;
/// Host-physical addresses of data pages start here (not backed: translations only).
inline constexpr std::uint64_t data_hpa = 0x2000000000;

inline const prot rw = prot::read | prot::write;

template <class F>
std::uint64_t min_page_of(const typename F::config& c) {
    auto g = F::make_geometry(c);
    REQUIRE(g.ok());
    return g->pgsize_bitmap & (~g->pgsize_bitmap + 1);
}

template <class S1, class S2>
struct two_stage {
    using s2_table = page_table<S2, guest_ram>;
    using guest_memory = nested::guest_table_memory<S2, guest_ram>;
    using s1_table = page_table<S1, guest_memory>;
    using translator = nested::nested_translator<S1, S2, guest_ram>;

    guest_ram host{stage2_pool + window_size + spare_size, pa_t{host_base}};
    std::optional<s2_table> s2;
    std::optional<guest_memory> gmem;
    std::optional<s1_table> s1;
    typename S1::config s1_cfg;

    /// `window_page`: the stage-2 page size that maps the window (0: the smallest).
    explicit two_stage(typename S1::config c1 = {}, typename S2::config c2 = {}, std::uint64_t window_page = 0)
        : s1_cfg(c1) {
        host.set_table_pool(pa_t{host_base}, stage2_pool);
        auto t2 = s2_table::create(c2, host);
        REQUIRE(t2.ok());
        s2.emplace(std::move(*t2));
        const std::uint64_t page = window_page ? window_page : s2->min_page();
        REQUIRE(s2->map_pages(ipa_t{window_ipa}, pa_t{window_hpa}, length_t{page}, window_size / page, rw).ok());
        gmem.emplace(stage2(), ipa_t{window_ipa}, window_size);
        auto t1 = s1_table::create(c1, *gmem);
        REQUIRE(t1.ok());
        s1.emplace(std::move(*t1));
    }

    nested::stage_table<S2, guest_ram> stage2() const { return nested::stage_table<S2, guest_ram>::of(*s2); }
    ipa_t root() const { return ipa_t{s1->root().value}; }
    translator make_translator(nested::nested_caches caches = {}) const {
        auto t = translator::create(s1_cfg, root(), stage2(), caches);
        REQUIRE(t.ok());
        return std::move(*t);
    }
    /// Host pointer to the stage-2 entry that maps `ipa` (the leaf).
    std::uint64_t* s2_leaf_entry(std::uint64_t ipa) {
        auto w = s2->lookup(ipa_t{ipa});
        REQUIRE(w.status == walk_status::mapped);
        auto* p = host.entry<std::uint64_t>(w.entry_address);
        REQUIRE(p != nullptr);
        return p;
    }
    /// Host pointer to the stage-1 entry (a leaf, or where the walk stopped) for `iova`,
    /// reached through stage 2 as the guest would.
    template <class W = typename S1::word>
    W* s1_entry(std::uint64_t iova) {
        auto w = s1->lookup(iova_t{iova});
        W* p = gmem->template entry<W>(w.entry_address);
        REQUIRE(p != nullptr);
        return p;
    }
};

inline nested::access_request rd{nested::access_kind::read, false};
inline nested::access_request wr{nested::access_kind::write, false};
inline nested::access_request ex{nested::access_kind::exec, false};

} // namespace iopgtable::test
