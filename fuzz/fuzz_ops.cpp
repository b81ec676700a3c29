// SPDX-License-Identifier: MIT
/// @file fuzz_ops.cpp
/// libFuzzer target `fuzz_ops`: random operation sequences on `page_table<F, guest_ram>` over a
/// small bounded guest RAM, each result checked against the reference model (tests/support/reference_model.hpp).
///
/// Input, read front to back (fuzz/README.md has the byte-by-byte layout): format index (into
/// `all_formats`), configuration index (into `F::sample_configs()`), RAM size in tables, RAM
/// base, window placement, then up to `max_ops` operations. Addresses fall in a window of a few
/// of the largest pages, so operations collide; sizes are page sizes times 1..4, sometimes
/// ragged, zero or misaligned.
///
/// Checked after every operation: the result (ok or the error's name, bytes unmapped), the dump
/// (visit) of the operation's range, widened to the model's leaves at its ends, against the model (slot,
/// level, size, raw descriptor = make_leaf of the model's leaf), translations at the edges of
/// the range touched, flush-hook calls, table memory accounting; after a failed operation the
/// dump (still equal to the unchanged model), table bytes and RAM bytes are exactly as before
/// and no hook ran. Every `full_check_every` operations, after `reclaim` and at the end the whole
/// table (visit_all) is compared, so a store outside an operation's range is found too, a few
/// operations later at most (IOPGTABLE_FUZZ_TRACE=1 prints the operations). `nomem` must happen exactly when the tables the operation needs
/// exceed the free RAM. At the end: unmap everything, reclaim → only the root table remains;
/// destroy → no RAM in use.
#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdlib>
#include <map>
#include <memory>
#include <memory_resource>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include <iopgtable/engine/page_table.hpp>
#include <iopgtable/mem/guest_ram.hpp>

#include "fuzz_support.hpp"
#include "../tests/support/reference_model.hpp"

namespace iopgtable::fuzz {
namespace {

constexpr unsigned max_ops = 64;
/// Operations between two comparisons of the whole table with the model (the others compare
/// the operation's range only: a full dump after every operation cost two thirds of the time).
constexpr unsigned full_check_every = 16;

/// Flush-hook calls recorded during one operation.
struct hook_log {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> leaves;  ///< leaf_removed (iova, size)
    std::vector<std::pair<std::uint64_t, std::uint64_t>> walks;   ///< walk_flush (iova, size)
    unsigned flush_all = 0;

    void clear() {
        leaves.clear();
        walks.clear();
    }
    bool quiet() const { return leaves.empty() && walks.empty(); }
    /// True when [va, va + size) lies inside one walk_flush range.
    bool walk_covers(std::uint64_t va, std::uint64_t size) const {
        return std::any_of(walks.begin(), walks.end(),
                           [&](auto& w) { return va >= w.first && va + size - 1 <= w.first + w.second - 1; });
    }
    flush_hooks hooks() {
        flush_hooks h;
        h.cookie = this;
        h.leaf_removed = [](void* c, std::uint64_t iova, std::uint64_t size) {
            static_cast<hook_log*>(c)->leaves.emplace_back(iova, size);
        };
        h.walk_flush = [](void* c, std::uint64_t iova, std::uint64_t size) {
            static_cast<hook_log*>(c)->walks.emplace_back(iova, size);
        };
        h.flush_all = [](void* c) { ++static_cast<hook_log*>(c)->flush_all; };
        return h;
    }
};

/// One leaf entry of a dump.
struct dump_entry {
    std::uint64_t iova;
    unsigned level;
    unsigned size_lg2;
    std::uint64_t raw;
    std::uint64_t entry_address;
};

using test::greedy_leaves;
using test::model_leaf;
using test::reference_model;

/// Where the reference model's leaves live: a static 4 MiB buffer handed out by a monotonic
/// resource, spilling to the heap only past it, and reset when the input ends. An input maps
/// thousands of leaves, and a sanitizer allocation with its stack trace per leaf was a sixth of
/// a fuzz_ops execution. An arena rather than a growing pool: a pool that keeps what it took
/// from the heap makes every input that needs more leaves than any before it allocate more
/// than it frees, and while fuzzing libFuzzer answers each such input by running it a second
/// time and then a leak scan. With the arena an input frees what it took. One at a time (one
/// fuzzer thread): a second live arena aborts.
class model_arena {
public:
    model_arena() {
        if (live()++ != 0) std::abort();
    }
    model_arena(const model_arena&) = delete;
    model_arena& operator=(const model_arena&) = delete;
    ~model_arena() {
        arena().release();
        --live();
    }
    std::pmr::memory_resource* resource() noexcept { return &arena(); }

private:
    static std::pmr::monotonic_buffer_resource& arena() {
        static std::array<std::byte, std::size_t{4} << 20> buffer;
        static std::pmr::monotonic_buffer_resource r{buffer.data(), buffer.size()};
        return r;
    }
    static unsigned& live() {
        static unsigned n = 0;
        return n;
    }
};

/// Buffers every input needs, kept across inputs (cleared, capacity kept): made afresh per input,
/// their growth was a new ASan allocation, and new pages, each time.
struct scratch_buffers {
    hook_log log;
    std::vector<dump_entry> dump;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> leaves, removed;
};
scratch_buffers& scratch() {
    static scratch_buffers b;
    return b;
}

/// Guest RAM for the tables: one region per base the input can pick (at 0, at 1 GiB, ending at
/// 4 GiB), `region_size` bytes each, made once and kept. An input's tables come from a pool
/// window of its own size inside one region (guest_ram::set_table_pool, which also resets the
/// allocator): no RAM is made or cleared per input. Before, one RAM per (size, base), cleared
/// with a memset after every input and dropped when 64 were kept, spent a third of the time in
/// page faults and clearing. Tables are zero-filled when allocated, and the engine writes only
/// inside its tables (checked: every entry address lies in the pool), so what an earlier input
/// left outside the pool is never read.
constexpr std::uint64_t region_size = std::uint64_t{8} << 20;
constexpr std::uint64_t region_base[3] = {0, std::uint64_t{1} << 30, (std::uint64_t{1} << 32) - region_size};
guest_ram& region(unsigned which) {
    static guest_ram regions[3] = {guest_ram{region_size, pa_t{region_base[0]}}, guest_ram{region_size, pa_t{region_base[1]}},
                                   guest_ram{region_size, pa_t{region_base[2]}}};
    return regions[which];
}

/// Set of tables, as (level, input address >> span of a table at that level).
using table_set = std::set<std::pair<unsigned, std::uint64_t>>;

template <class F>
class ops_run {
public:
    using table = page_table<F, guest_ram>;
    using input = typename F::input_address;
    using word = typename F::word;

    ops_run(const typename F::config& cfg, const geometry& geo, byte_reader& in) : in_(in), cfg_(cfg), geo_(geo) {
        log_.clear();
        log_.flush_all = 0;
        for (unsigned b = 0; b < 64; ++b)
            if ((geo_.pgsize_bitmap >> b) & 1) sizes_.push_back(b);
        minp_ = lg2_to_size(sizes_.front());
        largest_lg2_ = sizes_.back();
        top_bytes_ = sizeof(word) << geo_.top_index_lg2;
        top_alloc_ = std::max<std::uint64_t>(64, top_bytes_);
        // Non-top tables: one size for every level (LPAE) makes the free-table count exact.
        table_size_ = 0;
        uniform_tables_ = true;
        for (unsigned l = 0; l + 1 < geo_.levels; ++l) {
            const std::uint64_t b = std::max<std::uint64_t>(64, level_table_bytes<F>(l));
            if (table_size_ != 0 && b != table_size_) uniform_tables_ = false;
            table_size_ = std::max(table_size_, b);
        }
        if (table_size_ == 0) table_size_ = 64;
        trace_ = std::getenv("IOPGTABLE_FUZZ_TRACE") != nullptr;
    }

    void run() {
        setup();
        for (op_ = 0; op_ < max_ops && !in_.empty(); ++op_) {
            switch (in_.u8() % 7) {
            case 0: op_map(); break;
            case 1: op_map_pages(); break;
            case 2: op_unmap(unmap_mode::exact); break;
            case 3: op_unmap(unmap_mode::split); break;
            case 4: op_translate(); break;
            case 5: op_reclaim(); break;
            case 6: op_lookup(); break;
            }
        }
        teardown();
    }

private:
    // ------------------------------------------------------------------ set-up and decoding

    void setup() {
        const std::uint64_t entries = table_size_ / sizeof(word);
        const std::uint64_t k_max = std::clamp<std::uint64_t>(32768 / entries, 4, 64);
        tables_ = in_.u8() % (k_max + 1);
        const std::uint64_t align = std::max(top_alloc_, table_size_);
        first_table_ = (top_alloc_ + table_size_ - 1) & ~(table_size_ - 1);
        const std::uint64_t ram_size = first_table_ + tables_ * table_size_;
        std::uint64_t base = 0;
        const unsigned which = in_.u8() % 3;
        switch (which) {
        case 0: base = 0; break;
        case 1: base = std::uint64_t{1} << 30; break;
        case 2: base = ((std::uint64_t{1} << 32) - ram_size) & ~(align - 1); break;
        }
        ram_ = &region(which);
        FUZZ_CHECK(base >= region_base[which] && ram_size <= region_size && base - region_base[which] <= region_size - ram_size,
                   "%s: a pool of %" PRIu64 " bytes at %#" PRIx64 " does not fit its RAM region", describe(), ram_size, base);
        FUZZ_CHECK(ram_->bytes_in_use() == 0, "%s: the RAM region still holds tables", describe());
        ram_->set_table_pool(pa_t{base}, ram_size);
        pool_ = {base, ram_size};
        auto t = table::create(cfg_, *ram_, log_.hooks());
        FUZZ_CHECK(t.ok(), "%s: create failed: %s", describe(), err_name(t.error()));
        pt_.emplace(std::move(t.value()));
        FUZZ_CHECK(pt_->table_bytes() == top_bytes_ && ram_->bytes_in_use() == top_alloc_,
                   "%s: fresh table holds %" PRIu64 " table bytes, RAM %" PRIu64, describe(), pt_->table_bytes(),
                   ram_->bytes_in_use());

        window_lg2_ = std::min(largest_lg2_ + 2, geo_.ias);
        switch (in_.u8() % 3) {
        case 0: window_base_ = 0; break;
        case 1: window_base_ = low_mask(geo_.ias) - low_mask(window_lg2_); break;  // 2^ias - 2^w, ias 64 too
        case 2: window_base_ = (std::uint64_t{in_.u16()} << window_lg2_) & low_mask(geo_.ias); break;
        }
        check_range(0, low_mask(geo_.ias));
        check_state(false, before());
        if (trace_)
            std::fprintf(stderr, "setup %s ram base %#" PRIx64 " tables %" PRIu64 " window %#" PRIx64 "/2^%u\n",
                         describe(), base, tables_, window_base_, window_lg2_);
    }

    std::uint64_t addr() {
        const std::uint8_t b = in_.u8(), c = in_.u8();
        const std::uint64_t anchor = std::uint64_t{b & 3u} << largest_lg2_;
        const unsigned s = sizes_[(b >> 2) % sizes_.size()];
        const std::uint64_t jitter = ((c >> 3) & 15u) * minp_;
        std::uint64_t va = window_base_ + anchor + (std::uint64_t{c & 7u} << s);
        return (c & 0x80) ? va - jitter : va + jitter;
    }
    std::uint64_t pa_for(std::uint64_t va) {
        const std::uint8_t d = in_.u8();
        const std::uint64_t k = d >> 2;
        switch (d & 3) {
        case 0: return va;
        case 1: return va + k * minp_;
        case 2: return (((k & 15) << largest_lg2_) & low_mask(geo_.oas)) | (va & low_mask(largest_lg2_));
        default: return lg2_to_size(geo_.oas) - (k + 1) * minp_ + (k == 63 ? minp_ : 0);
        }
    }
    std::uint64_t size() {
        const std::uint8_t b = in_.u8(), e = in_.u8();
        std::uint64_t size = std::uint64_t{1 + ((b >> 4) & 3u)} << sizes_[(b & 15u) % sizes_.size()];
        if (e & 0x80) size += ((e >> 4) & 7u) * minp_;
        switch (e & 0xf) {
        case 0xf: return 0;
        case 0xe: return size + 1;
        case 0xd: return lg2_to_size(window_lg2_);
        case 0xc: return ~(minp_ - 1);
        default: return size;
        }
    }
    prot prot_bits() {
        const std::uint8_t p = in_.u8();
        std::uint32_t bits = p & prot_all_bits;
        if (!(p & 0x80) && !(bits & 3)) bits |= to_bits(prot::read);
        if ((p & 0xc0) == 0xc0) bits |= 0x40;  // unknown flag
        return prot_from_bits(bits);
    }

    // ------------------------------------------------------------------ helpers

    const char* describe() {
        std::snprintf(desc_, sizeof desc_, "%s/%zu-byte words ias %u oas %u levels %u top 2^%u pages %#" PRIx64,
                      F::name, sizeof(word), geo_.ias, geo_.oas, geo_.levels, geo_.top_index_lg2, geo_.pgsize_bitmap);
        return desc_;
    }
    static const char* err_name(errc e) { return to_string(e).data(); }
    template <class R>
    static const char* result_name(const R& r) {
        return r.ok() ? "ok" : err_name(r.error());
    }
    void set_context(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
        int n = std::snprintf(ctx_, sizeof ctx_, "[%s] op %u: ", F::name, op_);
        std::va_list ap;
        va_start(ap, fmt);
        std::vsnprintf(ctx_ + n, sizeof ctx_ - static_cast<std::size_t>(n), fmt, ap);
        va_end(ap);
        if (trace_) std::fprintf(stderr, "%s\n", ctx_);
    }

    /// The level the engine places a leaf of 2^lg2 at: the highest level that holds that size.
    unsigned leaf_level(unsigned lg2) {
        for (unsigned l = geo_.levels; l-- > 0;)
            if ((F::leaf_sizes(l) & geo_.pgsize_bitmap & lg2_to_size(lg2)) != 0) return l;
        fail("leaf_level", "no level holds this size", "%s: size 2^%u", ctx_, lg2);
    }
    unsigned span_lg2(unsigned level) const { return F::item_lg2(level) + F::index_lg2(level); }

    /// Sets the input range the next check_state compares, from the model before the operation:
    /// [va, last] widened to the smallest page at each end, or to the whole leaf the model has
    /// there (an operation may only change entries in that range: its own leaves, and the
    /// leaves a split breaks at its ends); a range that wraps is the whole table. A store
    /// outside it is caught by the whole-table comparison every `full_check_every` operations.
    /// Widening to whole largest pages instead cost a scan of a full 8192-entry table for each
    /// operation of a 64K-granule format (half of this target's time).
    void check_range(std::uint64_t va, std::uint64_t last) {
        const std::uint64_t ias_last = low_mask(geo_.ias);
        if (last < va || va > ias_last) {
            check_lo_ = 0;
            check_hi_ = ias_last;
            return;
        }
        last = std::min(last, ias_last);
        auto lo = model_.find(va);
        check_lo_ = lo != model_.leaves().end() ? lo->first : va & ~(minp_ - 1);
        auto hi = model_.find(last);
        check_hi_ = hi != model_.leaves().end() ? hi->first + low_mask(hi->second.size_lg2) : last | (minp_ - 1);
    }

    void snapshot_dump(std::vector<dump_entry>& out, std::uint64_t lo, std::uint64_t hi) {
        out.clear();
        auto r = pt_->visit(input{lo}, input{hi}, [&](const leaf_entry<F>& e) {
            FUZZ_CHECK(pool_.contains(e.entry_address, sizeof(word)) && e.entry_address.value % sizeof(word) == 0,
                       "%s: entry at %#" PRIx64 " outside its table pool", ctx_, e.entry_address.value);
            out.push_back({e.iova, e.level, e.size_lg2, static_cast<std::uint64_t>(e.raw), e.entry_address.value});
            return true;
        });
        FUZZ_CHECK(r.ok(), "%s: visit of our own table failed: %s", ctx_, err_name(r.error()));
    }

    /// The dump of [lo, hi] (no model leaf straddles its edges) must be exactly
    /// the model's leaves there, each replicated copy in its own slot.
    void check_dump_matches_model(const std::vector<dump_entry>& dump, std::uint64_t lo, std::uint64_t hi) {
        std::size_t i = 0;
        for (auto it = model_.leaves().lower_bound(lo); it != model_.leaves().end() && it->first <= hi; ++it) {
            const auto& [va, leaf] = *it;
            const unsigned level = leaf_level(leaf.size_lg2);
            const unsigned item = F::item_lg2(level);
            const auto raw = static_cast<std::uint64_t>(F::make_leaf(cfg_, level, leaf.size_lg2, leaf.pa, leaf.perm));
            for (std::uint64_t c = 0; c < lg2_to_size(leaf.size_lg2 - item); ++c, ++i) {
                const std::uint64_t slot = va + (c << item);
                FUZZ_CHECK(i < dump.size(), "%s: model leaf %#" PRIx64 " (2^%u -> %#" PRIx64 ") missing from the dump",
                           ctx_, slot, leaf.size_lg2, leaf.pa);
                const dump_entry& e = dump[i];
                FUZZ_CHECK(e.iova == slot && e.level == level && e.size_lg2 == leaf.size_lg2 && e.raw == raw,
                           "%s: dump entry %zu is %#" PRIx64 " level %u 2^%u raw %#" PRIx64
                           ", model says %#" PRIx64 " level %u 2^%u raw %#" PRIx64,
                           ctx_, i, e.iova, e.level, e.size_lg2, e.raw, slot, level, leaf.size_lg2, raw);
            }
        }
        FUZZ_CHECK(i == dump.size(), "%s: dump has %zu entries beyond the model's (first at %#" PRIx64 ")", ctx_,
                   dump.size() - i, dump[i].iova);
    }

    /// Tables the model's leaves need below the root (the minimum a reclaimed table holds).
    table_set tables_for_model() {
        table_set s;
        std::pair<unsigned, std::uint64_t> last{~0u, 0};  // neighbours mostly share their table
        for (const auto& [va, leaf] : model_.leaves()) {
            const unsigned level = leaf_level(leaf.size_lg2);
            if (level + 1 >= geo_.levels) continue;
            const std::pair<unsigned, std::uint64_t> own{level, va >> span_lg2(level)};
            if (own == last) continue;
            last = own;
            for (unsigned l = level; l + 1 < geo_.levels; ++l) s.emplace(l, va >> span_lg2(l));
        }
        return s;
    }
    std::uint64_t bytes_of(const table_set& s) const {
        std::uint64_t b = 0;
        for (auto& t : s) b += level_table_bytes<F>(t.first);
        return b;
    }
    /// Non-top tables RAM can still hand out (exact when every non-top table has one size).
    std::uint64_t free_tables() const {
        const std::uint64_t used = (ram_->bytes_in_use() - top_alloc_) / table_size_;
        return tables_ - used;
    }

    struct before_state {
        std::uint64_t table_bytes, ram_bytes, free_tables;
    };
    /// Call right before the operation: clears the hook log, records table memory.
    before_state before() {
        log_.clear();
        return {pt_->table_bytes(), ram_->bytes_in_use(), free_tables()};
    }

    /// After every operation: the dump of the range check_range set (of everything, every
    /// full_check_every operations) equals the model; accounting is consistent; a failed
    /// operation changed nothing at all (the model did not change, so the dump equal to it is
    /// the dump from before). Resets the range to the whole table.
    void check_state(bool failed, const before_state& b) {
        if (op_ % full_check_every == full_check_every - 1) check_range(0, low_mask(geo_.ias));
        snapshot_dump(scratch_, check_lo_, check_hi_);
        if (failed) {
            FUZZ_CHECK(pt_->table_bytes() == b.table_bytes && ram_->bytes_in_use() == b.ram_bytes,
                       "%s: the failed operation changed table memory: table %" PRIu64 " -> %" PRIu64
                       ", RAM %" PRIu64 " -> %" PRIu64,
                       ctx_, b.table_bytes, pt_->table_bytes(), b.ram_bytes, ram_->bytes_in_use());
            FUZZ_CHECK(log_.quiet(), "%s: the failed operation called %zu leaf_removed and %zu walk_flush hooks", ctx_,
                       log_.leaves.size(), log_.walks.size());
        }
        check_dump_matches_model(scratch_, check_lo_, check_hi_);
        check_range(0, low_mask(geo_.ias));
        FUZZ_CHECK(ram_->bytes_in_use() == pt_->table_bytes() - top_bytes_ + top_alloc_,
                   "%s: table_bytes %" PRIu64 " but RAM in use %" PRIu64, ctx_, pt_->table_bytes(), ram_->bytes_in_use());
    }

    void check_translation(std::uint64_t va) {
        const std::optional<std::uint64_t> want = beyond(va, geo_.ias) ? std::nullopt : model_.translate(va);
        const auto got = pt_->iova_to_phys(input{va});
        FUZZ_CHECK(want.has_value() == got.has_value() && (!want || *want == got->value),
                   "%s: iova_to_phys(%#" PRIx64 ") = %s%#" PRIx64 ", model says %s%#" PRIx64, ctx_, va,
                   got ? "" : "none ", got ? got->value : 0, want ? "" : "none ", want.value_or(0));
    }
    void check_edges(std::uint64_t va, std::uint64_t last) {
        check_translation(va);
        check_translation(last);
        check_translation(va - 1);
        check_translation(last + 1);
    }

    void check_lookup(std::uint64_t va) {
        const walk_info<F> w = pt_->lookup(input{va});
        FUZZ_CHECK(w.accesses <= geo_.levels, "%s: lookup(%#" PRIx64 ") read %u entries", ctx_, va, w.accesses);
        if (beyond(va, geo_.ias)) {
            FUZZ_CHECK(w.status == walk_status::out_of_range, "%s: lookup(%#" PRIx64 ") beyond IAS gave status %d",
                       ctx_, va, int(w.status));
            return;
        }
        FUZZ_CHECK(pool_.contains(w.entry_address, sizeof(word)), "%s: lookup(%#" PRIx64 ") entry %#" PRIx64 " outside its table pool",
                   ctx_, va, w.entry_address.value);
        FUZZ_CHECK(w.accesses == geo_.levels - w.level, "%s: lookup(%#" PRIx64 ") stopped at level %u after %u reads",
                   ctx_, va, w.level, w.accesses);
        auto it = model_.find(va);
        if (it == model_.leaves().end()) {
            FUZZ_CHECK(w.status == walk_status::unmapped, "%s: lookup(%#" PRIx64 ") status %d, model: unmapped", ctx_,
                       va, int(w.status));
            return;
        }
        const model_leaf& leaf = it->second;
        const unsigned level = leaf_level(leaf.size_lg2);
        const auto raw = static_cast<std::uint64_t>(F::make_leaf(cfg_, level, leaf.size_lg2, leaf.pa, leaf.perm));
        FUZZ_CHECK(w.status == walk_status::mapped && w.level == level && w.size_lg2 == leaf.size_lg2 &&
                       w.input_base == it->first && w.oa.value == leaf.pa + (va - it->first) &&
                       static_cast<std::uint64_t>(w.raw) == raw,
                   "%s: lookup(%#" PRIx64 ") = status %d level %u 2^%u base %#" PRIx64 " oa %#" PRIx64 " raw %#" PRIx64
                   "; model: level %u 2^%u base %#" PRIx64 " oa %#" PRIx64 " raw %#" PRIx64,
                   ctx_, va, int(w.status), w.level, w.size_lg2, w.input_base, w.oa.value,
                   static_cast<std::uint64_t>(w.raw), level, leaf.size_lg2, it->first, leaf.pa + (va - it->first), raw);
        FUZZ_CHECK(F::make_leaf(cfg_, level, leaf.size_lg2, leaf.pa, w.perm) == w.raw,
                   "%s: lookup(%#" PRIx64 ") perm %#x does not rebuild the leaf", ctx_, va, to_bits(w.perm));
    }

    /// The model's answer for map: an error, or nothing (ok, or nomem when tables run out).
    std::optional<errc> predict_map(std::uint64_t va, std::uint64_t pa, std::uint64_t size, prot p, std::uint64_t sizes) {
        if (size == 0 || !prot_valid(p)) return errc::invalid;
        if (auto c = F::check_prot(cfg_, p); !c) return c.error();
        const std::uint64_t minp = sizes & (~sizes + 1);
        if (((va | pa | size) & (minp - 1)) != 0) return errc::invalid;
        const std::uint64_t last = va + size - 1, pa_last = pa + size - 1;
        if (last < va || pa_last < pa || beyond(last, geo_.ias) || beyond(pa_last, geo_.oas)) return errc::range;
        if (model_.overlaps(va, last)) return errc::exists;
        return std::nullopt;
    }

    /// Tables a map the model accepts must allocate, from the table as it is now; nullopt when
    /// the leaves alone need more slots than RAM has (nomem is certain).
    std::optional<table_set> tables_for_map(std::uint64_t va, std::uint64_t pa, std::uint64_t size, std::uint64_t sizes) {
        table_set need;
        // The leaves come in ascending order, so at each level the key va >> span is
        // non-decreasing: comparing with the last key seen at that level finds every repeat
        // without a set (a set node per leaf, a sanitizer allocation each, was a third of an
        // execution for inputs that map thousands of leaves).
        constexpr std::uint64_t none = ~std::uint64_t{0};
        std::array<std::uint64_t, 8> last_key;
        last_key.fill(none);
        static_assert(F::max_levels <= 8);
        std::uint64_t below_top = 0;
        const std::uint64_t slot_limit = (tables_ + 1) * (table_size_ / sizeof(word));
        bool certain_nomem = false;
        greedy_leaves(sizes, va, pa, size, [&](std::uint64_t lva, std::uint64_t, unsigned lg2) {
            const unsigned level = leaf_level(lg2);
            if (level + 1 < geo_.levels && ++below_top > slot_limit) {
                certain_nomem = true;
                return false;
            }
            const std::uint64_t key = lva >> span_lg2(level);
            if (last_key[level] == key) return true;
            last_key[level] = key;
            const walk_info<F> w = pt_->lookup(input{lva});
            FUZZ_CHECK(w.status == walk_status::unmapped, "%s: planned leaf at %#" PRIx64 " finds status %d", ctx_, lva,
                       int(w.status));
            for (unsigned l = level; l < w.level; ++l) need.emplace(l, lva >> span_lg2(l));
            return true;
        });
        if (certain_nomem) return std::nullopt;
        return need;
    }

    /// Checks an ok/nomem outcome against the tables needed and the RAM free before the operation.
    void check_nomem(bool got_nomem, const std::optional<table_set>& need, const before_state& b) {
        if (!need) {
            FUZZ_CHECK(got_nomem, "%s: succeeded although its leaves need more table slots than RAM has", ctx_);
            return;
        }
        if (!uniform_tables_) {
            FUZZ_CHECK(!got_nomem || !need->empty(), "%s: nomem although no table is needed", ctx_);
            return;
        }
        const std::uint64_t needed = need->size(), free = b.free_tables;
        FUZZ_CHECK(got_nomem == (needed > free), "%s: %s with %" PRIu64 " tables needed and %" PRIu64 " free", ctx_,
                   got_nomem ? "nomem" : "ok", needed, free);
    }

    // ------------------------------------------------------------------ operations

    void op_map() {
        const std::uint64_t va = addr(), pa = pa_for(va), size = this->size();
        const prot p = prot_bits();
        set_context("map va %#" PRIx64 " pa %#" PRIx64 " size %#" PRIx64 " prot %#x", va, pa, size, to_bits(p));
        map_common(va, pa, size, p, geo_.pgsize_bitmap, [&] {
            auto r = pt_->map(input{va}, pa_t{pa}, length_t{size}, p);
            return r.ok() ? std::optional<errc>{} : std::optional<errc>{r.error()};
        });
    }

    void op_map_pages() {
        const std::uint64_t va = addr(), pa = pa_for(va);
        const std::uint8_t b = in_.u8(), c = in_.u8();
        std::uint64_t pgsize = lg2_to_size(sizes_[(b & 15u) % sizes_.size()]);
        switch (b >> 5) {
        case 7: pgsize = 0; break;
        case 6: pgsize <<= 1; break;
        case 5: pgsize *= 3; break;
        default: break;
        }
        std::uint64_t pgcount = 1 + (c & 7u);
        if (c == 0xff) pgcount = 0;
        if (c == 0xfe) pgcount = std::uint64_t{1} << 62;
        const prot p = prot_bits();
        set_context("map_pages va %#" PRIx64 " pa %#" PRIx64 " pgsize %#" PRIx64 " count %" PRIu64 " prot %#x", va, pa,
                    pgsize, pgcount, to_bits(p));

        std::optional<errc> early;
        if (pgsize == 0 || (pgsize & (pgsize - 1)) != 0 || (pgsize & geo_.pgsize_bitmap) == 0 || pgcount == 0)
            early = errc::invalid;
        else if (((va | pa) & (pgsize - 1)) != 0)
            early = errc::invalid;
        else if (pgcount > (~std::uint64_t{0} >> std::countr_zero(pgsize)))
            early = errc::range;
        if (early) {
            check_range(va, va + pgsize - 1);
            const auto b4 = before();
            auto r = pt_->map_pages(input{va}, pa_t{pa}, length_t{pgsize}, pgcount, p);
            FUZZ_CHECK(!r.ok() && r.error() == *early, "%s: got %s, model says %s", ctx_, result_name(r), err_name(*early));
            check_state(true, b4);
            return;
        }
        const std::uint64_t size = pgcount * pgsize;
        map_common(va, pa, size, p, pgsize, [&] {
            auto r = pt_->map_pages(input{va}, pa_t{pa}, length_t{pgsize}, pgcount, p);
            if (!r.ok()) return std::optional<errc>{r.error()};
            FUZZ_CHECK(r->value == size, "%s: mapped %#" PRIx64 " bytes, asked %#" PRIx64, ctx_, r->value, size);
            return std::optional<errc>{};
        });
    }

    template <class Call>
    void map_common(std::uint64_t va, std::uint64_t pa, std::uint64_t size, prot p, std::uint64_t sizes, Call&& call) {
        const std::optional<errc> want = predict_map(va, pa, size, p, sizes);
        std::optional<table_set> need;
        if (!want) need = tables_for_map(va, pa, size, sizes);
        check_range(va, va + size - 1);
        const auto b4 = before();
        const std::optional<errc> got = call();
        if (want) {
            FUZZ_CHECK(got && *got == *want, "%s: got %s, model says %s", ctx_, got ? err_name(*got) : "ok",
                       err_name(*want));
            check_state(true, b4);
            return;
        }
        FUZZ_CHECK(!got || *got == errc::nomem, "%s: got %s, model says ok (or nomem)", ctx_, err_name(*got));
        check_nomem(got.has_value(), need, b4);
        if (got) {
            check_state(true, b4);
            return;
        }
        greedy_leaves(sizes, va, pa, size, [&](std::uint64_t lva, std::uint64_t lpa, unsigned lg2) {
            model_.add(model_leaf{lva, lg2, lpa, p});
            return true;
        });
        const std::uint64_t last = va + size - 1;
        FUZZ_CHECK(log_.leaves.empty(), "%s: map called leaf_removed", ctx_);
        for (auto& w : log_.walks)
            FUZZ_CHECK(w.first >= va && w.first + w.second - 1 <= last,
                       "%s: map flushed walks at %#" PRIx64 "+%#" PRIx64 " outside its range", ctx_, w.first, w.second);
        check_state(false, b4);
        check_edges(va, last);
    }

    void op_unmap(unmap_mode mode) {
        const std::uint64_t va = addr(), size = this->size();
        const bool split = mode == unmap_mode::split;
        set_context("unmap%s va %#" PRIx64 " size %#" PRIx64, split ? "(split)" : "", va, size);
        const std::uint64_t last = va + size - 1;
        std::optional<errc> want;
        if (size == 0 || ((va | size) & (minp_ - 1)) != 0) want = errc::invalid;
        else if (last < va || beyond(last, geo_.ias)) want = errc::range;
        else if (!split && model_.cuts(va, last)) want = errc::partial;

        // Splitting: the tables the splits at both ends create.
        table_set need;
        std::vector<std::uint64_t> bounds;
        if (!want && split) {
            bounds.push_back(va);
            if (last + 1 != 0 && !beyond(last + 1, geo_.ias)) bounds.push_back(last + 1);
            for (std::uint64_t b : bounds)
                model_.split_steps(b, [&](unsigned from, unsigned to) {
                    FUZZ_CHECK(to != 0, "%s: model cannot split 2^%u at %#" PRIx64, ctx_, from, b);
                    for (unsigned l = leaf_level(to); l < leaf_level(from); ++l) need.emplace(l, b >> span_lg2(l));
                });
        }

        check_range(va, last);
        const auto b4 = before();
        auto r = pt_->unmap(input{va}, length_t{size}, mode);
        if (want) {
            FUZZ_CHECK(!r.ok() && r.error() == *want, "%s: got %s, model says %s", ctx_, result_name(r), err_name(*want));
            check_state(true, b4);
            return;
        }
        FUZZ_CHECK(r.ok() || (split && r.error() == errc::nomem), "%s: got %s, model says ok", ctx_, result_name(r));
        if (split) check_nomem(!r.ok(), need, b4);
        if (!r.ok()) {
            check_state(true, b4);
            return;
        }
        for (std::uint64_t b : bounds) model_.split(b);
        auto& removed = scratch().removed;
        removed.clear();
        model_.remove_inside(va, last, [&](std::uint64_t lva, const model_leaf& l) {
            removed.emplace_back(lva, lg2_to_size(l.size_lg2));
        });
        std::uint64_t bytes = 0;
        for (auto& rm : removed) bytes += rm.second;
        FUZZ_CHECK(r->value == bytes, "%s: unmapped %#" PRIx64 " bytes, model says %#" PRIx64, ctx_, r->value, bytes);
        check_hooks_after_removal(removed);
        check_state(false, b4);
        check_edges(va, last);
    }

    /// Every leaf removed is reported (leaf_removed, or inside a walk_flush range); nothing else
    /// is; no walk_flush range holds a leaf that is still mapped.
    void check_hooks_after_removal(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& removed) {
        auto& leaves = scratch().leaves;
        leaves.assign(log_.leaves.begin(), log_.leaves.end());
        std::sort(leaves.begin(), leaves.end());
        FUZZ_CHECK(std::adjacent_find(leaves.begin(), leaves.end()) == leaves.end(), "%s: a leaf reported twice", ctx_);
        for (auto& l : leaves)
            FUZZ_CHECK(std::binary_search(removed.begin(), removed.end(), l),
                       "%s: leaf_removed(%#" PRIx64 ", %#" PRIx64 ") is not a removed leaf", ctx_, l.first, l.second);
        for (auto& rm : removed)
            FUZZ_CHECK(std::binary_search(leaves.begin(), leaves.end(), rm) || log_.walk_covers(rm.first, rm.second),
                       "%s: removed leaf %#" PRIx64 "+%#" PRIx64 " never reported to the hooks", ctx_, rm.first,
                       rm.second);
        for (auto& w : log_.walks)
            FUZZ_CHECK(!model_.overlaps(w.first, w.first + w.second - 1),
                       "%s: walk_flush(%#" PRIx64 ", %#" PRIx64 ") covers a live leaf: a table with mappings was freed",
                       ctx_, w.first, w.second);
    }

    void op_translate() {
        const unsigned n = 1 + (in_.u8() & 3u);
        for (unsigned i = 0; i < n; ++i) {
            const std::uint8_t how = in_.u8();
            set_context("iova_to_phys probe %u", i);
            if ((how & 1) && !model_.leaves().empty()) {
                auto it = model_.leaves().begin();
                std::advance(it, in_.u16() % model_.leaves().size());
                check_edges(it->first, it->first + low_mask(it->second.size_lg2));
            } else {
                check_translation(addr());
            }
        }
    }

    void op_lookup() {
        const std::uint8_t how = in_.u8();
        std::uint64_t va;
        if ((how & 1) && !model_.leaves().empty()) {
            auto it = model_.leaves().begin();
            std::advance(it, in_.u16() % model_.leaves().size());
            va = it->first + ((std::uint64_t{in_.u16()} * minp_) & low_mask(it->second.size_lg2));
        } else {
            va = addr();
        }
        set_context("lookup %#" PRIx64, va);
        check_lookup(va);
    }

    void op_reclaim() {
        set_context("reclaim");
        const auto b4 = before();
        const std::uint64_t freed = pt_->reclaim();
        FUZZ_CHECK(b4.table_bytes - freed == pt_->table_bytes(), "%s: reclaim says %" PRIu64 " freed, table bytes %" PRIu64
                   " -> %" PRIu64, ctx_, freed, b4.table_bytes, pt_->table_bytes());
        FUZZ_CHECK(log_.leaves.empty(), "%s: reclaim called leaf_removed", ctx_);
        for (auto& w : log_.walks)
            FUZZ_CHECK(!model_.overlaps(w.first, w.first + w.second - 1),
                       "%s: reclaim flushed %#" PRIx64 "+%#" PRIx64 ", which holds a live leaf", ctx_, w.first, w.second);
        const std::uint64_t minimum = top_bytes_ + bytes_of(tables_for_model());
        FUZZ_CHECK(pt_->table_bytes() == minimum,
                   "%s: after reclaim the table holds %" PRIu64 " bytes, its leaves need %" PRIu64, ctx_,
                   pt_->table_bytes(), minimum);
        check_state(false, b4);
        FUZZ_CHECK(pt_->reclaim() == 0, "%s: a second reclaim freed more", ctx_);
    }

    void teardown() {
        op_ = max_ops;
        set_context("teardown: unmap everything");
        const auto b4 = before();
        // The whole IAS; one that fills 64 bits is longer than a length holds: two halves.
        auto r = pt_->unmap(input{0}, length_t{geo_.ias >= 64 ? std::uint64_t{1} << 63 : lg2_to_size(geo_.ias)});
        if (r.ok() && geo_.ias >= 64) {
            auto hi = pt_->unmap(input{std::uint64_t{1} << 63}, length_t{std::uint64_t{1} << 63});
            r = hi.ok() ? result<length_t>(length_t{r->value + hi->value}) : hi;
        }
        FUZZ_CHECK(r.ok() && r->value == model_.mapped_bytes(), "%s: got %s %#" PRIx64 ", model says %#" PRIx64, ctx_,
                   result_name(r), r.ok() ? r->value : 0, model_.mapped_bytes());
        auto& removed = scratch().removed;
        removed.clear();
        model_.remove_inside(0, low_mask(geo_.ias), [&](std::uint64_t va, const model_leaf& l) {
            removed.emplace_back(va, lg2_to_size(l.size_lg2));
        });
        check_hooks_after_removal(removed);
        check_state(false, b4);
        pt_->reclaim();
        FUZZ_CHECK(pt_->table_bytes() == pt_->top_table_bytes() && ram_->bytes_in_use() == top_alloc_,
                   "%s: after unmapping everything and reclaim: table %" PRIu64 " bytes (root %" PRIu64 "), RAM %" PRIu64,
                   ctx_, pt_->table_bytes(), pt_->top_table_bytes(), ram_->bytes_in_use());
        log_.flush_all = 0;
        pt_.reset();
        FUZZ_CHECK(log_.flush_all == 1, "%s: destruction called flush_all %u times", ctx_, log_.flush_all);
        FUZZ_CHECK(ram_->bytes_in_use() == 0, "%s: %" PRIu64 " RAM bytes still in use after destruction", ctx_,
                   ram_->bytes_in_use());
        // Drop the RAM's free lists now rather than at the next input's set_table_pool: an
        // input that leaves heap memory behind makes libFuzzer run it again and scan for
        // leaks (a sixth of the fuzzing time, when the next input freed them instead).
        ram_->set_table_pool(pa_t{pool_.first}, pool_.bytes);
    }

    byte_reader& in_;
    typename F::config cfg_;
    geometry geo_;
    std::vector<unsigned> sizes_;
    std::uint64_t minp_ = 0;
    unsigned largest_lg2_ = 0;
    std::uint64_t top_bytes_ = 0, top_alloc_ = 0, table_size_ = 0, first_table_ = 0, tables_ = 0;
    bool uniform_tables_ = true;
    unsigned window_lg2_ = 0;
    std::uint64_t window_base_ = 0;
    guest_ram* ram_ = nullptr;
    /// The input's table pool [first, first + bytes) inside *ram_: all the RAM its tables may use.
    struct {
        std::uint64_t first = 0, bytes = 0;
        bool contains(pa_t a, std::uint64_t len) const { return a.value >= first && a.value - first <= bytes - len; }
    } pool_;
    hook_log& log_ = scratch().log;
    std::optional<table> pt_;
    model_arena arena_;
    reference_model model_{geo_, arena_.resource()};
    std::vector<dump_entry>& scratch_ = scratch().dump;
    std::uint64_t check_lo_ = 0, check_hi_ = ~std::uint64_t{0};  ///< what check_state compares
    unsigned op_ = 0;
    bool trace_ = false;
    char ctx_[320] = "setup";
    char desc_[200] = "";
};

} // namespace
} // namespace iopgtable::fuzz

IOPGTABLE_FUZZ_LISTS(iopgtable::fuzz::format_names())

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return iopgtable::fuzz::run_per_format<iopgtable::fuzz::ops_run>(data, size);
}
