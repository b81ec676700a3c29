// SPDX-License-Identifier: MIT
#pragma once
/// @file memory.hpp
/// The only way the engine touches table memory.
///
/// A table memory hands out zero-filled tables, takes them back, and turns the table-memory
/// address of one entry into a pointer to that entry (or nullptr when the address is not
/// backed, e.g. a hostile guest table pointing outside guest RAM). Every entry load and store
/// goes through `load_entry`/`store_entry`/`cas_entry` below with the memory order stated at the
/// call site, so that a hardware walker (or another thread) never sees a half-built table.
#include <atomic>
#include <concepts>
#include <cstdint>

#include "../core/address.hpp"
#include "../core/result.hpp"

namespace iopgtable {

/// Read access to table memory: enough to walk a table someone else built.
template <class M>
concept table_reader = requires(M& m, pa_t a) {
    { m.template entry<std::uint64_t>(a) } noexcept -> std::same_as<std::uint64_t*>;
    { m.template entry<std::uint32_t>(a) } noexcept -> std::same_as<std::uint32_t*>;
};

/// Table memory an engine can build tables in.
/// - `allocate_table(bytes)`: a zero-filled table of `bytes` (a power of two), aligned to
///   `bytes` (and to at least 64 bytes), or errc::nomem. Thread-safe.
/// - `free_table(pa, bytes)`: gives back a table that `allocate_table(bytes)` returned.
/// - `entry<W>(pa)`: pointer to the W-sized, W-aligned word at `pa`, or nullptr when `pa` is not
///   backed or misaligned.
template <class M>
concept table_memory = table_reader<M> && requires(M& m, pa_t a, std::uint64_t bytes) {
    { m.allocate_table(bytes) } -> std::same_as<result<pa_t>>;
    { m.free_table(a, bytes) } noexcept;
};

/// Consecutive entries that lie in one piece of host memory: `first[0 .. count)` may be read
/// (or, from `entry_run(..., true)`, written) by pointer. count 0: the first entry is not backed
/// (see has_refused_runs).
template <class W>
struct entry_span {
    W* first = nullptr;
    std::uint64_t count = 0;
};

/// Optional members a table memory may add (the engine reaches memory only through the helpers
/// below, which fall back to `entry` when a member is missing):
/// - `entries<W>(pa, n, write)` → entry_span<W>: the words from `pa` on, at most `n`, that are
///   contiguous in host memory *as the memory defines its pages* (all of a host-heap table, all
///   of guest RAM, one stage-2 leaf of a guest's memory seen through stage 2). A table's entries
///   are never assumed contiguous beyond what this returns: a table that spans several pages
///   may have them scattered, missing or read-only.
/// - `writable_entry<W>(pa)`: the word for a store, for memories whose pages may be readable
///   but not writable (a guest's tables through stage 2); nullptr when it may not be written.
template <class M, class W>
concept has_entry_runs = requires(M& m, pa_t a, std::uint64_t n) {
    { m.template entries<W>(a, n, true) } noexcept -> std::same_as<entry_span<W>>;
};
/// Optional: a memory that can say how many table bytes it could still hand out at most
/// (`table_bytes_left`, an upper bound: fragmentation may leave less). A map whose plan counts
/// more new tables than that fails with nomem as soon as the count passes it, instead of
/// counting every table a huge range would need and then failing at the first allocation that
/// finds the memory empty.
template <class M>
concept has_table_budget = requires(const M& m) {
    { m.table_bytes_left() } noexcept -> std::same_as<std::uint64_t>;
};

/// Optional: after `entries` answered count 0, `refused_run()` says how many words from that
/// address on (at least 1) the same cause refuses (a stage-2 page or block that faults as a
/// whole), so that a walk along the table in the same operation treats them as unbacked
/// without asking again. Kept out of entry_span, which stays two words (returned in
/// registers on the hot path).
template <class M>
concept has_refused_runs = requires(const M& m) {
    { m.refused_run() } noexcept -> std::same_as<std::uint64_t>;
};

template <class M, class W>
concept has_write_access = requires(M& m, pa_t a) {
    { m.template writable_entry<W>(a) } noexcept -> std::same_as<W*>;
};

/// The word at `pa` for a store (see has_write_access), or nullptr.
template <class W, class M>
inline W* writable_entry(M& m, pa_t pa) noexcept {
    if constexpr (has_write_access<M, W>) return m.template writable_entry<W>(pa);
    else return m.template entry<W>(pa);
}

/// The run of at most `n` (≥ 1) contiguous words from `pa` (see has_entry_runs); a memory
/// without `entries` gives runs of one word.
template <class W, class M>
inline entry_span<W> entry_run(M& m, pa_t pa, std::uint64_t n, bool write) noexcept {
    if constexpr (has_entry_runs<M, W>) {
        return m.template entries<W>(pa, n, write);
    } else {
        (void)n;
        W* p = write ? writable_entry<W>(m, pa) : m.template entry<W>(pa);
        return {p, p != nullptr ? 1u : 0u};
    }
}

/// Load an entry. Acquire: a table pointer read here makes the pointed-to table's
/// initialisation (zero fill, entries written before it was installed) visible.
template <class W>
inline W load_entry(const W* p) noexcept {
    return std::atomic_ref<W>(*const_cast<W*>(p)).load(std::memory_order_acquire);
}
/// Store an entry. Release: everything written before (e.g. the contents of a table this
/// entry points to) is visible to whoever loads the entry.
template <class W>
inline void store_entry(W* p, W v) noexcept {
    std::atomic_ref<W>(*p).store(v, std::memory_order_release);
}
/// Install `desired` where `expected` is. acq_rel: release publishes a new table's contents,
/// acquire on failure makes the winner's table visible. Returns the value seen.
template <class W>
inline W cas_entry(W* p, W expected, W desired) noexcept {
    std::atomic_ref<W>(*p).compare_exchange_strong(expected, desired, std::memory_order_acq_rel,
                                                   std::memory_order_acquire);
    return expected;
}

} // namespace iopgtable
