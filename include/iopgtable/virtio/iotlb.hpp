// SPDX-License-Identifier: MIT
#pragma once
/// @file iotlb.hpp
/// The virtio-iommu device's IOTLB: completed translations (IOVA page → host-physical page and
/// permissions) keyed by a domain tag and the 4 KiB page. Direct-mapped, fixed size.
///
/// Contract (with device.hpp): a tag names one state of one domain's address space and is
/// never reused; the device gives a domain a new tag whenever its whole address space may have
/// changed (DETACH of its last endpoint frees it; INVALIDATE SINGLE/TABLE, a new
/// ATTACH_TABLE), so old entries can never be found again. Range changes (UNMAP, INVALIDATE
/// VADDR) call `invalidate(tag, first, last)`, which drops every entry of the tag whose *leaf*
/// intersects the range: an entry remembers the size of the leaf it came from, and a range is
/// widened to the largest leaf cached since the last `invalidate_all`, so any address inside a
/// block drops the whole block, as Arm's TLBI by VA does. Only successful translations are
/// cached; new mappings need no invalidation.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace iopgtable::virtio {

class device_iotlb {
public:
    static constexpr unsigned page_lg2 = 12;

    struct entry {
        std::uint64_t tag = 0;       ///< 0: empty
        std::uint64_t page = 0;      ///< iova >> page_lg2
        std::uint64_t hpa_page = 0;  ///< host-physical address of the page
        std::uint8_t leaf_lg2 = page_lg2;  ///< the smaller leaf of the stages it came from
        /// What the translation allows, in the form the caller tests on a hit (the device:
        /// bit n set when access kind n may pass), so a hit decodes no permissions.
        std::uint8_t allowed = 0;
    };

    /// A cache of `entries` translations (rounded up to a power of two, at least 16).
    explicit device_iotlb(std::size_t entries = 1024)
        : slots_(std::bit_ceil(entries < 16 ? std::size_t{16} : entries)), mask_(slots_.size() - 1) {}

    /// The cached translation of `iova` under `tag` (non-zero), or nullptr. Counts a hit or miss.
    const entry* find(std::uint64_t tag, std::uint64_t iova) noexcept {
        const std::uint64_t page = iova >> page_lg2;
        const entry& e = slots_[index(tag, page)];
        if (e.tag == tag && e.page == page) {
            ++hits_;
            return &e;
        }
        ++misses_;
        return nullptr;
    }
    /// Caches the translation of the page holding `iova` (non-zero tag). `hpa` is the output of
    /// `iova` itself; `leaf_lg2` the size of the leaf it lies in (at least a page);
    /// `allowed` what the translation allows (entry::allowed).
    void insert(std::uint64_t tag, std::uint64_t iova, std::uint64_t hpa, unsigned leaf_lg2, std::uint8_t allowed) noexcept {
        const std::uint64_t page = iova >> page_lg2;
        if (leaf_lg2 < page_lg2) return;  // a leaf smaller than a cache page is never cached
        entry& e = slots_[index(tag, page)];
        e = entry{tag, page, hpa & ~((std::uint64_t{1} << page_lg2) - 1), static_cast<std::uint8_t>(leaf_lg2), allowed};
        if (leaf_lg2 > widest_lg2_) widest_lg2_ = leaf_lg2;
    }
    /// Drops every entry of `tag` whose leaf intersects [first, last].
    void invalidate(std::uint64_t tag, std::uint64_t first, std::uint64_t last) noexcept {
        ++range_invalidations_;
        if (last < first) return;
        const std::uint64_t widen = widest_lg2_ >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << widest_lg2_) - 1;
        first &= ~widen;
        last |= widen;
        const std::uint64_t p0 = first >> page_lg2, p1 = last >> page_lg2;
        if (p1 - p0 < slots_.size() / 4) {
            for (std::uint64_t p = p0;; ++p) {
                entry& e = slots_[index(tag, p)];
                if (e.tag == tag && e.page == p) e.tag = 0;
                if (p == p1) break;
            }
            return;
        }
        for (entry& e : slots_)
            if (e.tag == tag && e.page >= p0 && e.page <= p1) e.tag = 0;
    }
    /// Drops everything.
    void invalidate_all() noexcept {
        for (entry& e : slots_) e.tag = 0;
        widest_lg2_ = page_lg2;
    }

    std::uint64_t hits() const noexcept { return hits_; }
    std::uint64_t misses() const noexcept { return misses_; }
    std::uint64_t range_invalidations() const noexcept { return range_invalidations_; }
    std::size_t capacity() const noexcept { return slots_.size(); }

private:
    std::size_t index(std::uint64_t tag, std::uint64_t page) const noexcept {
        std::uint64_t h = (page ^ (tag * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;
        return static_cast<std::size_t>(h >> 32) & mask_;
    }

    std::vector<entry> slots_;
    std::size_t mask_;
    unsigned widest_lg2_ = page_lg2;
    std::uint64_t hits_ = 0, misses_ = 0, range_invalidations_ = 0;
};

} // namespace iopgtable::virtio
