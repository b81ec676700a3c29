// SPDX-License-Identifier: MIT
#pragma once
/// @file stage2_view.hpp
/// Guest memory seen through stage 2: table memory whose addresses are guest-physical (IPAs).
///
/// `stage2_view` is a `table_reader`: `entry<W>(ipa)` translates the IPA through a stage-2
/// table (any stage-2 format), then asks the host memory model (guest_ram standing for host
/// physical memory, bounds-checked) for the word at the host-physical address. It returns
/// nullptr when stage 2 faults (and records why), so a stage-1 walker run over it walks a
/// guest's tables exactly as nested hardware does: every table fetch goes through stage 2
/// (Arm ARM D8.2 / "stage 2 translation of stage 1 table addresses"; VT-d 3.8 nested
/// translation). The walkers type every table address as pa_t; through this view those
/// numbers are IPAs.
///
/// `guest_table_memory` is a `table_memory` over the same view for a guest that writes its own
/// stage-1 tables: tables are allocated from a window of IPAs the guest reserves for them, and
/// every read and write goes through stage 2 (with stage-2 read and write permission).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <span>

#include "../core/address.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"
#include "../mem/memory.hpp"
#include "../mem/table_window.hpp"
#include "stage.hpp"
#include "types.hpp"
#include "walk_cache.hpp"

namespace iopgtable::nested {

/// Why the last entry fetch through a stage2_view failed.
struct fetch_fault {
    /// 2: stage 2 could not translate the entry's IPA or refused the walk (permission, also
    /// for Device memory with `protected_table_walk`). 1: a stage-1 fault on the fetch: the IPA
    /// is at or above 2^ipa_bits, stage 1's output size (address_size), or stage 2 translates
    /// it but the host memory does not back the output (walk_abort: an external abort on the
    /// stage-1 descriptor fetch, SMMUv3 7.3 F_WALK_EABT with S2 = 0, CLASS = TT; Arm
    /// FetchDescriptor records it in the stage-1 fault record; VT-d reports a first-stage
    /// reason). The walker that fetched knows the stage-1 level.
    unsigned stage = 2;
    unsigned level = 0;  ///< stage 2: the stage-2 level of the fault
    std::uint64_t ipa = 0;
    fault_reason reason = fault_reason::translation;
};

/// Settings of a stage2_view.
struct view_settings {
    /// Stage 1's output address size: a table IPA at or above 2^ipa_bits faults (address size,
    /// stage 1) before stage 2 is asked.
    unsigned ipa_bits = 64;
    /// Fetches also need stage-2 write permission (a guest writing its own tables).
    bool need_write = false;
    /// A fetch that faults reads as a zero (empty) entry instead of giving nullptr. For walks
    /// that only need to know what translates (folding): a table stage 2 cannot reach
    /// translates nothing. The fault is still recorded.
    bool unreadable_as_empty = false;
    /// Stage-2 translations of table IPAs, shared with whoever invalidates it (may be null).
    walk_cache* cache = nullptr;
    /// Called once per fetch with the IPA of its first entry and its bytes (entries fetched
    /// times their size; refused entries included): every entry fetched lies in one such range
    /// (may be null).
    void (*on_fetch)(void* cookie, std::uint64_t ipa, std::uint64_t bytes) = nullptr;
    void* cookie = nullptr;
    /// Most entries the view fetches in its life; later fetches are refused (read as empty
    /// with `unreadable_as_empty`) and `exhausted()` turns true. Bounds a walk over a hostile
    /// guest's tables that point many entries at one table (a DAG instead of a tree).
    std::uint64_t fetch_budget = ~std::uint64_t{0};
    /// SMMUv3 STE.S2PTW (5.2; Arm HCR_EL2.PTW): a fetch from a page stage 2 maps as Device
    /// memory is a stage-2 permission fault. Off: such fetches succeed (S2PTW = 0). Walks
    /// the IOMMU makes set it from `nested_settings`; a guest CPU's own accesses do not.
    bool protected_table_walk = false;
};

template <page_table_format S2, table_reader HM>
class stage2_view {
public:
    /// Most fetches one walk's trace keeps: one per level of the deepest format the contract allows.
    static constexpr unsigned trace_capacity = max_table_levels;

    stage2_view(const stage_table<S2, HM>& s2, const view_settings& s = {}) noexcept
        : s2_(s2), set_(s), memo_reads_(s.cache != nullptr && !s.need_write && s.on_fetch == nullptr) {}

    /// Pointer to the W-sized word at guest-physical `ipa` (typed pa_t, as walkers type table
    /// addresses), or nullptr (a zero word with `unreadable_as_empty`) when the IPA is beyond
    /// stage 1's output size, stage 2 faults on it (translation, permission without READ, or
    /// WRITE with `need_write`, address size, access flag), or the host memory does not back
    /// the host-physical address. Not thread-safe: the view counts and records.
    template <class W>
    W* entry(pa_t ipa) noexcept {
        return fetch<W>(ipa, 1, set_.need_write).first;
    }
    /// The word at `ipa` for a store: as `entry`, but stage 2 must also allow writing.
    template <class W>
    W* writable_entry(pa_t ipa) noexcept {
        return fetch<W>(ipa, 1, true).first;
    }
    /// The words from `ipa` on, at most `n`, that one stage-2 leaf maps onto contiguous host
    /// memory (a table spanning several stage-2 pages is read one page at a time: its pages
    /// may be scattered, missing or read-only). Each word counts as one fetch. A refused fetch
    /// answers for the words up to `n` that the same stage-2 fault refuses (resolve's
    /// `extent_end`): unbacked (`refused_run()` says how many), or, with `unreadable_as_empty`, as a run
    /// of zero words (at most 4 KiB of them), so that a scan over a stage-2 hole walks stage 2
    /// once per hole instead of once per entry.
    template <class W>
    entry_span<W> entries(pa_t ipa, std::uint64_t n, bool write) noexcept {
        return fetch<W>(ipa, n, write || set_.need_write);
    }

    /// After `entries` answered count 0: how many words from that address on the same fault
    /// refused (mem/memory.hpp has_refused_runs).
    std::uint64_t refused_run() const noexcept { return refused_; }

    /// The host-physical address of `ipa` for a fetch, and in `extent_end` the first IPA after
    /// the stage-2 leaf that maps it; nothing when the fetch faults (recorded in last_fault()),
    /// and then in `extent_end` the first IPA after the region that faults the same way (the
    /// leaf that refuses the access, the empty stage-2 entry the walk stopped at, everything
    /// above the IPA size), or `ipa` itself when only `ipa` is known to fault. In both cases
    /// 0 stands for 2^64.
    std::optional<std::uint64_t> resolve(std::uint64_t ipa, std::uint64_t& extent_end) noexcept {
        return resolve(ipa, extent_end, set_.need_write);
    }
    /// As above, needing stage-2 write permission when `write`.
    std::optional<std::uint64_t> resolve(std::uint64_t ipa, std::uint64_t& extent_end, bool write) noexcept {
        if (set_.ipa_bits < 64 && (ipa >> set_.ipa_bits) != 0) {
            fault_ = fetch_fault{1, 0, ipa, fault_reason::address_size};
            extent_end = 0;
            return std::nullopt;
        }
        if (set_.cache) {
            if (const auto* c = set_.cache->find(ipa)) {
                fault_level_ = c->level;
                extent_end = c->ipa_base + lg2_to_size(c->size_lg2);
                if (walk_refused(c->memory)) {
                    fault_ = fetch_fault{2, c->level, ipa, fault_reason::permission};
                    return std::nullopt;
                }
                if (!allowed(c->perm, write)) {
                    fault_ = fetch_fault{2, c->level, ipa, fault_reason::permission};
                    return std::nullopt;
                }
                return c->pa_base + (ipa - c->ipa_base);
            }
        }
        const auto o = walk_stage(s2_, ipa);
        accesses_ += o.accesses;
        if (!o.ok) {
            fault_ = fetch_fault{2, o.level, ipa, o.reason};
            // An empty stage-2 entry at level L faults every IPA of its slot alike (Arm
            // translation fault, VT-d/AMD not-present). Other reasons: this IPA only.
            extent_end = ipa;
            if (o.reason == fault_reason::translation && o.level < S2::max_levels && S2::item_lg2(o.level) < 64)
                extent_end = (ipa | low_mask(S2::item_lg2(o.level))) + 1;
            return std::nullopt;
        }
        fault_level_ = o.leaf.level;
        extent_end = o.leaf.input_base + lg2_to_size(o.leaf.size_lg2);
        if (walk_refused(o.leaf.memory)) {
            fault_ = fetch_fault{2, o.leaf.level, ipa, fault_reason::permission};
            return std::nullopt;
        }
        if (!allowed(o.leaf.perm, write)) {
            fault_ = fetch_fault{2, o.leaf.level, ipa, fault_reason::permission};
            return std::nullopt;
        }
        if (set_.cache && has(o.leaf.perm, prot::read))
            set_.cache->insert({o.leaf.input_base, o.leaf.output_base, o.leaf.size_lg2, o.leaf.level, o.leaf.perm, true,
                                o.leaf.memory});
        return o.leaf.output_base + (ipa - o.leaf.input_base);
    }

    /// Starts a new walk: clears the access count, the fault record and the trace.
    void begin_walk() noexcept {
        accesses_ = 0;
        fault_.reset();
        trace_count_ = 0;
    }
    /// The fetch budget ran out: some fetch was refused for it.
    bool exhausted() const noexcept { return exhausted_; }
    /// Stage-2 table entries read to translate fetches since begin_walk().
    unsigned accesses() const noexcept { return accesses_; }
    /// The last fetch that failed since begin_walk(), if any.
    const std::optional<fetch_fault>& last_fault() const noexcept { return fault_; }
    /// How many fetches since begin_walk(), recorded in the trace or not.
    unsigned fetches() const noexcept { return trace_count_; }
    /// IPAs fetched since begin_walk(), oldest first (the first trace_capacity of them).
    std::span<const std::uint64_t> trace() const noexcept {
        return {trace_, std::min<unsigned>(trace_count_, trace_capacity)};
    }
    const stage_table<S2, HM>& stage2() const noexcept { return s2_; }
    const view_settings& settings() const noexcept { return set_; }

private:
    /// A table page's host address, valid while the walk cache's generation is `generation`
    /// (walk caches are the contract for stage-2 changes: whatever invalidates them, or evicts
    /// an entry, makes these stale too). Only with a walk cache, for reads.
    struct page_memo {
        std::uint64_t page = ~std::uint64_t{0};  ///< IPA >> memo_lg2
        std::uint64_t generation = 0;
        std::byte* host = nullptr;  ///< the page's first byte in host memory
    };
    static constexpr unsigned memo_lg2 = 12;  ///< 4 KiB: every stage-2 format's smallest leaf
    static constexpr unsigned memo_slots = 8;

    /// STE.S2PTW: a table walk into Device memory is refused (before the read permission
    /// check, as in Arm's S2CheckPermissions for walks).
    bool walk_refused(memory_type m) const noexcept { return set_.protected_table_walk && m == memory_type::device; }
    static bool allowed(prot perm, bool write) noexcept {
        return has(perm, prot::read) && (!write || has(perm, prot::write));
    }
    /// Puts a fetch's IPA in the walk's trace (the first trace_capacity are kept; all count).
    void record(std::uint64_t ipa) noexcept {
        if (trace_count_ < trace_capacity) trace_[trace_count_] = ipa;
        ++trace_count_;
    }
    /// One fetch of up to `n` words (see `entries`). Inline: a read from a page memo_ holds;
    /// everything else is fetch_slow.
    template <class W>
    IOPGTABLE_ALWAYS_INLINE entry_span<W> fetch(pa_t ipa, std::uint64_t n, bool write) noexcept {
        if (memo_reads_ && !write && fetches_ < set_.fetch_budget) {
            const std::uint64_t page = ipa.value >> memo_lg2;
            const page_memo& memo = memo_[page % memo_slots];
            const std::uint64_t off = ipa.value & low_mask(memo_lg2);
            if (memo.page == page && memo.generation == set_.cache->generation() && off % sizeof(W) == 0) {
                // What resolve and the host memory said about this page still holds.
                record(ipa.value);
                set_.cache->count_hit();
                // One word (entry()'s case, n a constant 1) fits: the budget has one left, and
                // an aligned word inside the page.
                if (n > 1) n = std::min({n, set_.fetch_budget - fetches_, (lg2_to_size(memo_lg2) - off) / sizeof(W)});
                fetches_ += n;
                return {reinterpret_cast<W*>(memo.host + off), n};
            }
        }
        return fetch_slow<W>(ipa, n, write);
    }
    /// fetch past its memo: the budget, the trace, resolve (walk cache or stage-2 walk) and the
    /// host memory's run; a read through a walk cache leaves its page in memo_.
    template <class W>
    [[gnu::noinline]] entry_span<W> fetch_slow(pa_t ipa, std::uint64_t n, bool write) noexcept {
        if (fetches_ >= set_.fetch_budget) {
            exhausted_ = true;
            return refuse<W>(write);
        }
        n = std::min(n, set_.fetch_budget - fetches_);
        record(ipa.value);
        page_memo* memo = nullptr;
        if (memo_reads_ && !write) memo = &memo_[(ipa.value >> memo_lg2) % memo_slots];
        std::uint64_t end = 0;
        const auto pa = resolve(ipa.value, end, write);
        if (!pa) {
            // Every word up to the end of the region that faults alike is refused by this one
            // walk: each counts as a fetch, as it would one by one.
            std::uint64_t k = n;
            if (end != 0) k = end > ipa.value ? std::min(n, (end - ipa.value) / sizeof(W)) : 1;
            if (k == 0) k = 1;
            // Read as empty, the answer is at most the zero words there are: only those count.
            if (set_.unreadable_as_empty && !write) k = std::min(k, zero_words<W>());
            fetches_ += k;
            if (set_.on_fetch) set_.on_fetch(set_.cookie, ipa.value, k * sizeof(W));
            return refuse<W>(write, k);
        }
        // Only the rest of the stage-2 leaf is contiguous in host memory (end 0: it reaches 2^64).
        if (end != 0) n = std::min(n, (end - ipa.value) / sizeof(W));
        if (n == 0) n = 1;
        const entry_span<W> run = entry_run<W>(*s2_.mem, pa_t{*pa}, n, write);
        if (run.count == 0) {
            ++fetches_;
            if (set_.on_fetch) set_.on_fetch(set_.cookie, ipa.value, sizeof(W));
            fault_ = fetch_fault{1, 0, ipa.value, fault_reason::walk_abort};
            return refuse<W>(write);
        }
        fetches_ += run.count;
        if (set_.on_fetch) set_.on_fetch(set_.cookie, ipa.value, run.count * sizeof(W));
        if (memo != nullptr) remember<W>(*memo, ipa.value, *pa, end);
        return run;
    }
    /// Keeps the host address of the page holding `ipa` (host-physical `pa`, inside a stage-2
    /// leaf ending at IPA `end`) after a read fetch through the walk cache succeeded: the cache
    /// holds the leaf now (a readable one is always inserted), and every byte of the page has
    /// its translation and permissions (stage-2 leaves are 4 KiB-aligned, at least 4 KiB).
    /// Kept only when the host memory gives the whole page as one run.
    template <class W>
    void remember(page_memo& memo, std::uint64_t ipa, std::uint64_t pa, std::uint64_t end) noexcept {
        const std::uint64_t page_ipa = ipa & ~low_mask(memo_lg2), page_pa = pa & ~low_mask(memo_lg2);
        constexpr std::uint64_t words = lg2_to_size(memo_lg2) / sizeof(W);
        if (end != 0 && end - page_ipa < lg2_to_size(memo_lg2)) return;  // the leaf ends inside the page
        const entry_span<W> run = entry_run<W>(*s2_.mem, pa_t{page_pa}, words, false);
        if (run.count != words) return;
        memo = page_memo{page_ipa >> memo_lg2, set_.cache->generation(), reinterpret_cast<std::byte*>(run.first)};
    }
    /// A refused fetch of `k` words (all refused for one cause): unbacked (refused_run() k),
    /// or with `unreadable_as_empty` and a read, up to k words of zero.
    template <class W>
    entry_span<W> refuse(bool write, std::uint64_t k = 1) noexcept {
        refused_ = k;
        if (!set_.unreadable_as_empty || write) return {};
        if constexpr (sizeof(W) == sizeof(std::uint64_t)) {
            return {reinterpret_cast<W*>(zero_words64_), std::min(k, zero_words<W>())};
        } else {
            static_assert(sizeof(W) == sizeof(std::uint32_t));
            return {reinterpret_cast<W*>(zero_words32_), std::min(k, zero_words<W>())};
        }
    }
    template <class W>
    static constexpr std::uint64_t zero_words() noexcept {
        return sizeof(W) == sizeof(std::uint64_t) ? std::size(zero_words64_) : std::size(zero_words32_);
    }
    /// What refused words read as with `unreadable_as_empty`: never written (a refused fetch
    /// gives no word to store to), shared by every view.
    static inline std::uint64_t zero_words64_[512] = {};
    static inline std::uint32_t zero_words32_[1024] = {};

    stage_table<S2, HM> s2_;
    view_settings set_;
    /// Reads may use the page memo: a walk cache, no on_fetch, and reads that need no write.
    bool memo_reads_;
    page_memo memo_[memo_slots];
    unsigned accesses_ = 0;
    unsigned fault_level_ = 0;
    std::optional<fetch_fault> fault_;
    std::uint64_t trace_[trace_capacity]{};
    unsigned trace_count_ = 0;
    std::uint64_t fetches_ = 0;
    std::uint64_t refused_ = 1;
    bool exhausted_ = false;
};

/// Table memory for a guest's own stage-1 tables: tables come from a window of IPAs
/// [window, window + size) that the guest reserves for them; reads and writes go through stage
/// 2: a read needs stage-2 read permission, a store (`writable_entry`, which the engine uses for
/// every store) read and write permission. A table that cannot be zero-filled because
/// stage 2 does not map (or allow writing) part of it is not handed out: errc::fault.
/// allocate_table and free_table are thread-safe; entry() is not (one guest CPU at a time).
template <page_table_format S2, table_reader HM>
class guest_table_memory {
public:
    /// Tables from [window, window + window_size); `cache` (may be null) caches stage-2
    /// translations of table IPAs, and must be invalidated (invalidate_stage2) after stage-2 changes.
    guest_table_memory(const stage_table<S2, HM>& s2, ipa_t window, std::uint64_t window_size,
                       walk_cache* cache = nullptr) noexcept
        : view_(s2, view_settings{64, false, false, cache, nullptr, nullptr}), cache_(cache), window_(window.value),
          window_end_(window.value + window_size < window.value ? ~std::uint64_t{0} : window.value + window_size),
          tables_(window_, window_end_) {}
    guest_table_memory(const guest_table_memory&) = delete;
    guest_table_memory& operator=(const guest_table_memory&) = delete;

    /// A zero-filled table of `bytes` (a power of two), IPA-aligned to max(bytes, 64).
    /// Errors: invalid (not a power of two), nomem (the window is full), fault (stage 2 does
    /// not let the guest write all of it).
    result<pa_t> allocate_table(std::uint64_t bytes) {
        const auto at = tables_.take(bytes);
        if (!at) return failure(at.error());
        if (!zero_fill(*at, table_window::footprint(bytes))) {
            tables_.give(*at, bytes);
            return failure(errc::fault);
        }
        return pa_t{*at};
    }
    /// Gives back a table allocate_table(bytes) returned; other addresses are ignored.
    void free_table(pa_t ipa, std::uint64_t bytes) noexcept { tables_.give(ipa.value, bytes); }

    /// The word at guest-physical `ipa` through stage 2 (see stage2_view::entry): reading needs
    /// stage-2 read permission only.
    template <class W>
    W* entry(pa_t ipa) noexcept {
        return view_.template entry<W>(ipa);
    }
    /// The word at `ipa` for a store: stage 2 must allow reading and writing it.
    template <class W>
    W* writable_entry(pa_t ipa) noexcept {
        return view_.template writable_entry<W>(ipa);
    }
    /// See stage2_view::refused_run.
    std::uint64_t refused_run() const noexcept { return view_.refused_run(); }
    /// Runs of words inside one stage-2 leaf (see stage2_view::entries).
    template <class W>
    entry_span<W> entries(pa_t ipa, std::uint64_t n, bool write) noexcept {
        return view_.template entries<W>(ipa, n, write);
    }

    /// The host changed stage 2 over [ipa, ipa + size): forget cached translations there.
    void invalidate_stage2(ipa_t ipa, length_t size) noexcept {
        if (cache_) cache_->invalidate(ipa.value, size.value);
    }

    std::uint64_t bytes_in_use() const { return tables_.in_use(); }
    ipa_t window() const noexcept { return ipa_t{window_}; }
    std::uint64_t window_size() const noexcept { return window_end_ - window_; }
    stage2_view<S2, HM>& view() noexcept { return view_; }

private:
    bool zero_fill(std::uint64_t at, std::uint64_t bytes) noexcept {
        const std::uint64_t end = at + bytes;
        for (std::uint64_t pos = at; pos < end;) {
            std::uint64_t extent_end = 0;
            const auto pa = view_.resolve(pos, extent_end, true);
            if (!pa) return false;
            const std::uint64_t stop = std::min(end, extent_end);
            // The host words of [pos, stop), a run of host memory at a time.
            for (std::uint64_t off = 0; off < stop - pos;) {
                const std::uint64_t words = (stop - pos - off) / sizeof(std::uint64_t);
                const auto run = entry_run<std::uint64_t>(*view_.stage2().mem, pa_t{*pa + off}, words, true);
                if (run.count == 0) return false;
                for (std::uint64_t i = 0; i < run.count; ++i) store_entry(run.first + i, std::uint64_t{0});
                off += run.count * sizeof(std::uint64_t);
            }
            pos = stop;
        }
        return true;
    }
    stage2_view<S2, HM> view_;
    walk_cache* cache_;
    std::uint64_t window_, window_end_;
    table_window tables_;  ///< the window's allocator (mem/table_window.hpp)
};

} // namespace iopgtable::nested
