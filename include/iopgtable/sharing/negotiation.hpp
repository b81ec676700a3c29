// SPDX-License-Identifier: MIT
#pragma once
/// @file negotiation.hpp
/// Format negotiation for page-table sharing, on both sides:
///
/// - device: from a compile-time list of the formats its physical IOMMU walks
///   (`device_format<F>` with the largest configuration it accepts), the PROBE_TABLE entries;
///   then the validation of an ATTACH_TABLE into a `table_binding`: a run-time handle bound to
///   the matching compile-time engine over guest memory.
/// - driver: from a PROBE_TABLE reply, the best format the guest also implements
///   (`pick_format`), and the ATTACH_TABLE request for its table (`make_attach_table`).
///
/// Every refusal names the field and carries the virtio status to answer with.
#include <algorithm>
#include <cstring>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <boost/hana/at.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/length.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>

#include "../engine/page_table.hpp"
#include "../mem/guest_ram.hpp"
#include "descriptors.hpp"

namespace iopgtable::sharing {

/// One format the device's IOMMU walks: `limits` is the largest configuration it accepts
/// (IAS, OAS, quirks such as hardware dirty state), `tag_bits` the ASID / domain-id width.
template <class F>
struct device_format {
    using format = F;
    typename F::config limits{};
    std::uint8_t tag_bits = 16;
    bool enabled = true;  ///< a device may switch a compiled-in format off at run time
    /// The host's IOMMU can stall DMA walking this format (page requests, F_FAULT).
    bool stall = true;
};

/// The widest of F's sample configurations: the largest IAS, then OAS, then hardware dirty
/// tracking on. The limits of "a device that walks F" where nothing else says what it walks
/// (iopt's sharing mode, the fuzzers, the tests).
template <format_profile F>
typename F::config widest_sample() {
    const auto samples = F::sample_configs();
    auto key = [](const typename F::config& c) {
        const auto g = F::make_geometry(c);
        bool dirty = false;
        if constexpr (has_dirty_tracking<F>) dirty = F::dirty_tracking(c);
        return g ? std::tuple{g->ias, g->oas, dirty} : std::tuple{0u, 0u, false};
    };
    auto best = samples.front();
    for (const auto& c : samples)
        if (key(c) > key(best)) best = c;
    return best;
}

/// Limits of ATTACH_TABLE the device enforces.
struct attach_limits {
    std::uint32_t max_contexts = 64;  ///< slots of an F_INDIRECT context table
    /// F_FAULT may be asked (the device negotiated PAGE_REQUESTS); a format must also stall.
    bool page_requests = false;
};

/// What one format contributes to its pg_format entry.
template <shareable_format F>
format_caps caps_of(const device_format<F>& d) noexcept {
    format_caps c;
    auto g = F::make_geometry(d.limits);
    if (!g) return c;
    c.model = F::sharing_model;
    c.variant = F::sharing_variant;
    // The limit's own bit, and those of the sample configurations within its input size (a
    // granule, or every table depth up to the limit's: SAGAW-like).
    auto add_size = [&](const geometry& x) {
        if (const unsigned bit = F::sharing_size_bit(x); bit < 32) c.sizes |= 1u << bit;
    };
    add_size(*g);
    for (const auto& s : F::sample_configs())
        if (auto sg = F::make_geometry(s); sg && sg->ias <= g->ias) add_size(*sg);
    c.max_ias = static_cast<std::uint8_t>(g->ias);
    c.max_oas = static_cast<std::uint8_t>(g->oas);
    c.tag_bits = d.tag_bits;
    if constexpr (has_dirty_tracking<F>)
        if (F::dirty_tracking(d.limits)) c.flags |= cap_access_flag | cap_dirty;
    c.pgsize_bitmap = g->pgsize_bitmap;
    return c;
}

/// The pg_format entries a device with `formats` (a hana tuple of device_format<F>) reports,
/// one per (model, variant) a guest may use, in list order. Formats of one variant merge: sizes
/// and page sizes are united, limits are the largest (ATTACH_TABLE still checks each format's
/// own limits). Stage-2-only formats are never offered.
/// `stall`: the host stalls DMA for page requests (PAGE_REQUESTS negotiated): formats that
/// can (`device_format::stall`) say so with cap_stall.
template <class Formats>
std::vector<virtio::pg_format> offered_formats(const Formats& formats, bool stall = false) {
    std::vector<format_caps> merged;
    boost::hana::for_each(formats, [&](const auto& d) {
        using F = typename std::decay_t<decltype(d)>::format;
        if constexpr (F::guest_shareable) {
            if (!d.enabled) return;
            format_caps c = caps_of(d);
            if (c.model == 0) return;
            if (stall && d.stall) c.flags |= cap_stall;
            auto it = std::find_if(merged.begin(), merged.end(),
                                   [&](const format_caps& m) { return m.model == c.model && m.variant == c.variant; });
            if (it == merged.end()) {
                merged.push_back(c);
            } else {
                it->sizes |= c.sizes;
                it->pgsize_bitmap |= c.pgsize_bitmap;
                it->max_ias = std::max(it->max_ias, c.max_ias);
                it->max_oas = std::max(it->max_oas, c.max_oas);
                it->tag_bits = std::max(it->tag_bits, c.tag_bits);
                it->flags |= c.flags;
            }
        }
    });
    std::vector<virtio::pg_format> out;
    out.reserve(merged.size());
    for (const auto& c : merged) out.push_back(encode_format(c));
    return out;
}

/// Device side: writes the PROBE_TABLE reply into `out`, the device-writable part of the request
/// before its tail: `len` = how many formats exist, `nr_contexts`, then as many pg_format
/// entries as fit (the rest of `out` zeroed: model 0). Returns the bytes written (all of
/// `out`), or 0 when `out` cannot hold the 8-byte reply header.
inline std::size_t write_probe_table(std::span<const virtio::pg_format> offered, std::uint32_t nr_contexts,
                                     std::span<std::uint8_t> out) noexcept {
    if (out.size() < sizeof(virtio::probe_table_reply)) return 0;
    std::fill(out.begin(), out.end(), std::uint8_t{0});
    virtio::probe_table_reply head;
    head.len = static_cast<std::uint32_t>(offered.size());
    head.nr_contexts = nr_contexts;
    std::memcpy(out.data(), &head, sizeof head);
    const std::size_t slots = (out.size() - sizeof head) / sizeof(virtio::pg_format);
    for (std::size_t i = 0; i < slots && i < offered.size(); ++i)
        std::memcpy(out.data() + sizeof head + i * sizeof(virtio::pg_format), &offered[i], sizeof(virtio::pg_format));
    return out.size();
}

/// Driver side: a PROBE_TABLE reply as the device wrote it.
struct probe_table_result {
    std::uint32_t len = 0;          ///< formats the device has (may exceed `formats.size()`)
    std::uint32_t nr_contexts = 0;
    std::vector<virtio::pg_format> formats;  ///< the entries received, unused (model 0) ones dropped
};
inline checked<probe_table_result> parse_probe_table(std::span<const std::uint8_t> in) {
    if (in.size() < sizeof(virtio::probe_table_reply)) return refusal{virtio::status::ioerr, "reply too short"};
    virtio::probe_table_reply head;
    std::memcpy(&head, in.data(), sizeof head);
    probe_table_result r;
    r.len = head.len;
    r.nr_contexts = head.nr_contexts;
    const std::size_t slots = (in.size() - sizeof head) / sizeof(virtio::pg_format);
    for (std::size_t i = 0; i < slots; ++i) {
        virtio::pg_format f;
        std::memcpy(&f, in.data() + sizeof head + i * sizeof f, sizeof f);
        if (f.model.get() != 0) r.formats.push_back(f);
    }
    return r;
}

/// One format's engine bound to a guest table: its configuration and geometry.
template <class F>
struct bound_format {
    using format = F;
    typename F::config cfg;
    geometry geo;
};

/// A translation through a bound table, the same type for every format.
struct table_translation {
    walk_status status = walk_status::unmapped;
    unsigned level = 0;
    unsigned size_lg2 = 0;
    pa_t oa{};
    prot perm = prot::none;
    unsigned accesses = 0;
};

/// The run-time handle an accepted ATTACH_TABLE becomes: which engine, its configuration, and
/// where the guest's table (or context table) lives. Tables stay the guest's: every walk reads
/// guest RAM through its bounds checks, and nothing is ever freed.
template <class... Fs>
class table_binding {
public:
    using engine_variant = std::variant<bound_format<Fs>...>;

    table_binding(engine_variant e, std::uint32_t model, std::uint32_t tag, std::uint32_t flags, pa_t table,
                  std::uint32_t nr_contexts)
        : engine_(std::move(e)), model_(model), tag_(tag), flags_(flags), table_(table), nr_contexts_(nr_contexts) {}

    std::uint32_t model() const noexcept { return model_; }
    std::uint32_t tag() const noexcept { return tag_; }
    std::uint32_t flags() const noexcept { return flags_; }
    pa_t table() const noexcept { return table_; }
    std::uint32_t nr_contexts() const noexcept { return nr_contexts_; }
    bool indirect() const noexcept { return (flags_ & virtio::table_f_indirect) != 0; }
    /// Calls `fn(const bound_format<F>&)` with the bound engine.
    template <class Fn>
    decltype(auto) with_engine(Fn&& fn) const {
        return std::visit(std::forward<Fn>(fn), engine_);
    }
    const char* format_name() const {
        return with_engine([](const auto& b) { return std::decay_t<decltype(b)>::format::name; });
    }
    geometry geo() const {
        return with_engine([](const auto& b) { return b.geo; });
    }

    /// The page directory of `context`: the attached table itself, or (F_INDIRECT) the address
    /// in slot `context` of the context table: le64, bit 0 valid, the rest the address.
    /// Refusals: context out of range (RANGE), slot unreadable or invalid (FAULT / NOENT),
    /// directory misaligned or outside guest RAM (FAULT).
    /// `ram` is guest memory by guest-physical address: a guest_ram, or a virtio::guest_view
    /// (anything with `read(pa_t, void*, len)` and `contains(pa_t, len)`).
    template <class R>
    checked<pa_t> root(const R& ram, std::uint32_t context) const {
        if (!indirect()) {
            if (context != 0) return refusal{virtio::status::range, "context"};
            return table_;
        }
        if (context >= nr_contexts_) return refusal{virtio::status::range, "context"};
        le64 slot;
        if (!ram.read(pa_t{table_.value + std::uint64_t{context} * 8}, slot.bytes.data(), 8))
            return refusal{virtio::status::fault, "context table"};
        const std::uint64_t v = slot.get();
        if ((v & 1) == 0) return refusal{virtio::status::noent, "context slot"};
        const pa_t dir{v & ~std::uint64_t{1}};
        return with_engine([&](const auto& b) -> checked<pa_t> {
            using F = typename std::decay_t<decltype(b)>::format;
            const std::uint64_t bytes = sizeof(typename F::word) << b.geo.top_index_lg2;
            const std::uint64_t align = bytes < 64 ? 64 : bytes;
            if ((dir.value & (align - 1)) != 0 || !ram.contains(dir, bytes))
                return refusal{virtio::status::fault, "context slot address"};
            return dir;
        });
    }

    /// Walks `iova` in `context`'s table.
    checked<table_translation> translate(guest_ram& ram, std::uint32_t context, std::uint64_t iova) const {
        auto r = root(ram, context);
        if (!r) return r.why();
        return with_engine([&](const auto& b) -> checked<table_translation> {
            using F = typename std::decay_t<decltype(b)>::format;
            auto w = lookup<F>(b.cfg, b.geo, ram, *r, iova);
            return table_translation{w.status, w.level, w.size_lg2, w.oa, w.perm, w.accesses};
        });
    }

    /// Calls `fn(page_table<F, guest_ram>&)` with an engine over `context`'s table (to map,
    /// unmap or visit as the guest's driver would). Returns fn's result, or the refusal.
    template <class Fn>
    auto with_table(guest_ram& ram, std::uint32_t context, Fn&& fn) const {
        using R = decltype(fn(std::declval<page_table<first_format, guest_ram>&>()));
        auto r = root(ram, context);
        if (!r) return checked<R>(r.why());
        return with_engine([&](const auto& b) -> checked<R> {
            using F = typename std::decay_t<decltype(b)>::format;
            auto t = page_table<F, guest_ram>::borrow(b.cfg, ram, *r);
            if (!t) return refusal{to_status(t.error()), "config"};
            return fn(*t);
        });
    }

private:
    using first_format = std::tuple_element_t<0, std::tuple<Fs...>>;
    engine_variant engine_;
    std::uint32_t model_, tag_, flags_;
    pa_t table_;
    std::uint32_t nr_contexts_;
};

/// The binding type of a device with `Formats` (a hana tuple of device_format<F>).
template <class T>
struct binding_for_impl;
template <class... D>
struct binding_for_impl<boost::hana::tuple<D...>> {
    using type = table_binding<typename D::format...>;
};
template <class Formats>
using binding_for = typename binding_for_impl<std::decay_t<Formats>>::type;

/// Validates an ATTACH_TABLE against the device's formats and guest RAM and binds it.
/// Checks, in order (each refusal names its field): flags (unknown bits INVAL; F_FAULT UNSUPP
/// unless `lim.page_requests`, and then UNSUPP for a format that cannot stall), nr_contexts (F_INDIRECT: 1..max_contexts else RANGE; otherwise
/// 0 or 1 else INVAL), model (0 INVAL, unknown UNSUPP), config (variant UNSUPP, reserved bytes
/// INVAL, register fields as the format reads them: INVAL / UNSUPP / RANGE), the device's
/// limits (IAS/OAS RANGE, tag bits RANGE, dirty UNSUPP), the table pointer (misaligned INVAL,
/// outside guest RAM RANGE).
template <class Formats, class R>
checked<binding_for<Formats>> validate_attach(const Formats& formats, const virtio::req_attach_table& req,
                                              const R& ram, attach_limits lim = {}) {
    using binding = binding_for<Formats>;
    const std::uint32_t flags = req.flags;
    if ((flags & ~virtio::table_f_mask) != 0) return refusal{virtio::status::inval, "flags"};
    if ((flags & virtio::table_f_fault) && !lim.page_requests) return refusal{virtio::status::unsupp, "flags.F_FAULT"};
    const bool indirect = (flags & virtio::table_f_indirect) != 0;
    const std::uint32_t contexts = req.nr_contexts;
    if (indirect && (contexts == 0 || contexts > lim.max_contexts)) return refusal{virtio::status::range, "nr_contexts"};
    if (!indirect && contexts > 1) return refusal{virtio::status::inval, "nr_contexts"};
    const std::uint32_t model = req.model;
    if (model == 0) return refusal{virtio::status::inval, "model"};
    auto tc = decode_config(model, req.config);
    if (!tc) return tc.why();

    std::optional<checked<binding>> out;
    refusal best{virtio::status::unsupp, find_model(model) ? "config.variant" : "model"};
    auto try_one = [&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
        const auto& d = boost::hana::at_c<I>(formats);
        using F = typename std::decay_t<decltype(d)>::format;
        if constexpr (F::guest_shareable) {
            if (out || !d.enabled || F::sharing_model != model || F::sharing_variant != tc->variant) return;
            if ((flags & virtio::table_f_fault) && !d.stall) {
                best = refusal{virtio::status::unsupp, "flags.F_FAULT: format cannot stall"};
                return;
            }
            std::string_view why;
            if (!F::matches_registers(tc->regs)) {  // another granule: keep the most precise reason
                auto other = F::config_from_registers(tc->regs, why);
                best = other ? refusal{virtio::status::unsupp, "config: granule not supported"}
                             : refusal{to_status(other.error()), why};
                return;
            }
            auto cfg = F::config_from_registers(tc->regs, why);
            if (!cfg) {
                out.emplace(refusal{to_status(cfg.error()), why});
                return;
            }
            auto geo = F::make_geometry(*cfg);
            if (!geo) {
                out.emplace(refusal{to_status(geo.error()), "config"});
                return;
            }
            auto lim_geo = F::make_geometry(d.limits);
            if (!lim_geo || geo->ias > lim_geo->ias) {
                out.emplace(refusal{virtio::status::range, "config: input size above the device's"});
                return;
            }
            if (geo->oas > lim_geo->oas) {
                out.emplace(refusal{virtio::status::range, "config: output size above the device's"});
                return;
            }
            if (d.tag_bits < 32 && (tc->tag >> d.tag_bits) != 0) {
                out.emplace(refusal{virtio::status::range, "config.tag"});
                return;
            }
            if constexpr (has_dirty_tracking<F>) {
                if (F::dirty_tracking(*cfg) && !F::dirty_tracking(d.limits)) {
                    out.emplace(refusal{virtio::status::unsupp, "config: hardware dirty state"});
                    return;
                }
            }
            // The table: the page directory, or the context table (8-byte slots).
            const pa_t table{req.table.get()};
            const std::uint64_t bytes =
                indirect ? std::uint64_t{contexts} * 8 : (sizeof(typename F::word) << geo->top_index_lg2);
            const std::uint64_t align = indirect ? 64 : (bytes < 64 ? 64 : bytes);
            if ((table.value & (align - 1)) != 0) {
                out.emplace(refusal{virtio::status::inval, "table: misaligned"});
                return;
            }
            if (!ram.contains(table, bytes)) {
                out.emplace(refusal{virtio::status::range, "table: outside guest RAM"});
                return;
            }
            typename binding::engine_variant e(std::in_place_index<I>, bound_format<F>{*cfg, *geo});
            out.emplace(binding(std::move(e), model, tc->tag, flags, table, indirect ? contexts : 1));
        }
    };
    constexpr std::size_t n = decltype(boost::hana::length(formats))::value;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
        (try_one(std::integral_constant<std::size_t, I>{}), ...);
    }(std::make_index_sequence<n>{});
    if (out) return std::move(*out);
    return best;
}

/// A format the guest implements and the configuration it wants for its table.
template <class F>
struct guest_format {
    using format = F;
    typename F::config want{};
};

/// Driver side: walks `guest` (a hana tuple of guest_format<F>, most preferred first) and calls
/// `fn(F{}-typed guest_format<F> with the configuration to use)` for the first format an entry
/// of `offered` supports: same model and variant, the format's size bit (`sharing_size_bit`:
/// its granule or its level count) among the entry's sizes, and the wanted IAS/OAS, lowered to the entry's maxima where
/// larger, still a valid configuration. Returns false when no format matches (the guest then
/// falls back to MAP/UNMAP).
template <class Guest, class Fn>
bool pick_format(const Guest& guest, std::span<const virtio::pg_format> offered, Fn&& fn) {
    bool found = false;
    boost::hana::for_each(guest, [&](const auto& g) {
        using F = typename std::decay_t<decltype(g)>::format;
        if constexpr (F::guest_shareable) {
            if (found) return;
            for (const auto& entry : offered) {
                auto caps = decode_format(entry);
                if (!caps || caps->model != F::sharing_model || caps->variant != F::sharing_variant) continue;
                auto cfg = g.want;
                if constexpr (requires { cfg.ias; }) cfg.ias = std::min<unsigned>(cfg.ias, caps->max_ias);
                if constexpr (requires { cfg.oas; }) cfg.oas = std::min<unsigned>(cfg.oas, caps->max_oas);
                auto geo = F::make_geometry(cfg);
                if (!geo || geo->ias > caps->max_ias || geo->oas > caps->max_oas) continue;
                const unsigned size_bit = F::sharing_size_bit(*geo);
                if (size_bit >= 32 || (caps->sizes & (1u << size_bit)) == 0) continue;
                found = true;
                fn(guest_format<F>{cfg});
                return;
            }
        }
    });
    return found;
}

namespace detail {
template <shareable_format F>
checked<virtio::req_attach_table> make_shareable_attach(const typename F::config& cfg, pa_t root, std::uint32_t tag,
                                                        std::uint32_t flags, std::uint32_t nr_contexts) {
    auto geo = F::make_geometry(cfg);
    if (!geo) return refusal{to_status(geo.error()), "config"};
    table_config tc;
    tc.model = F::sharing_model;
    tc.variant = F::sharing_variant;
    tc.regs = F::registers(cfg, *geo, root);
    tc.tag = tag;
    const blob b = encode_config_for<F>(tc);
    auto seen = decode_config_for<F>(b.data());
    if (!seen) return seen.why();
    std::string_view why;
    auto back = F::config_from_registers(seen->regs, why);
    if (!back) return refusal{to_status(back.error()), why};
    auto back_geo = F::make_geometry(*back);
    bool same = back_geo && back_geo->levels == geo->levels && back_geo->top_index_lg2 == geo->top_index_lg2 &&
                back_geo->ias == geo->ias;
    if constexpr (requires { cfg.quirks; }) same = same && back->quirks == cfg.quirks;
    if (!same) return refusal{virtio::status::unsupp, "config: not expressible in ATTACH_TABLE"};
    virtio::req_attach_table req;
    req.head.type = static_cast<std::uint8_t>(virtio::req_type::attach_table);
    req.flags = flags;
    req.table = root.value;
    req.nr_contexts = nr_contexts;
    req.model = F::sharing_model;
    std::copy(b.begin(), b.end(), req.config);
    return req;
}
} // namespace detail

/// Driver side: the ATTACH_TABLE request for a table of format F at `root` (or a context table
/// with `nr_contexts` slots when `flags` has F_INDIRECT), tagged `tag` (ASID / domain id).
/// Refused (UNSUPP): stage-2-only formats, and configurations the config blob cannot carry —
/// those the device would read back (decode_config, F::config_from_registers) as a table of
/// another shape (levels, top table, IAS) or with other quirks (e.g. v7s with IAS < 32).
template <class F>
checked<virtio::req_attach_table> make_attach_table(const typename F::config& cfg, pa_t root, std::uint32_t tag,
                                                    std::uint32_t flags = 0, std::uint32_t nr_contexts = 0) {
    if constexpr (!F::guest_shareable) {
        return refusal{virtio::status::unsupp, "format: stage-2 only"};
    } else {
        return detail::make_shareable_attach<F>(cfg, root, tag, flags, nr_contexts);
    }
}

} // namespace iopgtable::sharing
