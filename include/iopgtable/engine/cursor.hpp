// SPDX-License-Identifier: MIT
#pragma once
/// @file cursor.hpp
/// The one iteration primitive every walk of the engine is written over: a cursor on one level
/// of a table, over an input-address range.
///
/// A `level_cursor<F, R, L>` holds a table (its table-memory address and index mask), the range
/// [pos, last] of input addresses the walk covers on that table, and, after `load()`, the entry
/// at `pos`: its pointer (nullptr when the memory does not back it), raw word and kind. `end` is
/// the last address the current step covers: `load()` sets it to the end of pos's slot (or
/// `last`), an algorithm that consumes more at once (every copy of a replicated leaf, a run of
/// entries) widens it, and `next()` moves to `end + 1`. `descend()` gives the cursor of the
/// next-lower table over [pos, end]. Every entry is reached through the memory model: one entry
/// by `entry<W>`, or a run of entries by `run()`, never past the piece of host memory the
/// memory says is contiguous (mem/memory.hpp `entry_run`). So a walk over a guest's table reads
/// nothing outside what the memory backs, and descends at most L times.
///
/// The level is a template parameter, so every level's geometry is a constant; an algorithm is
/// one function template over the cursor that recurses through `descend()` (the model is Linux's
/// generic_pt `pt_state` / `for_each_pt_level_entry` / `pt_descend`). The structure is small
/// and trivially copyable: compilers keep it in registers across an inlined walk.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "../core/bits.hpp"
#include "../mem/memory.hpp"
#include "format.hpp"

namespace iopgtable {

template <unsigned L>
using level_c = std::integral_constant<unsigned, L>;

namespace detail {
template <class F>
constexpr std::uint64_t index_mask(unsigned level) noexcept {
    return low_mask(F::index_lg2(level));
}
} // namespace detail

template <class F, class R, unsigned L>
struct level_cursor {
    using word = typename F::word;
    using config = typename F::config;
    static constexpr unsigned level = L;
    /// log2 of the bytes one entry of this level maps.
    static constexpr unsigned item = F::item_lg2(L);

    const config* cfg;
    R* mem;
    std::uint64_t table;  ///< table-memory address of the table
    std::uint64_t mask;   ///< index mask (a top table may be smaller than the level's tables)
    std::uint64_t pos;    ///< the input address looked at
    std::uint64_t last;   ///< last input address of the range
    std::uint64_t end = last;       ///< last address the current step covers (see load())
    word* entry = nullptr;          ///< the entry at pos (nullptr: not backed)
    word raw = 0;                   ///< its value (0 when not backed)
    entry_kind kind = entry_kind::empty;  ///< its kind (empty when not backed)
    /// load()'s window: entries [win_idx, win_idx + win_n) lie at win[0 .. win_n), one run the
    /// memory gave (entry_run), so that a walk along a table asks the memory once per run
    /// (a stage-2 translation per guest table page, not per entry).
    word* win = nullptr;
    std::uint64_t win_idx = 0;
    std::uint64_t win_n = 0;

    /// A cursor over the whole of the table at `table` whose first slot maps `base`.
    IOPGTABLE_ALWAYS_INLINE static level_cursor whole(const config& c, R& m, std::uint64_t table, std::uint64_t mask, std::uint64_t base) noexcept {
        return {&c, &m, table, mask, base, base + ((mask << item) | low_mask(item))};
    }

    /// The same table over another range (nothing read yet).
    IOPGTABLE_ALWAYS_INLINE level_cursor over(std::uint64_t first, std::uint64_t l) const noexcept { return {cfg, mem, table, mask, first, l}; }

    IOPGTABLE_ALWAYS_INLINE std::uint64_t index() const noexcept { return (pos >> item) & mask; }
    /// Table-memory address of the entry of `idx` (the current one by default).
    IOPGTABLE_ALWAYS_INLINE pa_t address(std::uint64_t idx) const noexcept { return pa_t{table + idx * sizeof(word)}; }
    IOPGTABLE_ALWAYS_INLINE pa_t address() const noexcept { return address(index()); }
    /// Last address of pos's slot.
    IOPGTABLE_ALWAYS_INLINE std::uint64_t slot_last() const noexcept { return pos | low_mask(item); }
    /// Whether the range covers all of pos's slot.
    IOPGTABLE_ALWAYS_INLINE bool covers_slot() const noexcept { return (pos & low_mask(item)) == 0 && last >= slot_last(); }

    /// Sets `end` to the last address of the step at pos; reads nothing.
    IOPGTABLE_ALWAYS_INLINE void step() noexcept { end = std::min(last, slot_last()); }
    /// Reads the entry at pos, leaving `end` as it is (a one-address walk keeps pos == end ==
    /// last). `for_store`: through the memory's write check (an entry the walk may store to).
    /// False when the memory does not back it (or refuses the store).
    IOPGTABLE_ALWAYS_INLINE bool read(bool for_store = false) noexcept { return take(entry_at(index(), for_store)); }
    /// Sets `end` to the end of the step at pos and reads the entry there (see read()). Reads
    /// go through load()'s window: at most the entries left in the range and in the table.
    /// When it answers false (not backed), `end` may cover further entries the memory said
    /// are not backed either: callers treat [pos, end] as one unbacked step.
    IOPGTABLE_ALWAYS_INLINE bool load(bool for_store = false) noexcept {
        step();
        if (for_store) return read(true);
        const std::uint64_t idx = index();
        if (idx - win_idx >= win_n) {  // outside the window (idx < win_idx wraps)
            const std::uint64_t left = std::min(mask - idx, (last >> item) - (pos >> item)) + 1;
            const entry_span<word> s = run(idx, left, false);
            win = s.first;
            win_idx = idx;
            win_n = s.count;
            if (s.count == 0) {
                // The memory found the next entries unbacked too (has_refused_runs: a stage-2
                // hole under a guest's table): the step covers them all, so that a walk passes
                // the hole with one question instead of one per entry.
                if constexpr (has_refused_runs<R>) {
                    const std::uint64_t gap = std::min(mem->refused_run(), left);
                    if (gap > 1) end = std::min(last, (((pos >> item) + gap - 1) << item) | low_mask(item));
                }
                return take(nullptr);
            }
        }
        return take_backed(win + (idx - win_idx));
    }
    /// Makes `e` the current entry: reads and classifies it, or (nullptr: not backed) leaves
    /// an empty one and answers false.
    IOPGTABLE_ALWAYS_INLINE bool take(word* e) noexcept {
        if (e == nullptr) {
            entry = nullptr;
            raw = 0;
            kind = entry_kind::empty;
            return false;
        }
        return take_backed(e);
    }
    /// take() of an entry the memory gave.
    IOPGTABLE_ALWAYS_INLINE bool take_backed(word* e) noexcept {
        entry = e;
        raw = load_entry(e);
        kind = F::classify(*cfg, L, raw);
        return true;
    }
    /// After a load() (not for a store) that read 0: widens `end` over the entries after it
    /// that hold 0 too, inside the range and load()'s window, testing eight entries per compare.
    /// Does nothing when the entry is not 0 or was not read through the window (not backed, or
    /// read for a store). 0 is an empty entry in every format (format.hpp), so a walk that acts
    /// only on tables and leaves (reclaim, free, visit) calls this after each load() and passes
    /// a sparse table in a few steps: a 64K-granule table has 8192 entries. Entries past the
    /// window are left to the next load().
    IOPGTABLE_ALWAYS_INLINE void skip_zeros() noexcept {
        const std::uint64_t idx = index();
        if (raw != 0 || entry == nullptr || idx - win_idx >= win_n) return;
        const std::uint64_t n = std::min(win_idx + win_n - 1 - idx, (last >> item) - (pos >> item));
        const word* p = win + (idx - win_idx) + 1;
        std::uint64_t k = 0;
        for (; k + 8 <= n; k += 8) {
            word any = 0;
            for (unsigned j = 0; j < 8; ++j) any |= load_entry(p + k + j);
            if (any != 0) break;
        }
        while (k < n && load_entry(p + k) == 0) ++k;
        if (k != 0) end = std::min(last, ((((pos >> item) + k) << item) | low_mask(item)));
    }
    /// Moves to the address after `end`; false when the range is done.
    IOPGTABLE_ALWAYS_INLINE bool next() noexcept {
        if (end >= last) return false;
        pos = end + 1;
        return true;
    }

    /// The entry of `idx` (nullptr: not backed; `for_store`: or the memory refuses a store).
    IOPGTABLE_ALWAYS_INLINE word* entry_at(std::uint64_t idx, bool for_store = false) const noexcept {
        return for_store ? writable_entry<word>(*mem, address(idx)) : mem->template entry<word>(address(idx));
    }
    /// The entry of `idx` for a store (nullptr: not backed, or the memory refuses writes there).
    IOPGTABLE_ALWAYS_INLINE word* writable(std::uint64_t idx) const noexcept { return writable_entry<word>(*mem, address(idx)); }
    IOPGTABLE_ALWAYS_INLINE word* writable() const noexcept { return writable(index()); }
    /// At most `n` entries from `idx` that are contiguous in host memory (count 0: not backed).
    IOPGTABLE_ALWAYS_INLINE entry_span<word> run(std::uint64_t idx, std::uint64_t n, bool write) const noexcept {
        return entry_run<word>(*mem, address(idx), n, write);
    }

    // The loaded leaf (kind == leaf).
    unsigned leaf_lg2() const noexcept { return F::leaf_lg2(*cfg, L, raw); }
    IOPGTABLE_ALWAYS_INLINE std::uint64_t leaf_address() const noexcept { return F::leaf_address(*cfg, L, raw); }
    IOPGTABLE_ALWAYS_INLINE prot leaf_prot() const noexcept { return F::leaf_prot(*cfg, L, raw); }
    /// Index of the first replicated copy of a leaf of 2^lg2 bytes holding pos.
    IOPGTABLE_ALWAYS_INLINE std::uint64_t first_copy(unsigned lg2) const noexcept { return index() - ((pos & low_mask(lg2)) >> item); }

    /// The table the loaded entry points at (kind == table), over [pos, end].
    IOPGTABLE_ALWAYS_INLINE level_cursor<F, R, L - 1> descend() const noexcept
        requires(L > 0)
    {
        return into(child());
    }
    /// Table-memory address of the table the loaded entry points at (kind == table).
    IOPGTABLE_ALWAYS_INLINE std::uint64_t child() const noexcept { return F::table_address(*cfg, L, raw); }
    /// The table at `child` as the next level's table under pos's slot, over [pos, end].
    IOPGTABLE_ALWAYS_INLINE level_cursor<F, R, L - 1> into(std::uint64_t child) const noexcept
        requires(L > 0)
    {
        return {cfg, mem, child, detail::index_mask<F>(L - 1), pos, end};
    }
};

/// Calls `fn(level_c<L>{})` with L == `level` (< Max). Lets run-time levels reach code that is
/// compiled once per level with constant geometry.
template <unsigned Max, class Fn>
IOPGTABLE_ALWAYS_INLINE constexpr decltype(auto) with_level(unsigned level, Fn&& fn) {
    if constexpr (Max == 1) {
        return fn(level_c<0>{});
    } else {
        if (level == Max - 1) return fn(level_c<Max - 1>{});
        return with_level<Max - 1>(level, std::forward<Fn>(fn));
    }
}

/// Calls `fn(level_cursor<F, R, L>&)` with the cursor of the top table of a table with `geo`
/// at `root`, over [first, last] (nothing read yet).
template <class F, class R, class Fn>
IOPGTABLE_ALWAYS_INLINE constexpr decltype(auto) with_top_cursor(const typename F::config& cfg, const geometry& geo, R& mem, std::uint64_t root,
                                         std::uint64_t first, std::uint64_t last, Fn&& fn) {
    return with_level<F::max_levels>(geo.levels - 1, [&]<unsigned L>(level_c<L>) IOPGTABLE_ALWAYS_INLINE_LAMBDA -> decltype(auto) {
        level_cursor<F, R, L> c{&cfg, &mem, root, geo.top_mask, first, last};
        return fn(c);
    });
}

} // namespace iopgtable
