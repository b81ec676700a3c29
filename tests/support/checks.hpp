// SPDX-License-Identifier: MIT
#pragma once
/// @file checks.hpp
/// Assertions shared by the conformance tests: translation of a whole mapping, table creation,
/// and the table memory each format's tests run on.
#include <bit>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "format_list.hpp"

namespace iopgtable::test {

/// Table memory the generic tests use for F (host heap, or low guest RAM for formats whose
/// descriptors cannot hold host pointers).
template <class F>
using test_memory = default_memory_t<F>;

/// The guest-RAM arena of `make_test_memory`: 16 MiB, not the library's default 256 MiB. The
/// largest table a low-memory format can build (v7s: a 16 KiB first level and 4,096 second-level
/// tables of 1 KiB) takes 4.2 MiB. A fresh 256 MiB arena costs nothing until touched, except
/// under AddressSanitizer, which poisons 32 MiB of shadow each time one is freed: that was 90%
/// of the v7s conformance tests' time in the ASan stage (2026-12-05).
inline constexpr std::uint64_t test_arena_bytes = std::uint64_t{1} << 24;

template <class F>
std::unique_ptr<test_memory<F>> make_test_memory() {
    return make_default_memory<F>(test_arena_bytes);
}

/// A fresh table; fails the test if creation fails.
template <class F, class M>
page_table<F, M> make_table(const typename F::config& cfg, M& mem, flush_hooks hooks = {}) {
    auto r = page_table<F, M>::create(cfg, mem, hooks);
    REQUIRE(r.ok());
    return std::move(r).value();
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define IOPGTABLE_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define IOPGTABLE_TEST_SANITIZED 1
#endif
#endif

/// Most page offsets `translation_mismatch` and `unmapped_mismatch` walk in one mapping: every
/// page of a mapping up to 2^18 pages (a 1 GiB block of 4 KiB pages); larger mappings (a 4 TiB
/// block of 64 KiB pages has 2^26) are walked at an even stride plus every power-of-two offset
/// and the last page. Under a sanitizer (the clang -O0 ASan+UBSan stage) 2^12: those walks took
/// most of that stage's test time, and every one of them runs the same walk over the same
/// tables, which the uninstrumented stage checks at every page.
#ifdef IOPGTABLE_TEST_SANITIZED
inline constexpr std::uint64_t max_offsets_checked = std::uint64_t{1} << 12;
#else
inline constexpr std::uint64_t max_offsets_checked = std::uint64_t{1} << 18;
#endif

/// The page sizes up to `largest` (ascending) for a test that runs costly checks for each size:
/// all of them, except under a sanitizer, where more than `max_sizes_sanitized` are thinned to
/// that many, evenly spread, the smallest and the largest always among them. amd-v1 has a page
/// of every power of two from 4 KiB (31 sizes): its split cases took 29 s of the ASan stage.
inline constexpr std::size_t max_sizes_sanitized = 8;
inline std::vector<std::uint64_t> sizes_to_check(const geometry& g, std::uint64_t largest) {
    auto all = page_sizes_upto(g, largest);
#ifdef IOPGTABLE_TEST_SANITIZED
    if (all.size() > max_sizes_sanitized) {
        std::vector<std::uint64_t> some;
        for (std::size_t i = 0; i < max_sizes_sanitized; ++i)
            some.push_back(all[i * (all.size() - 1) / (max_sizes_sanitized - 1)]);
        return some;
    }
#endif
    return all;
}

/// "" when [iova, iova + size) translates to [pa, pa + size) at every page offset (each page's
/// first byte, its +42 byte where the page is larger, and the last byte of the mapping), else
/// the first mismatch.
template <class PT>
std::string translation_mismatch(const PT& pt, std::uint64_t iova, std::uint64_t pa, std::uint64_t size) {
    using F = typename PT::format;
    if (size == 0) return {};
    const std::uint64_t page = pt.min_page();
    const std::uint64_t pages = size / page;
    std::ostringstream why;
    auto probe = [&](std::uint64_t off) {
        auto got = pt.iova_to_phys(in_addr<F>(iova + off));
        if (got && got->value == pa + off) return true;
        why << std::hex << "iova 0x" << iova + off << ": got ";
        if (got) why << "0x" << got->value;
        else why << "none";
        why << ", want 0x" << pa + off;
        return false;
    };
    const std::uint64_t stride = pages <= max_offsets_checked ? 1 : pages / max_offsets_checked;
    for (std::uint64_t i = 0; i < pages; i += stride)
        if (!probe(i * page) || (page > 42 && !probe(i * page + 42))) return why.str();
    for (std::uint64_t off = page; off < size; off <<= 1)
        if (!probe(off) || !probe(off - 1)) return why.str();
    if (!probe(size - 1)) return why.str();
    return {};
}

/// "" when no byte at the page offsets of [iova, iova + size) translates, else the first that does.
template <class PT>
std::string unmapped_mismatch(const PT& pt, std::uint64_t iova, std::uint64_t size) {
    using F = typename PT::format;
    const std::uint64_t page = pt.min_page();
    const std::uint64_t pages = size / page;
    const std::uint64_t stride = pages <= max_offsets_checked ? 1 : pages / max_offsets_checked;
    auto bad = [&](std::uint64_t off) { return pt.iova_to_phys(in_addr<F>(iova + off)).has_value(); };
    std::ostringstream why;
    for (std::uint64_t i = 0; i < pages; i += stride) {
        if (bad(i * page) || bad(i * page + page - 1)) {
            why << std::hex << "iova 0x" << iova + i * page << " still translates";
            return why.str();
        }
    }
    if (pages != 0 && (bad(size - page) || bad(size - 1))) {
        why << std::hex << "iova 0x" << iova + size - page << " still translates";
        return why.str();
    }
    return {};
}

/// Bytes the memory should hold for a table with nothing but its root.
template <class PT>
std::uint64_t root_only_bytes(const PT& pt) {
    return charged_bytes(pt.top_table_bytes());
}

} // namespace iopgtable::test
