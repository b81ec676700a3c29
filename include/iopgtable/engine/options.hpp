// SPDX-License-Identifier: MIT
#pragma once
/// @file options.hpp
/// Named options (`--ias 48`, `--granule 4k`) and named register values, as plain data, so
/// that each format can build its configuration from the same options a tool or a test passes,
/// and report its registers by name.
#include <array>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "../core/result.hpp"

namespace iopgtable {

/// Option name → text. Names are without dashes (`ias`, `granule`, `snoop`). Every key a
/// reader asks for is remembered, so that a tool can report options nobody read (typos).
struct options {
    std::map<std::string, std::string, std::less<>> values;

    bool has(std::string_view k) const {
        mark(k);
        return values.find(k) != values.end();
    }
    /// Keys present but never asked for, in key order.
    std::vector<std::string> unread() const {
        std::vector<std::string> out;
        for (const auto& [k, v] : values)
            if (read_.find(k) == read_.end()) out.push_back(k);
        return out;
    }
    std::optional<std::string_view> text(std::string_view k) const {
        mark(k);
        auto it = values.find(k);
        if (it == values.end()) return std::nullopt;
        return std::string_view(it->second);
    }
    /// A number (decimal, or hex with 0x); `dflt` when absent; errc::invalid when malformed.
    result<std::uint64_t> number(std::string_view k, std::uint64_t dflt) const {
        auto t = text(k);
        if (!t) return dflt;
        std::string s(*t);
        if (s.empty()) return failure(errc::invalid);
        char* end = nullptr;
        int base = (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) ? 16 : 10;
        unsigned long long v = std::strtoull(s.c_str(), &end, base);
        if (end == nullptr || *end != '\0' || s[0] == '-') return failure(errc::invalid);
        return static_cast<std::uint64_t>(v);
    }
    /// A flag: present without value, or 1/0/true/false.
    bool flag(std::string_view k) const {
        auto t = text(k);
        return t && *t != "0" && *t != "false";
    }

private:
    void mark(std::string_view k) const {
        if (read_.find(k) == read_.end()) read_.emplace(k);
    }
    mutable std::set<std::string, std::less<>> read_;
};

/// One register's name and value, as `iopt regs` prints it.
struct named_register {
    std::string_view name;
    std::uint64_t value = 0;
};

/// A format's registers, in the order `iopt regs` prints them.
struct register_set {
    std::array<named_register, 8> regs{};
    unsigned count = 0;

    void add(std::string_view n, std::uint64_t v) noexcept {
        if (count < regs.size()) regs[count++] = {n, v};
    }
    std::optional<std::uint64_t> get(std::string_view n) const noexcept {
        for (unsigned i = 0; i < count; ++i)
            if (regs[i].name == n) return regs[i].value;
        return std::nullopt;
    }
    const named_register* begin() const noexcept { return regs.data(); }
    const named_register* end() const noexcept { return regs.data() + count; }
};

} // namespace iopgtable
