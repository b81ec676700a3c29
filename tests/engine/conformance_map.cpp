// SPDX-License-Identifier: MIT
// Conformance suite, part 1: mapping, translating and unmapping every page size of every
// sample configuration of every format (the Linux io-pgtable selftest sequence, extended).
#include "support/checks.hpp"
#include "support/format_list.hpp"
#include "support/reference_model.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

constexpr prot rw_nx_cache = prot::read | prot::write | prot::noexec | prot::cache;

/// Checks one mapped leaf through `lookup`: level, size, base, output address, and that its
/// raw entry is the format's leaf for `p` (whose prot decodes back to the same entry).
template <class PT>
void check_leaf_lookup(const PT& pt, std::uint64_t iova, std::uint64_t pa, std::uint64_t size, prot p) {
    using F = typename PT::format;
    const unsigned lg2 = lg2_of(size);
    auto w = pt.lookup(in_addr<F>(iova + 42));
    REQUIRE(w.status == walk_status::mapped);
    CHECK(w.size_lg2 == lg2);
    CHECK(w.input_base == iova);
    CHECK(w.oa.value == pa + 42);
    CHECK(w.level == leaf_level<F>(pt.geo(), lg2));
    CHECK(w.accesses == pt.geo().levels - w.level);
    CHECK(w.raw == F::make_leaf(pt.cfg(), w.level, lg2, pa, p));
    CHECK(w.perm == F::leaf_prot(pt.cfg(), w.level, w.raw));
    CHECK(F::make_leaf(pt.cfg(), w.level, lg2, pa, w.perm) == w.raw);
}

} // namespace

TEMPLATE_LIST_TEST_CASE("a fresh table translates nothing and holds only its root", "[conformance]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        auto mem = make_test_memory<F>();
        {
            auto pt = make_table<F>(s.cfg, *mem);
            CHECK(pt.geo().levels == s.geo.levels);
            CHECK(pt.geo().pgsize_bitmap == s.geo.pgsize_bitmap);
            CHECK(pt.top_table_bytes() == (std::uint64_t{sizeof(typename F::word)} << s.geo.top_index_lg2));
            CHECK(pt.table_bytes() == pt.top_table_bytes());
            CHECK(mem->bytes_in_use() == root_only_bytes(pt));
            CHECK(pt.min_page() == smallest_page(s.geo));
            CHECK(dump(pt).empty());
            // A zero entry is empty at every level (format.hpp): fresh tables are zero-filled,
            // and walks pass runs of zeros without classifying them (cursor.hpp skip_zeros).
            for (unsigned level = 0; level < s.geo.levels; ++level)
                CHECK(F::classify(s.cfg, level, typename F::word{0}) == entry_kind::empty);
            const std::uint64_t end = ias_end(s.geo);
            for (std::uint64_t va : {std::uint64_t{0}, std::uint64_t{42}, (std::uint64_t{1} << 30) + 42,
                                     (std::uint64_t{2} << 30) + 42, end / 2, end - 1}) {
                if (va >= end) continue;
                INFO("iova 0x" << std::hex << va);
                CHECK(!pt.iova_to_phys(in_addr<F>(va)));
                CHECK(pt.lookup(in_addr<F>(va)).status == walk_status::unmapped);
            }
            if (s.geo.ias < 64) {  // a 64-bit input space has no address beyond it
                CHECK(pt.lookup(in_addr<F>(end)).status == walk_status::out_of_range);
                CHECK(!pt.iova_to_phys(in_addr<F>(end)));
            }
        }
        CHECK(mem->bytes_in_use() == 0);
    }
}

TEMPLATE_LIST_TEST_CASE("every page size maps, refuses a remap, translates, unmaps and remaps", "[conformance]",
                        format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        // One leaf of each size at (k + 1) * big: the largest size of which one more than
        // there are sizes fit, and the sizes up to it (all of them unless pages reach near the top of the input space).
        const std::uint64_t big = largest_page(s.geo, page_sizes(s.geo).size() + 1);
        const auto sizes = page_sizes_upto(s.geo, big);
        REQUIRE(!sizes.empty());
        REQUIRE(ias_end(s.geo) / big > sizes.size());
        REQUIRE(oas_end(s.geo) / big > sizes.size());
        auto mem = make_test_memory<F>();
        auto pt = make_table<F>(s.cfg, *mem);
        reference_model model(s.geo);
        auto iova_of = [&](std::size_t k) { return (k + 1) * big; };
        auto pa_of = [&](std::size_t k) { return oas_end(s.geo) - (k + 1) * big; };

        for (std::size_t k = 0; k < sizes.size(); ++k) {
            const std::uint64_t size = sizes[k], iova = iova_of(k), pa = pa_of(k);
            INFO("size 0x" << std::hex << size << " iova 0x" << iova << " pa 0x" << pa);
            REQUIRE(pt.map(in_addr<F>(iova), pa_t{pa}, length_t{size}, rw_nx_cache).ok());
            REQUIRE(model.map(iova, pa, size, rw_nx_cache).ok());
            const auto before = dump(pt);
            CHECK(dump_difference(before, model.expected_dump<F>(s.cfg)) == "");
            const std::uint64_t bytes = mem->bytes_in_use(), tables = pt.table_bytes();

            // Mapping anything over the leaf fails and changes nothing.
            CHECK(pt.map(in_addr<F>(iova), pa_t{pa - size}, length_t{size}, prot::read | prot::noexec).error() ==
                  errc::exists);
            for (std::size_t j = 0; j < k; ++j) {
                CHECK(pt.map(in_addr<F>(iova + size - sizes[j]), pa_t{0}, length_t{sizes[j]}, prot::read).error() ==
                      errc::exists);
                CHECK(pt.map(in_addr<F>(iova - sizes[j]), pa_t{0}, length_t{2 * sizes[j]}, prot::read).error() ==
                      errc::exists);
            }
            CHECK(dump_difference(dump(pt), before) == "");
            CHECK(mem->bytes_in_use() == bytes);
            CHECK(pt.table_bytes() == tables);

            CHECK(translation_mismatch(pt, iova, pa, size) == "");
            check_leaf_lookup(pt, iova, pa, size, rw_nx_cache);
            CHECK(!pt.iova_to_phys(in_addr<F>(iova - 1)));
            CHECK(!pt.iova_to_phys(in_addr<F>(iova + size)));
        }
        CHECK(dump_difference(dump(pt), model.expected_dump<F>(s.cfg)) == "");

        for (std::size_t k = 0; k < sizes.size(); ++k) {
            const std::uint64_t size = sizes[k], iova = iova_of(k), pa = pa_of(k);
            INFO("size 0x" << std::hex << size << " iova 0x" << iova);
            auto u = pt.unmap(in_addr<F>(iova), length_t{size});
            REQUIRE(u.ok());
            CHECK(u->value == size);
            REQUIRE(model.unmap(iova, size, false).ok());
            CHECK(unmapped_mismatch(pt, iova, size) == "");
            CHECK(!pt.iova_to_phys(in_addr<F>(iova + 42)));

            REQUIRE(pt.map(in_addr<F>(iova), pa_t{pa}, length_t{size}, prot::write).ok());
            REQUIRE(model.map(iova, pa, size, prot::write).ok());
            CHECK(translation_mismatch(pt, iova, pa, size) == "");
            check_leaf_lookup(pt, iova, pa, size, prot::write);
            CHECK(dump_difference(dump(pt), model.expected_dump<F>(s.cfg)) == "");
        }
    }
}

TEMPLATE_LIST_TEST_CASE("the largest page and the smallest map at the very top of the input space", "[conformance]",
                        format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        // The largest page that fits in the input and output spaces (n = 1); `last` is the last
        // input address, so that a 64-bit input space needs no 2^64.
        const std::uint64_t big = largest_page(s.geo, 1), small = smallest_page(s.geo), last = ias_last(s.geo);
        auto mem = make_test_memory<F>();
        auto pt = make_table<F>(s.cfg, *mem);

        const std::uint64_t top = last - (big - 1), pa = oas_end(s.geo) / 2 >= big ? big : 0;
        auto m = pt.map_pages(in_addr<F>(top), pa_t{pa}, length_t{big}, 1, prot::read | prot::write);
        REQUIRE(m.ok());
        CHECK(m->value == big);
        CHECK(pt.iova_to_phys(in_addr<F>(top + 42))->value == pa + 42);
        CHECK(pt.iova_to_phys(in_addr<F>(last))->value == pa + big - 1);
        CHECK(!pt.iova_to_phys(in_addr<F>(top - 1)));
        CHECK(dump(pt).size() == (std::uint64_t{1} << (lg2_of(big) -
                                                        F::item_lg2(*leaf_level<F>(s.geo, lg2_of(big))))));
        auto u = pt.unmap(in_addr<F>(top), length_t{big});
        REQUIRE(u.ok());
        CHECK(u->value == big);
        CHECK(!pt.iova_to_phys(in_addr<F>(last)));

        // The last smallest page: its walk uses the last entry of every level.
        REQUIRE(pt.map(in_addr<F>(last - (small - 1)), pa_t{small}, length_t{small}, prot::read).ok());
        CHECK(pt.iova_to_phys(in_addr<F>(last))->value == 2 * small - 1);
        CHECK(pt.map(in_addr<F>(last - (2 * small - 1)), pa_t{0}, length_t{2 * small}, prot::read).error() == errc::exists);
        CHECK(pt.unmap(in_addr<F>(last - (small - 1)), length_t{small})->value == small);
        pt.reclaim();
        CHECK(pt.table_bytes() == pt.top_table_bytes());
        CHECK(mem->bytes_in_use() == root_only_bytes(pt));
    }
}

TEMPLATE_LIST_TEST_CASE("map uses the largest pages alignment allows", "[conformance]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const auto sizes = page_sizes_upto(s.geo, largest_page(s.geo));
        REQUIRE(ias_end(s.geo) / 4 >= largest_page(s.geo));
        REQUIRE(oas_end(s.geo) / 4 >= largest_page(s.geo));
        for (std::size_t k = 0; k + 1 < sizes.size(); ++k) {
            const std::uint64_t small = sizes[k], big = sizes[k + 1];
            INFO("small 0x" << std::hex << small << " big 0x" << big);
            const std::uint64_t base = largest_page(s.geo);
            const std::uint64_t va = base + big - small, len = big + 2 * small;
            // pa = iova, pa = iova - base (both agree modulo big), pa = iova + small (never does).
            for (std::uint64_t delta : {std::uint64_t{0}, std::uint64_t{0} - base, small}) {
                INFO("pa - iova 0x" << std::hex << delta);
                auto mem = make_test_memory<F>();
                auto pt = make_table<F>(s.cfg, *mem);
                reference_model model(s.geo);
                REQUIRE(pt.map(in_addr<F>(va), pa_t{va + delta}, length_t{len}, prot::read).ok());
                REQUIRE(model.map(va, va + delta, len, prot::read).ok());
                CHECK(dump_difference(dump(pt), model.expected_dump<F>(s.cfg)) == "");
                // Spelled out: small, big, small when iova and pa agree modulo big; only small
                // pages otherwise.
                const bool aligned = delta % big == 0;
                CHECK(pt.lookup(in_addr<F>(va)).size_lg2 == lg2_of(small));
                CHECK(pt.lookup(in_addr<F>(base + big)).size_lg2 == lg2_of(aligned ? big : small));
                CHECK(pt.lookup(in_addr<F>(base + 2 * big)).size_lg2 == lg2_of(small));
                CHECK(translation_mismatch(pt, va, va + delta, len) == "");
                CHECK(pt.unmap(in_addr<F>(va), length_t{len})->value == len);
                CHECK(dump(pt).empty());
            }
        }
        // Two largest pages and one smallest in one call.
        const std::uint64_t big = largest_page(s.geo), small = smallest_page(s.geo);
        auto mem = make_test_memory<F>();
        auto pt = make_table<F>(s.cfg, *mem);
        reference_model model(s.geo);
        REQUIRE(pt.map(in_addr<F>(big), pa_t{big}, length_t{2 * big + small}, prot::read).ok());
        REQUIRE(model.map(big, big, 2 * big + small, prot::read).ok());
        CHECK(model.leaves().size() == 3);
        CHECK(dump_difference(dump(pt), model.expected_dump<F>(s.cfg)) == "");
    }
}

TEMPLATE_LIST_TEST_CASE("map_pages maps exactly pgcount pages of pgsize, or nothing", "[conformance]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const auto sizes = page_sizes_upto(s.geo, largest_page(s.geo));
        const std::uint64_t largest = largest_page(s.geo);
        REQUIRE(ias_end(s.geo) / 4 >= largest);
        REQUIRE(oas_end(s.geo) / 4 >= largest);
        for (std::size_t k = 0; k < sizes.size(); ++k) {
            const std::uint64_t pg = sizes[k];
            const std::uint64_t count = k + 1 < sizes.size() ? sizes[k + 1] / pg : 2;
            INFO("pgsize 0x" << std::hex << pg << " count " << std::dec << count);
            auto mem = make_test_memory<F>();
            auto pt = make_table<F>(s.cfg, *mem);
            reference_model model(s.geo);
            const std::uint64_t va = largest;  // aligned to every size, so map() would use bigger pages
            auto r = pt.map_pages(in_addr<F>(va), pa_t{va}, length_t{pg}, count, prot::read | prot::cache);
            REQUIRE(r.ok());
            CHECK(r->value == pg * count);
            REQUIRE(model.map_pages(va, va, pg, count, prot::read | prot::cache).ok());
            const auto d = dump(pt);
            CHECK(dump_difference(d, model.expected_dump<F>(s.cfg)) == "");
            for (const auto& e : d) CHECK(e.size_lg2 == lg2_of(pg));
            CHECK(translation_mismatch(pt, va, va, pg * count) == "");

            // The Linux-style overload adds to *mapped.
            std::uint64_t mapped = 7;
            const std::uint64_t va2 = 3 * largest;
            REQUIRE(pt.map_pages(in_addr<F>(va2), pa_t{0}, length_t{pg}, 1, prot::write, &mapped).ok());
            CHECK(mapped == 7 + pg);
            REQUIRE(model.map_pages(va2, 0, pg, 1, prot::write).ok());

            const auto before = dump(pt);
            const std::uint64_t bytes = mem->bytes_in_use();
            CHECK(pt.map_pages(in_addr<F>(va), pa_t{0}, length_t{0}, 1, prot::read).error() == errc::invalid);
            CHECK(pt.map_pages(in_addr<F>(va), pa_t{0}, length_t{3 * pg}, 1, prot::read).error() == errc::invalid);
            if ((s.geo.pgsize_bitmap & (pg << 1)) == 0)
                CHECK(pt.map_pages(in_addr<F>(va), pa_t{0}, length_t{pg << 1}, 1, prot::read).error() == errc::invalid);
            CHECK(pt.map_pages(in_addr<F>(va), pa_t{0}, length_t{pg}, 0, prot::read).error() == errc::invalid);
            if (k > 0) {
                CHECK(pt.map_pages(in_addr<F>(va + sizes[0]), pa_t{0}, length_t{pg}, 1, prot::read).error() ==
                      errc::invalid);
                CHECK(pt.map_pages(in_addr<F>(va), pa_t{sizes[0]}, length_t{pg}, 1, prot::read).error() ==
                      errc::invalid);
            }
            CHECK(pt.map_pages(in_addr<F>(0), pa_t{0}, length_t{pg}, ~std::uint64_t{0}, prot::read).error() ==
                  errc::range);
            CHECK(pt.map_pages(in_addr<F>(0), pa_t{0}, length_t{pg}, 1, prot::cache).error() == errc::invalid);
            // Over the first run's last page: exists, and nothing of this call stays mapped.
            const std::uint64_t from = va + pg * count - 2 * pg;
            CHECK(pt.map_pages(in_addr<F>(from), pa_t{0}, length_t{pg}, 3, prot::read).error() == errc::exists);
            CHECK(pt.map_pages(in_addr<F>(va - pg), pa_t{0}, length_t{pg}, 2, prot::read).error() == errc::exists);
            CHECK(dump_difference(dump(pt), before) == "");
            CHECK(mem->bytes_in_use() == bytes);
            CHECK(!pt.iova_to_phys(in_addr<F>(va - pg)));
            if (va + pg * count != va2) CHECK(!pt.iova_to_phys(in_addr<F>(va + pg * count)));
        }
    }
}
