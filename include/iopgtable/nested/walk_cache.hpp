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
#include <array>
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

    /// A cache of `capacity` entries (at least 1), replaced round-robin when full.
    explicit walk_cache(std::size_t capacity = 32) : entries_(capacity == 0 ? 1 : capacity) {}

    /// The entry covering `ipa`, or nullptr. Counts a hit or a miss. The pointer is valid until
    /// the next insert or invalidation.
    const entry* find(std::uint64_t ipa) noexcept {
        // A walk fetches from one table per level, and the next walk mostly from the same
        // tables: try the entries of the last few hits first.
        for (std::size_t r : recent_) {
            if (covers(entries_[r], ipa)) {
                ++hits_;
                return &entries_[r];
            }
        }
        for (std::size_t i = 0; i < entries_.size(); ++i) {
            if (covers(entries_[i], ipa)) {
                ++hits_;
                remember(i);
                return &entries_[i];
            }
        }
        ++misses_;
        return nullptr;
    }

    /// Adds a translation the caller just walked successfully (`valid` is set here).
    void insert(entry e) noexcept {
        e.valid = true;
        entries_[next_] = e;
        remember(next_);
        next_ = (next_ + 1) % entries_.size();
    }

    /// Drops every entry whose IPA range intersects [ipa, ipa + size) (size 0: nothing).
    void invalidate(std::uint64_t ipa, std::uint64_t size) noexcept {
        if (size == 0) return;
        const std::uint64_t last = ipa + (size - 1) < ipa ? ~std::uint64_t{0} : ipa + (size - 1);
        for (auto& e : entries_) {
            if (!e.valid) continue;
            const std::uint64_t e_last = e.ipa_base + low_mask(e.size_lg2);
            if (e.ipa_base <= last && ipa <= e_last) e.valid = false;
        }
    }
    void invalidate_all() noexcept {
        for (auto& e : entries_) e.valid = false;
    }

    std::uint64_t hits() const noexcept { return hits_; }
    std::uint64_t misses() const noexcept { return misses_; }
    std::size_t capacity() const noexcept { return entries_.size(); }
    void reset_counters() noexcept { hits_ = misses_ = 0; }

private:
    static bool covers(const entry& e, std::uint64_t ipa) noexcept {
        return e.valid && ((ipa ^ e.ipa_base) & ~low_mask(e.size_lg2)) == 0;
    }

    void remember(std::size_t i) noexcept {
        recent_[recent_next_] = i;
        recent_next_ = (recent_next_ + 1) % recent_.size();
    }

    std::vector<entry> entries_;
    std::size_t next_ = 0;
    std::array<std::size_t, 5> recent_{};  ///< entries of recent hits (one per level of a 5-level walk)
    std::size_t recent_next_ = 0;
    std::uint64_t hits_ = 0, misses_ = 0;
};

} // namespace iopgtable::nested
