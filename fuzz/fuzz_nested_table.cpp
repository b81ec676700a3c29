// SPDX-License-Identifier: MIT
/// @file fuzz_nested_table.cpp
/// libFuzzer target `fuzz_nested_table`: a guest's stage-1 table written through a stage 2
/// that the input reshapes under it. Stage-1 tables come from an IPA window that stage 2 maps
/// with its smallest pages; with a stage-1 granule larger than stage 2's, one stage-1 table
/// spans several stage-2 pages. Operations decoded from the input (a small grammar, so most
/// inputs are well-formed):
///   map / unmap (exact or split) / reclaim on the guest's `page_table<S1, guest_table_memory>`,
///   lookups and nested translations,
///   stage-2 changes to one window page: taken away (a hole), read-only, aliased onto another
///   window page's host memory, moved to spare host memory, given back, Device-typed.
/// Pairs: every pair of the format list (formats/all.hpp `nested_pairs`: every Arm stage-1
/// granule and the short descriptor over every Arm stage-2 granule, VT-d first stage over VT-d
/// second stage and over AMD-Vi v1), chosen by the input's first byte (modulo their number).
///
/// Invariants checked:
/// - nothing crashes or reads outside host memory (one buffer: ASan sees stray accesses), and no
///   walk loops (a lookup reads at most `levels` entries);
/// - a failed map or unmap changes nothing: every address the run has touched looks up as before
///   (until stage 2 puts two window pages on one host page: then zeroing a new table page, or
///   any store, also changes the table whose page it aliases, which no table code can see or
///   undo; the host that builds such a stage 2 breaks its own guest);
/// - while stage 2 still maps the window as at the start (no page ever changed), every map and
///   unmap gives the same answer as a reference table in plain memory (guest_ram, no stage 2)
///   given the same operations, and every
///   touched address translates the same;
/// - a folded shadow (nested/folding.hpp, mode (b): an arm-lpae-s1-4k table in a RAM of its own;
///   inputs whose span byte has bit 4 set) follows the guest's table as the protocol has it: the guest invalidates the range of every
///   map and unmap that succeeded, the host reports every stage-2 change. After each of those
///   sync points the shadow and the nested walk agree (same output, or both refuse) for reads
///   and writes at the operation's edges and at four of the touched addresses in turn, and at
///   every touched address at the end. Folding's stated precondition ends this check: once
///   stage 2 maps two window pages onto one host page (aliased, or moved onto the same spare
///   page), a write through one path changes what another translates and no invalidation names
///   it. Configurations the shadow cannot hold (stage-1 input above 48 bits) skip it.
/// The guest's table memory keeps a stage-2 walk cache, invalidated at every stage-2 change as a
/// VMM must: an invalidation that missed would show as a failed check above.
/// Prot byte: bit 0 = writable; bit 1 = the output lies in the table window (so that nested
/// translations reach stage-2 leaves and the changes made to them, not only stage-2 faults).
#include <array>
#include <cinttypes>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <vector>

#include <boost/hana/unpack.hpp>
#include <iopgtable/engine/page_table.hpp>
#include <iopgtable/formats/all.hpp>
#include <iopgtable/mem/guest_ram.hpp>
#include <iopgtable/nested/folding.hpp>
#include <iopgtable/nested/stage.hpp>
#include <iopgtable/nested/stage2_view.hpp>
#include <iopgtable/nested/translator.hpp>

#include "fuzz_support.hpp"

namespace iopgtable::fuzz {
namespace {

/// RAM for the reference table's tables, made once: on the host heap, every 64K-granule table
/// was a fresh 64 KiB allocation, with its page faults and sanitizer bookkeeping, per input.
/// 4 MiB is eight times the stage-1 window, and the reference holds the same tables as the
/// guest's table (it follows it only while the window has not run out).
constexpr std::uint64_t reference_ram_size = std::uint64_t{4} << 20;
guest_ram& reference_ram() {
    static guest_ram ram{reference_ram_size};
    return ram;
}

/// RAM for the folded shadow's tables, made once for the same reason (on the host heap each
/// 4 KiB table was a fresh allocation: under ASan's quarantine, new pages to fault in and zero).
/// A shadow folds only stage-1 leaves whose output lies in the 512 KiB window, so an input
/// needs a few hundred of its tables at most; 8 MiB holds 2048.
constexpr std::uint64_t shadow_ram_size = std::uint64_t{8} << 20;
guest_ram& shadow_ram() {
    static guest_ram ram{shadow_ram_size};
    return ram;
}

/// The pairs: every one of the format list (formats/all.hpp nested_pairs), in its order.
using pairs = decltype(boost::hana::unpack(nested_pairs, [](auto... t) {
    return boost::hana::type_c<std::tuple<typename decltype(t)::type...>>;
}))::type;

template <std::size_t I = 0, class Fn>
void with_pair(std::size_t index, Fn&& fn) {
    if constexpr (I < std::tuple_size_v<pairs>) {
        if (index % std::tuple_size_v<pairs> == I) fn(std::tuple_element_t<I, pairs>{});
        else with_pair<I + 1>(index, fn);
    }
}

// Host-physical layout (guest_ram standing for host memory): stage-2 tables, then the pages
// behind the guest's table window, then spare pages.
constexpr std::uint64_t host_base = 0x100000000;
constexpr std::uint64_t s2_pool = 0x100000;
constexpr std::uint64_t window_ipa = 0x40000000;
constexpr std::uint64_t window_size = 0x80000;  // eight 64K tables
constexpr std::uint64_t window_hpa = host_base + s2_pool;
constexpr std::uint64_t spare_hpa = window_hpa + window_size;
constexpr std::uint64_t spare_size = 0x40000;
constexpr unsigned max_ops = 48;
constexpr unsigned max_probes = 48;

template <class S1, class S2>
class nested_run {
public:
    using s2_table = page_table<S2, guest_ram>;
    using gmem_t = nested::guest_table_memory<S2, guest_ram>;
    using s1_table = page_table<S1, gmem_t>;
    using ref_table = page_table<S1, guest_ram>;
    using shadow_format = arm_lpae_s1_4k;
    using folded = nested::folded_table<S1, S2, shadow_format, guest_ram, guest_ram>;
    using translator = nested::nested_translator<S1, S2, guest_ram>;

    /// `host` is host memory (all zero, no table in use): one RAM serves every input.
    nested_run(byte_reader& in, guest_ram& host) : in_(in), host_(host) {
        trace_ = std::getenv("IOPGTABLE_FUZZ_TRACE") != nullptr;
    }

    void run() {
        host_.set_table_pool(pa_t{host_base}, s2_pool);
        const auto c2s = S2::sample_configs();
        const auto c1s = S1::sample_configs();
        auto c2 = c2s[in_.u8() % c2s.size()];
        auto c1 = c1s[in_.u8() % c1s.size()];
        auto t2 = s2_table::create(c2, host_);
        if (!t2) return;  // a configuration whose tables do not fit this host
        s2_.emplace(std::move(*t2));
        page_ = s2_->min_page();
        auto g1 = S1::make_geometry(c1);
        FUZZ_CHECK(g1.ok(), "a sample configuration is refused: %s", S1::name);
        geo1_ = *g1;
        if (geo1_.oas < 64 && ((window_ipa + window_size - 1) >> geo1_.oas) != 0) return;
        if (s2_->geo().ias < 64 && ((window_ipa + window_size - 1) >> s2_->geo().ias) != 0) return;
        FUZZ_CHECK(s2_->map(ipa_t{window_ipa}, pa_t{window_hpa}, length_t{window_size}, rw).ok(),
                   "stage 2 cannot map the window (%s)", S2::name);
        gmem_.emplace(nested::stage_table<S2, guest_ram>::of(*s2_), ipa_t{window_ipa}, window_size, &gmem_cache_);
        auto t1 = s1_table::create(c1, *gmem_);
        FUZZ_CHECK(t1.ok(), "no stage-1 root in an intact window (%s over %s)", S1::name, S2::name);
        s1_.emplace(std::move(*t1));
        auto r = ref_table::create(c1, reference_ram());
        FUZZ_CHECK(r.ok(), "no reference table");
        ref_.emplace(std::move(*r));
        auto tr = translator::create(s1_->cfg(), ipa_t{s1_->root().value}, nested::stage_table<S2, guest_ram>::of(*s2_));
        FUZZ_CHECK(tr.ok(), "no translator");
        tr_.emplace(std::move(*tr));
        const std::uint64_t pages = window_size / page_;
        for (std::uint64_t i = 0; i < pages; ++i) window_hpa_of_.push_back(window_hpa + i * page_);
        minp_ = geo1_.pgsize_bitmap & (~geo1_.pgsize_bitmap + 1);
        // The input picks where in the input space its operations land: near 0, or anywhere.
        const std::uint8_t span = in_.u8();
        span_lg2_ = std::min<unsigned>(geo1_.ias, 24 + span % 16);
        // Bit 4: keep a folded shadow too (its re-syncs through stage 2 cost more than the rest
        // of a run, so half of the inputs leave it out and run twice as many operations).
        if (span & 0x10) {
            auto f = folded::create(c1, ipa_t{s1_->root().value}, *s2_, lpae_config{}, shadow_ram());
            if (f) fold_.emplace(std::move(*f));  // else: a stage-1 input larger than the shadow's
        }

        for (unsigned op = 0; op < max_ops && !in_.empty(); ++op) step();
        check_all_probes("at the end");
        for (auto a : probes_) check_fold_at(a, "at the end");
    }

private:
    static constexpr prot rw = prot::read | prot::write;

    std::uint64_t pick_iova() {
        const std::uint64_t v = (in_.u32() * minp_) & low_mask(span_lg2_);
        return v;
    }
    std::uint64_t pick_len() {
        switch (in_.u8() % 4) {
        case 0: return minp_;
        case 1: return minp_ * (1 + in_.u8());
        case 2: return minp_ * (1 + in_.u16() % 4096);
        default: return std::uint64_t{1} << (12 + in_.u8() % 14);
        }
    }
    void probe(std::uint64_t a) {
        if (probes_.size() < max_probes && (geo1_.ias >= 64 || (a >> geo1_.ias) == 0)) probes_.push_back(a);
    }

    struct look {
        walk_status status;
        std::uint64_t oa;
        prot perm;
        bool operator==(const look&) const = default;
    };
    look look_at(std::uint64_t a) {
        const auto w = s1_->lookup(typename S1::input_address{a});
        FUZZ_CHECK(w.accesses <= geo1_.levels, "a lookup read %u entries with %u levels", w.accesses, geo1_.levels);
        return {w.status, w.status == walk_status::mapped ? w.oa.value : 0,
                w.status == walk_status::mapped ? w.perm : prot::none};
    }
    std::vector<look> looks() {
        std::vector<look> v;
        v.reserve(probes_.size());
        for (auto a : probes_) v.push_back(look_at(a));
        return v;
    }
    void check_all_probes(const char* when) {
        if (!intact_) return;
        for (auto a : probes_) {
            const auto got = s1_->iova_to_phys(typename S1::input_address{a});
            const auto want = ref_->iova_to_phys(typename S1::input_address{a});
            FUZZ_CHECK(got == want, "%s over %s %s: %#" PRIx64 " translates to %#" PRIx64 ", reference %#" PRIx64,
                       S1::name, S2::name, when, a, got ? got->value : 0, want ? want->value : 0);
        }
    }

    /// The DMA path's walk (translate_leaf) against the full one at `a`: mapped with rights
    /// that let an access through exactly when translate() passes it, to the same output with
    /// the same flags and size.
    void check_leaf_walk(std::uint64_t a, const char* when) {
        const nested::leaf_walk l = tr_->translate_leaf(iova_t{a});
        for (const auto kind : {nested::access_kind::read, nested::access_kind::write, nested::access_kind::exec})
            for (const bool privileged : {false, true}) {
                const nested::access_request req{kind, privileged};
                const auto n = tr_->translate(iova_t{a}, req);
                const bool leaf_ok = l.mapped() && nested::permits(l.rights, req);
                FUZZ_CHECK(leaf_ok == n.ok() && (!n.ok() || (l.output == n->output.value && l.perm == n->perm &&
                                                              l.size_lg2 == n->size_lg2)),
                           "%s over %s %s: access %d%s at %#" PRIx64 ": leaf walk %s %#" PRIx64 ", translate %s %#" PRIx64,
                           S1::name, S2::name, when, int(kind), privileged ? " privileged" : "", a,
                           leaf_ok ? "passes to" : "refuses", l.output, n.ok() ? "passes to" : "refuses",
                           n.ok() ? n->output.value : 0);
            }
    }

    /// The shadow against the nested walk at `a`, for a read and a write.
    void check_fold_at(std::uint64_t a, const char* when) {
        check_leaf_walk(a, when);
        if (!fold_ || aliased_ || (geo1_.ias < 64 && (a >> geo1_.ias) != 0)) return;
        for (const auto kind : {nested::access_kind::read, nested::access_kind::write}) {
            const nested::access_request req{kind, false};
            const auto n = tr_->translate(iova_t{a}, req);
            const auto sh = fold_->lookup(iova_t{a});
            const bool shadow_ok = sh.mapped && nested::permits(sh.perm, req);
            if (trace_)
                std::fprintf(stderr, "fold %s %#" PRIx64 ": nested %s stage %u reason %d fetch %d addr %#" PRIx64 "\n", when,
                             a, n.ok() ? "passes" : "refuses", n.ok() ? 0 : n.error().stage,
                             n.ok() ? 0 : int(n.error().reason), n.ok() ? 0 : int(n.error().table_fetch),
                             n.ok() ? n->output.value : n.error().address);
            FUZZ_CHECK(shadow_ok == n.ok() && (!n.ok() || sh.oa.value == n->output.value),
                       "%s over %s %s: %s at %#" PRIx64 ": shadow %s %#" PRIx64 ", nested walk %s %#" PRIx64, S1::name,
                       S2::name, when, kind == nested::access_kind::read ? "read" : "write", a,
                       shadow_ok ? "passes to" : "refuses", sh.oa.value, n.ok() ? "passes to" : "refuses",
                       n.ok() ? n->output.value : 0);
        }
    }
    /// After a sync point: the edges of what changed and four touched addresses in turn.
    void check_fold(std::uint64_t first, std::uint64_t last, const char* when) {
        check_fold_at(first, when);
        check_fold_at(last, when);
        for (unsigned k = 0; k < 4 && !probes_.empty(); ++k) check_fold_at(probes_[next_probe_++ % probes_.size()], when);
    }
    /// A stage-2 change to window page `i` (now at host page `hpa`, or none): reported to the
    /// fold; the aliasing that folding's precondition excludes stops the fold checks.
    void window_page_changed(std::uint64_t i, std::optional<std::uint64_t> hpa) {
        window_hpa_of_[i] = hpa.value_or(~std::uint64_t{0});
        if (hpa)
            for (std::uint64_t j = 0; j < window_hpa_of_.size(); ++j)
                if (j != i && window_hpa_of_[j] == *hpa) aliased_ = true;
        if (fold_) fold_->invalidate_stage2(ipa_t{window_ipa + i * page_}, length_t{page_});
        gmem_->invalidate_stage2(ipa_t{window_ipa + i * page_}, length_t{page_});
    }

    void step() {
        const std::uint8_t kind = in_.u8();
        switch (kind % 8) {
        case 0:
        case 1:
        case 2: {  // map
            const std::uint64_t va = pick_iova(), len = pick_len();
            std::uint64_t pa = (in_.u32() * minp_) & low_mask(std::min(geo1_.oas, 40u));
            const std::uint8_t pb = in_.u8();
            const prot p = (pb & 1) ? rw : prot::read;
            if (pb & 2) pa = window_ipa + (pa & (window_size - 1));
            probe(va);
            probe(va + len - 1);
            const auto before = looks();
            auto a = s1_->map(typename S1::input_address{va}, pa_t{pa}, length_t{len}, p);
            if (trace_) std::fprintf(stderr, "map %#" PRIx64 " %#" PRIx64 " %#" PRIx64 " -> %d\n", va, pa, len, a.ok() ? -1 : int(a.error()));
            if (!a && !aliased_)
                FUZZ_CHECK(looks() == before, "a failed map changed the table (%s over %s)", S1::name, S2::name);
            if (a && fold_) {  // the guest's INVALIDATE of what it mapped
                FUZZ_CHECK(fold_->invalidate(iova_t{va}, length_t{len}).ok(), "fold: invalidate after a map refused");
                check_fold(va, va + len - 1, "after a map");
            }
            if (intact_ && !a && a.error() == errc::nomem) {
                intact_ = false;  // the window ran out where the heap would not
            } else if (intact_) {
                auto b = ref_->map(typename S1::input_address{va}, pa_t{pa}, length_t{len}, p);
                {
                    FUZZ_CHECK(a.ok() == b.ok() && (a.ok() || a.error() == b.error()),
                               "map %#" PRIx64 "+%#" PRIx64 ": %d, reference %d", va, len, a.ok() ? -1 : int(a.error()),
                               b.ok() ? -1 : int(b.error()));
                }
            }
            break;
        }
        case 3:
        case 4: {  // unmap
            const std::uint64_t va = pick_iova(), len = pick_len();
            const bool split = in_.u8() & 1;
            probe(va);
            probe(va + len - 1);
            const auto before = looks();
            const auto mode = split ? unmap_mode::split : unmap_mode::exact;
            auto a = s1_->unmap(typename S1::input_address{va}, length_t{len}, mode);
            if (trace_) std::fprintf(stderr, "unmap %#" PRIx64 " %#" PRIx64 " %d -> %d\n", va, len, split, a.ok() ? -1 : int(a.error()));
            // A split keeps every translation, so even a split that stops half-way looks the same.
            if (!a && !aliased_)
                FUZZ_CHECK(looks() == before, "a failed unmap changed the table (%s over %s)", S1::name, S2::name);
            if (a && fold_ && a->value != 0) {  // the guest's INVALIDATE of what it unmapped
                FUZZ_CHECK(fold_->invalidate(iova_t{va}, length_t{len}).ok(), "fold: invalidate after an unmap refused");
                check_fold(va, va + len - 1, "after an unmap");
            }
            if (intact_) {
                auto b = ref_->unmap(typename S1::input_address{va}, length_t{len}, mode);
                const bool mem_short = !a && a.error() == errc::nomem;
                FUZZ_CHECK(mem_short || (a.ok() == b.ok() && (a.ok() ? a->value == b->value : a.error() == b.error())),
                           "unmap %#" PRIx64 "+%#" PRIx64 ": %d, reference %d", va, len, a.ok() ? -1 : int(a.error()),
                           b.ok() ? -1 : int(b.error()));
                if (mem_short) intact_ = false;  // the window ran out where the heap did not
            }
            break;
        }
        case 5: {  // a stage-2 change to one window page
            const std::uint64_t pages = window_size / page_;
            const std::uint64_t i = in_.u16() % pages;
            const std::uint64_t ipa = window_ipa + i * page_;
            const std::uint8_t how = in_.u8() % 6;
            (void)s2_->unmap(ipa_t{ipa}, length_t{page_});
            std::optional<std::uint64_t> now;  // the host page behind the window page now
            auto remap = [&](std::uint64_t hpa, prot p) {
                if (s2_->map(ipa_t{ipa}, pa_t{hpa}, length_t{page_}, p).ok()) now = hpa;
            };
            switch (how) {
            case 0: break;  // a hole
            case 1: remap(window_hpa + i * page_, prot::read); break;
            case 2: {  // aliased onto another window page's memory
                const std::uint64_t j = in_.u16() % pages;
                remap(window_hpa + j * page_, rw);
                break;
            }
            case 3: {  // moved to spare memory (possibly shared with other moved pages)
                const std::uint64_t k = in_.u8() % (spare_size / page_ ? spare_size / page_ : 1);
                if (spare_size >= page_) remap(spare_hpa + k * page_, rw);
                break;
            }
            case 4: remap(window_hpa + i * page_, rw); break;
            case 5: remap(window_hpa + i * page_, rw | prot::mmio); break;  // Device memory (S2PTW refuses walks there)
            }
            window_page_changed(i, now);
            for (unsigned k = 0; k < 4 && !probes_.empty(); ++k)
                check_fold_at(probes_[next_probe_++ % probes_.size()], "after a stage-2 change");
            if (how != 4) intact_ = false;
            if (trace_) std::fprintf(stderr, "s2 page %#" PRIx64 " mode %u\n", ipa, how);
            break;
        }
        case 6: {  // lookups and nested translations
            const std::uint64_t va = pick_iova();
            probe(va);
            (void)look_at(va);
            (void)tr_->translate(iova_t{va}, {nested::access_kind::read, false});
            check_leaf_walk(va, "probe");
            break;
        }
        case 7: {  // reclaim
            (void)s1_->reclaim();
            if (intact_) (void)ref_->reclaim();
            check_all_probes("after reclaim");
            break;
        }
        }
    }

    byte_reader& in_;
    guest_ram& host_;
    std::optional<s2_table> s2_;
    /// The guest's stage-2 walk cache, as a VMM that keeps one gives it (invalidated with every
    /// stage-2 change, like the fold's): a stage-2 walk per entry access was 40% of the time.
    nested::walk_cache gmem_cache_{64};
    std::optional<gmem_t> gmem_;
    std::optional<s1_table> s1_;
    std::optional<ref_table> ref_;
    std::optional<folded> fold_;
    std::optional<translator> tr_;
    std::vector<std::uint64_t> window_hpa_of_;  ///< host page behind each window page (~0: none)
    bool aliased_ = false;                      ///< two window pages on one host page: fold checks off
    std::size_t next_probe_ = 0;
    geometry geo1_{};
    std::uint64_t page_ = 0, minp_ = 0;
    unsigned span_lg2_ = 32;
    bool intact_ = true;
    bool trace_ = false;
    std::vector<std::uint64_t> probes_;
};

} // namespace
} // namespace iopgtable::fuzz

IOPGTABLE_FUZZ_LISTS(iopgtable::fuzz::pair_names())

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace iopgtable;
    fuzz::byte_reader in(data, size);
    // Host memory is made once and cleared after each input (a fresh 1.75 MiB calloc per
    // input cost most of the time in page faults and zeroing).
    static guest_ram host{fuzz::s2_pool + fuzz::window_size + fuzz::spare_size, pa_t{fuzz::host_base}};
    fuzz::with_pair(in.u8(), [&](auto pair) {
        using P = decltype(pair);
        fuzz::nested_run<typename P::stage1, typename P::stage2>(in, host).run();
    });
    FUZZ_CHECK(host.clear(), "host memory still holds tables after a run (%" PRIu64 " bytes)", host.bytes_in_use());
    guest_ram& ref = fuzz::reference_ram();
    FUZZ_CHECK(ref.bytes_in_use() == 0, "the reference table left %" PRIu64 " bytes in use", ref.bytes_in_use());
    guest_ram& shadow = fuzz::shadow_ram();
    FUZZ_CHECK(shadow.bytes_in_use() == 0, "the folded shadow left %" PRIu64 " bytes in use", shadow.bytes_in_use());
    // Back to an empty pool (and its free lists freed) within the input: an input that leaves
    // heap memory behind is run again by libFuzzer with a leak scan.
    ref.set_table_pool(pa_t{0}, fuzz::reference_ram_size);
    shadow.set_table_pool(pa_t{0}, fuzz::shadow_ram_size);
    return 0;
}
