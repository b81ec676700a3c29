// SPDX-License-Identifier: MIT
/// @file virtio_mode.cpp
/// `iopt virtio`: the script's requests go through the requestq of a simulated VM as a guest
/// sends them (sim/machine.hpp); guest-side operations write the guest's own stage-1 tables
/// through stage 2; `translate` is a device's DMA (virtio.md).
#include "virtio_mode.hpp"

#include <array>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <iopgtable/nested/stage2_view.hpp>
#include <iopgtable/sharing/negotiation.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/hosts.hpp>
#include <iopgtable/sim/machine.hpp>
#include <iopgtable/virtio/vhost_iotlb.hpp>

#include "command_line.hpp"
#include "format_text.hpp"
#include "hex.hpp"
#include "script.hpp"

namespace iopt {

namespace vio = iopgtable::virtio;
namespace sharing = iopgtable::sharing;
namespace nst = iopgtable::nested;
namespace vh = iopgtable::virtio::vhost;

// ------------------------------------------------------------------ shared with iopt demo

std::string reply_line(std::uint32_t used, std::span<const std::uint8_t> writable) {
    if (used < sizeof(vio::req_tail) || used > writable.size()) return "NONE used " + std::to_string(used);
    const std::uint8_t s = writable[used - sizeof(vio::req_tail)];
    const std::string name = s <= static_cast<std::uint8_t>(vio::status::nomem)
                                 ? std::string(vio::to_string(static_cast<vio::status>(s)))
                                 : "status " + to_hex(s);
    return name + " used " + std::to_string(used);
}

std::string request_name(std::uint8_t type) {
    switch (static_cast<vio::req_type>(type)) {
    case vio::req_type::attach: return "ATTACH";
    case vio::req_type::detach: return "DETACH";
    case vio::req_type::map: return "MAP";
    case vio::req_type::unmap: return "UNMAP";
    case vio::req_type::probe: return "PROBE";
    case vio::req_type::probe_table: return "PROBE_TABLE";
    case vio::req_type::attach_table: return "ATTACH_TABLE";
    case vio::req_type::invalidate: return "INVALIDATE";
    case vio::req_type::map_sg: return "MAP_SG";
    case vio::req_type::page_reply: return "PAGE_REPLY";
    }
    return to_hex(type);
}

std::vector<std::string> request_lines(const vio::request_stats& s) {
    std::vector<std::string> out;
    for (std::size_t type = 0; type < s.by_type_status.size(); ++type) {
        const std::string name = request_name(static_cast<std::uint8_t>(type));
        for (std::size_t st = 0; st < s.by_type_status[type].size(); ++st)
            if (const auto n = s.by_type_status[type][st]; n != 0)
                out.push_back("request " + name + " " + std::string(vio::to_string(static_cast<vio::status>(st))) + " " +
                              std::to_string(n));
        if (const auto n = s.unanswered[type]; n != 0) out.push_back("request " + name + " NONE " + std::to_string(n));
    }
    return out;
}

std::string fault_line(const vio::fault& event) {
    const char* reason = event.reason == vio::fault_r_domain    ? "domain"
                         : event.reason == vio::fault_r_mapping ? "mapping"
                                                                : "unknown";
    const std::uint32_t flags = event.flags;
    std::string access;
    if (flags & vio::fault_f_read) access += 'r';
    if (flags & vio::fault_f_write) access += 'w';
    if (flags & vio::fault_f_exec) access += 'x';
    std::string line = "fault reason " + std::string(reason) + " endpoint " + std::to_string(event.endpoint.get()) +
                       " flags " + (access.empty() ? std::string("none") : access);
    if (flags & vio::fault_f_address) line += " address " + to_hex(event.address);
    return line;
}

namespace {

int fail(const std::string& message) { return report_failure("virtio", message); }

struct feature_name {
    std::string_view name;
    unsigned bit;
};
/// Feature bits by name, in bit order (virtio.md, "Features").
constexpr feature_name feature_names[] = {
    {"input_range", vio::f_input_range},     {"domain_range", vio::f_domain_range}, {"map_unmap", vio::f_map_unmap},
    {"bypass", vio::f_bypass},               {"probe", vio::f_probe},               {"mmio", vio::f_mmio},
    {"bypass_config", vio::f_bypass_config}, {"page_requests", vio::f_page_requests}, {"relaxed", vio::f_relaxed},
    {"map_sg", vio::f_map_sg},               {"grouped", vio::f_grouped},       {"table_sharing", vio::f_table_sharing},
    {"indirect_desc", vio::f_indirect_desc}, {"event_idx", vio::f_event_idx},       {"version_1", vio::f_version_1},
};

std::string feature_list(std::uint64_t bits) {
    std::string s;
    for (const auto& f : feature_names) {
        if ((bits >> f.bit & 1) == 0) continue;
        s += (s.empty() ? "" : ",") + std::string(f.name);
        bits &= ~vio::feature(f.bit);
    }
    for (unsigned b = 0; b < 64; ++b)
        if (bits >> b & 1) s += (s.empty() ? "bit " : ",bit ") + std::to_string(b);
    return s.empty() ? "none" : s;
}

/// The bits of a comma list of feature names, or a reason.
std::variant<std::uint64_t, std::string> parse_feature_names(std::string_view option, std::string_view text) {
    std::uint64_t bits = 0;
    while (true) {
        const auto comma = text.find(',');
        const std::string_view word = text.substr(0, comma);
        bool found = false;
        for (const auto& f : feature_names)
            if (f.name == word) {
                bits |= vio::feature(f.bit);
                found = true;
            }
        if (!found) {
            std::string known;
            for (const auto& f : feature_names) known += (known.empty() ? "" : ", ") + std::string(f.name);
            return "--" + std::string(option) + ": unknown feature '" + std::string(word) + "' (known: " + known + ")";
        }
        if (comma == std::string_view::npos) return bits;
        text.remove_prefix(comma + 1);
    }
}

/// `START:END` (hex, END inclusive) as two numbers, or nothing.
std::optional<std::pair<std::uint64_t, std::uint64_t>> parse_range(std::string_view text) {
    const auto colon = text.find(':');
    if (colon == std::string_view::npos) return std::nullopt;
    auto a = parse_hex(text.substr(0, colon));
    auto b = parse_hex(text.substr(colon + 1));
    if (!a || !b) return std::nullopt;
    return std::pair{*a, *b};
}

/// `START:END[:msi|:reserved]`.
std::optional<vio::reserved_region> parse_reserved(std::string_view text) {
    std::uint8_t subtype = vio::resv_mem_t_reserved;
    if (text.ends_with(":msi")) {
        subtype = vio::resv_mem_t_msi;
        text.remove_suffix(4);
    } else if (text.ends_with(":reserved")) {
        text.remove_suffix(9);
    }
    auto r = parse_range(text);
    if (!r) return std::nullopt;
    return vio::reserved_region{r->first, r->second, subtype};
}

struct settings {
    std::string host = "arm";  ///< a name from sim/hosts.hpp all_hosts
    vio::machine_settings machine;
};

/// The command line (virtio.md, "Options"), or a reason.
std::variant<settings, std::string> parse_settings(std::span<char* const> args) {
    settings s;
    auto& d = s.machine.device;
    // --reserved may be given several times; every other option once.
    std::vector<std::string> reserved;
    std::vector<char*> rest;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view w = args[i];
        if (w == "--reserved") {
            if (i + 1 == args.size() || std::string_view(args[i + 1]).starts_with("--"))
                return std::string("--reserved needs START:END[:msi]");
            reserved.emplace_back(args[++i]);
        } else if (w.starts_with("--reserved=")) {
            reserved.emplace_back(w.substr(11));
        } else {
            rest.push_back(args[i]);
        }
    }
    auto parsed = parse_options(rest);
    if (auto* why = std::get_if<std::string>(&parsed)) return *why;
    const iopgtable::options& o = std::get<iopgtable::options>(parsed);

    auto hex_option = [&](std::string_view key, auto& out) -> std::optional<std::string> {
        auto t = o.text(key);
        if (!t) return std::nullopt;
        auto v = parse_hex(*t);
        using T = std::decay_t<decltype(out)>;
        if (!v || *v > std::numeric_limits<T>::max())
            return "--" + std::string(key) + " needs a hex number" +
                   (sizeof(T) < 8 ? " of " + std::to_string(sizeof(T) * 8) + " bits" : std::string()) + ", got '" +
                   std::string(*t) + "'";
        out = static_cast<T>(*v);
        return std::nullopt;
    };
    auto count_option = [&](std::string_view key, std::uint64_t dflt, std::uint64_t lo, std::uint64_t hi,
                            std::uint64_t& out) -> std::optional<std::string> {
        auto v = o.number(key, dflt);
        if (!v || *v < lo || *v > hi)
            return "--" + std::string(key) + " needs a number from " + std::to_string(lo) + " to " + std::to_string(hi) +
                   ", got '" + std::string(o.text(key).value_or("")) + "'";
        out = *v;
        return std::nullopt;
    };
    auto range_option = [&](std::string_view key, auto& start, auto& end) -> std::optional<std::string> {
        auto t = o.text(key);
        if (!t) return std::nullopt;
        auto r = parse_range(*t);
        using T = std::decay_t<decltype(start)>;
        if (!r || r->first > std::numeric_limits<T>::max() || r->second > std::numeric_limits<T>::max())
            return "--" + std::string(key) + " needs START:END (hex, END inclusive" +
                   (sizeof(T) < 8 ? ", 32 bits" : "") + "), got '" + std::string(*t) + "'";
        start = static_cast<T>(r->first);
        end = static_cast<T>(r->second);
        return std::nullopt;
    };

    if (auto h = o.text("host")) {
        if (!vio::with_host(*h, [](auto) {})) return "--host must be one of " + vio::host_names() + ", got '" + std::string(*h) + "'";
        s.host = std::string(*h);
    }
    if (auto t = o.text("sharing")) {
        if (*t == "folded") d.sharing = vio::shared_mode::folded;
        else if (*t != "nested") return "--sharing must be nested or folded, got '" + std::string(*t) + "'";
    }
    std::optional<std::string> why;
    if (!why) why = hex_option("features", d.features);
    for (const auto* key : {"feature", "no-feature"}) {
        if (why) break;
        auto t = o.text(key);
        if (!t) continue;
        auto bits = parse_feature_names(key, *t);
        if (auto* w = std::get_if<std::string>(&bits)) return *w;
        const std::uint64_t b = std::get<std::uint64_t>(bits);
        d.features = std::string_view(key) == "feature" ? d.features | b : d.features & ~b;
    }
    if (!why) why = hex_option("driver-features", s.machine.driver_features);
    if (!why) why = hex_option("page-size-mask", d.page_size_mask);
    std::uint64_t input_end = 0;  // default: what the domain table maps (the device decides)
    if (!why) why = range_option("input-range", d.input_start, input_end);
    if (!why && o.text("input-range")) d.input_end = input_end;
    if (!why) why = range_option("domain-range", d.domain_start, d.domain_end);
    std::uint64_t endpoints = 0, bypass = 0, probe_size = 0, max_domains = 0, max_mappings = 0, buffers = 0;
    if (!why) why = count_option("endpoints", 2, 1, 0x10000, endpoints);
    if (!why) why = count_option("bypass", 0, 0, 1, bypass);
    if (!why) why = count_option("probe-size", d.probe_size, 0, 0xfff0, probe_size);
    if (!why) why = count_option("max-domains", d.max_domains, 0, 0xffffffff, max_domains);
    if (!why) why = count_option("max-mappings", d.max_mappings, 0, ~std::uint64_t{0}, max_mappings);
    if (!why) why = count_option("event-buffers", s.machine.event_buffers, 0, s.machine.queue_size, buffers);
    if (why) return *why;
    d.endpoints = static_cast<std::uint32_t>(endpoints);
    d.boot_bypass = bypass != 0;
    d.probe_size = static_cast<std::uint32_t>(probe_size);
    d.max_domains = static_cast<std::uint32_t>(max_domains);
    d.max_mappings = max_mappings;
    s.machine.event_buffers = static_cast<std::uint32_t>(buffers);
    if (o.flag("no-reserved") || !reserved.empty()) d.reserved.clear();
    for (const auto& text : reserved) {
        auto r = parse_reserved(text);
        if (!r) return "--reserved needs START:END[:msi] (hex, END inclusive), got '" + text + "'";
        d.reserved.push_back(*r);
    }
    for (const auto& k : o.unread()) return "virtio does not take --" + k + " (see tools/iopt/virtio.md)";
    return s;
}

/// Reads the numbers of one script line; the first problem is kept as the line's reason.
struct arg_reader {
    std::span<const std::string_view> args;
    std::optional<std::string> why;

    std::uint64_t hex(std::size_t i) {
        if (why) return 0;
        auto v = parse_hex(args[i]);
        if (!v) {
            why = hex_error(args[i]);
            return 0;
        }
        return *v;
    }
    std::uint32_t hex32(std::size_t i, std::string_view what) {
        const std::uint64_t v = hex(i);
        if (!why && v > 0xffffffffu) why = std::string(what) + " must fit in 32 bits, got '" + std::string(args[i]) + "'";
        return static_cast<std::uint32_t>(v);
    }
};

/// MAP flags: letters r (READ), w (WRITE), m (MMIO), or the flags word in hex.
std::optional<std::uint32_t> parse_map_flags(std::string_view w) {
    if (!w.empty() && w.find_first_not_of("rwm") == std::string_view::npos) {
        std::uint32_t f = 0;
        for (const char c : w) f |= c == 'r' ? vio::map_f_read : c == 'w' ? vio::map_f_write : vio::map_f_mmio;
        return f;
    }
    auto v = parse_hex(w);
    if (!v || *v > 0xffffffffu) return std::nullopt;
    return static_cast<std::uint32_t>(*v);
}

/// A guest table's PROT: letters r, w, m (MMIO; cacheable memory without it), or IOMMU_* bits in hex.
std::optional<iopgtable::prot> parse_guest_prot(std::string_view w) {
    using iopgtable::prot;
    if (!w.empty() && w.find_first_not_of("rwm") == std::string_view::npos) {
        prot p = prot::none;
        for (const char c : w) p |= c == 'r' ? prot::read : c == 'w' ? prot::write : prot::mmio;
        if (!has(p, prot::mmio)) p |= prot::cache;
        return p;
    }
    auto v = parse_hex(w);
    if (!v || *v > 0xffffffffu) return std::nullopt;
    return iopgtable::prot_from_bits(static_cast<std::uint32_t>(*v));
}


/// Bytes in hex (`-`: none), at most `max` of them.
std::optional<std::vector<std::uint8_t>> parse_bytes(std::string_view hex, std::size_t max) {
    std::vector<std::uint8_t> out;
    if (hex == "-") return out;
    if (hex.size() > 2 && hex[0] == '0' && (hex[1] == 'x' || hex[1] == 'X')) hex.remove_prefix(2);
    if (hex.empty() || hex.size() % 2 != 0 || hex.size() / 2 > max) return std::nullopt;
    for (std::size_t i = 0; i < hex.size(); i += 2) {
        auto v = parse_hex(hex.substr(i, 2));
        if (!v) return std::nullopt;
        out.push_back(static_cast<std::uint8_t>(*v));
    }
    return out;
}

/// One PROBE_TABLE entry: `format I <model> <variant> granules|levels ... max_ias ... pgsizes ...`.
std::string format_line(std::size_t index, const vio::pg_format& f) {
    std::string line = "format " + std::to_string(index);
    auto c = sharing::decode_format(f);
    if (!c) return line + " invalid " + std::string(c.why().field);
    if (sharing::find_model(c->model)) line += " " + variant_name(c->model, c->variant);
    else line += " model " + std::to_string(c->model) + " variant " + std::to_string(c->variant);
    line += " " + sizes_name(c->model) + " " + size_list(c->model, c->sizes);
    line += " max_ias " + std::to_string(c->max_ias) + " max_oas " + std::to_string(c->max_oas) + " tag_bits " +
            std::to_string(c->tag_bits);
    return line + " flags " + flag_list(c->flags) + " pgsizes " + to_hex(c->pgsize_bitmap);
}

/// The deferred unmapper's way to the device: the requestq, each chain's answer kept as a
/// `sent N unmap(s): STATUS used K` line for the script's output.
template <class Machine>
struct deferred_transport {
    Machine* m = nullptr;
    std::vector<std::string> lines;
    std::uint32_t submit(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        const std::uint32_t used = m->submit(in, out);
        const bool grouped = in.size() >= 2 && (in[1] & (vio::req_f_group >> 8)) != 0;
        const std::size_t n = grouped ? in.size() / offsetof(vio::req_unmap, tail) : 1;
        lines.push_back("sent " + std::to_string(n) + (n == 1 ? " unmap" : " unmaps") + (grouped ? " in a group" : "") +
                        ": " + reply_line(used, out));
        return used;
    }
};

/// Runs the script in one machine.
template <class Host>
class virtio_session {
public:
    using machine_type = vio::machine<Host>;
    using S1 = typename Host::domain_format;  // the guest's own tables (page-table sharing)
    using S2 = typename Host::stage2_format;
    using table_memory = nst::guest_table_memory<S2, iopgtable::guest_ram>;
    using guest_table = iopgtable::page_table<S1, table_memory>;

    explicit virtio_session(machine_type& m)
        : m_(m), gmem_(m.stage2_table(), iopgtable::ipa_t{machine_type::table_window_gpa}, machine_type::table_window_size),
          deferred_tr_{&m, {}}, deferred_drv_(deferred_tr_), deferred_(deferred_drv_, deferral_for(m.dev())) {}

    /// Whether the script ended between `group` and `end`.
    bool inside_group() const noexcept { return group_.has_value(); }

    std::optional<std::string> operator()(const operation& op, std::span<const std::string_view> args) {
        const std::string_view name = op.name;
        arg_reader a{args, std::nullopt};
        if (group_ && !in_group_allowed(name))
            return std::string(name) + " cannot be part of a group (attach, detach, map, unmap, map_sg, invalidate; end)";
        if (name == "attach" || name == "detach") {
            const std::uint32_t dom = a.hex32(0, "DOMAIN"), ep = a.hex32(1, "EP");
            if (args.size() == 3 && args[2] != "bypass")
                return "attach's third word must be 'bypass', got '" + std::string(args[2]) + "'";
            if (a.why) return a.why;
            issue(name == "attach" ? vio::attach_request(dom, ep, args.size() == 3) : vio::detach_request(dom, ep));
        } else if (name == "map") {
            const std::uint32_t dom = a.hex32(0, "DOMAIN");
            const std::uint64_t first = a.hex(1), last = a.hex(2), phys = a.hex(3);
            if (a.why) return a.why;
            auto flags = parse_map_flags(args[4]);
            if (!flags) return "FLAGS must be letters r, w, m or a 32-bit hex number, got '" + std::string(args[4]) + "'";
            issue(vio::map_request(dom, first, last, phys, *flags), mapped_range{dom, first, last});
        } else if (name == "map_sg") {
            const std::uint32_t dom = a.hex32(0, "DOMAIN");
            const std::uint64_t start = a.hex(1), size = a.hex(2);
            std::vector<std::uint64_t> phys;
            for (std::size_t i = 4; i < args.size(); ++i) phys.push_back(a.hex(i));
            if (a.why) return a.why;
            auto flags = parse_map_flags(args[3]);
            if (!flags) return "FLAGS must be letters r, w, m or a 32-bit hex number, got '" + std::string(args[3]) + "'";
            // The range the device maps when it answers OK (it refuses one beyond 2^64).
            const std::uint64_t n = phys.size(), room = ~std::uint64_t{0} - start;
            const std::uint64_t last = size == 0 ? start : size <= room / n ? start + (size * n - 1) : ~std::uint64_t{0};
            issue(vio::map_sg_request(dom, start, size, *flags, phys), mapped_range{dom, start, last});
        } else if (name == "unmap") {
            const std::uint32_t dom = a.hex32(0, "DOMAIN");
            const std::uint64_t first = a.hex(1), last = a.hex(2);
            if (a.why) return a.why;
            issue(vio::unmap_request(dom, first, last));
        } else if (name == "group") {
            if (group_) return std::string("group inside a group");
            group_.emplace();
            group_maps_.clear();
        } else if (name == "end") {
            if (!group_) return std::string("end without group");
            if (group_->empty()) return std::string("a group needs at least one request");
            auto chain = vio::group_request(*group_);
            group_.reset();
            if (!chain) return "group: " + std::string(chain.why().field);
            if (send_status(*chain) == vio::status::ok)
                for (const auto& r : group_maps_) deferred_.remapped(r.domain, r.first, r.last);
        } else if (name == "unmap_deferred") {
            const std::uint32_t dom = a.hex32(0, "DOMAIN");
            const std::uint64_t first = a.hex(1), last = a.hex(2);
            if (a.why) return a.why;
            (void)deferred_.release(dom, first, last, now_ns_);
            deferred_report();
        } else if (name == "advance") {
            const std::uint64_t us = a.hex(0);
            if (a.why) return a.why;
            if (us > 0xffffffffu) return "MICROSECONDS must be at most 0xffffffff, got '" + std::string(args[0]) + "'";
            now_ns_ += us * 1000;
            m_.dev().advance_clock(now_ns_ / 1000);  // page requests time out on the same clock
            (void)deferred_.poll(now_ns_);
            deferred_report();
        } else if (name == "flush") {
            (void)deferred_.flush(now_ns_);
            deferred_report();
        } else if (name == "probe") {
            const std::uint32_t ep = a.hex32(0, "EP");
            const std::uint64_t props = args.size() == 2 ? a.hex(1) : m_.dev().config_space().probe_size.get();
            if (a.why) return a.why;
            if (props > 0xfff0) return "PROPS_LEN must be at most 0xfff0";
            probe(ep, static_cast<std::uint32_t>(props));
        } else if (name == "probe_table") {
            const std::uint32_t as = a.hex32(0, "AS");
            const std::uint64_t slots = args.size() == 2 ? a.hex(1) : 8;
            if (a.why) return a.why;
            if (slots > 0x100) return "SLOTS must be at most 0x100";
            probe_table(as, static_cast<std::uint32_t>(slots));
        } else if (name == "attach_table") {
            vio::req_attach_table r;
            r.address_space = a.hex32(0, "AS");
            r.table = a.hex(1);
            r.model = a.hex32(2, "MODEL");
            r.flags = args.size() > 4 ? a.hex32(4, "FLAGS") : 0u;
            r.nr_contexts = args.size() > 5 ? a.hex32(5, "NR_CONTEXTS") : 0u;
            if (a.why) return a.why;
            auto blob = parse_blob(args[3]);
            if (!blob) return "CONFIGHEX must be an even number of hex digits, at most 128, got '" + std::string(args[3]) + "'";
            std::copy(blob->begin(), blob->end(), r.config);
            send(vio::attach_table_request(r));
        } else if (name == "invalidate") {
            const std::uint32_t as = a.hex32(0, "AS"), context = a.hex32(1, "CONTEXT");
            const std::string_view kind = args[2];
            const bool vaddr = kind == "vaddr" && args.size() == 5;
            if (!vaddr && !((kind == "single" || kind == "table") && args.size() == 3))
                return std::string("invalidate expects AS CONTEXT vaddr ADDR SIZE, AS CONTEXT single or AS CONTEXT table");
            const std::uint64_t addr = vaddr ? a.hex(3) : 0, size = vaddr ? a.hex(4) : 0;
            if (a.why) return a.why;
            const auto k = vaddr ? vio::invalidate_kind::vaddr
                                 : kind == "single" ? vio::invalidate_kind::single : vio::invalidate_kind::table;
            issue(vio::invalidate_request(as, context, k, addr, size));
        } else if (name == "raw") {
            auto in = parse_bytes(args[0], machine_type::buffer_bytes);
            if (!in) return "READABLE_HEX must be '-' or an even number of hex digits, at most 0x10000 bytes, got '" +
                            std::string(args[0]) + "'";
            const std::uint64_t w = a.hex(1);
            if (a.why) return a.why;
            if (w > machine_type::buffer_bytes) return "WRITABLE_LEN must be at most 0x10000";
            std::vector<std::uint8_t> out(static_cast<std::size_t>(w));
            const std::uint32_t used = m_.raw(*in, static_cast<std::uint32_t>(w), out);
            emit(reply_line(used, out));
            if (used > sizeof(vio::req_tail) && used <= out.size())
                emit("reply " + bytes_to_hex(std::span<const std::uint8_t>(out).first(used)));
        } else if (name == "shape") {
            const std::uint64_t pieces = a.hex(0);
            if (a.why) return a.why;
            if (pieces == 0 || pieces > 0x100) return "PIECES must be 1 to 0x100";
            if (args.size() == 2 && args[1] != "indirect")
                return "shape's second word must be 'indirect', got '" + std::string(args[1]) + "'";
            m_.set_shape({static_cast<unsigned>(pieces), args.size() == 2});
            emit("ok");
        } else if (name == "translate") {
            const std::uint32_t ep = a.hex32(0, "EP");
            const std::uint64_t iova = a.hex(1);
            const std::uint64_t size = args.size() == 4 ? a.hex(3) : 1;
            if (a.why) return a.why;
            nst::access_kind kind{};
            if (args[2] == "r") kind = nst::access_kind::read;
            else if (args[2] == "w") kind = nst::access_kind::write;
            else if (args[2] == "x") kind = nst::access_kind::exec;
            else return "access must be r, w or x, got '" + std::string(args[2]) + "'";
            if (size == 0) return std::string("SIZE must not be 0");
            translate(ep, iova, kind, size, args.size() == 4);
        } else if (name == "config") {
            config();
        } else if (name == "set_bypass") {
            const std::uint64_t v = a.hex(0);
            if (a.why) return a.why;
            const std::uint8_t byte = static_cast<std::uint8_t>(v);
            const bool ok = v <= 0xff && m_.dev().write_config(offsetof(vio::config, bypass), std::span(&byte, 1));
            emit(ok ? "ok" : "refused");
        } else if (name == "gmap" || name == "gunmap" || name == "gtable" || name == "gattach") {
            return guest_op(name, args);
        } else if (name == "gwrite") {
            const std::uint64_t gpa = a.hex(0), v = a.hex(1);
            if (a.why) return a.why;
            const iopgtable::le64 word(v);
            emit(m_.guest().write(iopgtable::pa_t{gpa}, word.bytes.data(), 8) ? "ok" : "fault");
        } else if (name == "stats") {
            stats();
        } else if (name == "vhost_miss") {
            const std::uint32_t ep = a.hex32(0, "EP");
            const std::uint64_t iova = a.hex(1);
            if (a.why) return a.why;
            const std::uint8_t perm = args[2] == "r" ? vh::access_ro : args[2] == "w" ? vh::access_wo
                                      : args[2] == "rw"                             ? vh::access_rw
                                                                                    : 0;
            if (perm == 0) return "access must be r, w or rw, got '" + std::string(args[2]) + "'";
            vhost_miss(ep, iova, perm);
        } else if (name == "vhost_log") {
            vhost_log();
        } else if (name == "page_requests") {
            page_requests();
        } else if (name == "reply") {
            const std::uint32_t id = a.hex32(0, "ID");
            const std::uint64_t pa = args.size() == 3 ? a.hex(2) : 0;
            if (a.why) return a.why;
            if (args[1] != "ok" && args[1] != "fail") return "reply's second word must be ok or fail, got '" + std::string(args[1]) + "'";
            // The domain the page request named (as the guest read it); 0 for an id it never got.
            const auto it = request_domain_.find(id);
            send(vio::page_reply_request(it == request_domain_.end() ? 0 : it->second, id,
                                         args[1] == "ok" ? vio::page_reply_handled : vio::page_reply_failed, pa));
        } else if (name == "resume") {
            resume();
        } else {
            return "operation '" + std::string(name) + "' is not available here";
        }
        return std::nullopt;
    }

private:
    /// A range a MAP or MAP_SG maps when the device answers OK: pending deferred unmaps lose it.
    struct mapped_range {
        std::uint32_t domain;
        std::uint64_t first, last;
    };

    static bool in_group_allowed(std::string_view name) noexcept {
        return name == "attach" || name == "detach" || name == "map" || name == "unmap" || name == "map_sg" ||
               name == "invalidate" || name == "end";
    }

    /// The deferred unmapper's settings from what the device presents: config_fast at offset 40
    /// and the negotiated features (deferral_settings::from).
    static vio::deferral_settings deferral_for(const typename machine_type::device_type& dev) {
        std::array<std::uint8_t, sizeof(vio::config_fast)> raw{};
        dev.read_config(vio::config_fast_offset, raw);
        return vio::deferral_settings::from(vio::parse_config_fast(raw, dev.driver_features()), dev.driver_features());
    }

    /// Inside a group: keeps `r` for the group's chain. Otherwise sends it (`send`); a MAP or
    /// MAP_SG the device answered OK takes its range out of the pending deferred unmaps.
    void issue(vio::request r, std::optional<mapped_range> maps = std::nullopt) {
        if (group_) {
            group_->push_back(std::move(r));
            if (maps) group_maps_.push_back(*maps);
            return;
        }
        if (send_status(r) == vio::status::ok && maps) deferred_.remapped(maps->domain, maps->first, maps->last);
    }

    /// `send`, then the status as the driver reads it (anything but a full answer: IOERR).
    vio::status send_status(const vio::request& r) {
        std::uint32_t used = 0;
        const auto out = send(r, &used);
        if (used != r.writable_len || used < sizeof(vio::req_tail)) return vio::status::ioerr;
        const std::uint8_t s = out[used - sizeof(vio::req_tail)];
        return s <= static_cast<std::uint8_t>(vio::status::nomem) ? static_cast<vio::status>(s) : vio::status::ioerr;
    }

    /// The lines of the chains the deferred unmapper sent, then `pending N`.
    void deferred_report() {
        for (const auto& line : deferred_tr_.lines) emit(line);
        deferred_tr_.lines.clear();
        emit("pending " + std::to_string(deferred_.pending().size()));
    }

    /// Sends one request through the requestq and prints its status and used length; returns
    /// the device-writable part as the device left it, and the used length in `used`.
    std::vector<std::uint8_t> send(const vio::request& r, std::uint32_t* used = nullptr) {
        std::vector<std::uint8_t> out(r.writable_len);
        const std::uint32_t n = m_.submit(r.readable, out);
        emit(reply_line(n, out));
        if (used) *used = n;
        return out;
    }

    void probe(std::uint32_t ep, std::uint32_t props) {
        std::uint32_t used = 0;
        const auto out = send(vio::probe_request(ep, props), &used);
        if (used != props + sizeof(vio::req_tail) || out[props] != static_cast<std::uint8_t>(vio::status::ok)) return;
        auto info = vio::parse_probe(std::span<const std::uint8_t>(out).first(props));
        if (!info) return emit("properties malformed: " + std::string(info.why().field));
        for (const auto& r : info->regions)
            emit("resv_mem " + std::string(r.subtype == vio::resv_mem_t_msi ? "msi " : "reserved ") + to_hex(r.start) +
                 "-" + to_hex(r.end));
        if (info->unknown) emit("unknown_properties " + std::to_string(info->unknown));
        if (info->ignored) emit("ignored_properties " + std::to_string(info->ignored));
    }

    void probe_table(std::uint32_t as, std::uint32_t slots) {
        std::uint32_t used = 0;
        const auto r = vio::probe_table_request(as, 0, slots);
        const auto out = send(r, &used);
        const std::size_t tail = r.writable_len - sizeof(vio::req_tail);
        if (used != r.writable_len || out[tail] != static_cast<std::uint8_t>(vio::status::ok)) return;
        auto reply = sharing::parse_probe_table(std::span<const std::uint8_t>(out).first(tail));
        if (!reply) return emit("reply malformed: " + std::string(reply.why().field));
        emit("len " + std::to_string(reply->len) + " nr_contexts " + std::to_string(reply->nr_contexts));
        for (std::size_t i = 0; i < reply->formats.size(); ++i) emit(format_line(i, reply->formats[i]));
    }

    /// The device's DMA: `translate` until `size` bytes are covered or a fault; a fault is read
    /// back from the eventq as the guest's driver would (`dropped` when no buffer was posted).
    void translate(std::uint32_t ep, std::uint64_t iova, nst::access_kind kind, std::uint64_t size, bool sized) {
        constexpr unsigned max_lines = 256;
        unsigned lines = 0;
        for (std::uint64_t pos = iova, left = size;;) {
            const vio::dma_result r = m_.dev().translate(ep, pos, left, kind);
            for (unsigned i = 0; i < r.count; ++i, ++lines) {
                if (lines == max_lines) return emit("more");
                emit("PA " + to_hex(r.ranges[i].hpa) + (sized ? " len " + to_hex(r.ranges[i].length) : ""));
            }
            if (r.stalled()) {
                // The page request the access waits for (opened or joined).
                std::uint32_t id = 0;
                for (const auto& pr : m_.dev().page_requests())
                    for (const auto& w : pr.waiting)
                        if (w.token == r.pending) id = pr.id;
                stalled_[r.pending] = stalled_access{id, sized};
                return emit("pending " + to_hex(id));
            }
            if (r.fault) {
                const auto events = m_.take_events();
                if (r.fault->delivered && !events.empty()) return emit(fault_line(events.back()));
                vio::fault f;
                f.reason = r.fault->reason;
                f.flags = r.fault->flags;
                f.endpoint = r.fault->endpoint;
                f.address = r.fault->address;
                return emit(fault_line(f) + " dropped");
            }
            if (r.covered == 0 || r.covered >= left) return;
            pos += r.covered;
            left -= r.covered;
        }
    }

    /// The page requests the guest's eventq received since the last call.
    void page_requests() {
        const auto events = m_.take_page_requests();
        if (events.empty()) return emit("none");
        for (const auto& ev : events) {
            auto p = vio::parse_page_request(ev);
            if (!p) {
                emit("page_request malformed");
                continue;
            }
            request_domain_[p->id] = p->address_space;
            std::string access;
            if (p->flags & vio::fault_f_read) access += 'r';
            if (p->flags & vio::fault_f_write) access += 'w';
            if (p->flags & vio::fault_f_exec) access += 'x';
            emit("page_request " + to_hex(p->id) + " endpoint " + std::to_string(p->endpoint) + " context " +
                 std::to_string(p->context) + " address " + to_hex(p->address) + " flags " +
                 (access.empty() ? std::string("none") : access));
        }
    }

    /// What the stalled accesses completed as since the last call, in completion order:
    /// `completed ID` (the page request it waited for), then its lines as `translate` prints
    /// them (the fault as the device reported it, `dropped` when no event buffer was there).
    void resume() {
        std::vector<vio::dma_completion> done;
        m_.dev().take_completions(done);
        (void)m_.take_events();  // the faults below were posted there too
        if (done.empty()) return emit("none");
        for (const auto& c : done) {
            const auto it = stalled_.find(c.token);
            const bool sized = it != stalled_.end() && it->second.sized;
            emit("completed " + to_hex(it == stalled_.end() ? 0 : it->second.id));
            if (it != stalled_.end()) stalled_.erase(it);
            for (unsigned i = 0; i < c.result.count; ++i)
                emit("PA " + to_hex(c.result.ranges[i].hpa) + (sized ? " len " + to_hex(c.result.ranges[i].length) : ""));
            if (const auto& f = c.result.fault) {
                vio::fault ev;
                ev.reason = f->reason;
                ev.flags = f->flags;
                ev.endpoint = f->endpoint;
                ev.address = f->address;
                emit(fault_line(ev) + (f->delivered ? "" : " dropped"));
            }
        }
    }

    void config() {
        const vio::config c = m_.dev().config_space();
        emit("config page_size_mask " + to_hex(c.page_size_mask) + " input_range " + to_hex(c.input_range.start) + "-" +
             to_hex(c.input_range.end) + " domain_range " + to_hex(c.domain_range.start) + "-" +
             to_hex(c.domain_range.end) + " probe_size " + std::to_string(c.probe_size.get()) + " bypass " +
             std::to_string(c.bypass));
        emit("offered " + feature_list(m_.dev().device_features()));
        emit("negotiated " + feature_list(m_.dev().driver_features()));
    }

    /// The guest's table for address space `as`, created (empty) on first use; or the error.
    std::variant<guest_table*, iopgtable::errc> table_for(std::uint32_t as) {
        if (auto it = tables_.find(as); it != tables_.end()) return &it->second;
        auto t = guest_table::create(typename S1::config{}, gmem_);
        if (!t) return t.error();
        return &tables_.emplace(as, std::move(*t)).first->second;
    }

    /// gmap, gunmap, gtable, gattach: the guest's own table of an address space, written
    /// through stage 2 (no request is sent, but by gattach).
    std::optional<std::string> guest_op(std::string_view name, std::span<const std::string_view> args) {
        arg_reader a{args, std::nullopt};
        const std::uint32_t as = a.hex32(0, "AS");
        std::uint64_t iova = 0, gpa = 0, size = 0;
        std::uint32_t attach_flags = 0;
        std::optional<iopgtable::prot> p;
        if (name == "gmap") {
            iova = a.hex(1);
            gpa = a.hex(2);
            size = a.hex(3);
            p = parse_guest_prot(args[4]);
            if (!a.why && !p) return "PROT must be letters r, w, m or IOMMU_* bits in hex, got '" + std::string(args[4]) + "'";
        } else if (name == "gunmap") {
            iova = a.hex(1);
            size = a.hex(2);
        } else if (name == "gattach" && args.size() == 2) {
            attach_flags = a.hex32(1, "FLAGS");
        }
        if (a.why) return a.why;
        auto got = table_for(as);
        if (auto* e = std::get_if<iopgtable::errc>(&got)) {
            emit(name == "gattach" || name == "gtable" ? "table " + std::string(to_string(*e)) : to_string(*e));
            return std::nullopt;
        }
        guest_table& t = *std::get<guest_table*>(got);
        if (name == "gmap") {
            auto r = t.map(iopgtable::iova_t{iova}, iopgtable::pa_t{gpa}, iopgtable::length_t{size}, *p);
            emit(r ? "ok" : to_string(r.error()));
            return std::nullopt;
        }
        if (name == "gunmap") {
            auto r = t.unmap(iopgtable::iova_t{iova}, iopgtable::length_t{size});
            emit(r ? to_hex(r->value) : std::string(to_string(r.error())));
            return std::nullopt;
        }
        auto req = sharing::make_attach_table<S1>(t.cfg(), t.root(), 0);
        if (!req) {
            emit("table refused " + std::string(req.why().field));
            return std::nullopt;
        }
        if (name == "gtable") {
            emit("table " + to_hex(t.root().value) + " model " + std::to_string(req->model.get()) + " config " +
                 bytes_to_hex(req->config));
        } else {
            req->address_space = as;
            req->flags = attach_flags;
            send(vio::attach_table_request(*req));
        }
        return std::nullopt;
    }

    void stats() {
        const auto& dev = m_.dev();
        for (const auto& line : request_lines(dev.stats())) emit(line);
        emit("malformed_chains " + std::to_string(dev.stats().malformed_chains));
        const auto& t = dev.dma_stats();
        emit("translations " + std::to_string(t.translations));
        emit("faults_delivered " + std::to_string(t.faults_delivered));
        emit("faults_dropped " + std::to_string(t.faults_dropped));
        emit("iotlb_hits " + std::to_string(dev.iotlb().hits()));
        emit("iotlb_misses " + std::to_string(dev.iotlb().misses()));
        if (dev.offered(vio::f_relaxed) || dev.offered(vio::f_map_sg) || dev.offered(vio::f_grouped)) {
            const auto& f = dev.fast_stats();
            emit("invalidations " + std::to_string(dev.iotlb_invalidations()));
            emit("groups " + std::to_string(f.groups));
            emit("groups_failed " + std::to_string(f.groups_failed));
            emit("rollbacks " + std::to_string(f.rollbacks));
            emit("rollback_failures " + std::to_string(f.rollback_failures));
            emit("map_sg " + std::to_string(f.map_sg));
            emit("map_sg_elems " + std::to_string(f.map_sg_elems));
            emit("relaxed_exact " + std::to_string(f.relaxed_exact));
            emit("relaxed_replaced " + std::to_string(f.relaxed_replaced));
            const vio::deferral_stats& d = deferred_.stats();
            emit("deferred " + std::to_string(d.deferred));
            emit("deferred_sent " + std::to_string(d.sent));
            emit("deferred_failed " + std::to_string(d.failed));
            emit("deferred_requests " + std::to_string(d.requests));
            emit("deferred_groups " + std::to_string(d.groups));
            emit("deferred_replaced " + std::to_string(d.replaced));
            emit("deferred_flushes " + std::to_string(d.flushes));
            emit("deferred_max_delay_us " + std::to_string(d.max_delay_ns / 1000));
            emit("deferred_oldest_at_flush_us " + std::to_string(d.oldest_at_flush_ns / 1000));
            emit("deferred_pending " + std::to_string(deferred_.pending().size()));
        }
        if (dev.offered(vio::f_page_requests)) {
            const auto& p = dev.page_request_stats();
            emit("page_requests " + std::to_string(p.requests));
            emit("page_requests_joined " + std::to_string(p.joined));
            emit("page_requests_not_stalled " + std::to_string(p.not_stalled));
            emit("page_replies_handled " + std::to_string(p.replies_handled));
            emit("page_replies_failed " + std::to_string(p.replies_failed));
            emit("page_requests_timed_out " + std::to_string(p.timeouts));
            emit("page_requests_aborted " + std::to_string(p.aborted));
            emit("stalled_completed_ok " + std::to_string(p.completed_ok));
            emit("stalled_completed_fault " + std::to_string(p.completed_fault));
            emit("page_requests_open " + std::to_string(dev.page_requests().size()));
            emit("stalled_accesses " + std::to_string(dev.stalled_accesses()));
        }
        emit("END");
    }

    // ---- the vhost IOTLB service (virtio.md, "vhost IOTLB service")

    /// The VMM's address of host memory: the guest's RAM slot at vmm_base (virtio.md).
    static constexpr std::uint64_t vmm_base = 0x7f0000000000;
    using service_type = vh::vhost_iotlb_service<Host, vh::memory_stream>;

    /// The service, made at the first vhost operation: one backend serving every endpoint
    /// (asid = endpoint), over an in-memory stream the script's side reads.
    service_type& service() {
        if (!service_) {
            vh::vhost_settings vs;
            vs.endpoints.clear();
            for (std::uint32_t ep = 0; ep < m_.dev().settings().endpoints; ++ep) vs.endpoints.push_back(ep);
            const std::uint64_t base = m_.guest().hpa_base(), size = m_.guest().size();
            service_ = std::make_unique<service_type>(
                m_.dev(), vstream_,
                [base, size](std::uint64_t hpa, std::uint64_t len) -> std::optional<std::uint64_t> {
                    if (hpa < base || hpa - base >= size || len > size - (hpa - base)) return std::nullopt;
                    return vmm_base + (hpa - base);
                },
                std::move(vs));
        }
        return *service_;
    }
    static std::string perm_name(std::uint8_t p) {
        return p == vh::access_ro ? "r" : p == vh::access_wo ? "w" : p == vh::access_rw ? "rw" : to_hex(p);
    }
    static std::string range_line(const char* what, const vh::iotlb_msg& m) {
        return std::string(what) + " iova " + to_hex(m.iova) + " size " + to_hex(m.size) + " uaddr " + to_hex(m.uaddr) +
               " perm " + perm_name(m.perm);
    }
    /// The frames the service wrote since the last call: INVALIDATEs go to the log, the rest
    /// (replies) are returned.
    std::vector<vh::frame> collect() {
        std::vector<vh::frame> replies;
        const auto b = vstream_.take();
        for (std::size_t at = 0; at + vh::frame_size <= b.size(); at += vh::frame_size) {
            const vh::frame f = vh::decode(std::span<const std::uint8_t, vh::frame_size>(b.data() + at, vh::frame_size));
            if (f.msg.type == vh::iotlb_invalidate) vlog_.push_back(f);
            else replies.push_back(f);
        }
        return replies;
    }
    /// A backend's MISS (a v2 frame, asid = EP) through the stream; prints the reply.
    void vhost_miss(std::uint32_t ep, std::uint64_t iova, std::uint8_t perm) {
        service_type& svc = service();
        collect();
        const auto frame = vh::encode(vh::frame{vh::msg_v2, ep, vh::iotlb_msg{iova, 0, 0, perm, vh::iotlb_miss}});
        if (svc.current() != service_type::state::open || !vstream_.push(frame) || svc.poll() != 1) return emit("broken");
        const auto replies = collect();
        if (replies.size() != 1) return emit("broken");
        const vh::iotlb_msg& m = replies[0].msg;
        if (m.type == vh::iotlb_update) return emit(range_line("update", m));
        if (m.perm == 0) return emit("error");
        emit("access_fail");
        for (const auto& ev : m_.take_events()) emit(fault_line(ev));
    }
    /// The INVALIDATEs the service sent since the last vhost_log (endpoint = the v2 asid),
    /// then forgets them.
    void vhost_log() {
        if (service_) collect();
        if (vlog_.empty()) return emit("none");
        for (const auto& f : vlog_) emit(range_line("invalidate", f.msg) + " endpoint " + std::to_string(f.asid));
        vlog_.clear();
    }

    machine_type& m_;
    vh::memory_stream vstream_{1u << 20};
    std::vector<vh::frame> vlog_;  ///< INVALIDATEs sent since the last vhost_log
    std::unique_ptr<service_type> service_;  // before the device goes (the session dies first)
    table_memory gmem_;
    std::map<std::uint32_t, guest_table> tables_;  // after gmem_: destroyed before it
    // The guest's deferred unmaps (relaxed mode) on a fake clock the script advances.
    deferred_transport<machine_type> deferred_tr_;
    vio::driver<deferred_transport<machine_type>> deferred_drv_;
    vio::deferred_unmapper<deferred_transport<machine_type>> deferred_;
    std::uint64_t now_ns_ = 0;
    // Between `group` and `end`: the requests of the group, and the ranges its MAPs map.
    std::optional<std::vector<vio::request>> group_;
    std::vector<mapped_range> group_maps_;
    // Page requests: the domain each one the guest received named (for `reply`), and the
    // stalled accesses by token (the page request they wait for, whether `translate` was sized).
    struct stalled_access {
        std::uint32_t id = 0;
        bool sized = false;
    };
    std::map<std::uint32_t, std::uint32_t> request_domain_;
    std::map<std::uint64_t, stalled_access> stalled_;
};

template <class Host>
int run(const settings& s) {
    auto m = vio::machine<Host>::create(s.machine);
    if (!m) return fail("the device refuses these settings: " + std::string(m.why().field));
    virtio_session<Host> session(**m);
    const int status = run_script(std::cin, virtio_operations, std::ref(session));
    if (status == 0 && session.inside_group()) {
        std::fflush(stdout);
        std::fprintf(stderr, "iopt: virtio: the script ends inside a group (no end): its requests were not sent\n");
        return 1;
    }
    return status;
}

} // namespace

std::string host_list() { return vio::host_names(); }

int virtio_mode(std::span<char* const> args) {
    auto parsed = parse_settings(args);
    if (auto* why = std::get_if<std::string>(&parsed)) return fail(*why);
    const settings& s = std::get<settings>(parsed);
    int rc = 2;
    vio::with_host(s.host, [&](auto h) { rc = run<typename decltype(h)::type>(s); });
    return rc;
}

} // namespace iopt
