// SPDX-License-Identifier: MIT
#pragma once
/// @file hex.hpp
/// Numbers as iopt reads and writes them: hex, `0x` optional on input, always `0x` and
/// lowercase on output, no padding (`0x0`, `0x1000`, `0x40000000`).
#include <charconv>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace iopt {

/// `v` as `0x` + lowercase hex digits, without leading zeros.
inline std::string to_hex(std::uint64_t v) {
    char buf[2 + 16];
    buf[0] = '0';
    buf[1] = 'x';
    auto r = std::to_chars(buf + 2, buf + sizeof buf, v, 16);
    return std::string(buf, r.ptr);
}

/// `bytes` as two lowercase hex digits each, in order, without a prefix.
inline std::string bytes_to_hex(std::span<const std::uint8_t> bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s;
    s.reserve(bytes.size() * 2);
    for (const std::uint8_t b : bytes) {
        s += digits[b >> 4];
        s += digits[b & 15];
    }
    return s;
}

/// The value of `text`: hex digits (either case) with an optional `0x`/`0X` prefix, at most
/// 64 bits. Nothing for anything else (empty, signs, other characters, overflow).
inline std::optional<std::uint64_t> parse_hex(std::string_view text) {
    if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) text.remove_prefix(2);
    if (text.empty()) return std::nullopt;
    std::uint64_t v = 0;
    auto r = std::from_chars(text.data(), text.data() + text.size(), v, 16);
    if (r.ec != std::errc{} || r.ptr != text.data() + text.size()) return std::nullopt;
    return v;
}

/// Why `parse_hex(text)` gave nothing, as the reason of a malformed-line message.
inline std::string hex_error(std::string_view text) {
    std::string_view digits = text;
    if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) digits.remove_prefix(2);
    const bool all_hex = !digits.empty() && digits.find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos;
    if (all_hex) return "number '" + std::string(text) + "' does not fit in 64 bits";
    return "bad number '" + std::string(text) + "' (expected hex, 0x optional)";
}

} // namespace iopt
