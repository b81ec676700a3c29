// SPDX-License-Identifier: MIT
#pragma once
/// @file glossary.hpp
/// The words this library uses, defined once.
///
/// - **format**: a hardware page-table layout (ARM LPAE stage 1/2, ARM v7s, VT-d second- and
///   first-stage). A format is a traits struct: constexpr geometry plus descriptor functions
///   (see engine/format.hpp for the contract).
/// - **config**: the run-time choices of one table of a format (IAS, OAS, quirks, ...). The
///   format turns it into a **geometry** (levels used, top-table size, page sizes).
/// - **level**: counted from the leaf upward everywhere: level 0 is the table whose entries map
///   the smallest page (ARM level 3, VT-d PTE, v7s L2), the top level is `levels - 1`. Each
///   format header maps the specification's level names onto these numbers.
/// - **entry** / **item**: one descriptor word in a table. An item maps `item_lg2(level)` bytes.
/// - **leaf**: an entry that translates (page, block, section, superpage). A leaf may span
///   several identical entries (v7s large pages and supersections: 16 replicated entries).
/// - **table**: an entry that points at the next-lower level's table.
/// - **input address**: what a table translates: an IOVA (stage 1 / single stage) or an IPA
///   (stage 2). **output address (OA)**: what it produces, a physical address (pa_t).
/// - `_lg2` suffix: a base-2 logarithm of a byte quantity (12 = 4 KiB).
/// - `last`: an inclusive end address, so that a range can reach the top of a 64-bit space.
/// - **prot**: access flags in Linux's IOMMU_* meaning (core/prot.hpp).
/// - **table memory**: where tables live, behind the `table_memory` concept (mem/memory.hpp).
