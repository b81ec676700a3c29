// SPDX-License-Identifier: MIT
#include "command_line.hpp"

#include <cstdio>
#include <string_view>

namespace iopt {

std::variant<iopgtable::options, std::string> parse_options(std::span<char* const> args) {
    iopgtable::options opts;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view original = args[i];
        std::string_view word = original;
        if (!word.starts_with("--")) return "unexpected argument '" + std::string(word) + "' (options are --key value)";
        word.remove_prefix(2);
        std::string key, value;
        if (auto eq = word.find('='); eq != std::string_view::npos) {
            key = word.substr(0, eq);
            value = word.substr(eq + 1);
        } else {
            key = word;
            if (i + 1 < args.size() && !std::string_view(args[i + 1]).starts_with("--")) value = args[++i];
        }
        if (key.empty()) return "empty option name '" + std::string(original) + "'";
        if (opts.values.count(key) != 0) return "option --" + key + " given twice";
        opts.values.emplace(std::move(key), std::move(value));
    }
    return opts;
}

int report_failure(std::string_view mode, const std::string& message, int status) {
    std::fflush(stdout);
    if (mode.empty()) std::fprintf(stderr, "iopt: %s\n", message.c_str());
    else std::fprintf(stderr, "iopt: %.*s: %s\n", static_cast<int>(mode.size()), mode.data(), message.c_str());
    return status;
}

std::string option_text(const std::string& key, const std::string& value) {
    return value.empty() ? "--" + key : "--" + key + " " + value;
}

} // namespace iopt
