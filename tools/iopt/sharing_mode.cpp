// SPDX-License-Identifier: MIT
/// @file sharing_mode.cpp
/// `iopt probe`, `iopt config` and `iopt attach`: the page-table-sharing descriptors of
/// formats/README.md seen from the command line.
///
/// The simulated device walks every format of `all_formats` that a guest may use (or those
/// named by `--formats`), each up to the largest of its sample configurations; guest RAM is
/// 1 GiB at 0x40000000 (`--ram-base`, `--ram-size`).
#include "sharing_mode.hpp"

#include <cstdio>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <boost/hana/for_each.hpp>
#include <boost/hana/transform.hpp>
#include <iopgtable/formats/all.hpp>
#include <iopgtable/sharing/negotiation.hpp>

#include "command_line.hpp"
#include "format_text.hpp"
#include "hex.hpp"
#include "script.hpp"

namespace iopt {
namespace {

namespace hana = boost::hana;
namespace sharing = iopgtable::sharing;
using iopgtable::options;

int fail(const std::string& message, int status = 2) { return report_failure("", message, status); }

/// The device: every format of the list with its limits; `enabled` is set from --formats.
const auto device_formats = hana::transform(iopgtable::all_formats, [](auto t) {
    using F = typename decltype(t)::type;
    return sharing::device_format<F>{sharing::widest_sample<F>(), 16};
});

/// Names given with --formats (comma list), or every name when absent; refuses unknown names.
std::variant<std::vector<std::string>, std::string> selected_names(const options& o) {
    std::vector<std::string> all;
    hana::for_each(iopgtable::all_formats, [&](auto t) { all.emplace_back(decltype(t)::type::name); });
    auto text = o.text("formats");
    if (!text) return all;
    std::vector<std::string> out;
    std::string_view s = *text;
    while (!s.empty()) {
        auto comma = s.find(',');
        std::string word(s.substr(0, comma));
        if (std::find(all.begin(), all.end(), word) == all.end())
            return "unknown format '" + word + "' in --formats";
        out.push_back(word);
        s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
    }
    return out;
}

/// The pg_format entries of a device walking the formats named in `names`.
std::vector<iopgtable::virtio::pg_format> offered(const std::vector<std::string>& names) {
    auto filtered = hana::transform(device_formats, [&](auto d) {
        using F = typename decltype(d)::format;
        d.enabled = std::find(names.begin(), names.end(), F::name) != names.end();
        return d;
    });
    return sharing::offered_formats(filtered);
}


/// One line: index, the 68 raw bytes, and the decoded fields.
std::string describe(std::size_t index, const iopgtable::virtio::pg_format& f) {
    std::string line = "pg_format " + std::to_string(index) + " raw " +
                       bytes_to_hex({reinterpret_cast<const std::uint8_t*>(&f), sizeof f});
    auto c = sharing::decode_format(f);
    if (!c) return line + " invalid " + std::string(c.why().field);
    line += " " + variant_name(c->model, c->variant);
    line += " " + sizes_name(c->model) + " " + size_list(c->model, c->sizes);
    line += " max_ias " + std::to_string(c->max_ias) + " max_oas " + std::to_string(c->max_oas);
    line += " " + tag_name(c->model) + " " + std::to_string(c->tag_bits);
    line += " flags " + flag_list(c->flags);
    line += " pgsizes " + to_hex(c->pgsize_bitmap);
    return line;
}

int probe_command(std::span<char* const> args) {
    auto parsed = parse_options(args);
    if (auto* why = std::get_if<std::string>(&parsed)) return fail(*why);
    const options& o = std::get<options>(parsed);
    auto names = selected_names(o);
    if (auto* why = std::get_if<std::string>(&names)) return fail(*why);
    const auto all = offered(std::get<std::vector<std::string>>(names));
    auto capacity = o.number("len", all.size());
    auto contexts = o.number("nr-contexts", 64);
    if (!capacity || *capacity > 4096) return fail("--len must be a count from 0 to 4096");
    if (!contexts || *contexts > 0xffffffffu) return fail("--nr-contexts must fit in 32 bits");
    for (const auto& k : o.unread()) return fail("probe does not take --" + k);
    // The device-writable part as a driver would post it: reply header and `capacity` slots.
    std::vector<std::uint8_t> writable(sizeof(iopgtable::virtio::probe_table_reply) +
                                       *capacity * sizeof(iopgtable::virtio::pg_format));
    sharing::write_probe_table(all, static_cast<std::uint32_t>(*contexts), writable);
    auto reply = sharing::parse_probe_table(writable);
    emit("len " + std::to_string(reply->len) + " nr_contexts " + std::to_string(reply->nr_contexts) + " received " +
         std::to_string(reply->formats.size()));
    for (std::size_t i = 0; i < reply->formats.size(); ++i) emit(describe(i, reply->formats[i]));
    emit("END");
    return 0;
}


int attach_command(std::span<char* const> args) {
    auto parsed = parse_options(args);
    if (auto* why = std::get_if<std::string>(&parsed)) return fail(*why);
    const options& o = std::get<options>(parsed);
    auto names = selected_names(o);
    if (auto* why = std::get_if<std::string>(&names)) return fail(*why);
    auto model = o.number("model", 0);
    auto config = o.text("config");
    auto table = o.number("table", 0x40000000);
    auto flags = o.number("flags", 0);
    auto contexts = o.number("nr-contexts", 0);
    auto ram_base = o.number("ram-base", 0x40000000);
    auto ram_size = o.number("ram-size", 0x40000000);
    if (!model || !o.has("model") || *model > 0xffffffffu) return fail("--model N is required (" + model_list() + ")");
    if (!config) return fail("--config HEX is required (up to 64 bytes, wire order)");
    auto b = parse_blob(*config);
    if (!b) return fail("--config must be an even number of hex digits, at most 128");
    if (!table || !flags || !contexts || !ram_base || !ram_size || *flags > 0xffffffffu || *contexts > 0xffffffffu ||
        *ram_size == 0 || *ram_size > (std::uint64_t{1} << 32))
        return fail("bad --table, --flags, --nr-contexts, --ram-base or --ram-size");
    for (const auto& k : o.unread()) return fail("attach does not take --" + k);

    iopgtable::virtio::req_attach_table req;
    req.head.type = static_cast<std::uint8_t>(iopgtable::virtio::req_type::attach_table);
    req.model = static_cast<std::uint32_t>(*model);
    req.table = *table;
    req.flags = static_cast<std::uint32_t>(*flags);
    req.nr_contexts = static_cast<std::uint32_t>(*contexts);
    std::copy(b->begin(), b->end(), req.config);
    iopgtable::guest_ram ram{*ram_size, iopgtable::pa_t{*ram_base}};
    const auto& selected = std::get<std::vector<std::string>>(names);
    auto device = hana::transform(device_formats, [&](auto d) {
        using F = typename decltype(d)::format;
        d.enabled = std::find(selected.begin(), selected.end(), F::name) != selected.end();
        return d;
    });
    auto bound = sharing::validate_attach(device, req, ram);
    if (!bound) {
        return fail("attach refused: " + std::string(iopgtable::virtio::to_string(bound.why().code)) + " " +
                        std::string(bound.why().field),
                    1);
    }
    const auto g = bound->geo();
    std::string line = "bound " + std::string(bound->format_name());
    bound->with_engine([&](const auto& e) {
        using F = typename std::decay_t<decltype(e)>::format;
        line += " granule " + to_hex(std::uint64_t{1} << F::item_lg2(0));
        line += " top_entries " + to_hex(std::uint64_t{1} << e.geo.top_index_lg2);
    });
    line += " ias " + std::to_string(g.ias) + " oas " + std::to_string(g.oas) + " levels " + std::to_string(g.levels) +
            " pgsizes " + to_hex(g.pgsize_bitmap) + " tag " + to_hex(bound->tag()) + " table " +
            to_hex(bound->table().value) + " contexts " + std::to_string(bound->nr_contexts());
    emit(line);
    return 0;
}

int config_command(std::span<char* const> args) {
    auto parsed = parse_options(args);
    if (auto* why = std::get_if<std::string>(&parsed)) return fail(*why);
    const options& o = std::get<options>(parsed);
    const auto name = o.text("format");
    if (!name) return fail("--format NAME is required");
    auto tag = o.number("tag", 0);
    auto root = o.number("root", 0x40000000);
    if (!tag || !root || *tag > 0xffffffffu) return fail("bad --tag or --root");
    int status = -1;
    hana::for_each(iopgtable::all_formats, [&](auto t) {
        using F = typename decltype(t)::type;
        if (status != -1 || *name != F::name || !F::accepts(o)) return;
        auto cfg = F::config_from(o);
        if (!cfg) {
            status = fail(std::string(F::name) + " refuses these options: " + std::string(to_string(cfg.error())));
            return;
        }
        for (const auto& k : o.unread()) {
            status = fail(std::string(F::name) + " does not take --" + k);
            return;
        }
        if constexpr (!F::guest_shareable) {
            status = fail(std::string(F::name) + " is a stage-2 format: never attached as a guest table");
        } else {
            auto req = sharing::make_attach_table<F>(*cfg, iopgtable::pa_t{*root}, static_cast<std::uint32_t>(*tag));
            if (!req) {
                status = fail("cannot describe the table: " + std::string(req.why().field));
                return;
            }
            emit("model " + std::to_string(req->model.get()) + " config " + bytes_to_hex({req->config, 64}));
            status = 0;
        }
    });
    if (status == -1) return fail("no format '" + std::string(*name) + "' accepts these options");
    return status;
}

} // namespace

int probe_mode(std::span<char* const> args) { return probe_command(args); }
int attach_mode(std::span<char* const> args) { return attach_command(args); }
int config_mode(std::span<char* const> args) { return config_command(args); }

} // namespace iopt
