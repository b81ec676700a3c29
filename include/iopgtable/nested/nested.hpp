// SPDX-License-Identifier: MIT
#pragma once
/// @file nested.hpp
/// Nested (stage-1-over-stage-2) translation, its caches, and software folding: everything in
/// nested/ (the model: nested/README.md).
///
/// | header | what |
/// |---|---|
/// | types.hpp | access, translation, fault values; permission and memory-type combination |
/// | stage.hpp | one stage on its own: where its table is, leaf checks, a checked walk |
/// | stage2_view.hpp | guest memory through stage 2 (reader for walks, table memory for a guest) |
/// | walk_cache.hpp | stage-2 translations of stage-1 table addresses |
/// | iotlb.hpp | completed translations by context and page |
/// | translator.hpp | the nested translator |
/// | shadow.hpp | the shadow table folding writes: a page table, or one of a run-time format |
/// | folding.hpp | keeping the shadow exact |
#include "folding.hpp"
#include "iotlb.hpp"
#include "shadow.hpp"
#include "stage.hpp"
#include "stage2_view.hpp"
#include "translator.hpp"
#include "types.hpp"
#include "walk_cache.hpp"
