// SPDX-License-Identifier: MIT
#pragma once
/// @file stage.hpp
/// One stage of a nested translation on its own: where its table is (`stage_table`), reading
/// its table memory within the stage's output size (`bounded_reader`), and turning a walk into a
/// leaf or a fault with the checks hardware makes (`check_leaf`, `finish_walk`, `walk_stage`).
#include <concepts>
#include <cstdint>

#include "../engine/format.hpp"
#include "../engine/page_table.hpp"
#include "../engine/walk.hpp"
#include "../mem/memory.hpp"
#include "types.hpp"

namespace iopgtable::nested {

/// The permission rule of format F's leaves (engine/format.hpp `permission_rule`): the
/// format's `leaf_permissions`, else the IOMMU_* rule.
template <page_table_format F>
constexpr permission_rule permission_rule_of() noexcept {
    if constexpr (requires { { F::leaf_permissions } -> std::convertible_to<permission_rule>; })
        return F::leaf_permissions;
    else
        return permission_rule::iommu_prot;
}

/// The level a translation fault for an input beyond the input size reports: the format's
/// `input_fault_level`, else its top level.
template <page_table_format F>
constexpr unsigned input_fault_level(const geometry& geo) noexcept {
    if constexpr (requires { { F::input_fault_level(geo) } -> std::same_as<unsigned>; })
        return F::input_fault_level(geo);
    else
        return geo.levels == 0 ? 0 : geo.levels - 1;
}

/// Where one table of format F is: its configuration, geometry, table memory and root. A plain
/// value; the memory (and the table) must outlive it.
template <page_table_format F, table_reader M>
struct stage_table {
    typename F::config cfg{};
    geometry geo{};
    M* mem = nullptr;
    pa_t root{};

    /// The table `t` is. Valid while `t` is alive (moving `t` keeps root and memory).
    static stage_table of(const page_table<F, M>& t) noexcept
        requires table_memory<M>
    {
        return {t.cfg(), t.geo(), &t.mem(), t.root()};
    }
    /// A table of configuration `cfg` at `root` in `mem` (built by someone else, say a guest).
    /// Errors: the configuration's (F::make_geometry).
    static result<stage_table> make(const typename F::config& cfg, M& mem, pa_t root) noexcept {
        auto g = F::make_geometry(cfg);
        if (!g) return failure(g.error());
        return stage_table{cfg, *g, &mem, root};
    }
};

/// Table memory as one stage's walker reads it: a table address at or above 2^oas is refused
/// (an address-size fault) unless the memory is walked by software only (`M::software_walk`,
/// where addresses are host pointers); an address the memory does not back is a walk abort.
/// `failure()` says which refusal came last. Not thread-safe (one walk at a time).
template <table_reader M>
class bounded_reader {
public:
    bounded_reader(M& mem, unsigned oas) noexcept : mem_(mem), above_oas_(oas < 64 ? ~low_mask(oas) : 0) {}

    template <class W>
    IOPGTABLE_ALWAYS_INLINE W* entry(pa_t pa) noexcept {
        if constexpr (!requires { M::software_walk; }) {
            if ((pa.value & above_oas_) != 0) {
                failure_ = fault_reason::address_size;
                return nullptr;
            }
        }
        W* p = mem_.template entry<W>(pa);
        if (p == nullptr) failure_ = fault_reason::walk_abort;
        return p;
    }
    /// Why the last refused entry was refused.
    fault_reason failure() const noexcept { return failure_; }

private:
    M& mem_;
    std::uint64_t above_oas_;  ///< the address bits at and above 2^oas
    fault_reason failure_ = fault_reason::walk_abort;
};

/// How one stage's walk of one address ended.
struct stage_outcome {
    bool ok = false;
    stage_leaf leaf{};                                ///< ok: the leaf
    fault_reason reason = fault_reason::translation;  ///< !ok
    unsigned level = 0;      ///< !ok: the level of the entry that faulted (the leaf's for leaf faults)
    unsigned accesses = 0;   ///< table entries read
};

/// The checks a walker makes on a leaf entry `raw` at `level` that translates `input`, in Arm's
/// priority order: address size (the output address at or above 2^oas), then access flag (for
/// formats with `has_access_flag`). Permissions depend on the access: the leaf's `rights`
/// (its format's `permission_rule_of`) say which pass.
template <page_table_format F>
constexpr stage_outcome check_leaf(const typename F::config& cfg, const geometry& geo, unsigned level,
                                   typename F::word raw, std::uint64_t input) noexcept {
    stage_outcome o;
    o.level = level;
    const unsigned lg2 = F::leaf_lg2(cfg, level, raw);
    const std::uint64_t oa = F::leaf_address(cfg, level, raw);
    if (!geo.in_oas(oa)) {
        o.reason = fault_reason::address_size;
        return o;
    }
    if constexpr (has_access_flag<F>) {
        if (!F::leaf_accessed(cfg, level, raw)) {
            o.reason = fault_reason::access_flag;
            return o;
        }
    }
    o.ok = true;
    o.leaf.level = level;
    o.leaf.size_lg2 = lg2;
    o.leaf.entry_lg2 = F::item_lg2(level);
    o.leaf.input_base = input & ~low_mask(lg2);
    o.leaf.output_base = oa;
    o.leaf.perm = F::leaf_prot(cfg, level, raw);
    o.leaf.rights = rights_of(o.leaf.perm, permission_rule_of<F>());
    if constexpr (has_memory_type<F>) o.leaf.memory = F::leaf_memory_type(cfg, level, raw);
    return o;
}

/// A walk's result as a leaf or a fault: an input beyond the input size (at
/// `input_fault_level`) and an empty entry are translation faults, an unreadable table is
/// `unreadable` (what the memory said), a leaf is checked by `check_leaf`.
template <page_table_format F>
constexpr stage_outcome finish_walk(const typename F::config& cfg, const geometry& geo, const walk_stop<F>& w,
                                    std::uint64_t input, fault_reason unreadable) noexcept {
    // Built in place (a check_leaf result assigned over a cleared record was two copies).
    stage_outcome o = w.status == walk_status::mapped ? check_leaf<F>(cfg, geo, w.level, w.raw, input) : stage_outcome{};
    switch (w.status) {
    case walk_status::mapped: break;
    case walk_status::unmapped:
        o.reason = fault_reason::translation;
        o.level = w.level;
        break;
    case walk_status::out_of_range:
        o.reason = fault_reason::translation;
        o.level = input_fault_level<F>(geo);
        break;
    case walk_status::bad_table:
        o.reason = unreadable;
        o.level = w.level;
        break;
    }
    o.accesses = w.accesses;
    return o;
}

/// Walks `input` through the table `t` (its tables read within 2^oas of the stage).
template <page_table_format F, table_reader M>
stage_outcome walk_stage(const stage_table<F, M>& t, std::uint64_t input) noexcept {
    bounded_reader<M> reader(*t.mem, t.geo.oas);
    const auto w = lookup_stop<F>(t.cfg, t.geo, reader, t.root, input);  // check_leaf decodes the leaf
    return finish_walk<F>(t.cfg, t.geo, w, input, reader.failure());
}

} // namespace iopgtable::nested
