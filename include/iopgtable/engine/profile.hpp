// SPDX-License-Identifier: MIT
#pragma once
/// @file profile.hpp
/// The rest of a format's contract: its profile. `page_table_format` (format.hpp) is what the
/// engine walks with; the profile is what everything around the engine (the sharing
/// negotiation, the virtio device, `iopt`, the test suites) learns about a format, so that none
/// of them names a format or switches on a sharing model. A format is a header pair: its
/// walker (`formats/<name>_walker.hpp`, struct `<name>_walker`: the `page_table_format`
/// members and dirty tracking) and its profile (`formats/<name>.hpp`: the type the list holds,
/// deriving from the walker, with the members below). Each header asserts its concept where it
/// declares the format; `formats/all.hpp` asserts them for the list.
///
/// | member | meaning |
/// |---|---|
/// | `registers(config, geometry, root)` → register_set | register values by name (`iopt regs`, ATTACH_TABLE) |
/// | `config_from_registers(register_set, why&)` → result<config> | the configuration registers describe; `why` names the refused field |
/// | `matches_registers(register_set)` → bool | the registers are this variant's (e.g. the LPAE granule), before any check |
/// | `accepts(options)`, `config_from(options)` → bool, result<config> | `iopt --format NAME --key value` picks this variant and builds its config |
/// | `sample_configs()` → vector<config> | configurations the suites run; the last-resort device limits; PROBE_TABLE's `sizes` |
/// | `sharing_model`, `sharing_variant` | its numbers in the registry (formats/sharing_models.hpp) |
/// | `guest_shareable` | whether a guest may attach a table of this format (PROBE_TABLE offers it) |
///
/// The profile also holds the optional leaf attributes that nested walks decode (engine/format.hpp:
/// `leaf_permissions`, `input_fault_level`, `leaf_accessed`, `leaf_memory_type`).
///
/// A guest-shareable format (`shareable_format<F>`) also says how its tables travel in the
/// sharing requests:
///
/// | member | meaning |
/// |---|---|
/// | `sharing_size_bit(geometry)` → unsigned | the bit (< 32) this table sets in PROBE_TABLE's `sizes` field, read as its model's `size_meaning` says (the granule's log2, or the level count) |
/// | `config_to_blob(register_set, tag, blob&)` | writes its fields into ATTACH_TABLE's 64-byte config blob (bytes 0–3, the variant, are written by the caller) |
/// | `config_from_blob(const uint8_t* blob, tag&, why&)` → result<register_set> | reads them back: errc::invalid for reserved bytes set or a malformed field, `why` naming it |
#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../core/address.hpp"
#include "../core/blob.hpp"
#include "../core/result.hpp"
#include "format.hpp"
#include "options.hpp"

namespace iopgtable {

template <class F>
concept format_profile = page_table_format<F> &&
    requires(const typename F::config& c, const geometry& g, pa_t root, const register_set& r, std::string_view& why,
             const options& o) {
        { F::registers(c, g, root) } -> std::same_as<register_set>;
        { F::config_from_registers(r, why) } -> std::same_as<result<typename F::config>>;
        { F::matches_registers(r) } -> std::same_as<bool>;
        { F::accepts(o) } -> std::same_as<bool>;
        { F::config_from(o) } -> std::same_as<result<typename F::config>>;
        { F::sample_configs() } -> std::same_as<std::vector<typename F::config>>;
        { F::sharing_model } -> std::convertible_to<std::uint32_t>;
        { F::sharing_variant } -> std::convertible_to<std::uint32_t>;
        { F::guest_shareable } -> std::convertible_to<bool>;
    };

template <class F>
concept shareable_format = format_profile<F> && F::guest_shareable &&
    requires(const geometry& g, const register_set& r, std::uint32_t tag, blob& b, const std::uint8_t* bytes,
             std::uint32_t& tag_out, std::string_view& why) {
        { F::sharing_size_bit(g) } -> std::same_as<unsigned>;
        { F::config_to_blob(r, tag, b) } -> std::same_as<void>;
        { F::config_from_blob(bytes, tag_out, why) } -> std::same_as<result<register_set>>;
    };

/// "4k", "2M", "1G" for a power-of-two size of 2^lg2 bytes (lg2 < 64).
inline std::string size_label(unsigned lg2) {
    static constexpr const char* unit[] = {"", "k", "M", "G", "T", "P", "E"};
    return std::to_string(std::uint64_t{1} << (lg2 % 10)) + unit[lg2 / 10];
}

/// `arm-lpae-s1/4k`, `vtd-fl/4k`: the format's `name` and its variant (its `granule_name`, else
/// its smallest page, `4k`), unique in the format list. Tools and fuzz seeds name a format so.
template <class F>
std::string variant_name() {
    if constexpr (requires { std::string(F::granule_name); }) return std::string(F::name) + "/" + F::granule_name;
    else return std::string(F::name) + "/" + size_label(F::item_lg2(0));
}

/// What a format header asserts: its profile, and the sharing members when it says it is
/// guest-shareable.
template <class F>
concept complete_format = format_profile<F> && (!F::guest_shareable || shareable_format<F>);

} // namespace iopgtable
