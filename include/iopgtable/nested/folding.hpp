// SPDX-License-Identifier: MIT
#pragma once
/// @file folding.hpp
/// Software folding: one shadow single-stage table (any format, the host's choice) that holds
/// IOVA → host-physical translations built from both stages, for hosts whose IOMMU cannot walk
/// two stages. A shadow leaf is never larger than either stage's leaf nor crosses either's
/// leaf boundary, and it is as large as both stages (and the shadow format) allow.
///
/// Exactness: after every sync point, for every IOVA and for reads and writes (privileged or
/// not), the shadow translates to the same host-physical address the nested walk gives, and
/// lets exactly the accesses through that the nested walk lets through; it holds no entry for
/// which the nested walk faults. (Instruction fetches too, if the shadow format can express
/// NOEXEC.) Where the shadow format cannot express the combined permissions (a write-only
/// mapping in a format whose leaves are always readable, PRIV in VT-d), the piece is mapped
/// with fewer permissions (`reduced`) or not at all (`dropped`): never with more.
///
/// Two ways to keep it exact (README.md, "Folding"):
/// (a) mediated: every change of both stages goes through this layer (s1_map, s1_unmap,
///     s2_map, s2_unmap), which updates the shadow at once. Each is a sync point.
/// (b) re-sync: the guest writes its stage-1 tables itself, and its invalidations
///     (`invalidate`, `invalidate_all`) re-read the tables in the invalidated range. Each
///     invalidation is a sync point. The guest must invalidate after every change, new mappings
///     included (VT-d caching mode, CAP.CM: the shadow cannot see a write it is not told of).
/// Stage-2 changes made by the host through this layer (or reported with invalidate_stage2)
/// refold every shadow entry whose IPA they cover, found through a reverse index IPA → IOVA.
/// A stage-2 change that covers a page holding a stage-1 table re-syncs everything.
///
/// Preconditions, as for hardware (invalidations name addresses, not aliases): stage-1 tables
/// form a tree, and stage 2 does not map one host page at two IPAs holding stage-1 tables.
/// Otherwise a write through one path changes what another translates and no invalidation
/// names it; invalidate_all() recovers. Hostile table contents are fine otherwise.
///
/// Not thread-safe.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <memory_resource>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "../core/address.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"
#include "../engine/page_table.hpp"
#include "../engine/walk.hpp"
#include "../mem/memory.hpp"
#include "shadow.hpp"
#include "stage.hpp"
#include "stage2_view.hpp"
#include "types.hpp"
#include "walk_cache.hpp"

namespace iopgtable::nested {

/// Counters of a folded table.
struct fold_stats {
    std::uint64_t resyncs = 0;       ///< ranges re-read from stage 1
    std::uint64_t full_resyncs = 0;  ///< of them, the whole input space
    std::uint64_t refolds = 0;       ///< ranges refolded after a stage-2 change
    std::uint64_t pieces = 0;        ///< shadow maps made
    std::uint64_t reduced = 0;       ///< pieces mapped with fewer permissions than nested gives
    std::uint64_t dropped = 0;       ///< pieces the shadow could not hold at all
    std::uint64_t stage2_walks = 0;  ///< stage-2 walks made to fold
    std::uint64_t truncated = 0;     ///< re-reads of stage 1 cut short by the fetch budget
    std::uint64_t map_failures = 0;  ///< of the dropped pieces, those the shadow refused (its memory ran out)
};

template <page_table_format S1, page_table_format S2, table_memory HM, shadow_store Store>
class basic_folded_table {
public:
    using guest_memory = guest_table_memory<S2, HM>;
    using stage1_table = page_table<S1, guest_memory>;
    using stage2_table = page_table<S2, HM>;
    using store_type = Store;

    /// A shadow of the stage-1 table (`s1_cfg`, top table at IPA `s1_root`) over the stage-2
    /// table `s2`, written into `shadow` (empty), synced at once. `s1` is the guest's table for
    /// mode (a) (null: mode (b) only). `s2` and `s1` outlive it. Errors: the stage-1
    /// configuration's; invalid when the shadow's IAS is below stage 1's or its smallest page is
    /// larger than either stage's.
    /// `fetch_budget`: see set_fetch_budget (applies to this first sync too). `settings`: the
    /// nested configuration the shadow follows (as the nested translator it stands for).
    static result<basic_folded_table> create(const typename S1::config& s1_cfg, ipa_t s1_root, stage2_table& s2,
                                             Store shadow, stage1_table* s1 = nullptr,
                                             std::uint64_t fetch_budget = ~std::uint64_t{0},
                                             nested_settings settings = {}) {
        auto g1 = S1::make_geometry(s1_cfg);
        if (!g1) return failure(g1.error());
        auto min_page = [](const geometry& g) { return g.pgsize_bitmap & (~g.pgsize_bitmap + 1); };
        const geometry sg = shadow.geo();
        if (sg.ias < g1->ias || min_page(sg) > min_page(*g1) || min_page(sg) > min_page(s2.geo()))
            return failure(errc::invalid);
        basic_folded_table t(s1_cfg, *g1, s1_root, s2, std::move(shadow), s1);
        t.fetch_budget_ = fetch_budget;
        t.settings_ = settings;
        t.invalidate_all();
        return t;
    }
    /// The same with a new shadow built by Store::create(shadow_cfg, shadow_mem) (for
    /// page_table_shadow: a page table of the shadow format in `shadow_mem`, which outlives it).
    /// Errors: also the shadow's (page_table::create).
    template <class C, class SM>
        requires requires(const C& c, SM& m) { { Store::create(c, m) } -> std::same_as<result<Store>>; }
    static result<basic_folded_table> create(const typename S1::config& s1_cfg, ipa_t s1_root, stage2_table& s2,
                                             const C& shadow_cfg, SM& shadow_mem, stage1_table* s1 = nullptr) {
        auto shadow = Store::create(shadow_cfg, shadow_mem);
        if (!shadow) return failure(shadow.error());
        return create(s1_cfg, s1_root, s2, std::move(*shadow), s1);
    }

    basic_folded_table(basic_folded_table&&) noexcept = default;
    basic_folded_table& operator=(basic_folded_table&&) noexcept = default;

    // ------------------------------------------------------------ (a) mediated changes

    /// Maps stage 1 (the guest's table given at creation) and folds the new range.
    /// Errors: the stage-1 map's; unsupported without a stage-1 table.
    result<void> s1_map(iova_t iova, ipa_t ipa, length_t size, prot p) {
        if (s1_ == nullptr) return failure(errc::unsupported);
        auto r = s1_->map(iova, pa_t{ipa.value}, size, p);
        if (!r) return r;
        resync(iova.value, iova.value + (size.value - 1));
        return success();
    }
    /// Unmaps stage 1 and the shadow over the range. Returns the stage-1 unmap's bytes.
    result<length_t> s1_unmap(iova_t iova, length_t size, unmap_mode mode = unmap_mode::exact) {
        if (s1_ == nullptr) return failure(errc::unsupported);
        auto r = s1_->unmap(iova, size, mode);
        if (!r) return r;
        resync(iova.value, iova.value + (size.value - 1));
        return r;
    }
    /// Maps stage 2 and folds every IOVA whose IPA the range covers.
    result<void> s2_map(ipa_t ipa, pa_t pa, length_t size, prot p) {
        auto r = s2_->map(ipa, pa, size, p);
        if (!r) return r;
        invalidate_stage2(ipa, size);
        return success();
    }
    /// Unmaps stage 2 and refolds every IOVA whose IPA the range covers.
    result<length_t> s2_unmap(ipa_t ipa, length_t size, unmap_mode mode = unmap_mode::exact) {
        auto r = s2_->unmap(ipa, size, mode);
        if (!r) return r;
        invalidate_stage2(ipa, size);
        return r;
    }

    // ------------------------------------------------------------ (b) invalidations

    /// The guest's INVALIDATE of [iova, iova + size): re-reads stage 1 there (widened to whole
    /// pages and to the leaves the range touches) and refolds it. Errors: invalid (size 0),
    /// range (starts beyond stage 1's input size; a range running past it is clipped).
    result<void> invalidate(iova_t iova, length_t size) {
        if (size.value == 0) return failure(errc::invalid);
        if (!s1_geo_.in_ias(iova.value)) return failure(errc::range);
        const std::uint64_t last = iova.value + (size.value - 1);
        resync(iova.value, last < iova.value ? ~std::uint64_t{0} : last);
        return success();
    }
    /// The guest's INVALIDATE of its whole context (or of everything): rebuilds the shadow.
    void invalidate_all() {
        ix_->records.clear();
        ix_->by_ipa.clear();
        max_record_ = 0;
        ix_->table_pages.clear();
        have_last_page_ = pages_lost_ = false;
        cache_.invalidate_all();
        shadow_.clear();
        ++stats_.full_resyncs;
        fold_from_stage1(0, s1_last());
    }
    /// The host changed stage 2 over [ipa, ipa + size) without this layer (s2_map/s2_unmap
    /// call it themselves): refolds every IOVA whose IPA the range covers; re-syncs everything
    /// when the range covers a page that held a stage-1 table.
    void invalidate_stage2(ipa_t ipa, length_t size) {
        if (size.value == 0) return;
        const std::uint64_t first = ipa.value;
        const std::uint64_t last = first + (size.value - 1) < first ? ~std::uint64_t{0} : first + (size.value - 1);
        cache_.invalidate(first, size.value);
        if (s1_ != nullptr) s1_->mem().invalidate_stage2(ipa, size);
        auto page = ix_->table_pages.lower_bound(first >> table_block_lg2_);
        if (pages_lost_ || (page != ix_->table_pages.end() && *page <= (last >> table_block_lg2_))) {
            invalidate_all();
            return;
        }
        // Records whose IPA range intersects [first, last] start at most max_record_ - 1 before it.
        const std::uint64_t reach = max_record_ == 0 ? 0 : max_record_ - 1;
        const std::uint64_t from = first >= reach ? first - reach : 0;
        std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;  // IOVA [a, b] to refold
        for (auto it = ix_->by_ipa.lower_bound(from); it != ix_->by_ipa.end() && it->first <= last; ++it) {
            const record& r = ix_->records.at(it->second);
            const std::uint64_t r_last = r.ipa + (r.length - 1);
            if (r_last < first) continue;
            const std::uint64_t a = r.iova + (std::max(first, r.ipa) - r.ipa);
            const std::uint64_t b = r.iova + (std::min(last, r_last) - r.ipa);
            ranges.emplace_back(a, b);
        }
        for (const auto& [a, b] : ranges)
            if (!refold(a, b)) return invalidate_all();
    }

    // ------------------------------------------------------------ queries

    /// The shadow's translation of `iova` (what a single-stage IOMMU would do with it).
    shadow_lookup lookup(iova_t iova) const { return shadow_.lookup(iova.value); }
    /// Most stage-1 entries one re-read of stage 1 fetches (default: no limit). A re-read that
    /// runs out stops there: what it did not read is not in the shadow (translations there
    /// fault, never translate wrongly), `stats().truncated` counts it and `truncated()` is
    /// true until a later re-read completes. A host folding an untrusted guest's tables sets
    /// it: tables whose entries share subtables (a DAG) otherwise cost the product of their
    /// fan-outs.
    void set_fetch_budget(std::uint64_t entries) noexcept { fetch_budget_ = entries; }
    bool truncated() const noexcept { return truncated_; }
    const Store& shadow() const noexcept { return shadow_; }
    const fold_stats& stats() const noexcept { return stats_; }
    /// Stage-1 ranges the shadow currently folds (IOVA → IPA), for tests and tools.
    std::size_t record_count() const noexcept { return ix_->records.size(); }

private:

    /// What the layer knows of one stage-1 leaf (clipped to the range it was read for).
    struct record {
        std::uint64_t iova = 0, ipa = 0, length = 0;
        stage_leaf s1{};
    };

    basic_folded_table(const typename S1::config& cfg, const geometry& geo, ipa_t root, stage2_table& s2, Store&& shadow,
                       stage1_table* s1)
        : s1_cfg_(cfg), s1_geo_(geo), s1_root_(root.value), s2_(&s2), s1_(s1), shadow_(std::move(shadow)) {
        // Whether the shadow can say NOEXEC at all (VT-d cannot): then exec is not compared.
        shadow_noexec_ = has(shadow_.readback(prot::read | prot::noexec), prot::noexec);
        // Stage-1 tables are tracked by the aligned block of the largest table size this
        // configuration uses: a table lies in the block of any of its entries (tables below
        // the top are aligned to their size), so a change to any page of a table that was
        // read is seen, not only to the pages of the entries read.
        std::uint64_t largest = sizeof(typename S1::word) << geo.top_index_lg2;
        for (unsigned l = 0; l + 1 < geo.levels; ++l) largest = std::max(largest, level_table_bytes<S1>(l));
        table_block_lg2_ = static_cast<unsigned>(std::bit_width(largest) - 1);
    }

    std::uint64_t s1_last() const noexcept { return low_mask(s1_geo_.ias); }
    std::uint64_t s1_min_page() const noexcept { return s1_geo_.pgsize_bitmap & (~s1_geo_.pgsize_bitmap + 1); }
    stage_table<S2, HM> s2_stage() const noexcept { return stage_table<S2, HM>::of(*s2_); }

    /// Re-reads stage 1 over [first, last] (widened to whole pages and to the records it
    /// touches), replacing the shadow there.
    void resync(std::uint64_t first, std::uint64_t last) {
        ++stats_.resyncs;
        first &= ~(s1_min_page() - 1);
        last = std::min(last | (s1_min_page() - 1), s1_last());
        std::uint64_t lo = first, hi = last;
        auto it = ix_->records.upper_bound(first);
        if (it != ix_->records.begin()) {
            auto prev = std::prev(it);
            if (prev->second.iova + (prev->second.length - 1) >= first) it = prev;
        }
        while (it != ix_->records.end() && it->first <= last) {
            const record& r = it->second;
            lo = std::min(lo, r.iova);
            hi = std::max(hi, r.iova + (r.length - 1));
            erase_reverse(r);
            it = ix_->records.erase(it);
        }
        // Shadow leaves lie inside records, so [lo, hi] holds whole leaves.
        if (auto u = shadow_.unmap(lo, hi - lo + 1); !u) return invalidate_all();
        fold_from_stage1(lo, hi);
    }

    /// Reads the stage-1 leaves over [lo, hi] (through stage 2; an unreachable table reads as
    /// empty) into records, and folds each. A record is a run of identical entries of one leaf
    /// (all copies of a replicated leaf, normally): each entry translates its own slot, so
    /// copies a guest made differ are folded apart.
    void fold_from_stage1(std::uint64_t lo, std::uint64_t hi) {
        stage2_view<S2, HM> view(s2_stage(), view_settings{.ipa_bits = s1_geo_.oas,
                                                           .unreadable_as_empty = true,
                                                           .cache = &cache_,
                                                           .on_fetch = &note_table_page,
                                                           .cookie = this,
                                                           .fetch_budget = fetch_budget_,
                                                           .protected_table_walk = settings_.protected_table_walk});
        std::optional<record> run;
        typename S1::word run_raw{};
        auto flush = [&] {
            if (!run) return;
            add_record(*run);
            fold_range(*run, run->iova, run->iova + (run->length - 1));
            run.reset();
        };
        (void)iopgtable::visit<S1>(s1_cfg_, s1_geo_, view, s1_root_, lo, hi, [&](const leaf_entry<S1>& e) {
            const std::uint64_t base = e.iova & ~low_mask(e.size_lg2);
            const std::uint64_t first = std::max(e.iova, lo);
            const std::uint64_t last = std::min(e.iova + low_mask(S1::item_lg2(e.level)), hi);
            if (run && run_raw == e.raw && run->s1.level == e.level && run->s1.input_base == base &&
                run->iova + run->length == first) {
                run->length += last - first + 1;
                return true;
            }
            flush();
            const stage_outcome o = check_leaf<S1>(s1_cfg_, s1_geo_, e.level, e.raw, base);
            if (!o.ok) return true;  // the nested walk faults on this entry's slot
            record r;
            r.iova = first;
            r.length = last - first + 1;
            r.ipa = o.leaf.output_base + (first - base);
            r.s1 = o.leaf;
            run = r;
            run_raw = e.raw;
            return true;
        });
        flush();
        truncated_ = view.exhausted();
        if (truncated_) ++stats_.truncated;
    }

    /// Replaces the shadow over [a, b] (inside one record), widened to the shadow leaves it
    /// touches, from the record and the current stage 2. False when the shadow refuses.
    bool refold(std::uint64_t a, std::uint64_t b) {
        ++stats_.refolds;
        auto it = ix_->records.upper_bound(a);
        if (it == ix_->records.begin()) return true;
        const record r = std::prev(it)->second;
        std::uint64_t lo = a, hi = b;
        auto v = shadow_.leaves(a, b, [&](std::uint64_t base, unsigned size_lg2) {
            lo = std::min(lo, base);
            hi = std::max(hi, base + low_mask(size_lg2));
            return true;
        });
        if (!v || lo < r.iova || hi > r.iova + (r.length - 1)) return false;
        if (auto u = shadow_.unmap(lo, hi - lo + 1); !u) return false;
        fold_range(r, lo, hi);
        return true;
    }

    /// Maps into the shadow the IOVAs [a, b] of record `r` that stage 2 translates: one piece
    /// per stage-2 leaf.
    void fold_range(const record& r, std::uint64_t a, std::uint64_t b) {
        const stage_table<S2, HM> s2 = s2_stage();
        for (std::uint64_t pos = a;;) {
            const std::uint64_t ipa = r.ipa + (pos - r.iova);
            ++stats_.stage2_walks;
            const stage_outcome o = walk_stage(s2, ipa);
            std::uint64_t piece_last;
            if (!o.ok) {
                if (o.level >= s2.geo.levels || !s2.geo.in_ias(ipa)) return;  // beyond stage 2
                const std::uint64_t next = (ipa | low_mask(S2::item_lg2(o.level))) + 1;
                if (next == 0) return;
                piece_last = pos + (next - ipa - 1);
            } else {
                const std::uint64_t leaf_last = o.leaf.input_base + low_mask(o.leaf.size_lg2);
                piece_last = pos + (leaf_last - ipa);
                if (piece_last < pos || piece_last > b) piece_last = b;
                map_piece(pos, o.leaf.output_base + (ipa - o.leaf.input_base), piece_last - pos + 1, r.s1, o.leaf);
            }
            if (piece_last < pos || piece_last >= b) return;
            pos = piece_last + 1;
        }
    }

    /// Maps one piece with the combined permissions, or as many of them as the shadow can say
    /// without saying more.
    void map_piece(std::uint64_t iova, std::uint64_t pa, std::uint64_t length, const stage_leaf& s1,
                   const stage_leaf& s2) {
        const memory_type m = combine_memory(s1.memory, s2.memory);
        const prot want = combine_prot(s1.perm, s2.perm, m);
        if (!has_any(want, prot::read | prot::write)) return;  // no access passes: nothing to map
        const access_rights exact = s1.rights & s2.rights;
        // Flags cannot say every combination of rights (a privileged fetch the stage-1 rule
        // refuses for a page unprivileged accesses may write, but stage 2 made read-only):
        // then fewer, without NOEXEC's fetches or without WRITE.
        const prot candidates[4] = {want, want | prot::noexec, want & ~prot::write, (want & ~prot::write) | prot::noexec};
        for (unsigned i = 0; i < 4; ++i) {
            const prot p = candidates[i];
            if (!has_any(p, prot::read | prot::write) || !expressible(p, exact)) continue;
            ++stats_.pieces;
            if (i > 0) ++stats_.reduced;
            if (!shadow_.map(iova, pa, length, p)) {
                ++stats_.dropped;
                ++stats_.map_failures;
            }
            return;
        }
        ++stats_.dropped;
    }

    static constexpr bool has_any(prot p, prot bits) noexcept { return (p & bits) != prot::none; }

    /// Whether a shadow leaf written for `p` lets through no access the nested walk (`want`)
    /// refuses.
    bool expressible(prot p, access_rights want) const noexcept {
        const prot got = shadow_.readback(p);
        if (got == prot::none) return false;
        for (const bool privileged : {false, true}) {
            for (const access_kind k : {access_kind::read, access_kind::write, access_kind::exec}) {
                if (k == access_kind::exec && !shadow_noexec_) continue;
                const access_request a{k, privileged};
                if (permits(got, a) && !permits(want, a)) return false;
            }
        }
        return true;
    }

    void add_record(const record& r) {
        ix_->records.insert_or_assign(r.iova, r);
        ix_->by_ipa.emplace(r.ipa, r.iova);
        max_record_ = std::max(max_record_, r.length);
    }
    void erase_reverse(const record& r) {
        auto [from, to] = ix_->by_ipa.equal_range(r.ipa);
        for (auto it = from; it != to; ++it) {
            if (it->second == r.iova) {
                ix_->by_ipa.erase(it);
                return;
            }
        }
    }

    /// view_settings::on_fetch: remembers the table block of every stage-1 entry read (a fetch
    /// of `bytes` from `ipa`, inside one stage-2 leaf or one faulting region, so its blocks are
    /// few; one call per fetch, not per entry: a scan of a 64K-granule table over a stage-2
    /// hole is 8192 entries).
    static void note_table_page(void* cookie, std::uint64_t ipa, std::uint64_t bytes) noexcept {
        auto* self = static_cast<basic_folded_table*>(cookie);
        const std::uint64_t first = ipa >> self->table_block_lg2_;
        const std::uint64_t end = ipa + (bytes == 0 ? 0 : bytes - 1);
        const std::uint64_t last = (end < ipa ? ~std::uint64_t{0} : end) >> self->table_block_lg2_;
        for (std::uint64_t page = first;; ++page) {
            if (!self->have_last_page_ || page != self->last_page_) {
                try {
                    self->ix_->table_pages.insert(page);
                    self->last_page_ = page;
                    self->have_last_page_ = true;
                } catch (...) {
                    self->pages_lost_ = true;  // every later stage-2 change re-syncs everything
                }
            }
            if (page == last) break;
        }
    }

    typename S1::config s1_cfg_;
    geometry s1_geo_;
    pa_t s1_root_;  ///< an IPA
    stage2_table* s2_;
    stage1_table* s1_;
    Store shadow_;
    bool shadow_noexec_ = false;
    walk_cache cache_{64};
    /// What the layer knows of stage 1, its nodes carved from one pool: a fold adds a record
    /// per stage-1 leaf, and a node allocation (and free) per record each was most of the
    /// cost of a re-sync. Behind a pointer, so that moving the table moves the pool with it.
    struct index {
        std::pmr::unsynchronized_pool_resource pool;
        std::pmr::map<std::uint64_t, record> records{&pool};          ///< by first IOVA; disjoint
        std::pmr::multimap<std::uint64_t, std::uint64_t> by_ipa{&pool};  ///< first IPA → first IOVA of a record
        std::pmr::set<std::uint64_t> table_pages{&pool};  ///< IPA >> table_block_lg2_ of every stage-1 entry read
    };
    std::unique_ptr<index> ix_ = std::make_unique<index>();
    std::uint64_t max_record_ = 0;
    unsigned table_block_lg2_ = 12;
    std::uint64_t last_page_ = 0;
    bool have_last_page_ = false, pages_lost_ = false;
    std::uint64_t fetch_budget_ = ~std::uint64_t{0};
    nested_settings settings_{};
    bool truncated_ = false;
    fold_stats stats_;
};

/// A folded table whose shadow is a page table of format Shadow in table memory SM.
template <page_table_format S1, page_table_format S2, page_table_format Shadow, table_memory HM, table_memory SM>
using folded_table = basic_folded_table<S1, S2, HM, page_table_shadow<Shadow, SM>>;

} // namespace iopgtable::nested
