// SPDX-License-Identifier: MIT
#include "table_mode.hpp"

#include <algorithm>
#include <boost/hana/for_each.hpp>
#include <cstdio>
#include <functional>
#include <iostream>
#include <string_view>
#include <variant>
#include <vector>

#include <iopgtable/formats/all.hpp>

#include "command_line.hpp"
#include "hex.hpp"
#include "script.hpp"
#include "table_session.hpp"

namespace iopt {
namespace {

namespace hana = boost::hana;
using iopgtable::options;

/// Options the table mode itself reads; every other one is the format's.
bool own_option(std::string_view key) { return key == "format" || key == "table-memory"; }

/// Reports a command-line error; returns the exit status for it.
int fail(const std::string& message) { return report_failure("", message); }

/// A format name of `all_formats` and its folder under formats/.
struct family {
    std::string_view name;
    std::string_view folder;
};

/// Every format name of `all_formats`, once, in list order.
std::vector<family> families() {
    std::vector<family> found;
    hana::for_each(iopgtable::all_formats, [&](auto t) {
        using F = typename decltype(t)::type;
        if (std::none_of(found.begin(), found.end(), [](const family& f) { return f.name == F::name; }))
            found.push_back({F::name, F::folder});
    });
    return found;
}

std::string joined(const std::vector<std::string>& parts, std::string_view sep) {
    std::string s;
    for (const auto& p : parts) s += (s.empty() ? "" : std::string(sep)) + p;
    return s;
}

/// The format's options as one would type them, in key order: `--granule 16k --ias 48`.
std::string format_options_text(const options& o) {
    std::vector<std::string> parts;
    for (const auto& [k, v] : o.values)
        if (!own_option(k)) parts.push_back(option_text(k, v));
    return parts.empty() ? "no options" : joined(parts, " ");
}

/// The format options each of which alone makes `good` fail: without it (its default then
/// applies) `good` holds. Usually there is one, the option to fix.
template <class Pred>
std::vector<std::string> culprits(const options& o, Pred good) {
    std::vector<std::string> found;
    for (const auto& [k, v] : o.values) {
        if (own_option(k)) continue;
        options without = o;
        without.values.erase(k);
        if (good(without)) found.push_back(option_text(k, v));
    }
    return found;
}

/// ` (<what> without X, or without Y)` naming the culprits, or nothing.
std::string hint(std::string_view what, const std::vector<std::string>& blamed) {
    if (blamed.empty()) return {};
    return " (" + std::string(what) + " without " + joined(blamed, ", or without ") + ")";
}

/// True when some variant named `name` accepts `o`.
bool some_variant_accepts(std::string_view name, const options& o) {
    bool any = false;
    hana::for_each(iopgtable::all_formats, [&](auto t) {
        using F = typename decltype(t)::type;
        any = any || (name == F::name && F::accepts(o));
    });
    return any;
}

/// True when some variant named `name` accepts `o` and builds a configuration from it.
bool some_variant_configures(std::string_view name, const options& o) {
    bool any = false;
    hana::for_each(iopgtable::all_formats, [&](auto t) {
        using F = typename decltype(t)::type;
        any = any || (name == F::name && F::accepts(o) && F::config_from(o).ok());
    });
    return any;
}

/// Builds F's table in fresh table memory and runs the script from stdin on it.
template <class F>
int run_format(const options& o, std::uint64_t memory_bytes) {
    auto cfg = F::config_from(o);
    if (!cfg) {
        auto blamed = culprits(o, [](const options& w) { return some_variant_configures(F::name, w); });
        return fail(std::string(F::name) + " refuses " + format_options_text(o) + ": " +
                    std::string(to_string(cfg.error())) + hint("accepted", blamed));
    }
    std::vector<std::string> typos;
    for (const auto& k : o.unread())
        if (!own_option(k)) typos.push_back(option_text(k, o.values.at(k)));
    if (!typos.empty())
        return fail(std::string(F::name) + " does not take " + joined(typos, ", ") + " (see formats/" + F::folder +
                    "/README.md)");
    iopgtable::guest_ram ram{memory_bytes, iopgtable::pa_t{table_memory_base}};
    auto table = iopgtable::page_table<F, iopgtable::guest_ram>::create(*cfg, ram);
    if (!table) {
        return fail("cannot create the " + std::string(F::name) + " table: " + std::string(to_string(table.error())) +
                    " (--table-memory " + to_hex(memory_bytes) + " is too small for its top table)");
    }
    table_session<F> session{*table};
    return run_script(std::cin, table_operations, std::ref(session));
}

} // namespace

std::string format_help() {
    std::string s;
    for (const auto& f : families()) {
        std::string line = "  " + std::string(f.name);
        line.resize(std::max<std::size_t>(line.size() + 1, 16), ' ');
        s += line + "options: formats/" + std::string(f.folder) + "/README.md\n";
    }
    return s;
}

int table_mode(std::span<char* const> args) {
    auto parsed = parse_options(args);
    if (auto* why = std::get_if<std::string>(&parsed)) return fail(*why);
    const options& o = std::get<options>(parsed);

    std::vector<std::string> known;
    for (const auto& f : families()) known.emplace_back(f.name);
    const auto name = o.text("format");
    if (!name || name->empty()) return fail("--format NAME is required (formats: " + joined(known, ", ") + ")");
    if (std::find(known.begin(), known.end(), *name) == known.end())
        return fail("unknown format '" + std::string(*name) + "' (formats: " + joined(known, ", ") + ")");

    const auto memory = o.number("table-memory", table_memory_default);
    if (!memory || *memory == 0 || *memory > table_memory_max)
        return fail("--table-memory must be a byte count from 1 to " + to_hex(table_memory_max) +
                    " (decimal, or hex with 0x), got '" + std::string(o.text("table-memory").value_or("")) + "'");

    int status = -1;
    hana::for_each(iopgtable::all_formats, [&](auto t) {
        using F = typename decltype(t)::type;
        if (status == -1 && *name == F::name && F::accepts(o)) status = run_format<F>(o, *memory);
    });
    if (status != -1) return status;

    auto blamed = culprits(o, [&](const options& w) { return some_variant_accepts(*name, w); });
    return fail("no " + std::string(*name) + " variant accepts " + format_options_text(o) + hint("one does", blamed));
}

} // namespace iopt
