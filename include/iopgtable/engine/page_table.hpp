// SPDX-License-Identifier: MIT
#pragma once
/// @file page_table.hpp
/// The generic engine: one page table of format F in table memory M, with map, map_pages,
/// unmap, replace, iova_to_phys, lookup, visit and reclaim written once for every format.
///
/// Every operation is a function over one level's `level_cursor` (cursor.hpp), compiled once
/// per level with constant geometry (the level is a template parameter; the run-time top level
/// picks the entry point). map and unmap run in two passes over the same loop: a read-only
/// plan that checks the whole range and counts the tables the change needs, then the change
/// itself with those tables already allocated. So a failed operation (exists, partial, range,
/// invalid, nomem) leaves the table exactly as it was. A single leaf into tables that exist,
/// or the exact unmap of one, is one walk with no allocation (map_one, unmap_one).
///
/// Concurrency: map, unmap, iova_to_phys, lookup and visit may run from several threads at once
/// on disjoint input ranges of one table. A new table is installed with compare-and-exchange;
/// a thread that loses the race frees its copy and uses the winner's. Entries are loaded with
/// acquire and stored with release (mem/memory.hpp). `reclaim()` and destruction need exclusive
/// access. Operations on overlapping ranges at the same time are the caller's bug (as in Linux).
#include <algorithm>
#include <bit>
#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "../mem/memory.hpp"
#include "flush.hpp"
#include "format.hpp"
#include "walk.hpp"

namespace iopgtable {

/// Options of `unmap`.
enum class unmap_mode : std::uint8_t {
    exact,  ///< a range that starts or ends inside a leaf fails with errc::partial
    /// Split the leaves the range's ends fall into, so that only the range goes. The split
    /// replaces a live leaf by a table (or rewrites replicated entries) with the same
    /// translation, without break-before-make: hardware that requires BBM for such changes
    /// (Arm without FEAT_BBM level 2) may see a TLB conflict while it happens. Quiesce DMA to
    /// the leaf first, or avoid splitting.
    split,
};

/// What `page_table::replace` did.
struct replace_outcome {
    std::uint64_t removed = 0;  ///< bytes of old translation inside the range that went
    bool changed = false;       ///< false: the range already translated exactly so; nothing written
};

template <page_table_format F, table_memory M>
class page_table {
public:
    using format = F;
    using memory = M;
    using word = typename F::word;
    using config = typename F::config;
    using input_address = typename F::input_address;

    /// Builds an empty table (the top table only).
    /// Errors: the configuration's (errc::invalid / errc::range), errc::nomem.
    static result<page_table> create(const config& cfg, M& mem, flush_hooks hooks = {}) {
        auto geo = F::make_geometry(cfg);
        if (!geo) return failure(geo.error());
        const std::uint64_t top_bytes = sizeof(word) << geo->top_index_lg2;
        auto root = allocate_reachable(cfg, *geo, mem, top_bytes, 1, true);
        if (!root) return failure(root.error());
        return page_table(cfg, *geo, mem, *root, hooks, true);
    }

    /// Takes a table someone else built at `root` (a guest's, say). Nothing of its contents is
    /// trusted: walks are bounded and every entry is bounds-checked by `mem`. Destruction frees
    /// nothing. Changing it (map/unmap/reclaim) allocates and frees tables in `mem`, so do that
    /// only to tables built with the same memory's allocator.
    static result<page_table> borrow(const config& cfg, M& mem, pa_t root, flush_hooks hooks = {}) {
        auto geo = F::make_geometry(cfg);
        if (!geo) return failure(geo.error());
        return page_table(cfg, *geo, mem, root, hooks, false);
    }

    page_table(page_table&& o) noexcept
        : cfg_(o.cfg_), geo_(o.geo_), mem_(o.mem_), root_(o.root_), hooks_(o.hooks_), owned_(o.owned_),
          table_bytes_(o.table_bytes_) {
        o.mem_ = nullptr;
    }
    page_table& operator=(page_table&& o) noexcept {
        if (this != &o) {
            destroy();
            cfg_ = o.cfg_;
            geo_ = o.geo_;
            mem_ = o.mem_;
            root_ = o.root_;
            hooks_ = o.hooks_;
            owned_ = o.owned_;
            table_bytes_ = o.table_bytes_;
            o.mem_ = nullptr;
        }
        return *this;
    }
    page_table(const page_table&) = delete;
    page_table& operator=(const page_table&) = delete;
    /// Calls flush_all, then frees every table (the root too unless borrowed).
    ~page_table() { destroy(); }

    const config& cfg() const noexcept { return cfg_; }
    const geometry& geo() const noexcept { return geo_; }
    pa_t root() const noexcept { return root_; }
    M& mem() const noexcept { return *mem_; }
    /// Bytes of table memory this table holds (the root included when owned).
    std::uint64_t table_bytes() const noexcept {
        return std::atomic_ref<std::uint64_t>(const_cast<std::uint64_t&>(table_bytes_)).load(std::memory_order_relaxed);
    }
    std::uint64_t top_table_bytes() const noexcept { return sizeof(word) << geo_.top_index_lg2; }
    /// The smallest page this table maps.
    std::uint64_t min_page() const noexcept { return geo_.pgsize_bitmap & (~geo_.pgsize_bitmap + 1); }

    /// Maps [iova, iova + size) to [pa, pa + size) with the largest pages that the alignment of
    /// iova and pa, the remaining length and the table's page sizes allow. All or nothing.
    /// Errors: invalid (size 0, iova/pa/size not aligned to the smallest page, prot without
    /// READ/WRITE or not expressible), range (beyond IAS or OAS, or wrapping), exists (anything
    /// already mapped in the range), nomem, fault (a borrowed table points outside memory).
    /// A table that holds no mapping where a larger page goes is unlinked, walk_flush'ed and
    /// freed before the page is written (break-before-make).
    result<void> map(input_address iova, pa_t pa, length_t size, prot p) {
        return map_range(iova.value, pa.value, size.value, p, geo_.pgsize_bitmap);
    }

    /// Linux's map_pages: `pgcount` pages of exactly `pgsize` bytes. Returns the bytes mapped
    /// (always pgsize * pgcount: unlike Linux this never maps short, and on failure nothing
    /// stays mapped). Errors as `map`; `pgsize` not one of the table's page sizes or iova/pa not
    /// aligned to it → invalid.
    IOPGTABLE_ALWAYS_INLINE result<length_t> map_pages(input_address iova, pa_t pa, length_t pgsize,
                                                      std::uint64_t pgcount, prot p) {
        const std::uint64_t sz = pgsize.value;
        if (sz == 0 || (sz & (sz - 1)) != 0 || (sz & geo_.pgsize_bitmap) == 0 || pgcount == 0)
            return failure(errc::invalid);
        if (((iova.value | pa.value) & (sz - 1)) != 0) return failure(errc::invalid);
        const unsigned lg2 = static_cast<unsigned>(std::countr_zero(sz));
        if (pgcount > (~std::uint64_t{0} >> lg2)) return failure(errc::range);
        auto r = map_range(iova.value, pa.value, pgcount << lg2, p, sz);
        if (!r) return failure(r.error());
        return length_t{pgcount << lg2};
    }
    /// Linux-style overload: adds the bytes mapped to `*mapped`.
    result<void> map_pages(input_address iova, pa_t pa, length_t pgsize, std::uint64_t pgcount, prot p,
                           std::uint64_t* mapped) {
        auto r = map_pages(iova, pa, pgsize, pgcount, p);
        if (!r) return failure(r.error());
        if (mapped) *mapped += r->value;
        return success();
    }

    /// Unmaps every leaf in [iova, iova + size); holes are skipped. Returns the bytes of the
    /// leaves removed (0 for an empty range). Tables whose whole span the range covers are freed
    /// (walk_flush first). A range that starts or ends inside a leaf fails with errc::partial and
    /// changes nothing, unless `mode` is split (see unmap_mode). Errors: invalid (size 0 or not
    /// aligned to the smallest page), range, partial, nomem (split only), fault.
    IOPGTABLE_ALWAYS_INLINE result<length_t> unmap(input_address iova, length_t size,
                                                  unmap_mode mode = unmap_mode::exact) {
        const bytes_or_error o = unmap_range(iova.value, size, mode);
        if (o.error != bytes_or_error::none) return failure(static_cast<errc>(o.error));
        return length_t{o.bytes};
    }

    /// Maps [iova, iova + size) → [pa, pa + size) with `p`, replacing whatever is mapped there
    /// (virtio-iommu's relaxed MAP). Leaves that straddle either end of the range are split (the
    /// parts outside keep their translation, see unmap_mode::split for what a split means to
    /// hardware), leaves inside are removed (leaf_removed for each), then the range is mapped as
    /// `map` would. `removed` counts the bytes of the leaves removed.
    ///
    /// All or nothing: after any error the table translates every address exactly as before
    /// (a split that succeeded may stay: the same translation in smaller leaves). When every
    /// byte of the range already translates to pa + offset through leaves whose permissions
    /// decode as those `map` would write (`F::leaf_prot`), nothing is written, no hook runs and
    /// `changed` is false; such leaves may extend beyond the range or be of other sizes than
    /// `map` would choose.
    ///
    /// Errors: those of `map` in its order (invalid, range, nomem, fault), never exists; nomem
    /// also when a split needs a table. A table memory that changes under the operation (a
    /// stage 2 edited during it, which the concurrency contract rules out) can make the map's
    /// stores fail after its plan passed: the range is then left unmapped.
    result<replace_outcome> replace(input_address iova, pa_t pa, length_t size, prot p) {
        const std::uint64_t va = iova.value;
        if (auto c = check_map_args(va, pa.value, size.value, p, geo_.pgsize_bitmap); !c) return failure(c.error());
        const std::uint64_t last = va + (size.value - 1);
        const std::uint64_t delta = pa.value - va;

        // One page of a size that is a single entry somewhere, into tables that exist, over
        // nothing or over one leaf of that same size: one walk (a relaxed MAP of a recycled
        // 4K buffer). The old leaf goes before the new one is written (break-before-make).
        const std::uint64_t sz = size.value;
        if ((sz & (sz - 1)) == 0 && (sz & geo_.pgsize_bitmap) != 0 && ((va | pa.value) & (sz - 1)) == 0) {
            const unsigned lg2 = static_cast<unsigned>(std::countr_zero(sz));
            replace_outcome out;
            const auto fast = from_top(va, va, [&]<unsigned L>(cursor<L>& c) {
                return replace_one<L>(c.table, c.mask, va, pa.value, lg2, p, out);
            });
            if (fast) return out;
        }

        const auto seen = match_range(va, last, delta, p);
        if (!seen) return failure(seen.error());
        if (*seen == range_match::exact) return replace_outcome{0, false};
        if (*seen == range_match::empty) {
            if (auto r = map_range(va, pa.value, size.value, p, geo_.pgsize_bitmap); !r) return failure(r.error());
            return replace_outcome{0, true};
        }

        // Both ends become leaf edges (translations unchanged), so that every leaf in the
        // range lies inside it; then the plan checks every store the clearing makes.
        if (auto r = split_ends(va, last); !r) return failure(r.error());
        if (const bytes_or_error r = from_top(va, last, [&](auto& c) { return unmap_level<unmap_pass::check>(c); });
            r.error != bytes_or_error::none)
            return failure(static_cast<errc>(r.error));
        // The undo log is sized before the first store, so that clearing cannot fail half-way.
        std::size_t entries = 0;
        if (auto r = visit(iova, input_address{last}, [&](const leaf_entry<F>&) {
                ++entries;
                return true;
            }); !r)
            return failure(r.error());
        std::vector<cleared_entry> cleared;
        cleared.reserve(entries);
        const std::uint64_t removed =
            from_top(va, last, [&](auto& c) { return unmap_level<unmap_pass::clear>(c, &cleared).bytes; });

        bool stored = false;
        if (auto r = map_cleared(va, last, delta, p, stored); !r) {
            // The map failed before its first store: every table the clearing stored to is
            // still linked (nothing was freed), so writing the old words back cannot fail.
            if (!stored)
                for (auto it = cleared.rbegin(); it != cleared.rend(); ++it) store_entry(it->entry, it->raw);
            return failure(r.error());
        }
        return replace_outcome{removed, true};
    }

private:
    /// A byte count or an error, as two plain integers: what a function g++ does not inline
    /// returns in registers (a std::variant it returns through the stack with a byte store and
    /// a wider reload, a store-forwarding stall).
    struct bytes_or_error {
        static constexpr std::uint64_t none = ~std::uint64_t{0};
        std::uint64_t bytes = 0;
        std::uint64_t error = none;
        static bytes_or_error fail(errc e) noexcept { return {0, static_cast<std::uint64_t>(e)}; }
    };

    IOPGTABLE_ALWAYS_INLINE bytes_or_error unmap_range(const std::uint64_t va, length_t size, unmap_mode mode) {
        if (size.value == 0 || ((va | size.value) & (min_page() - 1)) != 0) return bytes_or_error::fail(errc::invalid);
        const std::uint64_t last = va + size.value - 1;
        if (last < va || !geo_.in_ias(last)) return bytes_or_error::fail(errc::range);
        if (mode == unmap_mode::exact && (size.value & (size.value - 1)) == 0 && (va & (size.value - 1)) == 0) {
            const unsigned lg2 = static_cast<unsigned>(std::countr_zero(size.value));
            const std::uint64_t fast =
                from_top(va, va, [&]<unsigned L>(cursor<L>& c) { return unmap_one<L>(c.table, c.mask, va, lg2); });
            if (fast != undecided_bytes) return {fast};
        }
        return unmap_general(va, last, mode);
    }

    /// unmap past its one-walk case: a call of its own, so that the fast path above keeps
    /// its registers (inlined, the general path made every single unmap spill).
    [[gnu::noinline]] bytes_or_error unmap_general(const std::uint64_t va, const std::uint64_t last, unmap_mode mode) {
        if (mode == unmap_mode::split) {
            auto r = split_ends(va, last);
            if (!r) return bytes_or_error::fail(r.error());
        }
        if (mode == unmap_mode::exact && owned_ && !checks_writes) {
            // Only a leaf holding one of the range's ends can be cut, so two walks decide.
            // A borrowed table may hide a bad table address anywhere, and a memory that checks
            // writes may refuse a store anywhere: they get the full plan.
            const auto first = lookup(input_address{va});
            if (first.status == walk_status::bad_table) return bytes_or_error::fail(errc::fault);
            if (first.status == walk_status::mapped && first.input_base < va) return bytes_or_error::fail(errc::partial);
            if (first.status == walk_status::mapped && first.input_base + low_mask(first.size_lg2) >= last) {
                if (first.input_base + low_mask(first.size_lg2) > last) return bytes_or_error::fail(errc::partial);
            } else {
                const auto end = lookup(input_address{last});
                if (end.status == walk_status::bad_table) return bytes_or_error::fail(errc::fault);
                if (end.status == walk_status::mapped && end.input_base + low_mask(end.size_lg2) > last)
                    return bytes_or_error::fail(errc::partial);
            }
        } else {
            const bytes_or_error plan = from_top(va, last, [&](auto& c) { return unmap_level<unmap_pass::check>(c); });
            if (plan.error != bytes_or_error::none) return plan;
        }
        std::uint64_t bytes =
            from_top(va, last, [&](auto& c) { return unmap_level<unmap_pass::apply>(c).bytes; });
        return {bytes};
    }

public:

    /// The output address `iova` translates to, or nothing (unmapped, out of range, or a bad
    /// table address in a borrowed table).
    IOPGTABLE_ALWAYS_INLINE std::optional<pa_t> iova_to_phys(input_address iova) const noexcept {
        return iopgtable::translate<F>(cfg_, geo_, *mem_, root_, iova.value);
    }
    /// The output address `iova` translates to with its leaf's size, level and flags (walk.hpp
    /// `lookup_leaf`): what a translation path needs, at the cost of iova_to_phys.
    IOPGTABLE_ALWAYS_INLINE leaf_translation lookup_leaf(input_address iova) const noexcept {
        return iopgtable::lookup_leaf<F>(cfg_, geo_, *mem_, root_, iova.value);
    }
    /// The whole story of one walk (leaf level, size, permissions, raw entry, accesses).
    walk_info<F> lookup(input_address iova) const noexcept {
        return iopgtable::lookup<F>(cfg_, geo_, *mem_, root_, iova.value);
    }
    /// Visits leaf entries intersecting [first, last] in order (see walk.hpp `visit`).
    template <class Fn>
    result<void> visit(input_address first, input_address last, Fn&& fn) const {
        return iopgtable::visit<F>(cfg_, geo_, *mem_, root_, first.value, last.value, std::forward<Fn>(fn));
    }
    /// Visits every leaf entry of the table.
    template <class Fn>
    result<void> visit_all(Fn&& fn) const {
        return iopgtable::visit<F>(cfg_, geo_, *mem_, root_, 0, low_mask(geo_.ias), std::forward<Fn>(fn));
    }

    /// Frees tables that unmaps left empty (below the root), with walk_flush before each.
    /// Needs exclusive access. After unmapping everything, only the root table remains.
    /// Returns the bytes freed.
    std::uint64_t reclaim() {
        const std::uint64_t before = table_bytes();
        from_top(0, low_mask(geo_.ias), [&]<unsigned L>(cursor<L>& c) {
            if constexpr (L > 0) reclaim_level(c);
        });
        return before - table_bytes();
    }

    /// Reads and clears the dirty state of every leaf in [iova, iova + size): calls
    /// `fn(iova, size)` for each dirty leaf (whole leaf size), then marks it clean, then calls
    /// leaf_removed for it so the IOTLB forgets the dirty translation (Linux gathers the same
    /// ranges). Errors: unsupported (format or configuration without dirty tracking), range.
    template <class Fn>
    result<void> read_and_clear_dirty(input_address iova, length_t size, Fn&& fn) {
        if constexpr (!has_dirty_tracking<F>) {
            return failure(errc::unsupported);
        } else {
            if (!F::dirty_tracking(cfg_)) return failure(errc::unsupported);
            if (size.value == 0) return failure(errc::invalid);
            const std::uint64_t last = iova.value + size.value - 1;
            if (last < iova.value || !geo_.in_ias(last)) return failure(errc::range);
            std::uint64_t reported_end = 0;
            bool any = false;
            return visit(iova, input_address{last}, [&](const leaf_entry<F>& e) {
                word* p = writable_entry<word>(*mem_, e.entry_address);
                if (p == nullptr) return true;
                word raw = load_entry(p);
                if (!F::leaf_dirty(cfg_, e.level, raw)) return true;
                // Replicated copies: one report per leaf, every copy cleaned.
                const std::uint64_t base = e.iova & ~low_mask(e.size_lg2);
                store_entry(p, F::leaf_clean(cfg_, e.level, raw));
                if (!any || base >= reported_end) {
                    any = true;
                    reported_end = base + lg2_to_size(e.size_lg2);
                    fn(input_address{base}, length_t{lg2_to_size(e.size_lg2)});
                    if (hooks_.leaf_removed) hooks_.leaf_removed(hooks_.cookie, base, lg2_to_size(e.size_lg2));
                }
                return true;
            });
        }
    }

    /// Marks the leaf at `iova` dirty as hardware would (tests and simulations).
    /// Errors: unsupported, fault (nothing mapped there).
    result<void> set_dirty(input_address iova) {
        if constexpr (!has_dirty_tracking<F>) {
            return failure(errc::unsupported);
        } else {
            auto w = lookup(iova);
            if (w.status != walk_status::mapped) return failure(errc::fault);
            // Every replicated copy of the leaf.
            const std::uint64_t item = lg2_to_size(F::item_lg2(w.level));
            const std::uint64_t copies = lg2_to_size(w.size_lg2) / item;
            const std::uint64_t first = w.entry_address.value - ((iova.value & low_mask(w.size_lg2)) / item) * sizeof(word);
            for (std::uint64_t i = 0; i < copies; ++i) {
                word* p = writable_entry<word>(*mem_, pa_t{first + i * sizeof(word)});
                if (p == nullptr) return failure(errc::fault);
                store_entry(p, F::leaf_set_dirty(cfg_, w.level, load_entry(p)));
            }
            return success();
        }
    }

private:
    page_table(const config& cfg, const geometry& geo, M& mem, pa_t root, flush_hooks hooks, bool owned)
        : cfg_(cfg), geo_(geo), mem_(&mem), root_(root), hooks_(hooks), owned_(owned),
          table_bytes_(owned ? (sizeof(word) << geo.top_index_lg2) : 0) {}

    static constexpr unsigned levels_max = F::max_levels;

    /// A table the format can point at: its address survives the table descriptor's encoding
    /// (v7s tables must lie below 4 GiB) and, unless the memory is walked by software only
    /// (`M::software_walk`), lies inside the output address space. Otherwise errc::nomem.
    /// A `root` is held by a register, not a descriptor: a root smaller than a page (LPAE 4K,
    /// IAS 32: 32 bytes) need not be page-aligned, so only its page-aligned part is checked.
    static result<pa_t> allocate_reachable(const config& cfg, const geometry& geo, M& mem, std::uint64_t bytes,
                                           unsigned parent_level, bool root = false) {
        auto t = mem.allocate_table(bytes);
        if (!t) return t;
        const std::uint64_t last = t->value + bytes - 1;
        const std::uint64_t probe = root ? t->value & ~low_mask(F::item_lg2(0)) : t->value;
        bool ok = F::table_address(cfg, parent_level, F::make_table(cfg, parent_level, probe)) == probe &&
                  last >= t->value;
        if constexpr (!requires { M::software_walk; }) ok = ok && geo.in_oas(last);
        if (!ok) {
            mem.free_table(*t, bytes);
            return failure(errc::nomem);
        }
        return t;
    }

    /// Tables allocated before a change, handed out while applying it.
    struct table_pool {
        std::array<std::vector<std::uint64_t>, levels_max> free;
        bool empty() const noexcept {
            for (auto& v : free)
                if (!v.empty()) return false;
            return true;
        }
    };
    using need_counts = std::array<std::uint64_t, levels_max>;

    template <unsigned L>
    using cursor = level_cursor<F, M, L>;
    /// Calls `fn(cursor<L>&)` with the cursor of the top table over [first, last].
    template <class Fn>
    IOPGTABLE_ALWAYS_INLINE decltype(auto) from_top(std::uint64_t first, std::uint64_t last, Fn&& fn) const {
        return with_top_cursor<F>(cfg_, geo_, *mem_, root_.value, first, last, std::forward<Fn>(fn));
    }
    /// Memories whose pages may be readable but not writable: checks and plans look at every
    /// entry a change will store to, so that the change cannot stop half-way.
    static constexpr bool checks_writes = has_write_access<M, word>;
    void count_tables(std::int64_t delta_bytes) noexcept {
        std::atomic_ref<std::uint64_t>(table_bytes_).fetch_add(static_cast<std::uint64_t>(delta_bytes),
                                                                std::memory_order_relaxed);
    }
    void free_table(unsigned level, std::uint64_t pa) noexcept {
        mem_->free_table(pa_t{pa}, level_table_bytes<F>(level));
        count_tables(-static_cast<std::int64_t>(level_table_bytes<F>(level)));
    }

    result<void> fill_pool(const need_counts& need, table_pool& pool) {
        for (unsigned l = 0; l < levels_max; ++l) {
            if (need[l] == 0) continue;
            // Room for what a memory can plausibly give at once, not for what the plan counts:
            // a map of a huge range in small pages counts billions of tables, and the
            // allocations below fail (nomem) long before; reserving the count first would ask
            // the host heap for gigabytes of slots (a fuzz_ops input reached a 4 GiB reserve).
            pool.free[l].reserve(static_cast<std::size_t>(std::min<std::uint64_t>(need[l], 4096)));
            for (std::uint64_t i = 0; i < need[l]; ++i) {
                auto t = allocate_reachable(cfg_, geo_, *mem_, level_table_bytes<F>(l), l + 1);
                if (!t) {
                    drain_pool(pool);
                    return failure(t.error());
                }
                count_tables(static_cast<std::int64_t>(level_table_bytes<F>(l)));
                pool.free[l].push_back(t->value);
            }
        }
        return success();
    }
    void drain_pool(table_pool& pool) noexcept {
        for (unsigned l = 0; l < levels_max; ++l) {
            for (auto t : pool.free[l]) free_table(l, t);
            pool.free[l].clear();
        }
    }

    // ---------------------------------------------------------------- map

    /// The argument checks of map, in its error order: invalid (size 0, prot, alignment to the
    /// smallest of `sizes`), then range (beyond IAS or OAS, or wrapping). Changes nothing.
    /// Always inlined: as a call, clang saved two more registers on every map.
    IOPGTABLE_ALWAYS_INLINE result<void> check_map_args(std::uint64_t va, std::uint64_t pa, std::uint64_t size, prot p,
                                std::uint64_t sizes) const {
        if (size == 0 || !prot_valid(p)) return failure(errc::invalid);
        if (auto c = F::check_prot(cfg_, p); !c) return c;
        const std::uint64_t minp = sizes & (~sizes + 1);
        if (((va | pa | size) & (minp - 1)) != 0) return failure(errc::invalid);
        const std::uint64_t last = va + size - 1;
        const std::uint64_t pa_last = pa + size - 1;
        if (last < va || pa_last < pa || !geo_.in_ias(last)) return failure(errc::range);
        if (!geo_.in_oas(pa_last)) return failure(errc::range);
        return success();
    }

    result<void> map_range(std::uint64_t va, std::uint64_t pa, std::uint64_t size, prot p, std::uint64_t sizes) {
        if (auto c = check_map_args(va, pa, size, p, sizes); !c) return c;
        const std::uint64_t last = va + size - 1;
        const std::uint64_t delta = pa - va;

        // One page of a size that is a single entry somewhere, into tables that exist: one walk.
        if ((size & (size - 1)) == 0 && (size & sizes) != 0 && ((va | pa) & (size - 1)) == 0) {
            const unsigned lg2 = static_cast<unsigned>(std::countr_zero(size));
            const auto fast =
                from_top(va, va, [&]<unsigned L>(cursor<L>& c) { return map_one<L>(c.table, c.mask, va, pa, lg2, p); });
            if (fast != fast_path::undecided) return fast == fast_path::done ? success() : result<void>(failure(errc::exists));
        }
        return map_general(va, last, delta, sizes, p);
    }

    /// map past its one-walk case (a call of its own: see unmap_general).
    [[gnu::noinline]] result<void> map_general(std::uint64_t va, std::uint64_t last, std::uint64_t delta,
                                               std::uint64_t sizes, prot p) {
        return from_top(va, last, [&](auto& c) {
            map_job j{delta, sizes, p};
            return map_from(c, j);
        });
    }

    enum class fast_path : std::uint8_t { done, exists, undecided };

    /// Maps one leaf of 2^lg2 bytes when that is one entry of some level and every table on
    /// the way exists: the whole map is one walk and one store. Anything else (a table to
    /// allocate, a table in the leaf's slot that may give way, a replicated leaf, an entry the
    /// memory does not give) is left to the general path: undecided, nothing written.
    ///
    /// One-address walks that g++ does not inline take (table, mask, va) in registers and
    /// build their level's cursor: a cursor passed by value goes through the stack.
    template <unsigned L>
    fast_path map_one(std::uint64_t table, std::uint64_t mask, std::uint64_t va, std::uint64_t pa, unsigned lg2, prot p) {
        constexpr unsigned item = F::item_lg2(L);
        cursor<L> c{&cfg_, mem_, table, mask, va, va};
        if (lg2 == item) {
            if constexpr ((F::leaf_sizes(L) & lg2_to_size(item)) != 0) {
                if (!c.read(true)) return fast_path::undecided;
                switch (c.kind) {
                case entry_kind::empty:
                    store_entry(c.entry, F::make_leaf(cfg_, L, item, pa, p));
                    return fast_path::done;
                case entry_kind::leaf:
                    return fast_path::exists;
                case entry_kind::table:
                    return fast_path::undecided;
                }
            }
            return fast_path::undecided;
        }
        if constexpr (L > 0) {
            if (lg2 < item) {
                if (!c.read()) return fast_path::undecided;
                switch (c.kind) {
                case entry_kind::table:
                    return map_one<L - 1>(c.child(), detail::index_mask<F>(L - 1), va, pa, lg2, p);
                case entry_kind::leaf:
                    return fast_path::exists;  // a leaf holds the range already
                case entry_kind::empty:
                    return fast_path::undecided;
                }
            }
        }
        return fast_path::undecided;
    }

    /// What unmap_one answers when the general path must decide (no leaf is 2^64 bytes).
    static constexpr std::uint64_t undecided_bytes = ~std::uint64_t{0};

    /// Unmaps [va, va + 2^lg2) when that is exactly one single-entry leaf, or lies inside one
    /// empty entry (0 bytes): one walk. Otherwise undecided_bytes, nothing written. (A plain
    /// integer, not std::optional: g++ returns an optional through the stack with a byte
    /// store and a wider reload, a store-forwarding stall that cost 8 ns per unmap.)
    template <unsigned L>
    std::uint64_t unmap_one(std::uint64_t table, std::uint64_t mask, std::uint64_t va, unsigned lg2) {
        constexpr unsigned item = F::item_lg2(L);
        cursor<L> c{&cfg_, mem_, table, mask, va, va};
        if (!c.read()) return undecided_bytes;
        switch (c.kind) {
        case entry_kind::empty:
            return lg2 <= item ? 0 : undecided_bytes;
        case entry_kind::leaf:
            if (lg2 == item && c.leaf_lg2() == item) {
                word* w = c.writable();
                if (w == nullptr) return undecided_bytes;
                store_entry(w, word{0});
                if (hooks_.leaf_removed) hooks_.leaf_removed(hooks_.cookie, c.pos, lg2_to_size(item));
                return lg2_to_size(item);
            }
            return undecided_bytes;
        case entry_kind::table:
            if constexpr (L > 0)
                if (lg2 < item) return unmap_one<L - 1>(c.child(), detail::index_mask<F>(L - 1), va, lg2);
            return undecided_bytes;
        }
        return undecided_bytes;
    }

    /// The passes of map over one cursor: `plan` reads the range and checks that the map can
    /// be done (exists, fault), counting the tables it needs; `fresh` counts the tables an
    /// empty subtree needs (reading nothing); `apply` stores, taking tables from the pool.
    enum class map_pass : std::uint8_t { plan, fresh, apply };

    /// What a map pass needs besides its cursor.
    struct map_job {
        std::uint64_t delta;             ///< pa - va
        std::uint64_t sizes;             ///< the page sizes it may use
        prot p;
        need_counts* need = nullptr;     ///< plan, fresh: tables to allocate, per level
        table_pool* pool = nullptr;      ///< apply: the allocated tables
        std::uint64_t done = 0;          ///< apply: first address not yet mapped
        /// plan, fresh: bytes of the tables counted so far, and the most the memory can give
        /// (has_table_budget; else no bound): past it the plan stops with nomem.
        std::uint64_t need_bytes = 0, budget = ~std::uint64_t{0};
    };
    /// Counts one new table at level L - 1 while the count is within the memory's budget; false
    /// (counting nothing) once it has passed it.
    template <unsigned L>
    static bool plan_table(map_job& j) noexcept {
        if (j.need_bytes > j.budget) return false;
        ++(*j.need)[L - 1];
        j.need_bytes += level_table_bytes<F>(L - 1);
        return j.need_bytes <= j.budget;
    }
    std::uint64_t table_budget() const noexcept {
        if constexpr (has_table_budget<M>) return mem_->table_bytes_left();
        else return ~std::uint64_t{0};
    }

    /// Descends while the range lies inside one entry that is a table, then plans and applies
    /// from there (the upper levels are walked once instead of twice).
    template <unsigned L>
    result<void> map_from(cursor<L> c, map_job& j) {
        if constexpr (L > 0) {
            constexpr unsigned item = F::item_lg2(L);
            if ((c.pos >> item) == (c.last >> item) && leaf_choice<L>(c.pos, c.last, j.delta, j.sizes) == 0 &&
                c.load() && c.kind == entry_kind::table)
                return map_from(c.descend(), j);
        }
        need_counts need{};
        j.need = &need;
        j.budget = table_budget();
        if (auto plan = map_level<map_pass::plan>(c, j); !plan) return plan;
        if (j.need_bytes > j.budget) return failure(errc::nomem);  // more tables than the memory has
        bool fresh = false;
        for (auto n : need) fresh |= n != 0;
        table_pool pool;
        if (fresh)
            if (auto r = fill_pool(need, pool); !r) return r;
        j.pool = &pool;
        j.done = c.pos;
        auto applied = map_level<map_pass::apply>(c, j);
        if (fresh) drain_pool(pool);  // tables a concurrent mapper installed first
        if (!applied && j.done > c.pos) unmap_level<unmap_pass::apply>(c.over(c.pos, j.done - 1));
        return applied;
    }

    /// Whole items of 2^Item bytes in [pos, last] (pos aligned to the item).
    template <unsigned Item>
    static std::uint64_t full_items(std::uint64_t pos, std::uint64_t last) noexcept {
        const std::uint64_t d = last - pos;
        return (d >> Item) + ((d & low_mask(Item)) == low_mask(Item) ? 1 : 0);
    }
    /// Entries from idx on that take item-size leaves in a row: when item is the only size level L
    /// may use, the rest of the table or of the range; else 0.
    template <unsigned L>
    static std::uint64_t item_run(unsigned lg2, std::uint64_t idx, std::uint64_t mask, std::uint64_t pos,
                                  std::uint64_t last, std::uint64_t sizes) noexcept {
        constexpr unsigned item = F::item_lg2(L);
        if (lg2 != item || (F::leaf_sizes(L) & sizes) != lg2_to_size(item)) return 0;
        return std::min(mask - idx + 1, full_items<item>(pos, last));
    }

    /// True when the n entries from idx are all zero and backed (writable too when the memory
    /// checks writes). Entries are read one run at a time as the memory defines its pages
    /// (`entry_run`): a table spanning several pages is never read past the page it starts in.
    template <unsigned L>
    bool all_zero(const cursor<L>& c, std::uint64_t idx, std::uint64_t n) const noexcept {
        for (std::uint64_t done = 0; done < n;) {
            const entry_span<word> run = c.run(idx + done, n - done, checks_writes);
            if (run.count == 0) return false;
            word any = 0;
            // Acquire per word (a plain load on x86 and cheap elsewhere), so ThreadSanitizer
            // sees the same ordering load_entry gives; four at a time.
            std::uint64_t i = 0;
            for (; i + 4 <= run.count; i += 4)
                any |= load_entry(run.first + i) | load_entry(run.first + i + 1) | load_entry(run.first + i + 2) |
                       load_entry(run.first + i + 3);
            for (; i < run.count; ++i) any |= load_entry(run.first + i);
            if (any != 0) return false;
            done += run.count;
        }
        return true;
    }

    /// Leaf size to use at [pos, last] on level L, or 0 when the walk must descend.
    template <unsigned L>
    static unsigned leaf_choice(std::uint64_t pos, std::uint64_t last, std::uint64_t delta, std::uint64_t sizes) noexcept {
        constexpr std::uint64_t here = F::leaf_sizes(L);
        if constexpr (here == 0) {
            return 0;
        } else if constexpr (std::popcount(here) == 1) {
            constexpr unsigned one = static_cast<unsigned>(std::countr_zero(here));
            if ((sizes & here) == 0 || ((pos | (pos + delta)) & low_mask(one)) != 0 || last - pos < low_mask(one)) return 0;
            return one;
        } else {
            const unsigned lg2 = best_page_lg2(here & sizes, pos, pos + delta, last - pos + 1);
            return lg2 >= F::item_lg2(L) ? lg2 : 0;
        }
    }

    /// map's one loop (see map_pass).
    template <map_pass Pass, unsigned L>
    result<void> map_level(cursor<L> c, map_job& j) {
        if constexpr (Pass == map_pass::fresh && L == 0) {
            return success();  // a level-0 table holds leaves only
        } else {
            do {
                c.step();
                if (const unsigned lg2 = leaf_choice<L>(c.pos, c.last, j.delta, j.sizes)) {
                    if (auto r = map_leaves<Pass>(c, lg2, j); !r) return r;
                } else if constexpr (L == 0) {
                    return failure(errc::invalid);  // no page size fits: excluded by map_range's checks
                } else if constexpr (Pass == map_pass::fresh) {
                    if (!plan_table<L>(j)) return success();  // over budget: the plan ends in nomem
                    (void)map_level<Pass>(c.into(0), j);       // counts only: cannot fail
                } else {
                    if (!c.read()) return failure(errc::fault);  // apply: changed since the plan
                    if constexpr (Pass == map_pass::plan) {
                        switch (c.kind) {
                        case entry_kind::leaf:
                            return failure(errc::exists);
                        case entry_kind::table:
                            if (auto r = map_level<Pass>(c.descend(), j); !r) return r;
                            break;
                        case entry_kind::empty:
                            if constexpr (checks_writes)
                                if (c.writable() == nullptr) return failure(errc::fault);
                            // Past the budget the empty subtrees are no longer counted, but
                            // the existing tables are still checked: exists and fault come first.
                            if (plan_table<L>(j)) (void)map_level<map_pass::fresh>(c.into(0), j);
                            break;
                        }
                    } else {
                        if (c.kind == entry_kind::empty)
                            if (auto r = install_table(c, *j.pool); !r) return r;
                        if (c.kind != entry_kind::table) return failure(errc::exists);
                        if (auto r = map_level<Pass>(c.descend(), j); !r) return r;
                    }
                }
            } while (c.next());
            return success();
        }
    }

    /// Installs a table from the pool in the empty entry `c` holds (compare-and-exchange: a
    /// thread that installed one first wins, and `c` then holds the winner's). Errors, with
    /// nothing written: nomem (the pool is empty: plan and apply disagree, the concurrency
    /// contract was broken), fault (the entry cannot be written: the memory changed since).
    template <unsigned L>
    result<void> install_table(cursor<L>& c, table_pool& pool) {
        auto& spare = pool.free[L - 1];
        if (spare.empty()) return failure(errc::nomem);
        word* w = c.writable();
        if (w == nullptr) return failure(errc::fault);
        const std::uint64_t t = spare.back();
        spare.pop_back();
        const word seen = cas_entry(w, c.raw, F::make_table(cfg_, L, t));
        if (seen == c.raw) {
            c.raw = F::make_table(cfg_, L, t);
        } else {
            spare.push_back(t);  // lost the race: use the winner's table
            c.raw = seen;
        }
        c.kind = F::classify(cfg_, L, c.raw);
        return success();
    }

    /// One step of map_level that places leaves of 2^lg2 bytes at c.pos: as many entries as
    /// the leaf replicates, or a run of item-size entries; sets c.end past them.
    template <map_pass Pass, unsigned L>
    result<void> map_leaves(cursor<L>& c, unsigned lg2, map_job& j) {
        constexpr unsigned item = F::item_lg2(L);
        const std::uint64_t idx = c.index();
        std::uint64_t n = lg2_to_size(lg2 - item), span = lg2_to_size(lg2);
        const std::uint64_t run = item_run<L>(lg2, idx, c.mask, c.pos, c.last, j.sizes);
        if (run > 1) {
            n = run;
            span = run << item;
        }
        if constexpr (Pass == map_pass::plan) {
            if (run != 0 && all_zero(c, idx, run)) n = 0;
            for (std::uint64_t i = 0; i < n; ++i) {
                word* e = c.entry_at(idx + i, checks_writes);
                if (e == nullptr) return failure(errc::fault);
                const word raw = load_entry(e);
                switch (F::classify(cfg_, L, raw)) {
                case entry_kind::empty:
                    break;
                case entry_kind::table:  // gives way to the leaf only when it maps nothing
                    if constexpr (L > 0)
                        if (subtree_empty(table_at<L - 1>(F::table_address(cfg_, L, raw)))) break;
                    return failure(errc::exists);
                case entry_kind::leaf:
                    return failure(errc::exists);
                }
            }
        } else if constexpr (Pass == map_pass::apply) {
            const std::uint64_t pos = c.pos;
            const word leaf = F::make_leaf(cfg_, L, lg2, pos + j.delta, j.p);
            const bool additive =
                run > 1 && F::make_leaf(cfg_, L, item, pos + j.delta + ((run - 1) << item), j.p) ==
                               static_cast<word>(leaf + (static_cast<word>(run - 1) << item));
            // Stored one run at a time, as far as the memory says entries are contiguous.
            for (std::uint64_t i = 0; i < n;) {
                const entry_span<word> span_run = c.run(idx + i, n - i, true);
                if (span_run.count == 0) {
                    // The plan saw every entry backed: only a memory that changed since (a
                    // stage 2 edited under a guest's table) gets here. Undo this step.
                    for (std::uint64_t k = 0; k < i; ++k)
                        if (word* w = c.writable(idx + k)) store_entry(w, word{0});
                    return failure(errc::fault);
                }
                if (L == 0 && additive) {  // level 0 holds no table to free: one add per entry
                    word v = static_cast<word>(leaf + (static_cast<word>(i) << item));
                    for (word *e = span_run.first, *end = span_run.first + span_run.count; e != end; ++e) {
                        store_entry(e, v);
                        v = static_cast<word>(v + (word{1} << item));
                    }
                    i += span_run.count;
                    continue;
                }
                for (word *e = span_run.first, *end = span_run.first + span_run.count; e != end; ++e, ++i) {
                    if constexpr (L > 0) {
                        const word old = load_entry(e);
                        if (F::classify(cfg_, L, old) == entry_kind::table) {  // empty (the plan checked)
                            store_entry(e, word{0});
                            if (hooks_.walk_flush) hooks_.walk_flush(hooks_.cookie, pos + (i << item), lg2_to_size(item));
                            free_subtree(table_at<L - 1>(F::table_address(cfg_, L, old)));
                        }
                    }
                    if (run <= 1) store_entry(e, leaf);
                    else if (additive) store_entry(e, static_cast<word>(leaf + (static_cast<word>(i) << item)));
                    else store_entry(e, F::make_leaf(cfg_, L, item, pos + j.delta + (i << item), j.p));
                }
            }
            j.done = pos + span;
        }
        c.end = c.pos + (span - 1);
        return success();
    }

    /// The whole of the non-top table at `table` on level L (its first slot at 0).
    template <unsigned L>
    cursor<L> table_at(std::uint64_t table) const noexcept {
        return cursor<L>::whole(cfg_, *mem_, table, detail::index_mask<F>(L), 0);
    }

    // ---------------------------------------------------------------- unmap

    /// The passes of unmap over one cursor: `check` writes nothing and finds what would fail
    /// (partial, fault); `apply` clears the leaves and unlinks and frees the tables the range
    /// covers whole; `clear` (replace) clears the leaves only, logging each old word into
    /// `cleared`, and frees no table.
    enum class unmap_pass : std::uint8_t { check, apply, clear };

    /// One entry replace cleared, to write back if the map fails.
    struct cleared_entry {
        word* entry;
        word raw;
    };

    /// unmap's one loop (see unmap_pass). Returns the bytes of the leaves removed (check:
    /// that would go) or, from check, an error. Preconditions of apply and clear: check passed
    /// (or, in exact mode on an owned table, no leaf straddles either end); `cleared` has room
    /// for every entry (clear allocates nothing).
    template <unmap_pass Pass, unsigned L>
    bytes_or_error unmap_level(cursor<L> c, std::vector<cleared_entry>* cleared = nullptr) {
        constexpr unsigned item = F::item_lg2(L);
        const std::uint64_t first = c.pos;
        std::uint64_t bytes = 0;
        do {
            if (!c.load() && Pass == unmap_pass::check) return bytes_or_error::fail(errc::fault);
            switch (c.kind) {
            case entry_kind::empty:
                c.skip_zeros();
                break;
            case entry_kind::leaf: {
                if constexpr (Pass == unmap_pass::apply && L == 0 && F::leaf_sizes(0) == lg2_to_size(item)) {
                    bytes += clear_items(c);
                    break;
                }
                const unsigned lg2 = c.leaf_lg2();
                const std::uint64_t base = c.pos & ~low_mask(lg2);
                const std::uint64_t n = lg2_to_size(lg2 - item);
                const std::uint64_t first_idx = c.first_copy(lg2);
                if constexpr (Pass == unmap_pass::check) {
                    if (base < first || base + low_mask(lg2) > c.last) return bytes_or_error::fail(errc::partial);
                    if constexpr (checks_writes)  // every copy of the leaf is cleared
                        for (std::uint64_t i = 0; i < n; ++i)
                            if (c.writable(first_idx + i) == nullptr) return bytes_or_error::fail(errc::fault);
                } else {
                    for (std::uint64_t i = 0; i < n; ++i) {
                        if (word* w = c.writable(first_idx + i)) {
                            if constexpr (Pass == unmap_pass::clear) cleared->push_back({w, load_entry(w)});
                            store_entry(w, word{0});
                        }
                    }
                    if (hooks_.leaf_removed) hooks_.leaf_removed(hooks_.cookie, base, lg2_to_size(lg2));
                }
                bytes += lg2_to_size(lg2);
                c.end = base + low_mask(lg2);
                break;
            }
            case entry_kind::table:
                if constexpr (L == 0) {
                    if constexpr (Pass == unmap_pass::check) return bytes_or_error::fail(errc::fault);
                } else {
                    // A table the range covers whole goes with everything below it (clear
                    // frees no table: it descends).
                    const bool whole = Pass != unmap_pass::clear && c.covers_slot();
                    word* w = whole ? c.writable() : nullptr;
                    if (whole && Pass == unmap_pass::check) {
                        if (checks_writes && w == nullptr) return bytes_or_error::fail(errc::fault);
                    } else if (w != nullptr) {
                        store_entry(w, word{0});
                        bytes += subtree_leaf_bytes(c.descend());
                        if (hooks_.walk_flush) hooks_.walk_flush(hooks_.cookie, c.pos, lg2_to_size(item));
                        free_subtree(c.descend());
                    } else {
                        const bytes_or_error r = unmap_level<Pass>(c.descend(), cleared);
                        if (r.error != bytes_or_error::none) return r;
                        bytes += r.bytes;
                    }
                }
                break;
            }
        } while (c.next());
        return {bytes};
    }

    /// unmap's level-0 step where every leaf is one entry: clears the leaves among the
    /// item-size entries from c.pos to the end of the range or the table, one memory run at
    /// a time (entries the memory does not let be written are skipped); sets c.end.
    template <unsigned L>
    std::uint64_t clear_items(cursor<L>& c) {
        constexpr unsigned item = F::item_lg2(L);
        const std::uint64_t idx = c.index();
        const std::uint64_t n = std::min(c.mask - idx + 1, full_items<item>(c.pos, c.last));
        std::uint64_t leaves = 0;
        for (std::uint64_t i = 0; i < n;) {
            const entry_span<word> run = c.run(idx + i, n - i, true);
            if (run.count == 0) {
                ++i;
                continue;
            }
            leaves += clear_run<L>(run.first, run.first + run.count, c.pos + (i << item));
            i += run.count;
        }
        c.end = c.pos + ((n << item) - 1);
        return leaves << item;
    }

    /// clear_items' inner loop over one run of item-size entries at [e, end), the first
    /// mapping `va`: clears the leaves (leaf_removed for each), returns how many. A call of its
    /// own, so that what lives across the hook's call fits in callee-saved registers: inlined,
    /// g++ spilled and reloaded two values around every call.
    template <unsigned L>
    [[gnu::noinline]] std::uint64_t clear_run(word* e, word* const end, std::uint64_t va) const {
        constexpr std::uint64_t step = lg2_to_size(F::item_lg2(L));
        const auto removed = hooks_.leaf_removed;
        void* const cookie = hooks_.cookie;
        std::uint64_t leaves = 0;
        for (; e != end; ++e, va += step) {
            if (F::classify(cfg_, L, load_entry(e)) != entry_kind::leaf) continue;
            store_entry(e, word{0});
            if (removed) removed(cookie, va, step);
            ++leaves;
        }
        return leaves;
    }

    /// Bytes of leaves in the table `c` covers and below (each replicated copy counts its slot).
    template <unsigned L>
    std::uint64_t subtree_leaf_bytes(cursor<L> c) const {
        std::uint64_t bytes = 0;
        do {
            c.load();
            c.skip_zeros();
            if (c.kind == entry_kind::leaf) bytes += lg2_to_size(c.item);
            if constexpr (L > 0)
                if (c.kind == entry_kind::table) bytes += subtree_leaf_bytes(c.descend());
        } while (c.next());
        return bytes;
    }

    /// True when the table `c` covers holds no leaf (below it neither) and all of it is readable.
    template <unsigned L>
    bool subtree_empty(cursor<L> c) const {
        do {
            if (!c.load() || c.kind == entry_kind::leaf) return false;
            c.skip_zeros();
            if constexpr (L > 0) {
                if (c.kind == entry_kind::table && !subtree_empty(c.descend())) return false;
            } else if (c.kind == entry_kind::table) {
                return false;
            }
        } while (c.next());
        return true;
    }

    /// Frees the table `c` covers and every table below it.
    template <unsigned L>
    void free_subtree(cursor<L> c) {
        const std::uint64_t table = c.table;
        if constexpr (L > 0) {
            do {
                if (!c.load()) continue;
                c.skip_zeros();
                if (c.kind == entry_kind::table) free_subtree(c.descend());
            } while (c.next());
        }
        free_table(L, table);
    }

    /// Frees the tables below the entries `c` covers that hold no leaf (walk_flush before
    /// each). Returns true when every entry is empty afterwards.
    template <unsigned L>
    bool reclaim_level(cursor<L> c) {
        bool empty = true;
        do {
            if (!c.load()) continue;
            c.skip_zeros();
            if (c.kind == entry_kind::leaf) {
                if constexpr (L == 0) return false;  // no table below: one leaf decides
                empty = false;
            }
            if constexpr (L > 0) {
                if (c.kind == entry_kind::table) {
                    word* w = c.writable();
                    if (w != nullptr && reclaim_level(c.descend())) {
                        store_entry(w, word{0});
                        if (hooks_.walk_flush) hooks_.walk_flush(hooks_.cookie, c.pos, lg2_to_size(c.item));
                        free_table(L - 1, F::table_address(cfg_, L, c.raw));
                    } else {
                        empty = false;
                    }
                }
            }
        } while (c.next());
        return empty;
    }

    // ---------------------------------------------------------------- replace

    /// replace's one-walk case (see there): true and `out` set when decided, false (nothing
    /// written) when the general path must do it: a missing table, a table or a leaf of
    /// another size (replicated included) in the slot, an entry the memory does not give.
    template <unsigned L>
    bool replace_one(std::uint64_t table, std::uint64_t mask, std::uint64_t va, std::uint64_t pa, unsigned lg2, prot p,
                     replace_outcome& out) {
        constexpr unsigned item = F::item_lg2(L);
        cursor<L> c{&cfg_, mem_, table, mask, va, va};
        if (lg2 == item) {
            if constexpr ((F::leaf_sizes(L) & lg2_to_size(item)) != 0) {
                if (!c.read(true)) return false;
                switch (c.kind) {
                case entry_kind::empty:
                    store_entry(c.entry, F::make_leaf(cfg_, L, item, pa, p));
                    out = {0, true};
                    return true;
                case entry_kind::leaf: {
                    if (c.leaf_lg2() != item) return false;
                    const word fresh = F::make_leaf(cfg_, L, item, pa, p);
                    if (c.leaf_address() == pa && c.leaf_prot() == F::leaf_prot(cfg_, L, fresh)) {
                        out = {0, false};
                        return true;
                    }
                    store_entry(c.entry, word{0});
                    if (hooks_.leaf_removed) hooks_.leaf_removed(hooks_.cookie, c.pos, lg2_to_size(item));
                    store_entry(c.entry, fresh);
                    out = {lg2_to_size(item), true};
                    return true;
                }
                case entry_kind::table:
                    return false;
                }
            }
            return false;
        }
        if constexpr (L > 0) {
            if (lg2 < item) {
                if (!c.read() || c.kind != entry_kind::table) return false;
                return replace_one<L - 1>(c.child(), detail::index_mask<F>(L - 1), va, pa, lg2, p, out);
            }
        }
        return false;
    }

    /// What a range holds, as replace sees it.
    enum class range_match : std::uint8_t {
        empty,    ///< no leaf in the range
        exact,    ///< every byte translates as the replacement would (output and permissions)
        differs,  ///< anything else
    };

    /// Reads the leaves in [va, last] (nothing written). Errors: fault (a bad table address).
    result<range_match> match_range(std::uint64_t va, std::uint64_t last, std::uint64_t delta, prot p) const {
        bool any = false, exact = true, covered = false;
        std::uint64_t next = va;  // first byte not yet known to translate as wanted
        auto r = visit(input_address{va}, input_address{last}, [&](const leaf_entry<F>& e) {
            any = true;
            const std::uint64_t from = std::max(e.iova, va);
            const std::uint64_t to = std::min(e.iova + low_mask(F::item_lg2(e.level)), last);
            const std::uint64_t oa = F::leaf_address(cfg_, e.level, e.raw);
            exact = from == next && oa + (from & low_mask(e.size_lg2)) == from + delta &&
                    F::leaf_prot(cfg_, e.level, e.raw) ==
                        F::leaf_prot(cfg_, e.level, F::make_leaf(cfg_, e.level, e.size_lg2, oa, p));
            covered = to == last;
            next = to + 1;
            return exact;  // the first difference decides
        });
        if (!r) return failure(r.error());
        if (!any) return range_match::empty;
        return exact && covered ? range_match::exact : range_match::differs;
    }

    /// map's general path over a range replace cleared, from the top. `stored` turns true
    /// when the plan passed and the tables are allocated: a failure after that (the memory
    /// changed under the operation) has stored and undone entries and may have freed tables.
    result<void> map_cleared(std::uint64_t va, std::uint64_t last, std::uint64_t delta, prot p, bool& stored) {
        return from_top(va, last, [&](auto& c) -> result<void> {
            need_counts need{};
            map_job j{delta, geo_.pgsize_bitmap, p, &need};
            j.budget = table_budget();
            if (auto plan = map_level<map_pass::plan>(c, j); !plan) return plan;
            if (j.need_bytes > j.budget) return failure(errc::nomem);
            table_pool pool;
            if (auto r = fill_pool(need, pool); !r) return r;
            stored = true;
            j.pool = &pool;
            j.done = va;
            auto applied = map_level<map_pass::apply>(c, j);
            drain_pool(pool);
            if (!applied && j.done > va) unmap_level<unmap_pass::apply>(c.over(va, j.done - 1));
            return applied;
        });
    }

    // ---------------------------------------------------------------- split

    /// The modes of a split walk: `check` walks the table as it is and counts the tables the
    /// split needs, checking that every entry it stores to can be written (nothing written);
    /// `count` continues a check below a leaf being split, where no table exists yet (reads
    /// nothing); `write` splits, taking tables from the pool.
    enum class split_mode : std::uint8_t { check, count, write };

    /// What a split walk needs besides its cursor.
    struct split_job {
        need_counts* need;
        table_pool* pool;  ///< write only
    };

    /// Makes `va` and `last + 1` leaf edges, allocating every table first.
    result<void> split_ends(std::uint64_t va, std::uint64_t last) {
        need_counts need{}, end_need{};
        if (auto r = split_at<split_mode::check>(va, {&need, nullptr}); !r) return r;
        const bool has_end = last + 1 != 0 && geo_.in_ias(last + 1);
        if (has_end)
            if (auto r = split_at<split_mode::check>(last + 1, {&end_need, nullptr}); !r) return r;
        // Both checks see the unsplit table: a leaf holding both ends becomes one table (at
        // level l, from the level-l+1 slot both ends share), not two. Count it once, or a
        // split that fits in memory fails with nomem.
        for (unsigned l = 0; l < levels_max; ++l) {
            const bool shared = need[l] != 0 && end_need[l] != 0 && l + 1 < levels_max &&
                                (va >> F::item_lg2(l + 1)) == ((last + 1) >> F::item_lg2(l + 1));
            if (!shared) need[l] += end_need[l];
        }
        table_pool pool;
        if (auto r = fill_pool(need, pool); !r) return r;
        // Every split keeps the translation as it was, so a store refused half-way (a memory
        // changed since the check) leaves the same mappings, in other leaf sizes.
        auto r = split_at<split_mode::write>(va, {&need, &pool});
        if (r && has_end) r = split_at<split_mode::write>(last + 1, {&need, &pool});
        drain_pool(pool);
        return r;
    }

    /// Largest leaf size below `lg2` that level L can hold, or L's item size.
    template <unsigned L>
    unsigned smaller_leaf(unsigned lg2) const noexcept {
        const std::uint64_t cand = F::leaf_sizes(L) & geo_.pgsize_bitmap & low_mask(lg2);
        if (cand == 0) return F::item_lg2(L);
        return 63 - static_cast<unsigned>(std::countl_zero(cand));
    }

    /// Walks to the leaf holding `boundary` and splits it until `boundary` is a leaf edge (see
    /// split_mode). Errors: fault, nomem (write: the pool ran dry, a broken contract).
    template <split_mode Mode>
    result<void> split_at(std::uint64_t boundary, split_job j) {
        return from_top(boundary, boundary, [&](auto& c) { return split_level<Mode>(c, j, prot::none); });
    }

    /// One level of split_at. `count`: the leaf being split has permissions `sim_prot`.
    template <split_mode Mode, unsigned L>
    result<void> split_level(cursor<L> c, split_job& j, prot sim_prot) {
        constexpr unsigned item = F::item_lg2(L);
        const std::uint64_t b = c.pos;
        unsigned lg2;
        prot perm;
        std::uint64_t oa = 0;
        if constexpr (Mode == split_mode::count) {
            // A table the split above fills afresh (map's fresh pass counted its tables): the
            // entry holding b is a leaf of the largest size usable here, or a table below.
            constexpr unsigned span_lg2 = item + F::index_lg2(L);
            const std::uint64_t span_base = b & ~low_mask(span_lg2);
            lg2 = leaf_choice<L>(span_base, span_base | low_mask(span_lg2), 0, geo_.pgsize_bitmap);
            if (lg2 == 0) {
                if constexpr (L > 0) return split_level<Mode>(c.into(0), j, sim_prot);
                return success();
            }
            perm = sim_prot;
        } else {
            if (!c.read()) return failure(errc::fault);
            if (c.kind == entry_kind::empty) return success();
            if (c.kind == entry_kind::table) {
                if constexpr (L > 0) return split_level<Mode>(c.descend(), j, prot::none);
                return failure(errc::fault);
            }
            lg2 = c.leaf_lg2();
            perm = c.leaf_prot();
            oa = c.leaf_address();
        }
        if ((b & low_mask(lg2)) == 0) return success();  // already an edge
        // A replicated leaf first becomes smaller leaves on the same level.
        while (lg2 > item && (b & low_mask(lg2)) != 0) {
            const unsigned to = smaller_leaf<L>(lg2);
            if constexpr (Mode != split_mode::count) {
                const std::uint64_t first_idx = c.first_copy(lg2);
                for (std::uint64_t i = 0; i < lg2_to_size(lg2 - item); ++i) {
                    word* w = c.writable(first_idx + i);
                    if (w == nullptr) return failure(errc::fault);
                    if constexpr (Mode == split_mode::write)
                        store_entry(w, F::make_leaf(cfg_, L, to, oa + ((i << item) & ~low_mask(to)), perm));
                }
                oa += (b & low_mask(lg2)) & ~low_mask(to);
            }
            lg2 = to;
        }
        if ((b & low_mask(lg2)) == 0) return success();
        // A single-entry leaf becomes a table holding the same translation in the largest pages
        // the table's sizes allow (with tables below it where this level has no usable size).
        if constexpr (L > 0) {
            const std::uint64_t base_va = b & ~low_mask(item);
            word* w = Mode == split_mode::count ? nullptr : c.writable();
            if (Mode != split_mode::count && w == nullptr) return failure(errc::fault);
            map_job mj{Mode == split_mode::write ? oa - base_va : 0, geo_.pgsize_bitmap, perm, j.need, j.pool};
            cursor<L - 1> fresh{&cfg_, mem_, 0, detail::index_mask<F>(L - 1), base_va, base_va | low_mask(item)};
            if constexpr (Mode != split_mode::write) {
                ++(*j.need)[L - 1];
                (void)map_level<map_pass::fresh>(fresh, mj);
                return split_level<split_mode::count>(c.into(0), j, perm);
            } else {
                auto& spare = j.pool->free[L - 1];
                if (spare.empty()) return failure(errc::nomem);  // check and write disagree: contract broken
                const std::uint64_t t = spare.back();
                spare.pop_back();
                fresh.table = t;
                if (auto r = map_level<map_pass::apply>(fresh, mj); !r) {
                    free_subtree(table_at<L - 1>(t));
                    return r;
                }
                store_entry(w, F::make_table(cfg_, L, t));
                return split_level<Mode>(c.into(t), j, prot::none);
            }
        }
        return success();
    }

    // ---------------------------------------------------------------- teardown

    void destroy() noexcept {
        if (mem_ == nullptr) return;
        if (hooks_.flush_all) hooks_.flush_all(hooks_.cookie);
        if (!owned_) {  // a borrowed table belongs to its builder
            mem_ = nullptr;
            return;
        }
        from_top(0, low_mask(geo_.ias), [&]<unsigned L>(cursor<L>& c) {
            if constexpr (L > 0) {
                do {
                    if (!c.load()) continue;
                    c.skip_zeros();
                    if (c.kind != entry_kind::table) continue;
                    if (word* w = c.writable()) store_entry(w, word{0});
                    free_subtree(c.descend());
                } while (c.next());
            }
        });
        mem_->free_table(root_, top_table_bytes());
        count_tables(-static_cast<std::int64_t>(top_table_bytes()));
        mem_ = nullptr;
    }

    config cfg_;
    geometry geo_;
    M* mem_;
    pa_t root_;
    flush_hooks hooks_;
    bool owned_;
    std::uint64_t table_bytes_;
};

} // namespace iopgtable
