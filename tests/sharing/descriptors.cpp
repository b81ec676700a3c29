// SPDX-License-Identifier: MIT
// Descriptor functions of every format, for every sample configuration: leaves and tables
// decode back to what built them, and make_leaf(leaf_prot(x)) reproduces x for every prot the
// configuration accepts.
#include "support/format_list.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

TEMPLATE_LIST_TEST_CASE("leaf prot round trip: make_leaf(leaf_prot(x)) == x", "[descriptors]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        int checked = 0;
        for (unsigned level = 0; level < s.geo.levels; ++level) {
            const std::uint64_t sizes = F::leaf_sizes(level) & s.geo.pgsize_bitmap;
            for (unsigned lg2 = 0; lg2 < 64; ++lg2) {
                if (((sizes >> lg2) & 1) == 0) continue;
                // Output addresses: the leaf size itself, and the highest the OAS allows.
                const std::uint64_t oas_top = (oas_end(s.geo) - 1) & ~((std::uint64_t{1} << lg2) - 1);
                for (std::uint64_t oa : {std::uint64_t{1} << lg2, oas_top}) {
                    for (prot p : valid_prots()) {
                        if (!F::check_prot(s.cfg, p).ok()) continue;
                        INFO("level " << level << " size_lg2 " << lg2 << " oa 0x" << std::hex << oa << " prot 0x"
                                      << to_bits(p));
                        const auto x = F::make_leaf(s.cfg, level, lg2, oa, p);
                        REQUIRE(F::classify(s.cfg, level, x) == entry_kind::leaf);
                        CHECK(F::leaf_lg2(s.cfg, level, x) == lg2);
                        CHECK(F::leaf_address(s.cfg, level, x) == oa);
                        const prot back = F::leaf_prot(s.cfg, level, x);
                        CHECK(prot_valid(back));
                        CHECK(F::make_leaf(s.cfg, level, lg2, oa, back) == x);
                        // Access the leaf grants is never less than asked.
                        if (has(p, prot::read)) CHECK(has(back, prot::read));
                        if (has(p, prot::write)) CHECK(has(back, prot::write));
                        ++checked;
                    }
                }
            }
        }
        CHECK(checked > 0);
    }
}

TEMPLATE_LIST_TEST_CASE("table entries decode to the table they point at", "[descriptors]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        for (unsigned level = 1; level < s.geo.levels; ++level) {
            const std::uint64_t align = level_table_bytes<F>(level - 1);
            for (std::uint64_t pa : {align, std::uint64_t{0x10000000}, (std::uint64_t{0xfffff000}) & ~(align - 1)}) {
                INFO("level " << level << " table at 0x" << std::hex << pa);
                const auto t = F::make_table(s.cfg, level, pa);
                CHECK(F::classify(s.cfg, level, t) == entry_kind::table);
                CHECK(F::table_address(s.cfg, level, t) == pa);
            }
        }
        // An all-zero entry is empty at every level.
        for (unsigned level = 0; level < s.geo.levels; ++level) CHECK(F::classify(s.cfg, level, 0) == entry_kind::empty);
    }
}
