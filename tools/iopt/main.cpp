// SPDX-License-Identifier: MIT
/// @file main.cpp
/// `iopt`: build, inspect and check IOMMU page tables from a script (README.md).
///
/// The first word picks what to do: a word starting with `--` is the table mode
/// (`iopt --format NAME ... < script`); any other word names a subcommand from `commands`
/// below. A new subcommand is one entry there.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <span>
#include <string>
#include <string_view>

#include "demo_mode.hpp"
#include "hex.hpp"
#include "nested_mode.hpp"
#include "script.hpp"
#include "sharing_mode.hpp"
#include "table_mode.hpp"
#include "virtio_mode.hpp"

namespace {

int help_command(std::span<char* const> args);

/// A subcommand: the first word of the command line.
struct command {
    std::string_view name;
    std::string_view synopsis;                ///< the words after the name, for the usage text
    int (*run)(std::span<char* const> args);  ///< gets the words after the name; returns the exit status
};

constexpr command commands[] = {
    {"help", "", help_command},
    {"probe", "[--formats LIST] [--len N] [--nr-contexts N]", iopt::probe_mode},
    {"config", "--format NAME [format options] [--tag N] [--root ADDR]", iopt::config_mode},
    {"attach", "--model N --config HEX [--table ADDR] [--flags F] [--nr-contexts N] [--formats LIST]", iopt::attach_mode},
    {"nested", "--s1 \"FORMAT OPTIONS\" --s2 \"FORMAT OPTIONS\" [--fold \"FORMAT OPTIONS\"] [--mediated] < script", iopt::nested_mode},
    {"virtio", "[--host NAME] [--sharing nested|folded] [--endpoints N] [device options] < script", iopt::virtio_mode},
    {"demo", "[--sharing nested|folded] [--pages N] [--host NAME]", iopt::demo_mode},
};

std::string usage() {
    std::string s = "usage: iopt --format NAME [--OPTION VALUE | --FLAG]... [--table-memory BYTES] < script\n";
    for (const auto& c : commands)
        s += "       iopt " + std::string(c.name) + (c.synopsis.empty() ? "" : " ") + std::string(c.synopsis) + "\n";
    s += "\n"
         "Builds one page table and runs the script on it: one operation a line, numbers in hex\n"
         "(0x optional), '#' starts a comment. Output numbers are lowercase hex with 0x.\n"
         "\n"
         "formats (the first variant of NAME that accepts the options is used):\n";
    s += iopt::format_help();
    s += "\nhosts (virtio and demo --host NAME; the first is the default): " + iopt::host_list() + "\n";
    s += "\noperations:\n";
    for (const auto& op : iopt::table_operations) {
        std::string line = "  " + std::string(op.name) + (op.args.empty() ? "" : " ") + std::string(op.args);
        line.resize(std::max<std::size_t>(line.size() + 1, 40), ' ');
        s += line + "-> " + std::string(op.output) + "\n";
    }
    s += "\nTables live in simulated memory at " + iopt::to_hex(iopt::table_memory_base) + " (--table-memory bytes, default " +
         iopt::to_hex(iopt::table_memory_default) + ").\n"
         "Exit status: 0 done, 1 malformed script line, 2 bad command line.\n";
    return s;
}

int help_command(std::span<char* const>) {
    std::fputs(usage().c_str(), stdout);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::ios::sync_with_stdio(false);
    const std::span<char* const> args(argv + 1, static_cast<std::size_t>(argc > 0 ? argc - 1 : 0));
    if (args.empty()) {
        std::fputs(usage().c_str(), stderr);
        return 2;
    }
    const std::string_view first = args[0];
    if (first == "--help" || first == "-h") return help_command(args.subspan(1));
    if (first.starts_with("--")) return iopt::table_mode(args);
    for (const auto& c : commands)
        if (c.name == first) return c.run(args.subspan(1));
    std::fprintf(stderr, "iopt: unknown command '%s' (try iopt help)\n", args[0]);
    return 2;
}
