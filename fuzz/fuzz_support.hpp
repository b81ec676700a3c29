// SPDX-License-Identifier: MIT
#pragma once
/// @file fuzz_support.hpp
/// What every fuzz target shares: reading decisions from the input bytes, picking a format and
/// a configuration from `all_formats`, and failing loudly (message on stderr, then a trap that
/// libFuzzer reports as a crash and saves the input for).
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <boost/hana/for_each.hpp>
#include <boost/hana/length.hpp>

#include <iopgtable/core/bits.hpp>
#include <iopgtable/formats/all.hpp>

namespace iopgtable::fuzz {

/// Prints `where: what` and the formatted detail, then traps. Never returns.
[[noreturn]] inline void fail(const char* where, const char* what, const char* fmt, ...) {
    std::fprintf(stderr, "\n*** fuzz check failed at %s: %s\n    ", where, what);
    std::va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    __builtin_trap();
}

#define IOPGTABLE_FUZZ_STR2(x) #x
#define IOPGTABLE_FUZZ_STR(x) IOPGTABLE_FUZZ_STR2(x)
/// `FUZZ_CHECK(cond, "printf format", args...)`: traps with the message when `cond` is false.
#define FUZZ_CHECK(cond, ...)                                                                          \
    do {                                                                                               \
        if (!(cond)) ::iopgtable::fuzz::fail(__FILE__ ":" IOPGTABLE_FUZZ_STR(__LINE__), #cond, __VA_ARGS__); \
    } while (0)

/// Reads decisions from the front of the input, little-endian. Past the end every read gives
/// zero, so a short input is still a complete (if dull) run.
class byte_reader {
public:
    byte_reader(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}

    bool empty() const noexcept { return pos_ >= size_; }
    std::uint8_t u8() noexcept { return pos_ < size_ ? data_[pos_++] : 0; }
    std::uint16_t u16() noexcept { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
    std::uint32_t u32() noexcept { return u16() | (static_cast<std::uint32_t>(u16()) << 16); }
    std::uint64_t u64() noexcept { return u32() | (static_cast<std::uint64_t>(u32()) << 32); }
    /// The bytes not read yet (consumes them).
    std::span<const std::uint8_t> rest() noexcept {
        std::span<const std::uint8_t> r;
        if (pos_ < size_) r = {data_ + pos_, size_ - pos_};
        pos_ = size_;
        return r;
    }

private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t pos_ = 0;
};

/// Number of entries in `all_formats`.
inline constexpr std::size_t format_count = decltype(boost::hana::length(all_formats))::value;

/// Calls `fn(boost::hana::type_c<F>)` for the format at `index % format_count` of
/// `all_formats`, so formats added to the list are fuzzed without touching the targets.
template <class Fn>
void with_format(std::size_t index, Fn&& fn) {
    const std::size_t want = index % format_count;
    std::size_t i = 0;
    boost::hana::for_each(all_formats, [&](auto type) {
        if (i++ == want) fn(type);
    });
}

/// `IOPGTABLE_FUZZ_LIST=1 fuzz_<target>`: prints the names the target picks formats (or format
/// pairs) by, one a line in input-byte order, and exits. fuzz/CMakeLists.txt compares them
/// with fuzz/format_names.txt, which fuzz/make_seeds.py reads so that seeds name formats by
/// name, not by a list position that moves when a format is added.
inline void list_names_if_asked(const std::vector<std::string>& names) {
    if (!std::getenv("IOPGTABLE_FUZZ_LIST")) return;
    for (const auto& n : names) std::printf("%s\n", n.c_str());
    std::fflush(stdout);
    std::exit(0);
}

/// Defines the target's LLVMFuzzerInitialize: with `IOPGTABLE_FUZZ_LIST=1` it prints `names`
/// (format_names() or pair_names(): what the input picks by index) and exits.
#define IOPGTABLE_FUZZ_LISTS(names)                                                                   \
    extern "C" int LLVMFuzzerInitialize(int*, char***) {                                              \
        iopgtable::fuzz::list_names_if_asked(names);                                                  \
        return 0;                                                                                     \
    }

/// `format arm-lpae-s1/4k`, ...: the formats fuzz_ops and fuzz_hostile_table pick by index.
inline std::vector<std::string> format_names() {
    std::vector<std::string> v;
    boost::hana::for_each(all_formats, [&](auto t) { v.push_back("format " + variant_name<typename decltype(t)::type>()); });
    return v;
}

/// `pair arm-lpae-s1/4k over arm-lpae-s2/4k`, ...: the pairs fuzz_nested_table picks by index.
inline std::vector<std::string> pair_names() {
    std::vector<std::string> v;
    boost::hana::for_each(nested_pairs, [&](auto t) {
        using P = typename decltype(t)::type;
        v.push_back("pair " + variant_name<typename P::stage1>() + " over " + variant_name<typename P::stage2>());
    });
    return v;
}

/// The body of a per-format target's LLVMFuzzerTestOneInput: the input's first two bytes pick
/// a format of the list (`with_format`) and one of its sample configurations; the rest goes to
/// `Run<F>(config, geometry, reader).run()`.
template <template <class> class Run>
int run_per_format(const std::uint8_t* data, std::size_t size) {
    byte_reader in(data, size);
    const std::uint8_t format_index = in.u8(), config_index = in.u8();
    with_format(format_index, [&](auto type) {
        using F = typename decltype(type)::type;
        const auto configs = F::sample_configs();
        FUZZ_CHECK(!configs.empty(), "%s has no sample configurations", F::name);
        const auto& cfg = configs[config_index % configs.size()];
        auto geo = F::make_geometry(cfg);
        FUZZ_CHECK(geo.ok(), "%s: a sample configuration is refused", F::name);
        Run<F>(cfg, *geo, in).run();
    });
    return 0;
}

/// True when `x` does not fit in `bits` bits.
constexpr bool beyond(std::uint64_t x, unsigned bits) noexcept { return bits < 64 && (x >> bits) != 0; }

/// The simulated machine for this input: built by the first input, then reset to exactly
/// what `Machine::create(settings)` would build (machine::reset keeps the host memory's
/// allocation and clears it, so an input pays for clearing the RAM, not for a new machine;
/// fuzz/README.md). One per Machine type and process; not thread-safe.
template <class Machine, class Settings>
Machine& reused_machine(const Settings& settings) {
    static std::unique_ptr<Machine> m;
    if (!m) {
        auto created = Machine::create(settings);
        FUZZ_CHECK(created.ok(), "machine: %s", created.ok() ? "" : created.why().field.data());
        m = std::move(*created);
    } else {
        const auto why = m->reset(settings);
        FUZZ_CHECK(!why, "machine reset: %s", why ? why->field.data() : "");
    }
    return *m;
}

} // namespace iopgtable::fuzz
