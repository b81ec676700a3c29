// SPDX-License-Identifier: MIT
#pragma once
/// @file iopgtable.hpp
/// Everything: core types, memory models, the engine and every format.
#include "core/address.hpp"
#include "core/bits.hpp"
#include "core/glossary.hpp"
#include "core/prot.hpp"
#include "core/result.hpp"
#include "engine/flush.hpp"
#include "engine/format.hpp"
#include "engine/options.hpp"
#include "engine/page_table.hpp"
#include "engine/walk.hpp"
#include "formats/all.hpp"
#include "mem/default_memory.hpp"
#include "mem/guest_ram.hpp"
#include "mem/host_heap.hpp"
#include "mem/memory.hpp"
