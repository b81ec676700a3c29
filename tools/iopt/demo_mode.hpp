// SPDX-License-Identifier: MIT
#pragma once
/// @file demo_mode.hpp
/// `iopt demo [--sharing nested|folded] [--pages N] [--host NAME]`: a simulated VM on
/// built-in defaults whose guest drives the virtio-iommu device end to end (probe, MAP/UNMAP on
/// one endpoint, page-table sharing on the other, DMA through translate, one fault on
/// purpose), then prints a short report. README.md ("iopt demo") describes it.
#include <span>

namespace iopt {

/// Runs `iopt demo` with the words after `demo`. Returns the exit status: 0, 1 (a step of the
/// demo failed), 2 (bad command line).
int demo_mode(std::span<char* const> args);

} // namespace iopt
