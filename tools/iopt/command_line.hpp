// SPDX-License-Identifier: MIT
#pragma once
/// @file command_line.hpp
/// Command-line words to named options: `--key value`, `--key=value`, and a bare `--flag`
/// (followed by another `--` word or nothing), stored without the dashes.
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include <iopgtable/engine/options.hpp>

namespace iopt {

/// The options of `args`, or a one-line reason (a word that is not an option, an empty or
/// repeated key). A bare flag's value is the empty string, which `options::flag` reads as set.
std::variant<iopgtable::options, std::string> parse_options(std::span<char* const> args);

/// How every mode reports a failure: flushes stdout (so the message follows what was printed),
/// writes `iopt: MODE: MESSAGE` (`iopt: MESSAGE` when `mode` is empty) to stderr and returns
/// `status` as the exit code (2: usage or input error).
int report_failure(std::string_view mode, const std::string& message, int status = 2);

/// `--key value` as the user would type it again (`--flag` for a bare flag).
std::string option_text(const std::string& key, const std::string& value);

} // namespace iopt
