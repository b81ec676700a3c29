// SPDX-License-Identifier: MIT
#pragma once
/// @file translator.hpp
/// The nested translator: a stage-1 walk over guest memory seen through stage 2 (so every
/// stage-1 table fetch is translated by stage 2), then a stage-2 walk of the IPA stage 1
/// produced. Composed from a stage-1 configuration and root and a stage-2 table; neither stage
/// knows about the other (Arm ARM D8.2, "stage 2 translation of stage 1 table addresses"; VT-d
/// 3.8 nested translation). See nested/README.md for the model, fault priorities and
/// combination rules.
#include <algorithm>
#include <cstdint>

#include "../core/address.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"
#include "../engine/walk.hpp"
#include "../mem/memory.hpp"
#include "iotlb.hpp"
#include "stage.hpp"
#include "stage2_view.hpp"
#include "types.hpp"
#include "walk_cache.hpp"

namespace iopgtable::nested {

/// The caches a translator uses (each may be null: no caching of that kind) and the context
/// (ASID / PASID / domain) its translations are cached under. The caches outlive the
/// translator and may be shared: one walk cache and one IOTLB per stage-2 table.
struct nested_caches {
    walk_cache* walk = nullptr;
    translation_cache* iotlb = nullptr;
    std::uint32_t context = 0;
};

/// Counters of one translator.
struct translator_stats {
    std::uint64_t translations = 0;  ///< translate() calls
    std::uint64_t walks = 0;         ///< of them, walked (not served by the IOTLB)
    std::uint64_t accesses = 0;      ///< table entries read by all walks, both stages
};

template <page_table_format S1, page_table_format S2, table_reader HM>
class nested_translator {
public:
    using stage1_format = S1;
    using stage2_format = S2;

    /// A translator for the stage-1 table of configuration `s1_cfg` whose top table is at IPA
    /// `s1_root`, over the stage-2 table `s2`, configured by `settings`. Errors: the stage-1
    /// configuration's.
    static result<nested_translator> create(const typename S1::config& s1_cfg, ipa_t s1_root,
                                            const stage_table<S2, HM>& s2, nested_caches caches = {},
                                            nested_settings settings = {}) noexcept {
        auto g = S1::make_geometry(s1_cfg);
        if (!g) return failure(g.error());
        return nested_translator(s1_cfg, *g, s1_root, s2, caches, settings);
    }

    /// Translates `iova` for access `a`: a translation, or the first fault in the order
    /// hardware takes them (README.md, "Fault order"). Caches: a translation-cache hit returns
    /// the cached translation (0 accesses) or its permission fault; a walk fetches stage-1
    /// table IPAs through the walk cache; only successful translations are cached.
    translate_result translate(iova_t iova, access_request a) noexcept {
        ++stats_.translations;
        if (caches_.iotlb) {
            if (const iotlb_entry* e = caches_.iotlb->find(caches_.context, iova.value)) return from_cache(*e, iova, a);
        }
        ++stats_.walks;
        view_.begin_walk();
        const auto w1 = lookup_stop<S1>(s1_cfg_, s1_geo_, view_, s1_root_, iova.value);  // finish_walk decodes
        unsigned accesses = w1.accesses + view_.accesses();
        auto fail = [&](unsigned stage, unsigned level, std::uint64_t address, fault_reason reason) {
            stats_.accesses += accesses;
            return fault{stage, level, address, false, 0, a.kind, reason, accesses};
        };
        if (w1.status == walk_status::bad_table) {
            fault f = fail(1, w1.level, iova.value, fault_reason::walk_abort);
            f.table_fetch = true;
            f.table_level = w1.level;
            if (const auto& ff = view_.last_fault()) {
                f.reason = ff->reason;
                if (ff->stage == 2) {
                    f.stage = 2;
                    f.level = ff->level;
                    f.address = ff->ipa;
                }
            }
            return f;
        }
        const auto o1 = finish_walk<S1>(s1_cfg_, s1_geo_, w1, iova.value, fault_reason::walk_abort);
        if (!o1.ok) return fail(1, o1.level, iova.value, o1.reason);
        if (!permits(o1.leaf.rights, a)) return fail(1, o1.leaf.level, iova.value, fault_reason::permission);

        const std::uint64_t ipa = o1.leaf.output_base + (iova.value - o1.leaf.input_base);
        const auto o2 = walk_stage(s2_, ipa);
        accesses += o2.accesses;
        if (!o2.ok) return fail(2, o2.level, ipa, o2.reason);
        if (!permits(o2.leaf.rights, a)) return fail(2, o2.leaf.level, ipa, fault_reason::permission);

        // Every member named: a default-constructed translation (128 bytes) is cleared first,
        // which g++ does with `rep stos`, a slow start on every walk.
        const memory_type memory = combine_memory(o1.leaf.memory, o2.leaf.memory);
        const translation t{.iova = iova,
                            .ipa = ipa_t{ipa},
                            .output = pa_t{o2.leaf.output_base + (ipa - o2.leaf.input_base)},
                            .size_lg2 = std::min(o1.leaf.size_lg2, o2.leaf.size_lg2),
                            .s1 = o1.leaf,
                            .s2 = o2.leaf,
                            .perm = combine_prot(o1.leaf.perm, o2.leaf.perm, memory),
                            .rights = o1.leaf.rights & o2.leaf.rights,
                            .memory = memory,
                            .accesses = accesses,
                            .cached = false};
        stats_.accesses += accesses;
        if (caches_.iotlb) cache(t);
        return t;
    }

    /// The walk `translate` makes, answering only what a DMA path uses (leaf_walk): the
    /// output address, the combined flags and rights, the mapping size and the accesses. No
    /// access is checked (the caller checks `rights`) and no fault is described: a walk that
    /// faults (translation, address size, access flag, walk abort, in either stage) is not
    /// `mapped()`. The translation cache (IOTLB) is neither consulted nor filled: a caller
    /// that asks for this keeps its own (the virtio device's IOTLB). The walk cache is used
    /// as `translate` uses it; the counters count a translation and a walk.
    leaf_walk translate_leaf(iova_t iova) noexcept {
        ++stats_.translations;
        ++stats_.walks;
        view_.begin_walk();
        const auto w1 = lookup_stop<S1>(s1_cfg_, s1_geo_, view_, s1_root_, iova.value);
        unsigned accesses = w1.accesses + view_.accesses();
        leaf_walk out;
        if (w1.status == walk_status::mapped) {
            const auto o1 = check_leaf<S1>(s1_cfg_, s1_geo_, w1.level, w1.raw, iova.value);
            if (o1.ok) {
                const std::uint64_t ipa = o1.leaf.output_base + (iova.value - o1.leaf.input_base);
                const auto o2 = walk_stage(s2_, ipa);
                accesses += o2.accesses;
                if (o2.ok) {
                    const memory_type memory = combine_memory(o1.leaf.memory, o2.leaf.memory);
                    out.output = o2.leaf.output_base + (ipa - o2.leaf.input_base);
                    out.perm = combine_prot(o1.leaf.perm, o2.leaf.perm, memory);
                    out.rights = o1.leaf.rights & o2.leaf.rights;
                    out.size_lg2 = static_cast<std::uint8_t>(std::min(o1.leaf.size_lg2, o2.leaf.size_lg2));
                }
            }
        }
        out.accesses = static_cast<std::uint8_t>(accesses);
        stats_.accesses += accesses;
        return out;
    }

    /// The guest's INVALIDATE of [iova, iova + size) in this translator's context.
    void invalidate(iova_t iova, length_t size) {
        if (caches_.iotlb) caches_.iotlb->invalidate_range(caches_.context, iova.value, size.value);
    }
    /// The guest's INVALIDATE of its whole context.
    void invalidate_context() {
        if (caches_.iotlb) caches_.iotlb->invalidate_context(caches_.context);
    }
    /// The host's invalidation after changing stage 2 over [ipa, ipa + size): the walk cache
    /// and every cached translation that used the range.
    void invalidate_stage2(ipa_t ipa, length_t size) {
        if (caches_.walk) caches_.walk->invalidate(ipa.value, size.value);
        if (caches_.iotlb) caches_.iotlb->invalidate_stage2(ipa.value, size.value);
    }
    /// Everything both caches hold (all contexts).
    void invalidate_all() {
        if (caches_.walk) caches_.walk->invalidate_all();
        if (caches_.iotlb) caches_.iotlb->invalidate_all();
    }

    const translator_stats& stats() const noexcept { return stats_; }
    void reset_stats() noexcept { stats_ = {}; }
    const nested_caches& caches() const noexcept { return caches_; }
    const typename S1::config& stage1_config() const noexcept { return s1_cfg_; }
    const geometry& stage1_geometry() const noexcept { return s1_geo_; }
    ipa_t stage1_root() const noexcept { return ipa_t{s1_root_.value}; }
    const stage_table<S2, HM>& stage2() const noexcept { return s2_; }
    const nested_settings& settings() const noexcept { return settings_; }

private:
    nested_translator(const typename S1::config& cfg, const geometry& geo, ipa_t root, const stage_table<S2, HM>& s2,
                      nested_caches caches, nested_settings settings) noexcept
        : s1_cfg_(cfg), s1_geo_(geo), s1_root_(root.value), s2_(s2), caches_(caches), settings_(settings),
          view_(s2, view_settings{.ipa_bits = geo.oas,
                                  .cache = caches.walk,
                                  .protected_table_walk = settings.protected_table_walk}) {}

    translate_result from_cache(const iotlb_entry& e, iova_t iova, access_request a) const noexcept {
        const std::uint64_t ipa = e.ipa_base + (iova.value - e.iova_base);
        if (!permits(e.s1.rights, a)) return fault{1, e.s1.level, iova.value, false, 0, a.kind, fault_reason::permission, 0};
        if (!permits(e.s2.rights, a)) return fault{2, e.s2.level, ipa, false, 0, a.kind, fault_reason::permission, 0};
        return translation{.iova = iova,
                           .ipa = ipa_t{ipa},
                           .output = pa_t{e.pa_base + (iova.value - e.iova_base)},
                           .size_lg2 = e.mapping_lg2,
                           .s1 = e.s1,
                           .s2 = e.s2,
                           .perm = e.perm,
                           .rights = e.s1.rights & e.s2.rights,
                           .memory = e.memory,
                           .accesses = 0,
                           .cached = true};
    }

    void cache(const translation& t) noexcept {
        iotlb_entry e;
        e.context = caches_.context;
        e.size_lg2 = std::min(t.s1.entry_lg2, t.s2.entry_lg2);
        e.mapping_lg2 = t.size_lg2;
        e.iova_base = t.iova.value & ~low_mask(e.size_lg2);
        e.ipa_base = t.ipa.value & ~low_mask(e.size_lg2);
        e.pa_base = t.output.value & ~low_mask(e.size_lg2);
        e.s1 = t.s1;
        e.s2 = t.s2;
        e.perm = t.perm;
        e.memory = t.memory;
        // A walk reads at most S1::max_levels ≤ max_table_levels table entries (the format
        // concept), so every one of them is recorded: a stage-2 change under any of them finds
        // this entry. Should a trace ever be longer, the translation is not cached at all.
        const auto trace = view_.trace();
        if (view_.fetches() > e.table_ipas.size()) return;
        e.tables = static_cast<unsigned>(trace.size());
        std::copy_n(trace.begin(), e.tables, e.table_ipas.begin());
        try {
            caches_.iotlb->insert(e);
        } catch (...) {
            // No host memory for the entry: the translation is simply not cached.
        }
    }

    typename S1::config s1_cfg_;
    geometry s1_geo_;
    pa_t s1_root_;  ///< an IPA: the stage-1 walker reads it through view_
    stage_table<S2, HM> s2_;
    nested_caches caches_;
    nested_settings settings_;
    stage2_view<S2, HM> view_;
    translator_stats stats_;
};

} // namespace iopgtable::nested
