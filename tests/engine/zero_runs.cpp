// SPDX-License-Identifier: MIT
// Walks that pass runs of zero entries whole (engine/cursor.hpp `skip_zeros`: visit, reclaim,
// range unmap, teardown): a rapidcheck property over a 64K-granule table, whose level-0 and
// level-1 tables hold 8192 entries each, with leaves at random slots and random visit and unmap
// ranges, on a memory that hands out runs of a random length (1..20 entries), so that zero runs
// start and end on and off run boundaries and eight-entry blocks, and every run is a separate
// allocation. What the walks answer is compared with the set of mapped slots.
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include <iopgtable/engine/page_table.hpp>
#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/mem/host_heap.hpp>

using namespace iopgtable;

namespace {

/// Table memory whose tables are split into pieces of `chunk` entries, each its own host
/// allocation, as a guest's table is split over stage-2 pages that lie anywhere in host memory:
/// entry runs end at every piece, and a walk that read past a run would read outside an
/// allocation (the address-sanitizer stage runs this test) or another piece's neighbour.
class chunked_heap {
public:
    static constexpr bool software_walk = true;
    explicit chunked_heap(std::uint64_t chunk) noexcept : piece_bytes_(chunk * sizeof(std::uint64_t)) {}
    result<pa_t> allocate_table(std::uint64_t bytes) {
        const std::uint64_t alloc = std::max<std::uint64_t>(bytes, 64);
        next_ = (next_ + alloc - 1) & ~(alloc - 1);
        table& t = tables_[next_];
        t.bytes = alloc;
        for (std::uint64_t off = 0; off < alloc; off += piece_bytes_)
            t.pieces.push_back(std::make_unique<std::uint64_t[]>(std::min(piece_bytes_, alloc - off) / sizeof(std::uint64_t)));
        in_use_ += alloc;
        const std::uint64_t at = next_;
        next_ += alloc;
        return pa_t{at};
    }
    void free_table(pa_t pa, std::uint64_t) noexcept {
        const auto it = tables_.find(pa.value);
        if (it == tables_.end()) {  // not a live table: freed twice, or never allocated
            ++bad_frees_;
            return;
        }
        in_use_ -= it->second.bytes;
        tables_.erase(it);
    }
    template <class W>
    W* entry(pa_t pa) noexcept {
        return entries<W>(pa, 1, false).first;
    }
    template <class W>
    entry_span<W> entries(pa_t pa, std::uint64_t n, bool /*write*/) noexcept {
        auto it = tables_.upper_bound(pa.value);
        if (it == tables_.begin() || pa.value % sizeof(W) != 0) return {};
        --it;
        const std::uint64_t off = pa.value - it->first;
        if (off >= it->second.bytes) return {};
        auto* piece = reinterpret_cast<unsigned char*>(it->second.pieces[off / piece_bytes_].get());
        const std::uint64_t in_piece = off % piece_bytes_;
        const std::uint64_t piece_len = std::min(piece_bytes_, it->second.bytes - (off - in_piece));
        return {reinterpret_cast<W*>(piece + in_piece), std::min(n, (piece_len - in_piece) / sizeof(W))};
    }
    std::uint64_t bytes_in_use() const noexcept { return in_use_; }
    std::uint64_t bad_frees() const noexcept { return bad_frees_; }

private:
    struct table {
        std::uint64_t bytes = 0;
        std::vector<std::unique_ptr<std::uint64_t[]>> pieces;
    };
    std::uint64_t piece_bytes_;
    std::uint64_t next_ = std::uint64_t{1} << 20;  // no table at 0
    std::uint64_t in_use_ = 0;
    std::uint64_t bad_frees_ = 0;
    std::map<std::uint64_t, table> tables_;
};
static_assert(has_entry_runs<chunked_heap, std::uint64_t>);

using F = arm_lpae_s1_64k;
constexpr std::uint64_t page = 0x10000;      // 64K: one level-0 entry
constexpr std::uint64_t block = 0x20000000;  // 512M: one level-1 entry, one level-0 table
constexpr std::uint64_t span_pages = 3 * block / page;  // three level-0 tables' worth

std::vector<std::uint64_t> visited(const page_table<F, chunked_heap>& pt, std::uint64_t first, std::uint64_t last) {
    std::vector<std::uint64_t> v;
    const auto r = pt.visit(F::input_address{first}, F::input_address{last}, [&](const leaf_entry<F>& e) {
        v.push_back(e.iova);
        return true;
    });
    RC_ASSERT(r.ok());
    return v;
}

} // namespace

TEST_CASE("walks pass runs of zero entries whole and miss no entry around them", "[engine][cursor]") {
    rc::prop("visit, unmap, reclaim and teardown over sparse 64K-granule tables", [] {
        const std::uint64_t chunk = *rc::gen::inRange<std::uint64_t>(1, 21);
        chunked_heap mem{chunk};
        {
            auto created = page_table<F, chunked_heap>::create(lpae_config{}, mem);
            RC_ASSERT(created.ok());
            auto& pt = *created;
            // Leaves at random pages of three level-0 tables, clustered near table and block
            // edges (where zero runs end) as often as anywhere.
            std::set<std::uint64_t> mapped;
            const auto n = *rc::gen::inRange<std::size_t>(0, 40);
            for (std::size_t i = 0; i < n; ++i) {
                std::uint64_t p = *rc::gen::inRange<std::uint64_t>(0, span_pages);
                if (*rc::gen::inRange(0, 3) == 0) p = (p / 8192) * 8192 + *rc::gen::inRange<std::uint64_t>(0, 24);
                if (*rc::gen::inRange(0, 3) == 0) p = (p / 8192) * 8192 + 8191 - *rc::gen::inRange<std::uint64_t>(0, 24);
                if (mapped.count(p) != 0) continue;
                RC_ASSERT(pt.map(F::input_address{p * page}, pa_t{p * page}, length_t{page}, prot::read).ok());
                mapped.insert(p);
            }
            // Visits of random ranges see exactly the mapped pages inside them.
            for (int k = 0; k < 6; ++k) {
                std::uint64_t a = *rc::gen::inRange<std::uint64_t>(0, span_pages);
                std::uint64_t b = *rc::gen::inRange<std::uint64_t>(0, span_pages);
                if (a > b) std::swap(a, b);
                std::vector<std::uint64_t> want;
                for (auto it = mapped.lower_bound(a); it != mapped.end() && *it <= b; ++it) want.push_back(*it * page);
                RC_ASSERT(visited(pt, a * page, b * page + page - 1) == want);
            }
            // An unmap of a random range removes exactly the pages inside it.
            std::uint64_t a = *rc::gen::inRange<std::uint64_t>(0, span_pages);
            std::uint64_t b = *rc::gen::inRange<std::uint64_t>(0, span_pages);
            if (a > b) std::swap(a, b);
            const auto before = mapped.size();
            for (auto it = mapped.lower_bound(a); it != mapped.end() && *it <= b;) it = mapped.erase(it);
            const auto u = pt.unmap(F::input_address{a * page}, length_t{(b - a + 1) * page});
            RC_ASSERT(u.ok());
            RC_ASSERT(u->value == (before - mapped.size()) * page);
            RC_ASSERT(visited(pt, 0, span_pages * page - 1).size() == mapped.size());
            // reclaim frees exactly the level-0 tables left without a leaf.
            std::set<std::uint64_t> tables_left;
            for (auto p : mapped) tables_left.insert(p / 8192);
            (void)pt.reclaim();
            RC_ASSERT(pt.table_bytes() == pt.top_table_bytes() + (tables_left.empty() ? 0 : 1 + tables_left.size()) * 0x10000);
            for (auto p : mapped) RC_ASSERT(pt.iova_to_phys(F::input_address{p * page + 42}).has_value());
        }
        // Teardown frees every table, however sparse, and each once.
        RC_ASSERT(mem.bytes_in_use() == 0);
        RC_ASSERT(mem.bad_frees() == 0u);
    });
}
