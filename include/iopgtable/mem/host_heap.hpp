// SPDX-License-Identifier: MIT
#pragma once
/// @file host_heap.hpp
/// Table memory on the host heap: a table's address is its host virtual address. The fast
/// path for tables that only software walks, or that a device reaches through an identity
/// mapping. Allocation can be capped (`limit_bytes`) to exercise errc::nomem.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "memory.hpp"

namespace iopgtable {

class host_heap {
public:
    /// Tables here are walked by software only: their addresses are host pointers, so the
    /// engine does not require them to lie inside a format's output address space.
    static constexpr bool software_walk = true;

    /// `limit_bytes`: most table bytes alive at once (default: no limit).
    explicit host_heap(std::uint64_t limit_bytes = std::numeric_limits<std::uint64_t>::max()) noexcept
        : limit_(limit_bytes) {}
    host_heap(const host_heap&) = delete;
    host_heap& operator=(const host_heap&) = delete;

    result<pa_t> allocate_table(std::uint64_t bytes) {
        std::uint64_t alloc = bytes < 64 ? 64 : bytes;
        std::uint64_t before = in_use_.fetch_add(alloc, std::memory_order_relaxed);
        if (before + alloc > limit_ || before + alloc < before) {
            in_use_.fetch_sub(alloc, std::memory_order_relaxed);
            return failure(errc::nomem);
        }
        void* p = std::aligned_alloc(alloc, alloc);
        if (p == nullptr) {
            in_use_.fetch_sub(alloc, std::memory_order_relaxed);
            return failure(errc::nomem);
        }
        std::memset(p, 0, alloc);
        return pa_t{reinterpret_cast<std::uintptr_t>(p)};
    }
    void free_table(pa_t pa, std::uint64_t bytes) noexcept {
        std::uint64_t alloc = bytes < 64 ? 64 : bytes;
        std::free(reinterpret_cast<void*>(static_cast<std::uintptr_t>(pa.value)));
        in_use_.fetch_sub(alloc, std::memory_order_relaxed);
    }
    template <class W>
    W* entry(pa_t pa) noexcept {
        return reinterpret_cast<W*>(static_cast<std::uintptr_t>(pa.value));
    }
    /// A table is one allocation: a run inside it is contiguous (the engine never asks beyond
    /// a table).
    template <class W>
    entry_span<W> entries(pa_t pa, std::uint64_t n, bool /*write*/) noexcept {
        return {entry<W>(pa), n};
    }
    /// Table bytes currently allocated (tables under 64 bytes count as 64).
    std::uint64_t bytes_in_use() const noexcept { return in_use_.load(std::memory_order_relaxed); }
    /// At most this many table bytes can still be allocated under the limit (has_table_budget).
    std::uint64_t table_bytes_left() const noexcept {
        const std::uint64_t used = bytes_in_use();
        return limit_ > used ? limit_ - used : 0;
    }

private:
    std::uint64_t limit_;
    std::atomic<std::uint64_t> in_use_{0};
};

static_assert(table_memory<host_heap>);

} // namespace iopgtable
