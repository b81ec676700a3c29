// Dirty tracking (issue 3): for every format and sample configuration that tracks dirty state,
// a leaf marked dirty as hardware would is reported once, then clean; a block reports its whole
// size; untouched leaves are never reported; formats without it say `unsupported`.
#include <catch2/catch.hpp>

#include <iopgtable/iopgtable.hpp>

#include <utility>
#include <vector>

#include "support/checks.hpp"
#include "support/format_list.hpp"

using namespace iopgtable;
using iopgtable::test::format_list;

namespace {

template <class F>
using input = typename F::input_address;

/// (iova, size) pairs reported by one read_and_clear_dirty over [first, first + size).
template <class PT>
std::vector<std::pair<std::uint64_t, std::uint64_t>> harvest(PT& pt, std::uint64_t first, std::uint64_t size) {
    using F = typename PT::format;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
    auto r = pt.read_and_clear_dirty(input<F>{first}, length_t{size}, [&](input<F> iova, length_t len) {
        out.emplace_back(iova.value, len.value);
    });
    REQUIRE(r.ok());
    return out;
}

} // namespace

TEMPLATE_LIST_TEST_CASE("a dirty leaf is reported once, then clean; blocks report their whole size",
                        "[dirty]", format_list) {
    using F = TestType;
    bool any_config = false;
    for (const auto& cfg : F::sample_configs()) {
        auto mem = make_default_memory<F>();
        iotlb_gather gather;
        auto pt = page_table<F, default_memory_t<F>>::create(cfg, *mem, gather.hooks());
        REQUIRE(pt.ok());
        const geometry g = pt->geo();
        const std::uint64_t page = g.pgsize_bitmap & (~g.pgsize_bitmap + 1);
        bool tracks = false;
        if constexpr (has_dirty_tracking<F>) tracks = F::dirty_tracking(cfg);
        if (!tracks) {
            CHECK(pt->read_and_clear_dirty(input<F>{0}, length_t{page}, [](input<F>, length_t) {}).error() ==
                  errc::unsupported);
            CHECK(pt->set_dirty(input<F>{0}).error() == (has_dirty_tracking<F> ? errc::fault : errc::unsupported));
            continue;
        }
        any_config = true;
        INFO(F::name << " ias=" << g.ias << " oas=" << g.oas);
        // Two pages and (where the format has one below the IAS) a block, read-write.
        const std::uint64_t base = 4 * page;
        // One call each: a format with a page of twice the smallest size would map both as one.
        REQUIRE(pt->map(input<F>{base}, pa_t{base}, length_t{page}, prot::read | prot::write).ok());
        REQUIRE(pt->map(input<F>{base + page}, pa_t{base + page}, length_t{page}, prot::read | prot::write).ok());
        std::uint64_t block = 0;
        for (std::uint64_t s = page << 3; s != 0 && s < test::ias_end(g) / 2; s <<= 1)  // 8 pages up: past the two at 4 pages
            if (g.pgsize_bitmap & s) {
                block = s;
                break;
            }
        if (block != 0) REQUIRE(pt->map(input<F>{block}, pa_t{block}, length_t{block}, prot::read | prot::write).ok());
        const std::uint64_t span = block != 0 ? 2 * block : base + 2 * page;

        // Writable leaves start dirty (as Linux writes them): the first harvest reports each
        // leaf once and cleans it; the second reports nothing.
        auto first = harvest(*pt, 0, span);
        std::vector<std::pair<std::uint64_t, std::uint64_t>> want{{base, page}, {base + page, page}};
        if (block != 0) want.emplace_back(block, block);
        if (!first.empty()) CHECK(first == want);
        CHECK(harvest(*pt, 0, span).empty());

        // Hardware writes the second page and inside the block: exactly those leaves, the
        // block with its whole size, each once.
        gather.reset();
        REQUIRE(pt->set_dirty(input<F>{base + page}).ok());
        if (block != 0) REQUIRE(pt->set_dirty(input<F>{block + block / 2 + page}).ok());
        std::vector<std::pair<std::uint64_t, std::uint64_t>> want2{{base + page, page}};
        if (block != 0) want2.emplace_back(block, block);
        CHECK(harvest(*pt, 0, span) == want2);
        CHECK(gather.leaves == want2.size());  // the IOTLB is told to forget each one
        CHECK(harvest(*pt, 0, span).empty());
        // Translations are untouched by cleaning.
        CHECK(pt->iova_to_phys(input<F>{base + page + 8})->value == base + page + 8);
        if (block != 0) CHECK(pt->iova_to_phys(input<F>{block + 8})->value == block + 8);
        // A read-only leaf never becomes dirty-reported by cleaning.
        REQUIRE(pt->map(input<F>{base + 2 * page}, pa_t{base + 2 * page}, length_t{page}, prot::read).ok());
        auto ro = harvest(*pt, base + 2 * page, page);
        CHECK(ro.empty());
    }
    if constexpr (has_dirty_tracking<F>) {
        // Every format that can track dirty state has a sample configuration that does.
        CHECK(any_config);
    }
}
