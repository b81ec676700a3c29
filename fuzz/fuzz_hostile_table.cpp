// SPDX-License-Identifier: MIT
/// @file fuzz_hostile_table.cpp
/// libFuzzer target `fuzz_hostile_table`: arbitrary bytes as a table a guest wrote. The input
/// fills a small guest RAM (64 KiB – 1 MiB at a base the input picks); a format, a configuration
/// and a root address (inside RAM, misaligned, straddling its end, or anywhere) come from the
/// input too. Then `lookup<F>` runs for many addresses, `visit<F>` over bounded ranges, and a
/// borrowed `page_table<F, guest_ram>` answers iova_to_phys, lookup and (where the format tracks
/// dirty state) read_and_clear_dirty.
///
/// Nothing may crash or read outside RAM (guest_ram is one heap buffer, so ASan sees any stray
/// read; we also check that every entry address reported lies inside RAM), and no walk may loop:
/// a lookup reads at most `levels` entries, exactly one per level it passes. Lookup and visit
/// must agree with each other and with the raw words in RAM.
#include <algorithm>
#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <optional>

#include <iopgtable/engine/page_table.hpp>
#include <iopgtable/engine/walk.hpp>
#include <iopgtable/mem/guest_ram.hpp>

#include "fuzz_support.hpp"

namespace iopgtable::fuzz {
namespace {

constexpr std::uint64_t max_visit_pages = 4096;   ///< a visit range spans at most this many smallest pages
constexpr std::uint64_t max_visit_entries = 4096; ///< the visitor stops after this many leaves
constexpr std::uint64_t max_cross_checks = 64;    ///< leaves per visit re-walked with lookup

template <class F>
class hostile_run {
public:
    using word = typename F::word;
    using input = typename F::input_address;
    using table = page_table<F, guest_ram>;

    hostile_run(const typename F::config& cfg, const geometry& geo, byte_reader& in) : in_(in), cfg_(cfg), geo_(geo) {
        minp_ = geo_.pgsize_bitmap & (~geo_.pgsize_bitmap + 1);
        trace_ = std::getenv("IOPGTABLE_FUZZ_TRACE") != nullptr;
    }

    void run() {
        const std::uint64_t size = std::uint64_t{64 * 1024} << (in_.u8() % 5);
        std::uint64_t base = 0;
        switch (in_.u8() % 4) {
        case 0: base = 0; break;
        case 1: base = std::uint64_t{in_.u16()} << 16; break;
        case 2: base = std::uint64_t{in_.u32()} << 12; break;
        case 3: base = in_.u64() & low_mask(52); break;  // any alignment
        }
        std::uint64_t root = 0;
        switch (in_.u8() % 4) {
        case 0: root = base + ((std::uint64_t{in_.u16()} * sizeof(word)) % size); break;
        case 1: root = base + (in_.u32() % size); break;  // possibly misaligned
        case 2: root = in_.u64(); break;                   // anywhere
        case 3: root = base + size - std::uint64_t{in_.u8()} * sizeof(word); break;  // at RAM's end
        }
        const bool tile = in_.u8() & 1;
        std::uint64_t probes[16];
        const unsigned n_probes = in_.u8() % 17;
        for (unsigned i = 0; i < n_probes; ++i) {
            const std::uint64_t a = in_.u64();
            probes[i] = (a >> 63) ? a : a & low_mask(geo_.ias);
        }
        struct range {
            std::uint64_t first, last;
        } ranges[4];
        const unsigned n_ranges = in_.u8() % 5;
        for (unsigned i = 0; i < n_ranges; ++i) {
            const std::uint64_t first = in_.u64() & low_mask(geo_.ias);
            const std::uint64_t len = (in_.u16() % max_visit_pages + 1) * minp_;
            const std::uint64_t last = std::min(low_mask(geo_.ias), first + (len - 1));
            ranges[i] = {first, last < first ? low_mask(geo_.ias) : last};
        }

        ram_.emplace(size, pa_t{base});
        fill(in_.rest(), tile);
        root_ = pa_t{root};
        std::snprintf(ctx_, sizeof ctx_, "[%s ias %u oas %u levels %u] RAM %#" PRIx64 "+%#" PRIx64 " root %#" PRIx64,
                      F::name, geo_.ias, geo_.oas, geo_.levels, base, size, root);

        auto borrowed = table::borrow(cfg_, *ram_, root_);
        FUZZ_CHECK(borrowed.ok(), "%s: borrow refused a sample configuration", ctx_);
        pt_ = &borrowed.value();

        for (unsigned i = 0; i < n_probes; ++i) check_lookup(probes[i]);
        for (unsigned i = 0; i < 16; ++i) check_lookup(std::uint64_t{i} << (geo_.ias - 4));
        check_lookup(low_mask(geo_.ias));
        if (geo_.ias < 64) check_lookup(lg2_to_size(geo_.ias));
        for (unsigned i = 0; i < n_ranges; ++i) check_visit(ranges[i].first, ranges[i].last);
        if (n_ranges == 0) check_visit(0, std::min(low_mask(geo_.ias), max_visit_pages * minp_ - 1));
        for (unsigned i = 0; i < n_ranges; ++i) check_dirty(ranges[i].first, ranges[i].last);
    }

private:
    void fill(std::span<const std::uint8_t> bytes, bool tile) {
        auto ram = ram_->bytes();
        if (bytes.empty()) return;
        std::size_t at = 0;
        do {
            const std::size_t n = std::min(bytes.size(), ram.size() - at);
            std::memcpy(ram.data() + at, bytes.data(), n);
            at += n;
        } while (tile && at < ram.size());
    }

    bool entry_in_ram(pa_t a) const { return a.value % sizeof(word) == 0 && ram_->contains(a, sizeof(word)); }
    word word_at(pa_t a) const {
        word w{};
        FUZZ_CHECK(ram_->read(a, &w, sizeof w), "%s: cannot read back entry %#" PRIx64, ctx_, a.value);
        return w;
    }

    void check_lookup(std::uint64_t va) {
        const walk_info<F> w = lookup<F>(cfg_, geo_, *ram_, root_, va);
        if (trace_)
            std::fprintf(stderr, "%s: lookup %#" PRIx64 ": status %d level %u reads %u oa %#" PRIx64 "\n", ctx_, va,
                         int(w.status), w.level, w.accesses, w.oa.value);
        FUZZ_CHECK(w.accesses <= geo_.levels, "%s: lookup(%#" PRIx64 ") read %u entries (levels %u)", ctx_, va, w.accesses,
                   geo_.levels);
        FUZZ_CHECK(w.level < geo_.levels, "%s: lookup(%#" PRIx64 ") ended at level %u", ctx_, va, w.level);
        switch (w.status) {
        case walk_status::out_of_range:
            FUZZ_CHECK(beyond(va, geo_.ias) && w.accesses == 0, "%s: lookup(%#" PRIx64 ") out_of_range", ctx_, va);
            break;
        case walk_status::mapped:
        case walk_status::unmapped: {
            FUZZ_CHECK(!beyond(va, geo_.ias), "%s: lookup(%#" PRIx64 ") beyond IAS walked", ctx_, va);
            FUZZ_CHECK(entry_in_ram(w.entry_address), "%s: lookup(%#" PRIx64 ") reports entry %#" PRIx64 " outside RAM",
                       ctx_, va, w.entry_address.value);
            FUZZ_CHECK(w.accesses == geo_.levels - w.level, "%s: lookup(%#" PRIx64 ") level %u after %u reads", ctx_, va,
                       w.level, w.accesses);
            FUZZ_CHECK(word_at(w.entry_address) == w.raw, "%s: lookup(%#" PRIx64 ") raw differs from RAM", ctx_, va);
            const entry_kind kind = F::classify(cfg_, w.level, w.raw);
            if (w.status == walk_status::unmapped) {
                FUZZ_CHECK(kind == entry_kind::empty, "%s: lookup(%#" PRIx64 ") unmapped on a non-empty entry", ctx_, va);
                break;
            }
            FUZZ_CHECK(kind == entry_kind::leaf && w.size_lg2 == F::leaf_lg2(cfg_, w.level, w.raw) &&
                           w.input_base == (va & ~low_mask(w.size_lg2)) &&
                           w.oa.value == F::leaf_address(cfg_, w.level, w.raw) + (va & low_mask(w.size_lg2)),
                       "%s: lookup(%#" PRIx64 ") mapped result inconsistent with its leaf %#" PRIx64, ctx_, va,
                       static_cast<std::uint64_t>(w.raw));
            break;
        }
        case walk_status::bad_table:
            FUZZ_CHECK(!beyond(va, geo_.ias), "%s: lookup(%#" PRIx64 ") beyond IAS walked", ctx_, va);
            if (entry_in_ram(w.entry_address)) {
                // Only a level-0 entry classified as a table (formats never do) ends here.
                FUZZ_CHECK(w.level == 0 && F::classify(cfg_, 0, w.raw) == entry_kind::table,
                           "%s: lookup(%#" PRIx64 ") bad_table at a readable entry %#" PRIx64, ctx_, va,
                           w.entry_address.value);
            } else {
                FUZZ_CHECK(w.accesses == geo_.levels - 1 - w.level, "%s: lookup(%#" PRIx64 ") bad_table at level %u after %u reads",
                           ctx_, va, w.level, w.accesses);
            }
            break;
        }

        // The borrowed page_table and a one-address visit tell the same story.
        const walk_info<F> b = pt_->lookup(input{va});
        FUZZ_CHECK(b.status == w.status && b.level == w.level && b.raw == w.raw && b.accesses == w.accesses &&
                       b.oa == w.oa && b.entry_address == w.entry_address,
                   "%s: page_table::lookup(%#" PRIx64 ") differs from lookup<F>", ctx_, va);
        const auto phys = pt_->iova_to_phys(input{va});
        FUZZ_CHECK(phys.has_value() == (w.status == walk_status::mapped) && (!phys || *phys == w.oa),
                   "%s: iova_to_phys(%#" PRIx64 ") disagrees with lookup", ctx_, va);
        if (beyond(va, geo_.ias)) return;
        unsigned seen = 0;
        leaf_entry<F> one{};
        auto r = visit<F>(cfg_, geo_, *ram_, root_, va, va, [&](const leaf_entry<F>& e) {
            ++seen;
            one = e;
            return true;
        });
        switch (w.status) {
        case walk_status::mapped:
            FUZZ_CHECK(r.ok() && seen == 1 && one.level == w.level && one.raw == w.raw &&
                           one.entry_address == w.entry_address,
                       "%s: visit(%#" PRIx64 ") saw %u leaves (%s), lookup found one", ctx_, va, seen,
                       r.ok() ? "ok" : to_string(r.error()).data());
            break;
        case walk_status::unmapped:
            FUZZ_CHECK(r.ok() && seen == 0, "%s: visit(%#" PRIx64 ") saw %u leaves, lookup found none", ctx_, va, seen);
            break;
        default:
            FUZZ_CHECK(!r.ok() && r.error() == errc::fault && seen == 0,
                       "%s: visit(%#" PRIx64 ") of a bad table did not fault", ctx_, va);
            break;
        }
    }

    void check_visit(std::uint64_t first, std::uint64_t last) {
        std::uint64_t count = 0;
        std::optional<std::uint64_t> prev;
        auto r = pt_->visit(input{first}, input{last}, [&](const leaf_entry<F>& e) {
            FUZZ_CHECK(entry_in_ram(e.entry_address), "%s: visit reports entry %#" PRIx64 " outside RAM", ctx_,
                       e.entry_address.value);
            FUZZ_CHECK(e.level < geo_.levels && F::classify(cfg_, e.level, e.raw) == entry_kind::leaf &&
                           e.size_lg2 == F::leaf_lg2(cfg_, e.level, e.raw) && word_at(e.entry_address) == e.raw,
                       "%s: visit entry %#" PRIx64 " (level %u) is not the leaf in RAM", ctx_, e.iova, e.level);
            const std::uint64_t slot = e.iova & ~low_mask(F::item_lg2(e.level));
            FUZZ_CHECK(slot == e.iova && e.iova + low_mask(F::item_lg2(e.level)) >= first && e.iova <= last,
                       "%s: visit [%#" PRIx64 ", %#" PRIx64 "] reports slot %#" PRIx64 " level %u", ctx_, first, last,
                       e.iova, e.level);
            FUZZ_CHECK(!prev || e.iova > *prev, "%s: visit out of order: %#" PRIx64 " after %#" PRIx64, ctx_, e.iova,
                       prev.value_or(0));
            prev = e.iova;
            if (count < max_cross_checks) {
                const std::uint64_t va = std::max(first, e.iova);
                const walk_info<F> w = lookup<F>(cfg_, geo_, *ram_, root_, va);
                FUZZ_CHECK(w.status == walk_status::mapped && w.level == e.level && w.raw == e.raw &&
                               w.entry_address == e.entry_address,
                           "%s: lookup(%#" PRIx64 ") disagrees with the visit's leaf", ctx_, va);
            }
            return ++count < max_visit_entries;
        });
        if (trace_)
            std::fprintf(stderr, "%s: visit [%#" PRIx64 ", %#" PRIx64 "]: %" PRIu64 " leaves, %s\n", ctx_, first, last,
                         count, r.ok() ? "ok" : to_string(r.error()).data());
        FUZZ_CHECK(r.ok() || r.error() == errc::fault, "%s: visit [%#" PRIx64 ", %#" PRIx64 "] failed with %s", ctx_,
                   first, last, to_string(r.error()).data());
    }

    void check_dirty(std::uint64_t first, std::uint64_t last) {
        if constexpr (has_dirty_tracking<F>) {
            if (!F::dirty_tracking(cfg_)) return;
            auto r = pt_->read_and_clear_dirty(input{first}, length_t{last - first + 1}, [&](input iova, length_t len) {
                FUZZ_CHECK(len.value != 0 && iova.value + (len.value - 1) >= first && iova.value <= last,
                           "%s: dirty range %#" PRIx64 "+%#" PRIx64 " outside [%#" PRIx64 ", %#" PRIx64 "]", ctx_,
                           iova.value, len.value, first, last);
            });
            FUZZ_CHECK(r.ok() || r.error() == errc::fault, "%s: read_and_clear_dirty failed with %s", ctx_,
                       to_string(r.error()).data());
        }
    }

    byte_reader& in_;
    typename F::config cfg_;
    geometry geo_;
    std::uint64_t minp_ = 0;
    std::optional<guest_ram> ram_;
    pa_t root_{};
    table* pt_ = nullptr;
    bool trace_ = false;
    char ctx_[200] = "";
};

} // namespace
} // namespace iopgtable::fuzz

IOPGTABLE_FUZZ_LISTS(iopgtable::fuzz::format_names())

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return iopgtable::fuzz::run_per_format<iopgtable::fuzz::hostile_run>(data, size);
}
