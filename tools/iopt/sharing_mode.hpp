// SPDX-License-Identifier: MIT
#pragma once
/// @file sharing_mode.hpp
/// Page-table-sharing subcommands (formats/README.md, the registry):
/// - `iopt probe [--formats LIST] [--len N] [--nr-contexts N]`: the PROBE_TABLE reply of a
///   device walking LIST (comma-separated format names; default every format), one pg_format a
///   line in hex and decoded, then END.
/// - `iopt config --format NAME [format options] [--tag N] [--root ADDR]`: the ATTACH_TABLE
///   `model` and `config` (hex, wire order) a driver sends for such a table.
/// - `iopt attach --model N --config HEX [--table ADDR] [--flags F] [--nr-contexts N]
///   [--formats LIST] [--ram-base A] [--ram-size S]`: validates an ATTACH_TABLE as the device
///   does and prints the engine it binds to (`bound NAME ...`); a refusal prints `attach
///   refused: STATUS field` on stderr and exits 1.
#include <span>

namespace iopt {

int probe_mode(std::span<char* const> args);
int config_mode(std::span<char* const> args);
int attach_mode(std::span<char* const> args);

} // namespace iopt
