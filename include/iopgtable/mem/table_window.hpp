// SPDX-License-Identifier: MIT
#pragma once
/// @file table_window.hpp
/// The one table allocator of the memory models that hand out tables from a window of
/// guest-physical addresses: `guest_ram` (its table pool) and the nested table memory
/// (`guest_table_memory`, a window of IPAs the guest reserves). It deals in addresses only:
/// zeroing a table, and deciding what a table's bytes are, is the memory model's job.
///
/// Tables are naturally aligned powers of two of at least 64 bytes. A freed table goes to a
/// free list of its size; a new one comes from that list, or else from the next aligned
/// address of the window, the skipped gap going to the free lists as the largest aligned
/// blocks it holds. Thread-safe.
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "../core/result.hpp"

namespace iopgtable {

class table_window {
public:
    /// The bytes one table of `bytes` takes: `bytes` rounded up to 64.
    static constexpr std::uint64_t footprint(std::uint64_t bytes) noexcept { return bytes < 64 ? 64 : bytes; }

    table_window() = default;
    /// Tables from [lo, hi); an empty window when hi <= lo.
    table_window(std::uint64_t lo, std::uint64_t hi) { reset(lo, hi); }
    table_window(const table_window&) = delete;
    table_window& operator=(const table_window&) = delete;

    /// A new window [lo, hi), every table free (what was in use is forgotten).
    void reset(std::uint64_t lo, std::uint64_t hi) noexcept {
        std::lock_guard g(lock_);
        lo_ = next_ = lo;
        end_ = hi < lo ? lo : hi;
        in_use_ = 0;
        free_.clear();
    }
    /// Back to the state of a new window with the same bounds, when no table is in use
    /// (otherwise false, and nothing changed). `also()` runs inside the same critical section,
    /// after the reset, so no table can be taken until it returns (guest RAM zeroes its bytes
    /// there).
    template <class Also>
    bool reset_if_idle(Also&& also) noexcept {
        std::lock_guard g(lock_);
        if (in_use_ != 0) return false;
        next_ = lo_;
        free_.clear();
        also();
        return true;
    }
    bool reset_if_idle() noexcept {
        return reset_if_idle([]() noexcept {});
    }

    /// The address of a table of footprint(bytes), aligned to that footprint. Errors: invalid
    /// (`bytes` is not a power of two), nomem (no room left in the window).
    result<std::uint64_t> take(std::uint64_t bytes) {
        const std::uint64_t alloc = footprint(bytes);
        if ((alloc & (alloc - 1)) != 0) return failure(errc::invalid);
        std::lock_guard g(lock_);
        auto it = free_.find(alloc);
        if (it != free_.end() && !it->second.empty()) {
            const std::uint64_t at = it->second.back();
            it->second.pop_back();
            in_use_ += alloc;
            return at;
        }
        const std::uint64_t aligned = (next_ + alloc - 1) & ~(alloc - 1);
        if (aligned < next_ || aligned + alloc < aligned || aligned + alloc > end_) return failure(errc::nomem);
        try {
            give_back_gap(next_, aligned);
        } catch (...) {
            // No host memory for the free lists: the blocks of the gap not yet on one stay unused.
        }
        next_ = aligned + alloc;
        in_use_ += alloc;
        return aligned;
    }
    /// Gives back a table take(bytes) returned. Addresses this window could not have handed
    /// out (outside it, misaligned) and frees beyond what is in use are ignored.
    void give(std::uint64_t at, std::uint64_t bytes) noexcept {
        const std::uint64_t alloc = footprint(bytes);
        if ((alloc & (alloc - 1)) != 0 || (at & (alloc - 1)) != 0) return;
        std::lock_guard g(lock_);
        if (at < lo_ || at > end_ || alloc > end_ - at || in_use_ < alloc) return;
        try {
            free_[alloc].push_back(at);
        } catch (...) {
            // No host memory for the free list: the table stays unused inside the window.
        }
        in_use_ -= alloc;
    }

    /// Table bytes in use (tables under 64 bytes count as 64).
    std::uint64_t in_use() const noexcept {
        std::lock_guard g(lock_);
        return in_use_;
    }
    /// The window's bytes less what is in use: at most this many can still be taken.
    std::uint64_t bytes_left() const noexcept {
        std::lock_guard g(lock_);
        const std::uint64_t size = end_ - lo_;
        return size > in_use_ ? size - in_use_ : 0;
    }

private:
    /// Splits [lo, hi) into naturally aligned power-of-two blocks of at least 64 bytes, each
    /// put on the free list of its size, in address order (so when a push throws, the blocks
    /// on a list are all below those that are not).
    void give_back_gap(std::uint64_t lo, std::uint64_t hi) {
        while (lo < hi) {
            std::uint64_t blk = lo & (~lo + 1);  // largest alignment of lo
            if (blk == 0) blk = std::uint64_t{1} << 63;
            while (lo + blk > hi) blk >>= 1;
            if (blk >= 64) free_[blk].push_back(lo);
            lo += blk;
        }
    }

    mutable std::mutex lock_;
    std::uint64_t lo_ = 0, next_ = 0, end_ = 0, in_use_ = 0;
    std::map<std::uint64_t, std::vector<std::uint64_t>> free_;
};

} // namespace iopgtable
