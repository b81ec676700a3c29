// SPDX-License-Identifier: MIT
#pragma once
/// @file bits.hpp
/// log2 helpers and a constexpr typed bitfield for descriptor and register words.
/// Hardware words are never C bit-field structs: their layout is implementation-defined.
#include <bit>
#include <concepts>
#include <cstdint>

/// Forces inlining of the engine's hot-path helpers when optimizing; at -O0 (the sanitizer
/// test build) the compiler decides: forced inlining of the nested per-level lambdas there
/// made tests/engine/conformance_replace.cpp take 73.5 s to compile instead of 40.8 s under
/// clang -O0 with ASan + UBSan.
#if defined(__OPTIMIZE__)
#define IOPGTABLE_ALWAYS_INLINE [[gnu::always_inline]]
#define IOPGTABLE_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
#else
#define IOPGTABLE_ALWAYS_INLINE
#define IOPGTABLE_ALWAYS_INLINE_LAMBDA
#endif

namespace iopgtable {

/// 2^lg2 as a 64-bit value; lg2 must be < 64.
constexpr std::uint64_t lg2_to_size(unsigned lg2) noexcept { return std::uint64_t{1} << lg2; }
/// Mask of the low `lg2` bits (lg2 may be 64).
constexpr std::uint64_t low_mask(unsigned lg2) noexcept {
    return lg2 >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << lg2) - 1;
}
/// True when `v` is a multiple of 2^lg2.
constexpr bool is_aligned_lg2(std::uint64_t v, unsigned lg2) noexcept { return (v & low_mask(lg2)) == 0; }
/// Mask of bits hi..lo inclusive.
constexpr std::uint64_t bit_range(unsigned hi, unsigned lo) noexcept { return low_mask(hi + 1) & ~low_mask(lo); }

/// A field of `Width` bits at `Shift` in a word of type `Word`.
/// `get` extracts, `make` places a value, `set` replaces the field in a word, `mask` is the
/// field's bits in place. Values wider than the field are truncated by `make`/`set`.
template <unsigned Shift, unsigned Width, std::unsigned_integral Word = std::uint64_t>
struct bitfield {
    static_assert(Width > 0 && Shift + Width <= sizeof(Word) * 8, "field outside the word");
    using word = Word;
    static constexpr unsigned shift = Shift;
    static constexpr unsigned width = Width;
    static constexpr Word value_mask = static_cast<Word>(low_mask(Width));
    static constexpr Word mask = static_cast<Word>(value_mask << Shift);

    static constexpr Word get(Word w) noexcept { return static_cast<Word>((w >> Shift) & value_mask); }
    static constexpr Word make(std::uint64_t v) noexcept { return static_cast<Word>((static_cast<Word>(v) & value_mask) << Shift); }
    static constexpr Word set(Word w, std::uint64_t v) noexcept { return static_cast<Word>((w & ~mask) | make(v)); }
    static constexpr Word clear(Word w) noexcept { return static_cast<Word>(w & ~mask); }
    static constexpr bool test(Word w) noexcept { return (w & mask) != 0; }
};

/// A single bit.
template <unsigned Bit, std::unsigned_integral Word = std::uint64_t>
using bit = bitfield<Bit, 1, Word>;

static_assert(bitfield<4, 3>::mask == 0x70);
static_assert(bitfield<4, 3>::set(0xff, 2) == 0xaf);
static_assert(bitfield<4, 3>::get(0xaf) == 2);
static_assert(bit_range(47, 12) == 0x0000fffffffff000ull);

} // namespace iopgtable
