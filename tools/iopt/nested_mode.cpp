// SPDX-License-Identifier: MIT
/// @file nested_mode.cpp
/// `iopt nested`: a stage-1 table in guest memory over a stage-2 table, the nested translator
/// with its caches, and optionally a folded shadow (nested.md).
#include "nested_mode.hpp"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include <boost/hana/for_each.hpp>
#include <iopgtable/formats/all.hpp>
#include <iopgtable/mem/default_memory.hpp>
#include <iopgtable/mem/guest_ram.hpp>
#include <iopgtable/nested/nested.hpp>

#include "command_line.hpp"
#include "hex.hpp"
#include "script.hpp"

namespace iopt {
namespace {

namespace hana = boost::hana;
namespace nst = iopgtable::nested;
using iopgtable::errc;
using iopgtable::options;

int fail(const std::string& message) { return report_failure("nested", message); }

/// The three option groups of the command line, each the words of one quoted argument.
struct groups {
    std::optional<std::string> s1, s2, fold;
    bool mediated = false;
    nst::nested_settings settings{};
};

/// `--s1 WORDS`, `--s1=WORDS` (and --s2, --fold), `--mediated`, `--s2ptw 0|1`; or a reason.
std::variant<groups, std::string> parse_groups(std::span<char* const> args) {
    groups g;
    for (std::size_t i = 0; i < args.size(); ++i) {
        std::string_view w = args[i];
        if (w == "--mediated") {
            g.mediated = true;
            continue;
        }
        if (w == "--s2ptw" || w.starts_with("--s2ptw=")) {
            std::string_view v;
            if (w.size() > 7) {
                v = w.substr(8);
            } else {
                if (i + 1 == args.size()) return std::string("--s2ptw needs 0 or 1");
                v = args[++i];
            }
            if (v != "0" && v != "1") return "--s2ptw needs 0 or 1, got '" + std::string(v) + "'";
            g.settings.protected_table_walk = v == "1";
            continue;
        }
        std::optional<std::string>* slot = nullptr;
        std::string_view key;
        for (auto [k, s] : {std::pair{std::string_view{"--s1"}, &g.s1}, std::pair{std::string_view{"--s2"}, &g.s2},
                            std::pair{std::string_view{"--fold"}, &g.fold}}) {
            if (w == k || (w.starts_with(k) && w.size() > k.size() && w[k.size()] == '=')) {
                slot = s;
                key = k;
            }
        }
        if (slot == nullptr)
            return "unexpected argument '" + std::string(w) + "' (expected --s1, --s2, --fold, --mediated or --s2ptw)";
        if (*slot) return "option " + std::string(key) + " given twice";
        if (w.size() > key.size()) {
            *slot = std::string(w.substr(key.size() + 1));
        } else {
            if (i + 1 == args.size()) return std::string(key) + " needs a quoted list of format options";
            *slot = std::string(args[++i]);
        }
    }
    if (!g.s1 || !g.s2) return "--s1 \"<format options>\" and --s2 \"<format options>\" are required";
    if (g.mediated && !g.fold) return "--mediated needs --fold";
    return g;
}

/// The options of one group (`--format NAME --granule 4k ...`), or a reason.
std::variant<options, std::string> group_options(std::string_view what, const std::string& text) {
    std::vector<std::string> words;
    for (std::size_t pos = 0; pos < text.size();) {
        const auto start = text.find_first_not_of(" \t", pos);
        if (start == std::string::npos) break;
        const auto end = std::min(text.find_first_of(" \t", start), text.size());
        words.push_back(text.substr(start, end - start));
        pos = end;
    }
    std::vector<char*> argv;
    for (auto& w : words) argv.push_back(w.data());
    auto parsed = parse_options(argv);
    if (auto* why = std::get_if<std::string>(&parsed)) return std::string(what) + ": " + *why;
    if (!std::get<options>(parsed).has("format")) return std::string(what) + " needs --format NAME";
    return std::get<options>(parsed);
}

/// Calls `fn.template operator()<F>(config)` for the first F of `all_formats` that `pick`
/// allows, is named `--format` and accepts the options; or gives the reason none does
/// (`needs` says what `pick` wants).
template <class Pick, class Fn>
std::optional<std::string> with_format(std::string_view what, const options& o, Pick pick, std::string_view needs,
                                       Fn&& fn) {
    const std::string name(o.text("format").value_or(""));
    bool named = false, picked = false, done = false;
    std::optional<std::string> why;
    hana::for_each(iopgtable::all_formats, [&](auto t) {
        using F = typename decltype(t)::type;
        if (done || name != F::name) return;
        named = true;
        if (!pick(hana::type_c<F>)) return;
        picked = true;
        if (!F::accepts(o)) return;
        done = true;
        auto cfg = F::config_from(o);
        if (!cfg) {
            why = std::string(what) + ": " + F::name + " refuses these options: " + std::string(to_string(cfg.error()));
            return;
        }
        for (const auto& k : o.unread()) {
            if (k == "format") continue;
            why = std::string(what) + ": " + F::name + " does not take --" + k + " (see formats/" + F::folder + "/README.md)";
            return;
        }
        why = fn.template operator()<F>(*cfg);
    });
    if (done) return why;
    if (!named) return std::string(what) + ": unknown format '" + name + "'";
    if (!picked) return std::string(what) + ": " + name + " is not " + std::string(needs);
    return std::string(what) + ": no " + name + " variant accepts these options";
}

template <class F>
constexpr bool is_stage1 = std::is_same_v<typename F::input_address, iopgtable::iova_t>;
template <class F>
constexpr bool is_stage2 = std::is_same_v<typename F::input_address, iopgtable::ipa_t>;

/// Runs the script on one stage-1 / stage-2 pair (and the shadow, if any).
template <class S1, class S2>
class nested_session {
public:
    using host_memory = iopgtable::guest_ram;
    using guest_memory = nst::guest_table_memory<S2, host_memory>;
    using stage1_table = iopgtable::page_table<S1, guest_memory>;
    using stage2_table = iopgtable::page_table<S2, host_memory>;
    using translator = nst::nested_translator<S1, S2, host_memory>;
    using folded = nst::basic_folded_table<S1, S2, host_memory, nst::any_shadow>;

    nested_session(stage1_table& s1, stage2_table& s2, translator& t, nst::walk_cache& wc, nst::translation_cache& tlb,
                   folded* fold, bool mediated) noexcept
        : s1_(s1), s2_(s2), t_(t), wc_(wc), tlb_(tlb), fold_(fold), mediated_(mediated) {}

    std::optional<std::string> operator()(const operation& op, std::span<const std::string_view> args) {
        const std::string_view name = op.name;
        std::vector<std::uint64_t> n;
        std::optional<nst::access_kind> kind;
        bool all = false, privileged = false;
        for (std::size_t i = 0; i < args.size(); ++i) {
            if (name == "translate" && i == 1) {
                if (args[1] == "r") kind = nst::access_kind::read;
                else if (args[1] == "w") kind = nst::access_kind::write;
                else if (args[1] == "x") kind = nst::access_kind::exec;
                else return "access must be r, w or x, got '" + std::string(args[1]) + "'";
                continue;
            }
            if (name == "translate" && i == 2) {
                if (args[2] != "priv") return "translate expects priv after the access, got '" + std::string(args[2]) + "'";
                privileged = true;
                continue;
            }
            if (name == "invalidate" && args.size() == 1) {
                if (args[0] != "all") return "invalidate expects IOVA SIZE or all, got '" + std::string(args[0]) + "'";
                all = true;
                continue;
            }
            auto v = parse_hex(args[i]);
            if (!v) return hex_error(args[i]);
            n.push_back(*v);
        }
        if (name == "shadow" && fold_ == nullptr) return "shadow needs --fold (there is no shadow table)";
        if (name == "s1map") s1map(n[0], n[1], n[2], n[3]);
        else if (name == "s1unmap") s1unmap(n[0], n[1]);
        else if (name == "s2map") s2map(n[0], n[1], n[2], n[3]);
        else if (name == "s2unmap") s2unmap(n[0], n[1]);
        else if (name == "invalidate") all ? invalidate_all() : invalidate(n[0], n[1]);
        else if (name == "translate") translate(n[0], {*kind, privileged});
        else if (name == "shadow") shadow(n[0]);
        else if (name == "stats") stats();
        else return "operation '" + std::string(name) + "' is not available here";
        return std::nullopt;
    }

private:
    static std::optional<iopgtable::prot> prot_of(std::uint64_t bits) {
        if (bits > 0xffffffffu) return std::nullopt;
        return iopgtable::prot_from_bits(static_cast<std::uint32_t>(bits));
    }
    static void answer(const iopgtable::result<void>& r) { emit(r ? "ok" : to_string(r.error())); }
    static void answer(const iopgtable::result<iopgtable::length_t>& r) {
        emit(r ? to_hex(r->value) : std::string(to_string(r.error())));
    }

    // The guest writes its stage-1 table through stage 2 (with --mediated, through the fold).
    void s1map(std::uint64_t iova, std::uint64_t ipa, std::uint64_t size, std::uint64_t bits) {
        auto p = prot_of(bits);
        if (!p) return emit(to_string(errc::invalid));
        if (fold_ && mediated_) return answer(fold_->s1_map(iopgtable::iova_t{iova}, iopgtable::ipa_t{ipa}, iopgtable::length_t{size}, *p));
        answer(s1_.map(iopgtable::iova_t{iova}, iopgtable::pa_t{ipa}, iopgtable::length_t{size}, *p));
    }
    void s1unmap(std::uint64_t iova, std::uint64_t size) {
        if (fold_ && mediated_) return answer(fold_->s1_unmap(iopgtable::iova_t{iova}, iopgtable::length_t{size}));
        answer(s1_.unmap(iopgtable::iova_t{iova}, iopgtable::length_t{size}));
    }
    // The host changes stage 2 (through the fold, which refolds at once) and, after a removal,
    // invalidates the translator's caches as the protocol asks.
    void s2map(std::uint64_t ipa, std::uint64_t pa, std::uint64_t size, std::uint64_t bits) {
        auto p = prot_of(bits);
        if (!p) return emit(to_string(errc::invalid));
        if (fold_) return answer(fold_->s2_map(iopgtable::ipa_t{ipa}, iopgtable::pa_t{pa}, iopgtable::length_t{size}, *p));
        answer(s2_.map(iopgtable::ipa_t{ipa}, iopgtable::pa_t{pa}, iopgtable::length_t{size}, *p));
    }
    void s2unmap(std::uint64_t ipa, std::uint64_t size) {
        auto r = fold_ ? fold_->s2_unmap(iopgtable::ipa_t{ipa}, iopgtable::length_t{size})
                       : s2_.unmap(iopgtable::ipa_t{ipa}, iopgtable::length_t{size});
        if (r) t_.invalidate_stage2(iopgtable::ipa_t{ipa}, iopgtable::length_t{size});
        answer(r);
    }
    // The guest's INVALIDATE: the IOTLB of its context, and the shadow's re-sync.
    void invalidate(std::uint64_t iova, std::uint64_t size) {
        if (size == 0) return emit(to_string(errc::invalid));
        if (s1_.geo().ias < 64 && (iova >> s1_.geo().ias) != 0) return emit(to_string(errc::range));
        t_.invalidate(iopgtable::iova_t{iova}, iopgtable::length_t{size});
        if (fold_) return answer(fold_->invalidate(iopgtable::iova_t{iova}, iopgtable::length_t{size}));
        emit("ok");
    }
    void invalidate_all() {
        t_.invalidate_context();
        if (fold_) fold_->invalidate_all();
        emit("ok");
    }
    // A device's transaction: data read or write, or instruction fetch; unprivileged unless
    // the script says priv (nested.md).
    void translate(std::uint64_t iova, nst::access_request access) {
        const auto r = t_.translate(iopgtable::iova_t{iova}, access);
        if (r) return emit("PA " + to_hex(r->output.value) + " size " + to_hex(std::uint64_t{1} << r->size_lg2));
        const auto& f = r.error();
        emit("fault stage " + std::to_string(f.stage) + " level " + to_hex(f.level) + " addr " + to_hex(f.address) + " " +
             std::string(to_string(f.reason)) + (f.table_fetch ? " table-fetch" : ""));
    }
    void shadow(std::uint64_t iova) {
        const auto s = fold_->lookup(iopgtable::iova_t{iova});
        emit(s.mapped ? "PA " + to_hex(s.oa.value) : "none");
    }
    void stats() {
        emit("walks " + to_hex(t_.stats().walks));
        emit("accesses " + to_hex(t_.stats().accesses));
        emit("walk_cache_hits " + to_hex(wc_.hits()));
        emit("walk_cache_misses " + to_hex(wc_.misses()));
        emit("iotlb_hits " + to_hex(tlb_.hits()));
        emit("iotlb_misses " + to_hex(tlb_.misses()));
        if (fold_) {
            const auto& f = fold_->stats();
            emit("shadow_resyncs " + to_hex(f.resyncs));
            emit("shadow_full_resyncs " + to_hex(f.full_resyncs));
            emit("shadow_refolds " + to_hex(f.refolds));
            emit("shadow_pieces " + to_hex(f.pieces));
            emit("shadow_dropped " + to_hex(f.dropped));
        }
        emit("END");
    }

    stage1_table& s1_;
    stage2_table& s2_;
    translator& t_;
    nst::walk_cache& wc_;
    nst::translation_cache& tlb_;
    folded* fold_;
    bool mediated_;
};

/// Builds the host and the guest of one pair, then runs the script.
template <class S1, class S2>
int run_pair(const typename S1::config& c1, const typename S2::config& c2, std::optional<nst::any_shadow> shadow,
             bool mediated, nst::nested_settings settings) {
    using session = nested_session<S1, S2>;
    iopgtable::guest_ram host{2 * nested_window_size, iopgtable::pa_t{nested_host_base}};
    host.set_table_pool(iopgtable::pa_t{nested_host_base}, nested_stage2_pool);
    auto s2 = session::stage2_table::create(c2, host);
    if (!s2) return fail("cannot create the " + std::string(S2::name) + " table: " + std::string(to_string(s2.error())));
    const auto g1 = S1::make_geometry(c1);
    const unsigned k = std::min(g1->oas, s2->geo().ias);
    if (k < 26) return fail("the IPA space (2^" + std::to_string(k) + ") is too small for the stage-1 table window");
    const std::uint64_t window = (k >= 64 ? 0 : std::uint64_t{1} << k) - nested_window_size;
    const auto rw = iopgtable::prot::read | iopgtable::prot::write;
    // The smallest pages, so that a script can take single table pages away.
    const std::uint64_t page = s2->min_page();
    if (auto m = s2->map_pages(iopgtable::ipa_t{window}, iopgtable::pa_t{nested_window_hpa}, iopgtable::length_t{page},
                               nested_window_size / page, rw);
        !m)
        return fail("cannot map the stage-1 table window in stage 2: " + std::string(to_string(m.error())));
    const auto s2_table = nst::stage_table<S2, iopgtable::guest_ram>::of(*s2);
    typename session::guest_memory gmem{s2_table, iopgtable::ipa_t{window}, nested_window_size};
    auto s1 = session::stage1_table::create(c1, gmem);
    if (!s1) return fail("cannot create the " + std::string(S1::name) + " table: " + std::string(to_string(s1.error())));
    const iopgtable::ipa_t root{s1->root().value};
    nst::walk_cache walks(32);
    nst::translation_cache tlb(4096);
    auto t = session::translator::create(c1, root, s2_table, {&walks, &tlb, 1}, settings);
    if (!t) return fail("cannot build the translator: " + std::string(to_string(t.error())));
    std::optional<typename session::folded> fold;
    if (shadow) {
        auto f = session::folded::create(c1, root, *s2, std::move(*shadow), mediated ? &*s1 : nullptr,
                                         ~std::uint64_t{0}, settings);
        if (!f)
            return fail("cannot fold into this shadow: " + std::string(to_string(f.error())) +
                        " (its input size must cover stage 1's, its smallest page fit both stages)");
        fold.emplace(std::move(*f));
    }
    session run{*s1, *s2, *t, walks, tlb, fold ? &*fold : nullptr, mediated};
    return run_script(std::cin, nested_operations, std::ref(run));
}

} // namespace

int nested_mode(std::span<char* const> args) {
    auto parsed = parse_groups(args);
    if (auto* why = std::get_if<std::string>(&parsed)) return fail(*why);
    const groups& g = std::get<groups>(parsed);
    auto o1 = group_options("--s1", *g.s1);
    auto o2 = group_options("--s2", *g.s2);
    for (auto* o : {&o1, &o2})
        if (auto* why = std::get_if<std::string>(o)) return fail(*why);
    std::optional<nst::any_shadow> shadow;
    if (g.fold) {
        auto of = group_options("--fold", *g.fold);
        if (auto* why = std::get_if<std::string>(&of)) return fail(*why);
        auto why = with_format("--fold", std::get<options>(of), [](auto) { return true; }, "",
                               [&]<class F>(const typename F::config& c) -> std::optional<std::string> {
                                   auto s = nst::any_shadow::create<F>(c, iopgtable::make_default_memory<F>());
                                   if (!s) return "--fold: cannot create the " + std::string(F::name) + " table";
                                   shadow.emplace(std::move(*s));
                                   return std::nullopt;
                               });
        if (why) return fail(*why);
    }
    int status = -1;
    auto stage1 = [](auto t) { return is_stage1<typename decltype(t)::type>; };
    auto stage2 = [](auto t) { return is_stage2<typename decltype(t)::type>; };
    auto why = with_format("--s1", std::get<options>(o1), stage1, "a stage-1 format (its input is an IOVA)",
                           [&]<class S1>(const typename S1::config& c1) {
        return with_format("--s2", std::get<options>(o2), stage2, "a stage-2 format (its input is an IPA)",
                           [&]<class S2>(const typename S2::config& c2) {
            if constexpr (is_stage1<S1> && is_stage2<S2>) status = run_pair<S1, S2>(c1, c2, std::move(shadow), g.mediated, g.settings);
            return std::optional<std::string>{};
        });
    });
    if (why) return fail(*why);
    return status;
}

} // namespace iopt
