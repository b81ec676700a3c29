// SPDX-License-Identifier: MIT
#pragma once
/// @file reference_model.hpp
/// The one reference model of the map/unmap contract, for the tests and for fuzz_ops (it uses
/// no test framework: a misuse of the model throws `model_error`). An ordered map from each
/// leaf's input address to its size, output address and prot, written from the documented
/// contract (engine/page_table.hpp) without the engine's code: it knows nothing of tables,
/// only the geometry's page sizes.
///
/// - Leaves are chosen greedily: the largest page size that the alignment of iova and pa and
///   the remaining length allow (brute force on purpose: it is the reference for the engine's
///   choice).
/// - A split replaces a leaf by leaves of the next smaller page size and splits again the one
///   that holds the boundary.
/// - Error precedence (as documented for map/unmap): invalid (size 0, prot, alignment) before
///   range (beyond IAS/OAS, wrap) before exists / partial.
///
/// The operations (map, map_pages, unmap, replace) decide and apply a whole call as the
/// engine must; the primitives below them (find, overlaps, cuts, add, remove_inside,
/// split_steps, split) let a caller that checks more than results (fuzz_ops: flush hooks, the
/// order of splits) restate a call step by step. The leaves live in a std::pmr map on the
/// memory resource the caller gives (fuzz_ops: an arena reset per input).
#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory_resource>
#include <optional>
#include <stdexcept>
#include <vector>

#include <iopgtable/core/bits.hpp>
#include <iopgtable/core/prot.hpp>
#include <iopgtable/core/result.hpp>
#include <iopgtable/engine/format.hpp>

#include "leaf_dump.hpp"

namespace iopgtable::test {

/// The model (or its caller) went wrong: a state the contract rules out.
struct model_error : std::logic_error {
    using std::logic_error::logic_error;
};

struct model_leaf {
    std::uint64_t iova = 0;
    unsigned size_lg2 = 0;
    std::uint64_t pa = 0;
    prot perm = prot::none;
    std::uint64_t size() const noexcept { return std::uint64_t{1} << size_lg2; }
    std::uint64_t last() const noexcept { return iova + size() - 1; }
};

/// The largest size in `bitmap` that `va` and `pa` are aligned to and that fits in `length`;
/// 0 when none.
inline unsigned reference_page_lg2(std::uint64_t bitmap, std::uint64_t va, std::uint64_t pa,
                                   std::uint64_t length) noexcept {
    for (int lg2 = 63; lg2 >= 0; --lg2) {
        if (((bitmap >> lg2) & 1) == 0) continue;
        const std::uint64_t size = std::uint64_t{1} << lg2;
        if ((va % size) == 0 && (pa % size) == 0 && size <= length) return static_cast<unsigned>(lg2);
    }
    return 0;
}

/// Calls `fn(va, pa, lg2)` for each leaf a greedy map of [va, va + size) → pa with the sizes of
/// `bitmap` places, in order; `fn` returns false to stop. Preconditions: size > 0, va, pa and
/// size aligned to the smallest size, no wrap.
template <class Fn>
void greedy_leaves(std::uint64_t bitmap, std::uint64_t va, std::uint64_t pa, std::uint64_t size, Fn&& fn) {
    const std::uint64_t last = va + size - 1;
    std::uint64_t pos = va;
    for (;;) {
        const unsigned lg2 = reference_page_lg2(bitmap, pos, pa + (pos - va), last - pos + 1);
        if (!fn(pos, pa + (pos - va), lg2)) return;
        const std::uint64_t next = pos + lg2_to_size(lg2);
        if (next - 1 >= last) return;
        pos = next;
    }
}

class reference_model {
public:
    using map_type = std::pmr::map<std::uint64_t, model_leaf>;
    using const_iterator = map_type::const_iterator;

    explicit reference_model(const geometry& g, std::pmr::memory_resource* r = std::pmr::get_default_resource())
        : geo_(g), leaves_(r) {}

    const geometry& geo() const noexcept { return geo_; }
    const map_type& leaves() const noexcept { return leaves_; }
    /// Bytes of all leaves.
    std::uint64_t mapped_bytes() const noexcept { return bytes_; }

    // ---- operations ----

    /// page_table::map with leaves restricted to `sizes` (the geometry's page sizes by default).
    result<void> map(std::uint64_t va, std::uint64_t pa, std::uint64_t size, prot p, std::uint64_t sizes = 0) {
        if (sizes == 0) sizes = geo_.pgsize_bitmap;
        if (size == 0 || !prot_valid(p)) return failure(errc::invalid);
        const std::uint64_t minp = sizes & (~sizes + 1);
        if (((va | pa | size) & (minp - 1)) != 0) return failure(errc::invalid);
        const std::uint64_t last = va + size - 1, pa_last = pa + size - 1;
        if (last < va || pa_last < pa || !in_ias(last) || !in_oas(pa_last)) return failure(errc::range);
        if (overlaps(va, last)) return failure(errc::exists);
        greedy_leaves(sizes, va, pa, size, [&](std::uint64_t lva, std::uint64_t lpa, unsigned lg2) {
            add(model_leaf{lva, lg2, lpa, p});
            return true;
        });
        return success();
    }

    /// page_table::map_pages: exactly `pgcount` leaves of `pgsize`.
    result<length_t> map_pages(std::uint64_t va, std::uint64_t pa, std::uint64_t pgsize, std::uint64_t pgcount, prot p) {
        if (!std::has_single_bit(pgsize) || (pgsize & geo_.pgsize_bitmap) == 0 || pgcount == 0)
            return failure(errc::invalid);
        if (((va | pa) & (pgsize - 1)) != 0) return failure(errc::invalid);
        const unsigned lg2 = static_cast<unsigned>(std::countr_zero(pgsize));
        if (pgcount > (~std::uint64_t{0} >> lg2)) return failure(errc::range);
        auto r = map(va, pa, pgcount << lg2, p, pgsize);
        if (!r) return failure(r.error());
        return length_t{pgcount << lg2};
    }

    /// page_table::unmap, exact or splitting the leaves the range's ends fall into.
    result<length_t> unmap(std::uint64_t va, std::uint64_t size, bool split_ends) {
        const std::uint64_t minp = smallest_page();
        if (size == 0 || ((va | size) & (minp - 1)) != 0) return failure(errc::invalid);
        const std::uint64_t last = va + size - 1;
        if (last < va || !in_ias(last)) return failure(errc::range);
        if (split_ends) split_range_ends(va, last);
        if (cuts(va, last)) return failure(errc::partial);
        return length_t{remove_inside(va, last, [](std::uint64_t, const model_leaf&) {})};
    }

    /// What page_table::replace reports, from the contract: `changed` false when every byte of
    /// the range already translates to pa + offset with permissions that decode (F::leaf_prot)
    /// as those map would write; else the ends are split as unmap_mode::split does, the
    /// leaves inside go (`removed`: their bytes) and the range is mapped as map does.
    struct replace_expectation {
        std::uint64_t removed = 0;
        bool changed = false;
    };
    template <class F>
    result<replace_expectation> replace(const typename F::config& cfg, std::uint64_t va, std::uint64_t pa,
                                        std::uint64_t size, prot p) {
        const std::uint64_t minp = smallest_page();
        if (size == 0 || !prot_valid(p) || !F::check_prot(cfg, p).ok()) return failure(errc::invalid);
        if (((va | pa | size) & (minp - 1)) != 0) return failure(errc::invalid);
        const std::uint64_t last = va + size - 1, pa_last = pa + size - 1;
        if (last < va || pa_last < pa || !in_ias(last) || !in_oas(pa_last)) return failure(errc::range);
        if (translates_as<F>(cfg, va, last, pa - va, p)) return replace_expectation{0, false};
        split_range_ends(va, last);
        const std::uint64_t removed = remove_inside(va, last, [](std::uint64_t, const model_leaf&) {});
        if (auto r = map(va, pa, size, p); !r) throw model_error("map after clearing the range failed");
        return replace_expectation{removed, true};
    }

    /// The dump a table of format F holding exactly these leaves gives: each leaf at the level
    /// the engine places its size, replicated entries each listed, raw = F::make_leaf.
    template <class F>
    std::vector<dump_entry> expected_dump(const typename F::config& cfg) const {
        std::array<std::optional<unsigned>, 64> level_of{};
        for (unsigned b = 0; b < 64; ++b)
            if ((geo_.pgsize_bitmap >> b) & 1) level_of[b] = leaf_level<F>(geo_, b);
        std::vector<dump_entry> out;
        out.reserve(leaves_.size());
        for (const auto& [va, l] : leaves_) {
            const auto level = level_of[l.size_lg2];
            if (!level) throw model_error("no level holds leaves of this size");
            const unsigned item = F::item_lg2(*level);
            const std::uint64_t raw = F::make_leaf(cfg, *level, l.size_lg2, l.pa, l.perm);
            for (std::uint64_t i = 0; i < (std::uint64_t{1} << (l.size_lg2 - item)); ++i)
                out.push_back({va + (i << item), *level, l.size_lg2, raw});
        }
        return out;
    }

    // ---- primitives ----

    /// The leaf containing `va`, or end().
    const_iterator find(std::uint64_t va) const {
        auto it = leaves_.upper_bound(va);
        if (it == leaves_.begin()) return leaves_.end();
        --it;
        return va <= it->second.last() ? it : leaves_.end();
    }
    /// The leaf holding `va`, or null.
    const model_leaf* leaf_at(std::uint64_t va) const {
        auto it = find(va);
        return it == leaves_.end() ? nullptr : &it->second;
    }
    /// What `va` translates to, if anything.
    std::optional<std::uint64_t> translate(std::uint64_t va) const {
        const model_leaf* l = leaf_at(va);
        if (l == nullptr) return std::nullopt;
        return l->pa + (va - l->iova);
    }
    /// True when any leaf intersects [va, last].
    bool overlaps(std::uint64_t va, std::uint64_t last) const {
        if (find(va) != leaves_.end()) return true;
        auto it = leaves_.lower_bound(va);
        return it != leaves_.end() && it->first <= last;
    }
    /// True when a leaf intersects [va, last] without lying inside it (an exact unmap would cut it).
    bool cuts(std::uint64_t va, std::uint64_t last) const {
        auto first = find(va);
        if (first != leaves_.end() && first->first < va) return true;
        auto end_leaf = find(last);
        return end_leaf != leaves_.end() && end_leaf->second.last() > last;
    }
    /// Bytes of the leaves inside [va, last].
    std::uint64_t bytes_inside(std::uint64_t va, std::uint64_t last) const {
        std::uint64_t bytes = 0;
        for (auto it = leaves_.lower_bound(va); it != leaves_.end() && it->first <= last; ++it) bytes += it->second.size();
        return bytes;
    }

    /// Adds a leaf; it must not overlap one.
    void add(const model_leaf& leaf) {
        // One search: the first leaf at or after it, and the one before that.
        const auto next = leaves_.lower_bound(leaf.iova);
        if ((next != leaves_.end() && next->first <= leaf.last()) ||
            (next != leaves_.begin() && std::prev(next)->second.last() >= leaf.iova))
            throw model_error("added leaf overlaps a leaf");
        leaves_.emplace_hint(next, leaf.iova, leaf);
        bytes_ += leaf.size();
    }
    /// Removes the leaves that start inside [va, last], calling `fn(va, leaf)` for each;
    /// returns their bytes.
    template <class Fn>
    std::uint64_t remove_inside(std::uint64_t va, std::uint64_t last, Fn&& fn) {
        std::uint64_t removed = 0;
        auto it = leaves_.lower_bound(va);
        while (it != leaves_.end() && it->first <= last) {
            fn(it->first, it->second);
            removed += it->second.size();
            it = leaves_.erase(it);
        }
        bytes_ -= removed;
        return removed;
    }

    /// The largest page size of the geometry below 2^lg2, or 0.
    unsigned next_smaller(unsigned lg2) const noexcept {
        const std::uint64_t below = geo_.pgsize_bitmap & low_mask(lg2);
        return below == 0 ? 0 : 63 - static_cast<unsigned>(std::countl_zero(below));
    }
    /// Calls `fn(from_lg2, to_lg2)` for each step that splitting at `boundary` would take: the
    /// leaf holding `boundary` strictly inside becomes leaves of the next smaller size, and the
    /// one of those holding `boundary` is split again, until `boundary` is a leaf edge.
    template <class Fn>
    void split_steps(std::uint64_t boundary, Fn&& fn) const {
        const model_leaf* l = leaf_at(boundary);
        if (l == nullptr) return;
        unsigned lg2 = l->size_lg2;
        while ((boundary & low_mask(lg2)) != 0) {
            const unsigned to = next_smaller(lg2);
            fn(lg2, to);
            if (to == 0) return;  // boundary finer than the smallest page: caller's bug
            lg2 = to;
        }
    }
    /// Performs the split `split_steps` describes: makes `boundary` a leaf edge.
    void split(std::uint64_t boundary) {
        for (;;) {
            auto it = find(boundary);
            if (it == leaves_.end() || it->first == boundary) return;
            const model_leaf whole = it->second;
            const unsigned to = next_smaller(whole.size_lg2);
            if (to == 0) throw model_error("split below the smallest page size");
            leaves_.erase(it);
            for (std::uint64_t off = 0; off < whole.size(); off += lg2_to_size(to))
                leaves_.emplace(whole.iova + off, model_leaf{whole.iova + off, to, whole.pa + off, whole.perm});
        }
    }

private:
    bool in_ias(std::uint64_t a) const noexcept { return geo_.ias >= 64 || (a >> geo_.ias) == 0; }
    bool in_oas(std::uint64_t a) const noexcept { return geo_.oas >= 64 || (a >> geo_.oas) == 0; }
    std::uint64_t smallest_page() const noexcept { return geo_.pgsize_bitmap & (~geo_.pgsize_bitmap + 1); }

    /// Splits at the range's first byte and after its last (when that is still an input address).
    void split_range_ends(std::uint64_t va, std::uint64_t last) {
        split(va);
        if (last + 1 != 0 && in_ias(last + 1)) split(last + 1);
    }

    /// True when leaves with no hole between them cover [va, last], each translating x to
    /// x + delta, with permissions that decode as `p` would at the leaf's level and size.
    template <class F>
    bool translates_as(const typename F::config& cfg, std::uint64_t va, std::uint64_t last, std::uint64_t delta,
                       prot p) const {
        std::uint64_t next = va;
        for (auto it = find(va); it != leaves_.end() && it->first <= last; ++it) {
            const model_leaf& l = it->second;
            const std::uint64_t from = std::max(l.iova, va);
            if (from != next || l.pa + (from - l.iova) != from + delta) return false;
            const auto level = leaf_level<F>(geo_, l.size_lg2);
            if (!level) throw model_error("no level holds leaves of this size");
            auto decoded = [&](prot q) { return F::leaf_prot(cfg, *level, F::make_leaf(cfg, *level, l.size_lg2, l.pa, q)); };
            if (decoded(l.perm) != decoded(p)) return false;
            if (l.last() >= last) return true;
            next = l.last() + 1;
        }
        return false;
    }

    geometry geo_;
    map_type leaves_;
    std::uint64_t bytes_ = 0;
};

} // namespace iopgtable::test
