// SPDX-License-Identifier: MIT
#pragma once
/// @file walk.hpp
/// Read-only walks over a table of any format in any table memory: one-address lookup and an
/// in-order visit of leaf entries. They need only a `table_reader`, so they also run over
/// tables a guest wrote (untrusted): every entry is read through the memory's bounds check, and
/// every walk descends at most `levels` times, so no input can make them loop or read outside
/// the memory.
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>

#include "../mem/memory.hpp"
#include "cursor.hpp"
#include "format.hpp"

namespace iopgtable {

/// Where a one-address walk ended.
enum class walk_status : std::uint8_t {
    mapped,        ///< a leaf translates the address
    unmapped,      ///< an empty entry (translation fault)
    bad_table,     ///< an entry's table address is not backed by the memory
    out_of_range,  ///< the address is beyond the input address size
};

/// Result of a one-address walk.
template <class F>
struct walk_info {
    walk_status status = walk_status::unmapped;
    unsigned level = 0;          ///< level of the leaf, or where the walk stopped
    unsigned size_lg2 = 0;       ///< leaf size (mapped only)
    std::uint64_t input_base = 0;///< input address of the leaf's start (mapped only)
    pa_t oa{};                   ///< output address of the looked-up address (mapped only)
    prot perm = prot::none;      ///< leaf permissions (mapped only)
    typename F::word raw = 0;    ///< the last entry read
    unsigned accesses = 0;       ///< table entries read
    pa_t entry_address{};        ///< table-memory address of the last entry read
};

/// One entry a visit reports.
template <class F>
struct leaf_entry {
    std::uint64_t iova = 0;    ///< input address the entry's slot covers (replicated copies each get their own)
    unsigned level = 0;
    unsigned size_lg2 = 0;     ///< size of the leaf the entry belongs to
    typename F::word raw = 0;
    pa_t entry_address{};      ///< table-memory address of the entry
};

/// What `lookup_leaf` answers: `lookup`'s output address, leaf size, leaf level and flags,
/// nothing else. `mapped()` false: no translation (unmapped, out of range, or a table
/// address the memory does not give); then only `oa` (all ones) is meaningful.
struct leaf_translation {
    std::uint64_t oa = ~std::uint64_t{0};  ///< output addresses are below 2^oas, oas <= 52
    std::uint8_t size_lg2 = 0;
    std::uint8_t level = 0;
    prot perm = prot::none;
    constexpr bool mapped() const noexcept { return oa != ~std::uint64_t{0}; }
};

/// Where a walk of one address stopped, and the entry there: `lookup`'s status, level, raw
/// entry and access count without decoding the entry, 16 bytes, so that it comes back in
/// registers. `level` is the stop's level (for bad_table, the level whose entry could not be
/// read).
template <class F>
struct walk_stop {
    typename F::word raw = 0;  ///< the last entry read (0 for bad_table and out_of_range)
    std::uint8_t level = 0;
    walk_status status = walk_status::unmapped;
    /// Table entries read: one per level from the top down to `level`, less the one a
    /// bad_table stop could not read.
    std::uint8_t accesses = 0;
};

namespace detail {

/// The walk behind `lookup_stop`: descends while entries are tables, stops at the first leaf,
/// empty or unreadable entry. `Top` is the walk's top level (for the access count).
template <unsigned Top, class F, class R, unsigned L>
IOPGTABLE_ALWAYS_INLINE inline walk_stop<F> stop_level(level_cursor<F, R, L> c) noexcept {
    if (!c.read()) return {0, L, walk_status::bad_table, Top - L};
    switch (c.kind) {
    case entry_kind::leaf: return {c.raw, L, walk_status::mapped, Top - L + 1};
    case entry_kind::table:
        if constexpr (L > 0) return stop_level<Top>(c.descend());
        else return {c.raw, L, walk_status::bad_table, Top - L + 1};  // formats never classify a level-0 entry as a table
    case entry_kind::empty: break;
    }
    return {c.raw, L, walk_status::unmapped, Top - L + 1};
}

/// The walk behind `lookup`.
template <class F, class R, unsigned L>
IOPGTABLE_ALWAYS_INLINE inline void lookup_level(level_cursor<F, R, L> c, walk_info<F>& out) noexcept {
    out.level = L;
    out.entry_address = c.address();
    if (!c.read()) {
        out.status = walk_status::bad_table;
        return;
    }
    ++out.accesses;
    out.raw = c.raw;
    switch (c.kind) {
    case entry_kind::leaf:
        out.status = walk_status::mapped;
        {
            const unsigned lg2 = c.leaf_lg2();
            out.size_lg2 = lg2;
            out.input_base = c.pos & ~low_mask(lg2);
            out.oa = pa_t{c.leaf_address() + (c.pos & low_mask(lg2))};
            out.perm = c.leaf_prot();
        }
        return;
    case entry_kind::table:
        if constexpr (L > 0) {
            lookup_level(c.descend(), out);
        } else {
            out.status = walk_status::bad_table;  // formats never classify a level-0 entry as a table
        }
        return;
    case entry_kind::empty:
        out.status = walk_status::unmapped;
        return;
    }
}

template <class F, class R, unsigned L, class Fn>
inline result<bool> visit_level(level_cursor<F, R, L> c, Fn& fn) {
    do {
        if (!c.load()) return failure(errc::fault);
        switch (c.kind) {
        case entry_kind::leaf: {
            leaf_entry<F> le{c.pos & ~low_mask(c.item), L, c.leaf_lg2(), c.raw, c.address()};
            if (!fn(std::as_const(le))) return false;
            break;
        }
        case entry_kind::table:
            if constexpr (L > 0) {
                auto r = visit_level(c.descend(), fn);
                if (!r.ok() || !r.value()) return r;
            } else {
                return failure(errc::fault);
            }
            break;
        case entry_kind::empty:
            c.skip_zeros();
            break;
        }
    } while (c.next());
    return true;
}

/// What translate_level answers for "no translation": no output address is all ones (output
/// addresses are below 2^oas, oas <= 52 for every format).
inline constexpr std::uint64_t no_output = ~std::uint64_t{0};

/// The walk behind `translate`, answering a plain integer: g++ returns a std::optional from a
/// function it does not inline through the stack, a byte store and a wider reload, and that
/// store-forwarding stall cost about a third of a 4-level walk.
template <class F, class R, unsigned L>
IOPGTABLE_ALWAYS_INLINE inline std::uint64_t translate_level(level_cursor<F, R, L> c) noexcept {
    if (!c.read()) return no_output;
    switch (c.kind) {
    case entry_kind::leaf:
        return c.leaf_address() + (c.pos & low_mask(c.leaf_lg2()));
    case entry_kind::table:
        if constexpr (L > 0)
            return translate_level(c.descend());
        else
            return no_output;
    case entry_kind::empty:
        break;
    }
    return no_output;
}

/// The walk behind `lookup_leaf`: `translate_level` that also keeps the leaf's size, level
/// and flags (16 bytes, returned in registers).
template <class F, class R, unsigned L>
IOPGTABLE_ALWAYS_INLINE inline leaf_translation leaf_level(level_cursor<F, R, L> c) noexcept {
    if (!c.read()) return {};
    switch (c.kind) {
    case entry_kind::leaf: {
        const unsigned lg2 = c.leaf_lg2();
        return {c.leaf_address() + (c.pos & low_mask(lg2)), static_cast<std::uint8_t>(lg2), static_cast<std::uint8_t>(L),
                c.leaf_prot()};
    }
    case entry_kind::table:
        if constexpr (L > 0)
            return leaf_level(c.descend());
        else
            return {};
    case entry_kind::empty:
        break;
    }
    return {};
}

template <class F, class R>
inline std::uint64_t translate_raw(const typename F::config& cfg, const geometry& geo, R& mem, pa_t root,
                                   std::uint64_t va) noexcept {
    if (!geo.in_ias(va)) return no_output;
    return with_top_cursor<F>(cfg, geo, mem, root.value, va, va, [](auto& c) { return translate_level(c); });
}

} // namespace detail

/// The output address `va` translates to, without the rest of `lookup`'s record.
template <page_table_format F, table_reader R>
IOPGTABLE_ALWAYS_INLINE inline std::optional<pa_t> translate(const typename F::config& cfg, const geometry& geo, R& mem,
                                                             pa_t root, std::uint64_t va) noexcept {
    const std::uint64_t oa = detail::translate_raw<F>(cfg, geo, mem, root, va);
    // The payload is written either way: with the walk inlined into a caller that compares
    // optionals, g++ 12 -O3 took the disengaged one's payload for uninitialized
    // (-Wmaybe-uninitialized, a false positive).
    std::optional<pa_t> out{pa_t{oa}};
    if (oa == detail::no_output) out.reset();
    return out;
}

/// The translation of `va` with its leaf's size, level and flags: `lookup` without the
/// rest of its record, for paths that translate (a device's DMA, a shadow). Reads at most
/// `geo.levels` entries.
template <page_table_format F, table_reader R>
IOPGTABLE_ALWAYS_INLINE inline leaf_translation lookup_leaf(const typename F::config& cfg, const geometry& geo, R& mem,
                                                            pa_t root, std::uint64_t va) noexcept {
    if (!geo.in_ias(va)) return {};
    return with_top_cursor<F>(cfg, geo, mem, root.value, va, va, [](auto& c) { return detail::leaf_level(c); });
}

/// Walks one input address through the table at `root`. Never fails: the status says how the
/// walk ended. Reads at most `geo.levels` entries.
template <page_table_format F, table_reader R>
walk_info<F> lookup(const typename F::config& cfg, const geometry& geo, R& mem, pa_t root, std::uint64_t va) noexcept {
    walk_info<F> out;
    if (!geo.in_ias(va)) {
        out.status = walk_status::out_of_range;
        out.level = geo.levels - 1;
        return out;
    }
    with_top_cursor<F>(cfg, geo, mem, root.value, va, va, [&](auto& c) { detail::lookup_level(c, out); });
    return out;
}

/// `lookup` up to the entry it ends at, without decoding it or keeping its table-memory
/// address, answered in registers: for walkers that check the entry themselves
/// (nested/stage.hpp check_leaf) on a hot path. Reads at most `geo.levels` entries.
template <page_table_format F, table_reader R>
IOPGTABLE_ALWAYS_INLINE inline walk_stop<F> lookup_stop(const typename F::config& cfg, const geometry& geo, R& mem,
                                                        pa_t root, std::uint64_t va) noexcept {
    if (!geo.in_ias(va)) return {0, static_cast<std::uint8_t>(geo.levels - 1), walk_status::out_of_range, 0};
    return with_level<F::max_levels>(geo.levels - 1, [&]<unsigned L>(level_c<L>) IOPGTABLE_ALWAYS_INLINE_LAMBDA {
        return detail::stop_level<L>(level_cursor<F, R, L>{&cfg, &mem, root.value, geo.top_mask, va, va});
    });
}

/// Calls `fn(const leaf_entry<F>&)` for every leaf entry whose slot intersects [first, last], in
/// input-address order; `fn` returns false to stop. Errors: errc::range when the range leaves
/// the input address size, errc::fault when a table address is not backed (the visit stops
/// there). Cost is bounded by the number of entries the range covers.
template <page_table_format F, table_reader R, class Fn>
result<void> visit(const typename F::config& cfg, const geometry& geo, R& mem, pa_t root, std::uint64_t first,
                   std::uint64_t last, Fn&& fn) {
    if (first > last || !geo.in_ias(last)) return failure(errc::range);
    auto r = with_top_cursor<F>(cfg, geo, mem, root.value, first, last, [&](auto& c) { return detail::visit_level(c, fn); });
    if (!r.ok()) return failure(r.error());
    return success();
}

} // namespace iopgtable
