// SPDX-License-Identifier: MIT
#pragma once
/// @file iotlb.hpp
/// A translation cache (IOTLB) of completed nested translations, keyed by context (an ASID,
/// PASID or domain: whatever names one stage-1 table) and page.
///
/// Contract (the sharing protocol's invalidation rules):
/// - Only successful translations are cached, never faults, so a newly mapped entry (stage 1
///   or stage 2) needs no invalidation.
/// - After the guest changes or removes stage-1 entries it invalidates the IOVA range
///   (`invalidate_range`), the context (`invalidate_context`) or everything; every cached
///   translation derived from a stage-1 leaf that intersects the range goes, so a change
///   inside a block is covered by invalidating any part of the block, as Arm's TLBI by VA is.
/// - After the host changes or removes stage-2 entries it invalidates the IPA range
///   (`invalidate_stage2`): every translation whose stage-2 leaf intersects the range goes, and
///   so does every translation whose walk read a stage-1 table entry inside it.
/// After those invalidations no stale translation is returned. One cache serves the contexts
/// of one stage-2 table. Not thread-safe.
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <unordered_map>

#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../engine/format.hpp"
#include "types.hpp"

namespace iopgtable::nested {

/// One cached translation: IOVAs [iova_base, iova_base + 2^size_lg2) of `context` map to
/// pa_base + offset, through IPA ipa_base + offset. The span is the smaller of the two stages'
/// entries (not leaves: each entry of a replicated leaf is walked on its own).
struct iotlb_entry {
    std::uint32_t context = 0;
    std::uint64_t iova_base = 0;
    unsigned size_lg2 = 0;
    unsigned mapping_lg2 = 0;  ///< the translation's size: the smaller of the two leaves
    std::uint64_t ipa_base = 0;
    std::uint64_t pa_base = 0;
    stage_leaf s1, s2;
    prot perm = prot::none;
    memory_type memory = memory_type::write_back;
    /// IPAs of the stage-1 table entries the walk read (an n-level walk reads n).
    std::array<std::uint64_t, max_table_levels> table_ipas{};
    unsigned tables = 0;
};

class translation_cache {
public:
    /// A cache of at most `capacity` translations (at least 1); when full, an arbitrary entry
    /// makes room.
    explicit translation_cache(std::size_t capacity = 4096) : capacity_(capacity == 0 ? 1 : capacity) {
        map_.reserve(capacity_);
    }

    /// The translation of `iova` in `context`, or nullptr. Counts a hit or a miss. The pointer
    /// is valid until the next insert or invalidation.
    const iotlb_entry* find(std::uint32_t context, std::uint64_t iova) noexcept {
        for (std::uint64_t sizes = sizes_; sizes != 0; sizes &= sizes - 1) {
            const unsigned lg2 = static_cast<unsigned>(std::countr_zero(sizes));
            auto it = map_.find(key{context, lg2, iova >> lg2});
            if (it != map_.end()) {
                ++hits_;
                return &it->second;
            }
        }
        ++misses_;
        return nullptr;
    }

    /// Caches a translation the caller just completed.
    void insert(const iotlb_entry& e) {
        if (map_.size() >= capacity_) evict_one();
        map_.insert_or_assign(key{e.context, e.size_lg2, e.iova_base >> e.size_lg2}, e);
        sizes_ |= lg2_to_size(e.size_lg2);
        if (e.s1.size_lg2 > max_s1_lg2_) max_s1_lg2_ = e.s1.size_lg2;
    }

    /// Drops the translations of `context` derived from a stage-1 leaf that intersects
    /// [iova, iova + size) (size 0: nothing).
    void invalidate_range(std::uint32_t context, std::uint64_t iova, std::uint64_t size) {
        if (size == 0 || map_.empty()) return;
        const std::uint64_t last = iova + (size - 1) < iova ? ~std::uint64_t{0} : iova + (size - 1);
        auto hit = [&](const iotlb_entry& e) {
            const std::uint64_t s1_last = e.s1.input_base + low_mask(e.s1.size_lg2);
            return e.context == context && e.s1.input_base <= last && iova <= s1_last;
        };
        // Entries derived from a leaf intersecting the range lie within the range widened to
        // the largest stage-1 leaf cached. Probe those pages when they are fewer than the
        // entries; otherwise scan.
        const std::uint64_t first = iova & ~low_mask(max_s1_lg2_);
        const std::uint64_t end_last = last | low_mask(max_s1_lg2_);
        std::uint64_t probes = 0;
        for (std::uint64_t sizes = sizes_; sizes != 0; sizes &= sizes - 1) {
            const unsigned lg2 = static_cast<unsigned>(std::countr_zero(sizes));
            const std::uint64_t n = (end_last >> lg2) - (first >> lg2) + 1;
            probes = n == 0 || probes + n < probes ? ~std::uint64_t{0} : probes + n;
        }
        if (probes > map_.size()) {
            std::erase_if(map_, [&](const auto& kv) { return hit(kv.second); });
            return;
        }
        for (std::uint64_t sizes = sizes_; sizes != 0; sizes &= sizes - 1) {
            const unsigned lg2 = static_cast<unsigned>(std::countr_zero(sizes));
            for (std::uint64_t page = first >> lg2;; ++page) {
                auto it = map_.find(key{context, lg2, page});
                if (it != map_.end() && hit(it->second)) map_.erase(it);
                if (page == (end_last >> lg2)) break;
            }
        }
    }

    /// Drops every translation of `context`.
    void invalidate_context(std::uint32_t context) {
        std::erase_if(map_, [&](const auto& kv) { return kv.second.context == context; });
    }

    /// Drops every translation whose stage-2 leaf intersects [ipa, ipa + size), or whose walk
    /// read a stage-1 table entry there (size 0: nothing).
    void invalidate_stage2(std::uint64_t ipa, std::uint64_t size) {
        if (size == 0) return;
        const std::uint64_t last = ipa + (size - 1) < ipa ? ~std::uint64_t{0} : ipa + (size - 1);
        std::erase_if(map_, [&](const auto& kv) {
            const iotlb_entry& e = kv.second;
            const std::uint64_t s2_last = e.s2.input_base + low_mask(e.s2.size_lg2);
            if (e.s2.input_base <= last && ipa <= s2_last) return true;
            for (unsigned i = 0; i < e.tables; ++i)
                if (e.table_ipas[i] >= ipa && e.table_ipas[i] <= last) return true;
            return false;
        });
    }

    void invalidate_all() noexcept {
        map_.clear();
        sizes_ = 0;
        max_s1_lg2_ = 0;
    }

    std::size_t size() const noexcept { return map_.size(); }
    std::size_t capacity() const noexcept { return capacity_; }
    std::uint64_t hits() const noexcept { return hits_; }
    std::uint64_t misses() const noexcept { return misses_; }
    void reset_counters() noexcept { hits_ = misses_ = 0; }

private:
    /// Drops one entry, from the buckets in turn (the map is full, so most buckets hold one).
    void evict_one() {
        const std::size_t buckets = map_.bucket_count();
        for (std::size_t i = 0; i < buckets; ++i) {
            const std::size_t b = (victim_ + i) % buckets;
            if (map_.bucket_size(b) == 0) continue;
            const key k = map_.begin(b)->first;  // a copy: erase must not read a key it frees
            map_.erase(k);
            victim_ = b + 1;
            return;
        }
    }

    struct key {
        std::uint32_t context;
        unsigned size_lg2;
        std::uint64_t page;
        friend bool operator==(const key&, const key&) = default;
    };
    struct key_hash {
        std::size_t operator()(const key& k) const noexcept {
            std::uint64_t h = k.page * 0x9e3779b97f4a7c15ull;
            h ^= (std::uint64_t{k.context} << 8 | k.size_lg2) * 0xc2b2ae3d27d4eb4full;
            return static_cast<std::size_t>(h ^ (h >> 29));
        }
    };

    std::size_t capacity_;
    std::unordered_map<key, iotlb_entry, key_hash> map_;
    std::uint64_t sizes_ = 0;    ///< bit n: some entry has size_lg2 n
    unsigned max_s1_lg2_ = 0;    ///< largest stage-1 leaf any entry came from
    std::size_t victim_ = 0;     ///< next bucket to evict from
    std::uint64_t hits_ = 0, misses_ = 0;
};

} // namespace iopgtable::nested
