// SPDX-License-Identifier: MIT
#pragma once
/// @file guest_ram.hpp
/// Bounded guest RAM: one contiguous buffer standing for guest-physical memory
/// [base, base + size). Every access is bounds-checked, so a table whose contents a guest
/// wrote (untrusted) can be walked safely: an entry address outside RAM gives nullptr, never a
/// read outside the buffer. Tables are allocated from a pool window inside RAM (by default all
/// of it; the allocator is table_window.hpp's); allocation runs out with errc::nomem.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <memory>
#include <span>

#include "memory.hpp"
#include "table_window.hpp"

namespace iopgtable {

class guest_ram {
public:
    /// RAM of `size` bytes at guest-physical `base`. Tables come from [pool_base, pool_base +
    /// pool_size) (default: all of RAM); the window is clipped to RAM.
    explicit guest_ram(std::uint64_t size, pa_t base = pa_t{0})
        : base_(base.value), size_(size), skew_(base.value % 8),
          data_(static_cast<std::uint64_t*>(std::calloc((size + 7) / 8 + 1, 8))) {
        if (!data_) throw std::bad_alloc();
        origin_ = reinterpret_cast<std::uintptr_t>(data_.get()) + skew_ - base_;
        set_table_pool(base, size);
    }
    guest_ram(const guest_ram&) = delete;
    guest_ram& operator=(const guest_ram&) = delete;

    /// Restrict table allocation to a window of RAM. Call before allocating.
    void set_table_pool(pa_t pool_base, std::uint64_t pool_size) noexcept {
        std::uint64_t lo = pool_base.value < base_ ? base_ : pool_base.value;
        std::uint64_t hi = pool_base.value + pool_size;
        if (hi < pool_base.value || hi > base_ + size_) hi = base_ + size_;
        pool_.reset(lo, hi);
    }

    /// Back to the state of a new RAM with the same table pool: every byte zero, every table
    /// slot free again, allocation starting where it started. Only when no table is in use
    /// (otherwise false, and nothing changed). Reuses the buffer: for running many short
    /// sessions (fuzz inputs) in one RAM without a new allocation each time; costs one memset
    /// of the whole RAM, which no table allocation can overlap.
    bool clear() noexcept {
        return pool_.reset_if_idle([this]() noexcept { std::memset(data_.get(), 0, ((size_ + 7) / 8 + 1) * 8); });
    }

    /// A zero-filled table of `bytes` (power of two), aligned to max(bytes, 64).
    result<pa_t> allocate_table(std::uint64_t bytes) {
        const auto at = pool_.take(bytes);
        if (!at) return failure(at.error());
        std::memset(host(*at), 0, table_window::footprint(bytes));
        return pa_t{*at};
    }
    /// Gives back a table allocate_table(bytes) returned; other addresses are ignored.
    void free_table(pa_t pa, std::uint64_t bytes) noexcept { pool_.give(pa.value, bytes); }

    /// Pointer to the W-sized word at guest-physical `pa`, or nullptr if it is not inside RAM
    /// or not W-aligned.
    template <class W>
    W* entry(pa_t pa) noexcept {
        if (pa.value % sizeof(W) != 0 || !holds_word<sizeof(W)>(pa.value)) return nullptr;
        return reinterpret_cast<W*>(host(pa.value));
    }
    /// The words from `pa` on, at most `n`, that lie inside RAM (RAM is one buffer): one
    /// bounds check for a run instead of one per word.
    template <class W>
    entry_span<W> entries(pa_t pa, std::uint64_t n, bool /*write*/) noexcept {
        if (pa.value % sizeof(W) != 0 || !holds_word<sizeof(W)>(pa.value)) return {};
        const std::uint64_t room = (size_ - (pa.value - base_)) / sizeof(W);
        return {reinterpret_cast<W*>(host(pa.value)), n < room ? n : room};
    }
    /// True when [pa, pa + len) lies inside RAM.
    bool contains(pa_t pa, std::uint64_t len) const noexcept {
        return pa.value >= base_ && len <= size_ && pa.value - base_ <= size_ - len;
    }
    /// Copy guest bytes out / in; false (and nothing copied) when the range is not inside RAM.
    bool read(pa_t pa, void* out, std::uint64_t len) const noexcept {
        if (!contains(pa, len)) return false;
        if (len != 0) std::memcpy(out, host(pa.value), len);
        return true;
    }
    bool write(pa_t pa, const void* in, std::uint64_t len) noexcept {
        if (!contains(pa, len)) return false;
        if (len != 0) std::memcpy(host(pa.value), in, len);
        return true;
    }
    /// All of RAM as bytes (for loading a guest image or fuzz input).
    std::span<std::byte> bytes() noexcept { return {reinterpret_cast<std::byte*>(data_.get()) + skew_, size_}; }
    pa_t base() const noexcept { return pa_t{base_}; }
    std::uint64_t size() const noexcept { return size_; }
    /// Table bytes currently allocated (tables under 64 bytes count as 64).
    std::uint64_t bytes_in_use() const noexcept { return pool_.in_use(); }
    /// At most this many table bytes can still be allocated: the pool less what is in use
    /// (has_table_budget).
    std::uint64_t table_bytes_left() const noexcept { return pool_.bytes_left(); }

private:
    /// contains(pa, N) for the entry sizes, with one compare: a pa below base_ wraps to an
    /// offset above every start (a walk checks each entry it reads).
    template <std::size_t N>
    bool holds_word(std::uint64_t pa) const noexcept {
        if constexpr (N == 4) return pa - base_ < starts4_;
        else if constexpr (N == 8) return pa - base_ < starts8_;
        else return contains(pa_t{pa}, N);
    }
    /// Callers have checked `contains`. Integer arithmetic: the offset is in the buffer, and the
    /// sanitizers' pointer-overflow checks (four compares per entry access) stay off the walk.
    void* host(std::uint64_t pa) const noexcept {
        return reinterpret_cast<void*>(origin_ + pa);
    }

    std::uint64_t base_, size_;
    /// Host offset of guest address `base_` in the buffer (the spare word at the end makes
    /// room): a guest-aligned word is host-aligned even when `base_` is not 8-aligned.
    std::uint64_t skew_;
    struct free_deleter {
        void operator()(std::uint64_t* p) const noexcept { std::free(p); }
    };
    std::unique_ptr<std::uint64_t[], free_deleter> data_;  // calloc: pages untouched until used
    /// data_ + skew_ - base_ as an integer (wrapping): host(pa) is one add.
    std::uintptr_t origin_ = 0;
    /// How many offsets a 4- / 8-byte word can start at inside RAM (size - N + 1, or 0).
    std::uint64_t starts4_ = size_ >= 4 ? size_ - 3 : 0;
    std::uint64_t starts8_ = size_ >= 8 ? size_ - 7 : 0;
    table_window pool_;
};

static_assert(table_memory<guest_ram>);

} // namespace iopgtable
