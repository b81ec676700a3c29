// SPDX-License-Identifier: MIT
#pragma once
/// @file reference_model.hpp
/// An interval-map model of a page table: the leaves a correct engine holds after each
/// operation, written from the documented contract (page_table.hpp) without the engine's
/// code. Leaves are chosen greedily (largest page size that the alignment of iova and pa and
/// the remaining length allow); a split replaces a leaf by leaves of the next smaller page
/// size and splits again the one that holds the boundary.
///
/// Error precedence (as documented for map/unmap): invalid (size 0, prot, alignment) before
/// range (beyond IAS/OAS, wrap) before exists / partial.
#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "format_list.hpp"

namespace iopgtable::test {

struct model_leaf {
    std::uint64_t iova = 0;
    unsigned size_lg2 = 0;
    std::uint64_t pa = 0;
    prot perm = prot::none;
    std::uint64_t size() const noexcept { return std::uint64_t{1} << size_lg2; }
    std::uint64_t last() const noexcept { return iova + size() - 1; }
};

class reference_model {
public:
    explicit reference_model(const geometry& g) : geo_(g) {}

    const geometry& geo() const noexcept { return geo_; }
    const std::map<std::uint64_t, model_leaf>& leaves() const noexcept { return leaves_; }

    /// page_table::map with leaves restricted to `sizes` (the geometry's page sizes by default).
    result<void> map(std::uint64_t va, std::uint64_t pa, std::uint64_t size, prot p, std::uint64_t sizes = 0) {
        if (sizes == 0) sizes = geo_.pgsize_bitmap;
        if (size == 0 || !prot_valid(p)) return failure(errc::invalid);
        const std::uint64_t minp = sizes & (~sizes + 1);
        if (((va | pa | size) & (minp - 1)) != 0) return failure(errc::invalid);
        const std::uint64_t last = va + size - 1, pa_last = pa + size - 1;
        if (last < va || pa_last < pa || !in_ias(last) || !in_oas(pa_last)) return failure(errc::range);
        if (!overlapping(va, last).empty()) return failure(errc::exists);
        std::uint64_t pos = va;
        for (;;) {
            const std::uint64_t out = pos + (pa - va);
            unsigned best = 64;
            for (unsigned b = 64; b-- > 0;) {
                const std::uint64_t s = std::uint64_t{1} << b;
                if (((sizes >> b) & 1) && (pos & (s - 1)) == 0 && (out & (s - 1)) == 0 && s - 1 <= last - pos) {
                    best = b;
                    break;
                }
            }
            if (best == 64) FAIL("no page size fits (alignment was checked)");
            leaves_[pos] = model_leaf{pos, best, out, p};
            const std::uint64_t leaf_last = pos + ((std::uint64_t{1} << best) - 1);
            if (leaf_last == last) return success();
            pos = leaf_last + 1;
        }
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
    result<length_t> unmap(std::uint64_t va, std::uint64_t size, bool split) {
        const std::uint64_t minp = smallest_page(geo_);
        if (size == 0 || ((va | size) & (minp - 1)) != 0) return failure(errc::invalid);
        const std::uint64_t last = va + size - 1;
        if (last < va || !in_ias(last)) return failure(errc::range);
        if (split) {
            split_at(va);
            if (last + 1 != 0 && in_ias(last + 1)) split_at(last + 1);
        }
        auto hit = overlapping(va, last);
        for (std::uint64_t k : hit)
            if (leaves_[k].iova < va || leaves_[k].last() > last) return failure(errc::partial);
        std::uint64_t bytes = 0;
        for (std::uint64_t k : hit) {
            bytes += leaves_[k].size();
            leaves_.erase(k);
        }
        return length_t{bytes};
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
        const std::uint64_t minp = smallest_page(geo_);
        if (size == 0 || !prot_valid(p) || !F::check_prot(cfg, p).ok()) return failure(errc::invalid);
        if (((va | pa | size) & (minp - 1)) != 0) return failure(errc::invalid);
        const std::uint64_t last = va + size - 1, pa_last = pa + size - 1;
        if (last < va || pa_last < pa || !in_ias(last) || !in_oas(pa_last)) return failure(errc::range);
        if (translates_as<F>(cfg, va, last, pa - va, p)) return replace_expectation{0, false};
        split_at(va);
        if (last + 1 != 0 && in_ias(last + 1)) split_at(last + 1);
        std::uint64_t removed = 0;
        for (std::uint64_t k : overlapping(va, last)) {
            removed += leaves_[k].size();
            leaves_.erase(k);
        }
        if (auto r = map(va, pa, size, p); !r) FAIL("map after clearing the range: " << to_string(r.error()));
        return replace_expectation{removed, true};
    }

    /// The leaf holding `va`, or null.
    const model_leaf* leaf_at(std::uint64_t va) const {
        auto it = leaves_.upper_bound(va);
        if (it == leaves_.begin()) return nullptr;
        --it;
        return va <= it->second.last() ? &it->second : nullptr;
    }
    std::optional<std::uint64_t> translate(std::uint64_t va) const {
        const model_leaf* l = leaf_at(va);
        if (l == nullptr) return std::nullopt;
        return l->pa + (va - l->iova);
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
            if (!level) FAIL("no level holds leaves of 2^" << l.size_lg2 << " bytes");
            const unsigned item = F::item_lg2(*level);
            const std::uint64_t raw = F::make_leaf(cfg, *level, l.size_lg2, l.pa, l.perm);
            for (std::uint64_t i = 0; i < (std::uint64_t{1} << (l.size_lg2 - item)); ++i)
                out.push_back({va + (i << item), *level, l.size_lg2, raw});
        }
        return out;
    }

private:
    bool in_ias(std::uint64_t a) const noexcept { return geo_.ias >= 64 || (a >> geo_.ias) == 0; }
    bool in_oas(std::uint64_t a) const noexcept { return geo_.oas >= 64 || (a >> geo_.oas) == 0; }

    /// Keys of the leaves intersecting [va, last].
    std::vector<std::uint64_t> overlapping(std::uint64_t va, std::uint64_t last) const {
        std::vector<std::uint64_t> keys;
        auto it = leaves_.upper_bound(va);
        if (it != leaves_.begin() && std::prev(it)->second.last() >= va) --it;
        for (; it != leaves_.end() && it->first <= last; ++it) keys.push_back(it->first);
        return keys;
    }

    /// True when leaves with no hole between them cover [va, last], each translating x to
    /// x + delta, with permissions that decode as `p` would at the leaf's level and size.
    template <class F>
    bool translates_as(const typename F::config& cfg, std::uint64_t va, std::uint64_t last, std::uint64_t delta,
                       prot p) const {
        std::uint64_t next = va;
        for (std::uint64_t k : overlapping(va, last)) {
            const model_leaf& l = leaves_.at(k);
            const std::uint64_t from = std::max(l.iova, va);
            if (from != next || l.pa + (from - l.iova) != from + delta) return false;
            const auto level = leaf_level<F>(geo_, l.size_lg2);
            if (!level) FAIL("no level holds leaves of 2^" << l.size_lg2 << " bytes");
            auto decoded = [&](prot q) { return F::leaf_prot(cfg, *level, F::make_leaf(cfg, *level, l.size_lg2, l.pa, q)); };
            if (decoded(l.perm) != decoded(p)) return false;
            if (l.last() >= last) return true;
            next = l.last() + 1;
        }
        return false;
    }

    /// Makes `b` a leaf edge.
    void split_at(std::uint64_t b) {
        for (;;) {
            const model_leaf* l = leaf_at(b);
            if (l == nullptr || l->iova == b) return;
            const model_leaf whole = *l;
            const std::uint64_t smaller = geo_.pgsize_bitmap & (whole.size() - 1);
            if (smaller == 0) FAIL("no smaller page size (b is aligned to the smallest page)");
            const unsigned to = static_cast<unsigned>(std::bit_width(smaller) - 1);
            leaves_.erase(whole.iova);
            for (std::uint64_t off = 0; off < whole.size(); off += std::uint64_t{1} << to)
                leaves_[whole.iova + off] = model_leaf{whole.iova + off, to, whole.pa + off, whole.perm};
        }
    }

    geometry geo_;
    std::map<std::uint64_t, model_leaf> leaves_;
};

} // namespace iopgtable::test
