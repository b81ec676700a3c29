// SPDX-License-Identifier: MIT
#pragma once
/// @file walk_cache.hpp
/// A walk cache of stage-2 translations for stage-1 table fetches: every stage-1 table entry a
/// nested walk reads lives at an IPA, and each such IPA needs a stage-2 walk; the cache keeps
/// the stage-2 leaves those walks found (Arm: the stage-2 part of a walk cache / "IPA
/// translations of stage-1 table addresses"; VT-d 6.2: paging-structure caches with nesting).
///
/// Contract: it holds only successful stage-2 translations (no negative entries), so a newly
/// mapped stage-2 page needs no invalidation. After changing or removing a stage-2 leaf, the
/// host calls `invalidate(ipa, size)` for the range (or `invalidate_all`); from then on no entry
/// of the range is returned. One cache belongs to one stage-2 table. Not thread-safe.
#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../engine/format.hpp"

namespace iopgtable::nested {

class walk_cache {
public:
    /// One stage-2 leaf: IPAs [ipa_base, ipa_base + 2^size_lg2) map to pa_base + offset.
    struct entry {
        std::uint64_t ipa_base = 0;
        std::uint64_t pa_base = 0;
        unsigned size_lg2 = 0;
        unsigned level = 0;
        prot perm = prot::none;
        bool valid = false;
        memory_type memory = memory_type::write_back;  ///< the leaf's memory type (STE.S2PTW checks it)
    };

    /// A fully associative cache of `capacity` entries (at least 1, at most 4096), replaced
    /// round-robin when full.
    explicit walk_cache(std::size_t capacity = 32)
        : entries_(std::clamp<std::size_t>(capacity, 1, max_capacity)),
          chain_(entries_.size(), none),
          heads_(std::bit_ceil(2 * entries_.size()), none) {}

    /// The entry covering `ipa`, or nullptr. Counts a hit or a miss. The pointer is valid until
    /// the next insert or invalidation.
    ///
    /// Cost: one hash probe per leaf size the cache holds (one or two in practice), not a scan
    /// of every entry: an index maps (size, ipa >> size) to the entries of that page. A scan
    /// of 64 entries on every stage-1 entry access was a fifth of a nested fuzz execution.
    const entry* find(std::uint64_t ipa) noexcept {
        for (std::uint64_t sizes = sizes_; sizes != 0; sizes &= sizes - 1) {
            const auto lg2 = static_cast<unsigned>(std::countr_zero(sizes));
            const std::uint64_t tag = ipa >> lg2;
            for (index_t i = heads_[bucket(lg2, tag)]; i != none; i = chain_[i]) {
                const entry& e = entries_[i];
                if (e.size_lg2 == lg2 && (e.ipa_base >> lg2) == tag) {
                    ++hits_;
                    return &e;
                }
            }
        }
        ++misses_;
        return nullptr;
    }

    /// Adds a translation the caller just walked successfully (`valid` is set here). An entry
    /// whose size is not below 64 bits of address is not kept.
    void insert(entry e) noexcept {
        if (e.size_lg2 >= 64) return;
        drop(next_);
        e.valid = true;
        entries_[next_] = e;
        link(next_);
        next_ = static_cast<index_t>((next_ + 1) % entries_.size());
    }

    /// Drops every entry whose IPA range intersects [ipa, ipa + size) (size 0: nothing).
    void invalidate(std::uint64_t ipa, std::uint64_t size) noexcept {
        if (size == 0) return;
        const std::uint64_t last = ipa + (size - 1) < ipa ? ~std::uint64_t{0} : ipa + (size - 1);
        for (std::size_t i = 0; i < entries_.size(); ++i) {
            const entry& e = entries_[i];
            if (!e.valid) continue;
            const std::uint64_t e_last = e.ipa_base + low_mask(e.size_lg2);
            if (e.ipa_base <= last && ipa <= e_last) drop(static_cast<index_t>(i));
        }
    }
    void invalidate_all() noexcept {
        ++generation_;
        for (auto& e : entries_) e.valid = false;
        std::fill(chain_.begin(), chain_.end(), none);
        std::fill(heads_.begin(), heads_.end(), none);
        size_count_.fill(0);
        sizes_ = 0;
    }

    std::uint64_t hits() const noexcept { return hits_; }
    std::uint64_t misses() const noexcept { return misses_; }
    /// Changes whenever an entry stops being held (invalidated, or replaced when full): what a
    /// reader derived from entries it found stays true while this stays the same.
    std::uint64_t generation() const noexcept { return generation_; }
    /// Counts a hit a reader answered from what it derived from an entry (see generation).
    void count_hit() noexcept { ++hits_; }
    std::size_t capacity() const noexcept { return entries_.size(); }
    void reset_counters() noexcept { hits_ = misses_ = 0; }

private:
    using index_t = std::uint16_t;
    static constexpr index_t none = 0xffff;
    static constexpr std::size_t max_capacity = 4096;

    std::size_t bucket(unsigned lg2, std::uint64_t tag) const noexcept {
        const std::uint64_t h = (tag ^ (std::uint64_t{lg2} << 58)) * 0x9e3779b97f4a7c15ull;
        return static_cast<std::size_t>(h >> 32) & (heads_.size() - 1);
    }
    /// Puts valid entry `i` at the head of its bucket's chain.
    void link(index_t i) noexcept {
        const entry& e = entries_[i];
        index_t& head = heads_[bucket(e.size_lg2, e.ipa_base >> e.size_lg2)];
        chain_[i] = head;
        head = i;
        if (size_count_[e.size_lg2]++ == 0) sizes_ |= std::uint64_t{1} << e.size_lg2;
    }
    /// Invalidates entry `i` and takes it out of its chain (nothing if it is not valid).
    void drop(index_t i) noexcept {
        entry& e = entries_[i];
        if (!e.valid) return;
        e.valid = false;
        ++generation_;
        for (index_t* p = &heads_[bucket(e.size_lg2, e.ipa_base >> e.size_lg2)]; *p != none; p = &chain_[*p]) {
            if (*p == i) {
                *p = chain_[i];
                break;
            }
        }
        chain_[i] = none;
        if (--size_count_[e.size_lg2] == 0) sizes_ &= ~(std::uint64_t{1} << e.size_lg2);
    }

    std::vector<entry> entries_;
    std::vector<index_t> chain_;  ///< next valid entry in the same bucket
    std::vector<index_t> heads_;  ///< first valid entry of each bucket (power-of-two count)
    std::array<std::uint16_t, 64> size_count_{};  ///< valid entries per size_lg2
    std::uint64_t sizes_ = 0;                     ///< bit n: some valid entry has size_lg2 n
    index_t next_ = 0;                            ///< round-robin victim
    std::uint64_t hits_ = 0, misses_ = 0;
    std::uint64_t generation_ = 0;
};

} // namespace iopgtable::nested
