// SPDX-License-Identifier: MIT
// ARM LPAE only: registers to configuration and back, refusal of inconsistent register
// values, the Arm start level in the vectors, quirk prot round trips, and a table whose page
// sizes are restricted by the configuration.
#include <string_view>
#include <tuple>

#include "support/checks.hpp"
#include "support/format_list.hpp"
#include "support/reference_model.hpp"
#include "support/vectors.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

using lpae_formats =
    std::tuple<arm_lpae_s1_4k, arm_lpae_s1_16k, arm_lpae_s1_64k, arm_lpae_s2_4k, arm_lpae_s2_16k, arm_lpae_s2_64k>;

/// The register holding the translation control of F's stage.
template <class F>
constexpr const char* control_name() {
    return F::stage == lpae_stage::s1 ? "tcr" : "vtcr";
}

/// `regs` with one register replaced (or added).
inline register_set with(const register_set& regs, std::string_view name, std::uint64_t value) {
    register_set out;
    bool done = false;
    for (const auto& r : regs) {
        if (r.name == name) {
            out.add(r.name, value);
            done = true;
        } else {
            out.add(r.name, r.value);
        }
    }
    if (!done) out.add(name, value);
    return out;
}
inline register_set without(const register_set& regs, std::string_view name) {
    register_set out;
    for (const auto& r : regs)
        if (r.name != name) out.add(r.name, r.value);
    return out;
}

} // namespace

TEMPLATE_LIST_TEST_CASE("LPAE registers round trip to an equal configuration", "[arm-lpae][registers]", lpae_formats) {
    using F = TestType;
    int checked = 0;
    for (const auto& s : samples<F>()) {
        std::vector<lpae_config> variants;
        for (bool coherent : {true, false}) {
            for (std::uint32_t q : {0u, lpae_quirk::hd, lpae_quirk::outer_wbwa, lpae_quirk::ns, lpae_quirk::s2fwb}) {
                lpae_config c = s.cfg;
                c.coherent_walk = coherent;
                c.quirks = q;
                if (F::make_geometry(c).ok()) variants.push_back(c);
            }
        }
        for (const auto& c : variants) {
            INFO(s.label << " coherent " << c.coherent_walk << " quirks 0x" << std::hex << c.quirks);
            const auto g = F::make_geometry(c);
            const std::uint64_t root = std::uint64_t{1} << 30;
            const auto regs = F::registers(c, *g, pa_t{root});
            CHECK(regs.get(F::stage == lpae_stage::s1 ? "ttbr" : "vttbr") == root);
            std::string_view why;
            auto back = F::config_from_registers(regs, why);
            INFO("refused: " << why);
            REQUIRE(back.ok());
            // NS (descriptor bits) and S2FWB (HCR_EL2, not VTCR) are not in these registers.
            lpae_config want = c;
            want.quirks &= ~(lpae_quirk::ns | lpae_quirk::s2fwb);
            CHECK(*back == want);
            ++checked;
        }
    }
    CHECK(checked >= 10);
}

TEMPLATE_LIST_TEST_CASE("LPAE refuses inconsistent register values and names the field", "[arm-lpae][registers]",
                        lpae_formats) {
    using F = TestType;
    using T = F;  // field helpers live in the format
    lpae_config c;
    c.ias = 40;  // with oas 40, stage 2 concatenates its start tables with 4K and 16K granules
    c.oas = 40;
    const auto g = F::make_geometry(c);
    REQUIRE(g.ok());
    const auto regs = F::registers(c, *g, pa_t{0x80000000});
    const std::uint64_t ctl = *regs.get(control_name<F>());
    std::string_view why;
    REQUIRE(F::config_from_registers(regs, why).ok());

    struct refusal {
        const char* what;
        register_set regs;
        errc expect;
        std::string_view field;  ///< `why` must mention it
    };
    const std::uint64_t other_granule = F::granule_lg2 == 12 ? 1 : 0;
    std::vector<refusal> cases = {
        {"TG0 reserved", with(regs, control_name<F>(), T::tg0::set(ctl, 3)), errc::invalid, "TG0"},
        {"TG0 of another granule", with(regs, control_name<F>(), T::tg0::set(ctl, other_granule)), errc::unsupported,
         "TG0"},
        {"T0SZ giving IAS 31", with(regs, control_name<F>(), T::t0sz::set(ctl, 33)), errc::range, "T0SZ"},
        {"T0SZ giving IAS above the maximum", with(regs, control_name<F>(), T::t0sz::set(ctl, 64 - (F::max_ias + 1))),
         errc::range, "T0SZ"},
        {"IPS/PS reserved (7)",
         with(regs, control_name<F>(), F::stage == lpae_stage::s1 ? T::ips::set(ctl, 7) : T::ps::set(ctl, 7)),
         errc::invalid, "PS"},
        {"walk attributes never produced (IRGN0 = 2)", with(regs, control_name<F>(), T::irgn0::set(ctl, 2)),
         errc::unsupported, "IRGN0"},
        {"control register missing", without(regs, control_name<F>()), errc::invalid, control_name<F>()},
    };
    if (F::granule_lg2 != 16)
        cases.push_back({"52-bit IPS/PS with a 4K or 16K granule",
                         with(regs, control_name<F>(), F::stage == lpae_stage::s1 ? T::ips::set(ctl, 6) : T::ps::set(ctl, 6)),
                         errc::unsupported, "PS"});
    if constexpr (F::stage == lpae_stage::s1) {
        cases.push_back({"EPD0 set", with(regs, "tcr", ctl | T::epd0::mask), errc::invalid, "EPD0"});
        cases.push_back({"MAIR attribute 1 not 0xff", with(regs, "mair", F::mair_value ^ 0x0100), errc::invalid, "MAIR"});
        cases.push_back({"MAIR attribute 2 not 0x04", with(regs, "mair", F::mair_value ^ 0x080000), errc::invalid, "MAIR"});
        cases.push_back({"MAIR missing", without(regs, "mair"), errc::invalid, "mair"});
    } else {
        const std::uint64_t sl0 = T::sl0::get(ctl);
        cases.push_back({"SL0 3", with(regs, "vtcr", T::sl0::set(ctl, 3)), errc::invalid, "SL0"});
        cases.push_back({"SL0 one level off", with(regs, "vtcr", T::sl0::set(ctl, sl0 ^ 1)), errc::invalid, "SL0"});
        cases.push_back({"SL0 of the unconcatenated start level",
                         with(regs, "vtcr", T::sl0::set(ctl, sl0 + 1)), errc::invalid, "SL0"});
        cases.push_back({"IPA size above PS", with(regs, "vtcr", T::t0sz::set(T::ps::set(ctl, 0), 64 - 40)),
                         errc::invalid, "T0SZ"});
    }
    for (const auto& r : cases) {
        INFO(F::name << " granule " << F::granule_name << ": " << r.what);
        std::string_view reason;
        auto back = F::config_from_registers(r.regs, reason);
        INFO("why: " << reason);
        REQUIRE(!back.ok());
        CHECK(to_string(back.error()) == to_string(r.expect));
        CHECK(reason.find(r.field) != std::string_view::npos);
    }
    // Bytes 3..7 of MAIR are not ours to check.
    if constexpr (F::stage == lpae_stage::s1) CHECK(F::config_from_registers(with(regs, "mair", F::mair_value | (0xffull << 40)), why).ok());
}

TEMPLATE_LIST_TEST_CASE("LPAE geometry vectors: start level and levels agree", "[arm-lpae][vectors]", lpae_formats) {
    using F = TestType;
    int checked = 0;
    for (const auto& r : read_vectors(vectors_path(F::folder))) {
        if (r.kind != "geom" || r.format != F::name || !F::accepts(r.opts) || r.has("error")) continue;
        INFO(r.where << ": " << r.text);
        const auto c = F::config_from(r.opts);
        REQUIRE(c.ok());
        const auto g = F::make_geometry(*c);
        REQUIRE(g.ok());
        CHECK(r.number("levels") + r.number("start_level") == 4);
        CHECK(F::arm_start_level(*g) == r.number("start_level"));
        ++checked;
    }
    CHECK(checked >= 5);
}

TEMPLATE_LIST_TEST_CASE("LPAE quirks: leaves round trip and keep their quirk bits", "[arm-lpae][descriptors]",
                        lpae_formats) {
    using F = TestType;
    const std::vector<std::uint32_t> quirks = F::stage == lpae_stage::s1
                                                  ? std::vector<std::uint32_t>{lpae_quirk::ns, lpae_quirk::hd,
                                                                               lpae_quirk::ns | lpae_quirk::hd}
                                                  : std::vector<std::uint32_t>{lpae_quirk::s2fwb, lpae_quirk::hd};
    for (std::uint32_t q : quirks) {
        lpae_config c;
        c.quirks = q;
        const auto g = F::make_geometry(c);
        REQUIRE(g.ok());
        for (unsigned level = 0; level < g->levels; ++level) {
            if (F::leaf_sizes(level) == 0) continue;
            const unsigned lg2 = F::item_lg2(level);
            for (prot p : valid_prots()) {
                INFO("quirks 0x" << std::hex << q << " level " << level << " prot 0x" << to_bits(p));
                const auto x = F::make_leaf(c, level, lg2, std::uint64_t{1} << lg2, p);
                CHECK(F::make_leaf(c, level, lg2, std::uint64_t{1} << lg2, F::leaf_prot(c, level, x)) == x);
                if (q & lpae_quirk::ns) CHECK(F::ns_bit::test(x));
                // hd: a writable leaf starts dirty-tracked (DBM), a read-only one never is.
                if (q & lpae_quirk::hd) CHECK(F::dbm::test(x) == has(p, prot::write));
            }
        }
        if (q & lpae_quirk::ns) CHECK(F::ns_table::test(F::make_table(c, 1, 0x1000000)));
    }
}

TEMPLATE_LIST_TEST_CASE("LPAE with a restricted page-size bitmap only ever writes those sizes", "[arm-lpae][split]",
                        lpae_formats) {
    using F = TestType;
    lpae_config c;  // ias 48, oas 48
    const auto full = F::make_geometry(c);
    REQUIRE(full.ok());
    const auto sizes = page_sizes(*full);
    if (sizes.size() < 3) return;  // 16K has two sizes: nothing to leave out in between
    c.pgsize_bitmap = sizes.front() | sizes.back();
    const auto g = F::make_geometry(c);
    REQUIRE(g.ok());
    CHECK(g->pgsize_bitmap == c.pgsize_bitmap);
    const std::uint64_t small = sizes.front(), big = sizes.back(), mid = sizes[1];
    auto mem = make_test_memory<F>();
    auto pt = make_table<F>(c, *mem);
    reference_model model(*g);
    // A mid-sized aligned range maps as small pages; a big one as one leaf.
    REQUIRE(pt.map(in_addr<F>(big + mid), pa_t{mid}, length_t{mid}, prot::read).ok());
    REQUIRE(model.map(big + mid, mid, mid, prot::read).ok());
    REQUIRE(pt.map(in_addr<F>(2 * big), pa_t{big}, length_t{big}, prot::read).ok());
    REQUIRE(model.map(2 * big, big, big, prot::read).ok());
    CHECK(dump_difference(dump(pt), model.expected_dump<F>(c)) == "");
    // Splitting the big leaf must not produce mid-sized leaves either.
    auto r = pt.unmap(in_addr<F>(2 * big + small), length_t{small}, unmap_mode::split);
    REQUIRE(r.ok());
    CHECK(r->value == small);
    REQUIRE(model.unmap(2 * big + small, small, true).ok());
    for (const auto& e : dump(pt)) {
        INFO("leaf " << e);
        CHECK(((g->pgsize_bitmap >> e.size_lg2) & 1) == 1);
    }
    CHECK(translation_mismatch(pt, 2 * big + 2 * small, big + 2 * small, big - 2 * small) == "");
    CHECK(dump_difference(dump(pt), model.expected_dump<F>(c)) == "");
}
