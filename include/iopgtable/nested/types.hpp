// SPDX-License-Identifier: MIT
#pragma once
/// @file types.hpp
/// What a nested (stage-1-over-stage-2) translation works with: the access being translated,
/// one stage's leaf, a finished translation, a fault as a value, and the rules that combine the
/// two stages. The model is described in nested/README.md.
#include <cstdint>
#include <string_view>
#include <utility>
#include <variant>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../engine/format.hpp"

namespace iopgtable::nested {

/// What a device does with an address. A stage-1 table fetch is always a read.
enum class access_kind : std::uint8_t { read, write, exec };

/// One access to translate: its kind, and whether the transaction is privileged (a leaf
/// mapped with prot::priv lets only privileged accesses through).
struct access_request {
    access_kind kind = access_kind::read;
    bool privileged = false;
};

/// Why a translation faulted (Arm ARM D8.x fault types; VT-d 7.1 fault reasons map onto these).
enum class fault_reason : std::uint8_t {
    translation,   ///< no leaf: an empty entry, or an input address beyond the stage's input size
    permission,    ///< the leaf does not allow the access
    address_size,  ///< an output or table address at or above 2^oas of its stage
    access_flag,   ///< the leaf's access flag is clear (formats with `has_access_flag`)
    walk_abort,    ///< a table entry's address is not backed by memory (Arm: external abort on a walk)
};

constexpr std::string_view to_string(access_kind k) noexcept {
    switch (k) {
    case access_kind::read: return "read";
    case access_kind::write: return "write";
    case access_kind::exec: return "exec";
    }
    return "unknown";
}

constexpr std::string_view to_string(fault_reason r) noexcept {
    switch (r) {
    case fault_reason::translation: return "translation";
    case fault_reason::permission: return "permission";
    case fault_reason::address_size: return "address-size";
    case fault_reason::access_flag: return "access-flag";
    case fault_reason::walk_abort: return "walk-abort";
    }
    return "unknown";
}

constexpr std::string_view to_string(memory_type m) noexcept {
    switch (m) {
    case memory_type::device: return "device";
    case memory_type::non_cacheable: return "non-cacheable";
    case memory_type::write_through: return "write-through";
    case memory_type::write_back: return "write-back";
    }
    return "unknown";
}

/// A fault, as a value.
struct fault {
    unsigned stage = 1;          ///< 1 or 2
    unsigned level = 0;          ///< level (library numbering, 0 = leaf level) at `stage`
    std::uint64_t address = 0;   ///< input address at `stage`: the IOVA (1) or the IPA (2)
    /// The fault happened while fetching a stage-1 table entry: stage 2 could not translate
    /// the entry's IPA (then `address` is that IPA and `level` the stage-2 level), or the
    /// entry's IPA is beyond stage 1's output size (stage 1, address_size, `address` = IOVA).
    bool table_fetch = false;
    unsigned table_level = 0;    ///< table_fetch: the stage-1 level whose entry was being fetched
    access_kind access = access_kind::read;  ///< the access being translated
    fault_reason reason = fault_reason::translation;
    unsigned accesses = 0;       ///< table entries read before the fault (both stages)
    friend constexpr bool operator==(const fault&, const fault&) = default;
};

/// One stage's leaf, as a translation used it.
struct stage_leaf {
    unsigned level = 0;
    unsigned size_lg2 = 0;          ///< the leaf's size
    /// Bytes the entry itself maps (its level's item size): smaller than size_lg2 for a leaf
    /// written as replicated entries (v7s large pages and supersections). A walk only ever
    /// reads the entry of its own slot, so a guest's copies need not agree.
    unsigned entry_lg2 = 0;
    std::uint64_t input_base = 0;   ///< input address of the leaf's first byte
    std::uint64_t output_base = 0;  ///< output address of the leaf's first byte
    prot perm = prot::none;          ///< the leaf's flags (F::leaf_prot)
    memory_type memory = memory_type::write_back;
    friend constexpr bool operator==(const stage_leaf&, const stage_leaf&) = default;
};

/// A successful nested translation of one IOVA.
struct translation {
    iova_t iova{};                 ///< the address translated
    ipa_t ipa{};                   ///< what stage 1 made of it
    pa_t output{};                 ///< what stage 2 made of that: the host-physical address
    unsigned size_lg2 = 0;         ///< the mapping's size: the smaller of the two leaves
    stage_leaf s1, s2;
    prot perm = prot::none;        ///< combined (`combine_prot`)
    memory_type memory = memory_type::write_back;  ///< combined (`combine_memory`)
    unsigned accesses = 0;         ///< table entries read (0 for a translation-cache hit)
    bool cached = false;           ///< served by the translation cache

    /// First IOVA of the mapping (size 2^size_lg2) this translation belongs to.
    constexpr std::uint64_t iova_base() const noexcept { return iova.value & ~low_mask(size_lg2); }
};

/// A translation or a fault.
class translate_result {
public:
    constexpr translate_result(translation t) noexcept : v_(std::move(t)) {}
    constexpr translate_result(fault f) noexcept : v_(f) {}
    constexpr bool ok() const noexcept { return v_.index() == 0; }
    constexpr explicit operator bool() const noexcept { return ok(); }
    /// Precondition: ok().
    constexpr const translation& value() const noexcept { return *std::get_if<0>(&v_); }
    constexpr const translation* operator->() const noexcept { return std::get_if<0>(&v_); }
    /// Precondition: !ok().
    constexpr const fault& error() const noexcept { return *std::get_if<1>(&v_); }
    /// Table entries read, whichever way it ended.
    constexpr unsigned accesses() const noexcept { return ok() ? value().accesses : error().accesses; }

private:
    std::variant<translation, fault> v_;
};

// ---------------------------------------------------------------------------- combination rules

/// The more restrictive of two memory types: Device beats Normal, non-cacheable beats
/// cacheable, write-through beats write-back (Arm ARM D8.5.5 combining stage 1 and stage 2).
constexpr memory_type combine_memory(memory_type a, memory_type b) noexcept { return a < b ? a : b; }

/// The memory type prot flags ask for: MMIO device, CACHE write-back, else non-cacheable.
constexpr memory_type memory_of(prot p) noexcept {
    return has(p, prot::mmio) ? memory_type::device : has(p, prot::cache) ? memory_type::write_back : memory_type::non_cacheable;
}

/// The prot flags that express a memory type: device MMIO, cacheable CACHE.
constexpr prot prot_of(memory_type m) noexcept {
    return m == memory_type::device ? prot::mmio : m == memory_type::non_cacheable ? prot::none : prot::cache;
}

/// Whether a leaf with flags `perm` lets `a` through: a read needs READ, a write WRITE, an
/// instruction fetch READ and no NOEXEC; a PRIV leaf only privileged accesses.
constexpr bool permits(prot perm, access_request a) noexcept {
    if (has(perm, prot::priv) && !a.privileged) return false;
    switch (a.kind) {
    case access_kind::read: return has(perm, prot::read);
    case access_kind::write: return has(perm, prot::write);
    case access_kind::exec: return has(perm, prot::read) && !has(perm, prot::noexec);
    }
    return false;
}

/// Both stages' flags as one: READ and WRITE only where both stages have them, NOEXEC and
/// PRIV where either has them, CACHE/MMIO from the combined memory type `m`. An access that
/// `permits(combine_prot(...))` lets through is exactly one both stages let through.
constexpr prot combine_prot(prot s1, prot s2, memory_type m) noexcept {
    const prot rw = prot::read | prot::write;
    const prot restrict = prot::noexec | prot::priv;
    return (s1 & s2 & rw) | ((s1 | s2) & restrict) | prot_of(m);
}

} // namespace iopgtable::nested
