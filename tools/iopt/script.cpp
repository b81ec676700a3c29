// SPDX-License-Identifier: MIT
#include "script.hpp"

#include <algorithm>
#include <cstdio>
#include <istream>
#include <vector>

namespace iopt {
namespace {

constexpr std::string_view blanks = " \t\r\v\f";

std::vector<std::string_view> split_words(std::string_view line) {
    if (auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    std::vector<std::string_view> words;
    for (;;) {
        const auto start = line.find_first_not_of(blanks);
        if (start == std::string_view::npos) return words;
        line.remove_prefix(start);
        const auto end = std::min(line.find_first_of(blanks), line.size());
        words.push_back(line.substr(0, end));
        line.remove_prefix(end);
    }
}

std::string plural(std::size_t n, std::string_view word) {
    return std::to_string(n) + " " + std::string(word) + (n == 1 ? "" : "s");
}

std::string arity_error(const operation& op, std::size_t given) {
    std::string expected = op.args.empty() ? "no arguments" : std::string(op.args);
    return std::string(op.name) + " expects " + expected + ", got " + plural(given, "argument");
}

std::string unknown_operation(std::string_view name, std::span<const operation> ops) {
    std::string known;
    for (const auto& op : ops) known += (known.empty() ? "" : ", ") + std::string(op.name);
    return "unknown operation '" + std::string(name) + "' (known: " + known + ")";
}

} // namespace

void emit(std::string_view line) {
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fputc('\n', stdout);
}

int run_script(std::istream& in, std::span<const operation> ops, const line_handler& handle) {
    std::string line;
    for (unsigned long number = 1; std::getline(in, line); ++number) {
        const auto words = split_words(line);
        if (words.empty()) continue;
        const operation* op = nullptr;
        for (const auto& o : ops)
            if (o.name == words[0]) op = &o;
        std::optional<std::string> reason;
        const std::size_t nargs = words.size() - 1;
        if (op == nullptr) reason = unknown_operation(words[0], ops);
        else if (nargs >= 32 || (op->arg_counts & (1u << nargs)) == 0) reason = arity_error(*op, nargs);
        else reason = handle(*op, std::span(words).subspan(1));
        if (reason) {
            std::fflush(stdout);
            std::fprintf(stderr, "line %lu: %s\n", number, reason->c_str());
            return 1;
        }
    }
    return 0;
}

} // namespace iopt
