// SPDX-License-Identifier: MIT
#pragma once
/// @file flush.hpp
/// Invalidation hooks, in the spirit of Linux's iommu_flush_ops and iotlb gather: the engine
/// tells its user which translations went away so that an IOTLB can be kept coherent.
///
/// - `leaf_removed(cookie, iova, size)`: a leaf (of `size` bytes at input address `iova`) was
///   cleared by unmap (Linux: tlb_add_page). Called after the entry is cleared.
/// - `walk_flush(cookie, iova, size)`: tables covering [iova, iova + size) were unlinked and are
///   about to be freed; invalidate walk caches and leaves of that range now (Linux:
///   tlb_flush_walk). Called after the table entry is cleared and before the memory is freed.
/// - `flush_all(cookie)`: the whole table is going away (destruction; Linux: tlb_flush_all).
/// Null hooks are skipped. Hooks may be called from any thread that runs an operation.
#include <algorithm>
#include <cstdint>

namespace iopgtable {

struct flush_hooks {
    void* cookie = nullptr;
    void (*leaf_removed)(void* cookie, std::uint64_t iova, std::uint64_t size) = nullptr;
    void (*walk_flush)(void* cookie, std::uint64_t iova, std::uint64_t size) = nullptr;
    void (*flush_all)(void* cookie) = nullptr;
};

/// Gathers what one or more operations removed into one range (Linux: iommu_iotlb_gather), so
/// that a driver issues one invalidation at its sync point. Not thread-safe.
struct iotlb_gather {
    std::uint64_t start = ~std::uint64_t{0};
    std::uint64_t last = 0;       ///< inclusive
    std::uint64_t leaves = 0;     ///< leaf_removed calls
    std::uint64_t walks = 0;      ///< walk_flush calls
    std::uint64_t full = 0;       ///< flush_all calls

    bool empty() const noexcept { return start > last; }
    void add(std::uint64_t iova, std::uint64_t size) noexcept {
        start = std::min(start, iova);
        last = std::max(last, iova + size - 1);
    }
    void reset() noexcept { *this = iotlb_gather{}; }

    /// Hooks that record into this gather.
    flush_hooks hooks() noexcept {
        flush_hooks h;
        h.cookie = this;
        h.leaf_removed = [](void* c, std::uint64_t iova, std::uint64_t size) {
            auto* g = static_cast<iotlb_gather*>(c);
            g->add(iova, size);
            ++g->leaves;
        };
        h.walk_flush = [](void* c, std::uint64_t iova, std::uint64_t size) {
            auto* g = static_cast<iotlb_gather*>(c);
            g->add(iova, size);
            ++g->walks;
        };
        h.flush_all = [](void* c) { ++static_cast<iotlb_gather*>(c)->full; };
        return h;
    }
};

} // namespace iopgtable
