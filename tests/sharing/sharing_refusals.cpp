// SPDX-License-Identifier: MIT
// Every refusal of ATTACH_TABLE in formats/README.md's table, and every field the formats'
// config_from_registers names, each from a request that is accepted until that one field is
// changed; the status and the field string are both checked. Then F_INDIRECT context tables
// (slot by slot) and decode_invalidate's refusals and accepted forms.
#include <cstdint>
#include <string>
#include <string_view>

#include <boost/hana/tuple.hpp>

#include "sharing/sharing_fixture.hpp"

using namespace iopgtable;
using namespace iopgtable::test;
namespace hana = boost::hana;
using virtio::status;

namespace {

constexpr std::uint64_t tcr_4k_48 = tcr_of(48, 0, 5);  // 0x500803510, formats/arm-lpae/vectors.txt

/// Refusal of `req` by `device`: checks the status and the field.
template <class Device>
void check_refused(const Device& device, const virtio::req_attach_table& req, const guest_ram& ram, status code,
                   std::string_view field, sharing::attach_limits lim = {}) {
    auto bound = sharing::validate_attach(device, req, ram, lim);
    REQUIRE_FALSE(bound.ok());
    CHECK(std::string(virtio::to_string(bound.why().code)) == std::string(virtio::to_string(code)));
    CHECK(std::string(bound.why().field) == std::string(field));
}

/// `req` is accepted by `device`; returns the binding's format name.
template <class Device>
std::string check_accepted(const Device& device, const virtio::req_attach_table& req, const guest_ram& ram,
                           sharing::attach_limits lim = {}) {
    auto bound = sharing::validate_attach(device, req, ram, lim);
    if (!bound) FAIL_CHECK("refused: " << virtio::to_string(bound.why().code) << " " << std::string(bound.why().field));
    return bound ? bound->format_name() : "";
}

struct fixture {
    device_t device = full_device();
    guest_ram ram{ram_size, pa_t{ram_base}};
    virtio::req_attach_table lpae = attach_request(1, lpae_blob(tcr_4k_48), ram_base);
    virtio::req_attach_table v7s = attach_request(1, v7s_blob(), ram_base);
    virtio::req_attach_table vtd = attach_request(2, vtd_blob(48), ram_base);
    fixture() {
        REQUIRE(check_accepted(device, lpae, ram) == "arm-lpae-s1");
        REQUIRE(check_accepted(device, v7s, ram) == "arm-v7s");
        REQUIRE(check_accepted(device, vtd, ram) == "vtd-fl");
    }
};

virtio::req_attach_table with_config(virtio::req_attach_table req, const sharing::blob& b) {
    std::memcpy(req.config, b.data(), 64);
    return req;
}

} // namespace

// ---------------------------------------------------------------- request fields

TEST_CASE("attach refusal: unknown flag bits are INVAL flags", "[sharing]") {
    fixture f;
    for (unsigned bit = 3; bit < 32; ++bit) {
        INFO("flag bit " << bit);
        auto req = f.lpae;
        req.flags = (1u << bit) | virtio::table_f_native;
        check_refused(f.device, req, f.ram, status::inval, "flags");
    }
    auto native = f.lpae;
    native.flags = virtio::table_f_native;
    CHECK(check_accepted(f.device, native, f.ram) == "arm-lpae-s1");
}

TEST_CASE("attach refusal: F_FAULT is UNSUPP (no recoverable faults)", "[sharing]") {
    fixture f;
    auto req = f.lpae;
    req.flags = virtio::table_f_fault;
    check_refused(f.device, req, f.ram, status::unsupp, "flags.F_FAULT");
    req.flags = virtio::table_f_fault | virtio::table_f_indirect;
    req.nr_contexts = 4;
    check_refused(f.device, req, f.ram, status::unsupp, "flags.F_FAULT");
}

TEST_CASE("attach refusal: F_INDIRECT needs 1..max_contexts contexts (RANGE)", "[sharing]") {
    fixture f;
    auto req = f.lpae;
    req.flags = virtio::table_f_indirect;
    for (std::uint32_t n : {0u, 65u, 0xffffffffu}) {
        INFO("nr_contexts " << n);
        req.nr_contexts = n;
        check_refused(f.device, req, f.ram, status::range, "nr_contexts");
    }
    for (std::uint32_t n : {1u, 64u}) {
        req.nr_contexts = n;
        CHECK(check_accepted(f.device, req, f.ram) == "arm-lpae-s1");
    }
    // A device with a smaller limit.
    req.nr_contexts = 5;
    check_refused(f.device, req, f.ram, status::range, "nr_contexts", sharing::attach_limits{4});
    req.nr_contexts = 4;
    CHECK(check_accepted(f.device, req, f.ram, sharing::attach_limits{4}) == "arm-lpae-s1");
}

TEST_CASE("attach refusal: more than one context without F_INDIRECT is INVAL", "[sharing]") {
    fixture f;
    auto req = f.lpae;
    for (std::uint32_t n : {2u, 64u, 0xffffffffu}) {
        req.nr_contexts = n;
        check_refused(f.device, req, f.ram, status::inval, "nr_contexts");
    }
    for (std::uint32_t n : {0u, 1u}) {
        req.nr_contexts = n;
        CHECK(check_accepted(f.device, req, f.ram) == "arm-lpae-s1");
    }
}

TEST_CASE("attach refusal: model 0 is INVAL, unknown models UNSUPP", "[sharing]") {
    fixture f;
    auto req = f.lpae;
    req.model = 0;
    check_refused(f.device, req, f.ram, status::inval, "model");
    std::uint32_t unregistered = 1;  // the first model number the registry lacks
    while (sharing::find_model(unregistered)) ++unregistered;
    for (std::uint32_t m : {unregistered, 0x100u, 0xffffffffu}) {
        req.model = m;
        check_refused(f.device, req, f.ram, status::unsupp, "model");
    }
}

TEST_CASE("attach refusal: unknown variants are UNSUPP config.variant", "[sharing]") {
    fixture f;
    // ARM: 2 (LPAE 32-bit) is registered but not implemented; 0 and 4 are not registered.
    for (std::uint32_t v : {0u, 2u, 4u, 0xffffffffu}) {
        INFO("ARM variant " << v);
        auto b = lpae_blob(tcr_4k_48);
        b[0] = static_cast<std::uint8_t>(v);
        b[3] = static_cast<std::uint8_t>(v >> 24);
        check_refused(f.device, with_config(f.lpae, b), f.ram, status::unsupp, "config.variant");
    }
    for (std::uint32_t v : {0u, 3u}) {
        INFO("X86 variant " << v);
        check_refused(f.device, with_config(f.vtd, vtd_blob(48, 0, v)), f.ram, status::unsupp, "config.variant");
    }
    // A variant the device compiled in but switched off.
    const auto no_v7s = only(f.device, [](auto t) { return !std::is_same_v<typename decltype(t)::type, arm_v7s>; });
    check_refused(no_v7s, f.v7s, f.ram, status::unsupp, "config.variant");
}

TEST_CASE("attach refusal: stage-2-only variants are UNSUPP", "[sharing]") {
    fixture f;
    // X86 variant 2 is VT-d second stage: never a guest table.
    check_refused(f.device, with_config(f.vtd, vtd_blob(48, 0, 2)), f.ram, status::unsupp, "config.variant");
    // A device whose LPAE walkers are stage 2 only has no ARM variant 1 for guests.
    const auto stage2 = only(f.device, [](auto t) { return !decltype(t)::type::guest_shareable; });
    CHECK(sharing::offered_formats(stage2).empty());
    check_refused(stage2, f.lpae, f.ram, status::unsupp, "config.variant");
    check_refused(stage2, f.vtd, f.ram, status::unsupp, "config.variant");
}

TEST_CASE("attach refusal: a granule the device lacks is UNSUPP", "[sharing]") {
    fixture f;
    const auto req64 = with_config(f.lpae, lpae_blob(tcr_of(48, 1, 5)));
    const auto req16 = with_config(f.lpae, lpae_blob(tcr_of(48, 2, 5)));
    CHECK(check_accepted(f.device, req64, f.ram) == "arm-lpae-s1");
    // 64k switched off at run time, and not compiled in at all.
    const auto no_64k = only(f.device, [](auto t) { return !std::is_same_v<typename decltype(t)::type, arm_lpae_s1_64k>; });
    check_refused(no_64k, req64, f.ram, status::unsupp, "TG0 is not this granule");
    CHECK(check_accepted(no_64k, req16, f.ram) == "arm-lpae-s1");
    const auto only_4k = hana::make_tuple(sharing::device_format<arm_lpae_s1_4k>{lpae_config{}, 16});
    check_refused(only_4k, req64, f.ram, status::unsupp, "TG0 is not this granule");
    check_refused(only_4k, req16, f.ram, status::unsupp, "TG0 is not this granule");
    CHECK(check_accepted(only_4k, f.lpae, f.ram) == "arm-lpae-s1");
}

// ---------------------------------------------------------------- config blobs

TEST_CASE("attach refusal: every reserved config byte is INVAL config.reserved", "[sharing]") {
    fixture f;
    struct layout {
        const char* name;
        virtio::req_attach_table req;
        std::vector<std::size_t> reserved;
    };
    std::vector<std::size_t> lpae_reserved{4, 5, 6, 7}, v7s_reserved, vtd_reserved;
    for (std::size_t i = 28; i < 64; ++i) lpae_reserved.push_back(i);
    for (std::size_t i = 20; i < 64; ++i) v7s_reserved.push_back(i);
    for (std::size_t i = 12; i < 64; ++i) vtd_reserved.push_back(i);
    for (const auto& l : {layout{"lpae", f.lpae, lpae_reserved}, layout{"v7s", f.v7s, v7s_reserved},
                          layout{"vtd-fl", f.vtd, vtd_reserved}}) {
        for (std::size_t i : l.reserved) {
            INFO(l.name << " byte " << i);
            auto req = l.req;
            req.config[i] = 0x80;
            check_refused(f.device, req, f.ram, status::inval, "config.reserved");
        }
    }
}

TEST_CASE("attach refusal: LPAE TCR_EL1 fields", "[sharing]") {
    fixture f;
    auto lpae = [&](std::uint64_t tcr, std::uint64_t mair = 0xf404ff44) { return with_config(f.lpae, lpae_blob(tcr, mair)); };
    SECTION("TG0 0b11 is reserved: INVAL") {
        check_refused(f.device, lpae(tcr_4k_48 | (3u << 14)), f.ram, status::inval, "TG0 reserved");
    }
    SECTION("T0SZ out of range: RANGE") {
        for (unsigned t0sz : {0u, 15u, 33u, 63u}) {  // IAS 64, 49, 31, 1 with 4k
            INFO("T0SZ " << t0sz);
            check_refused(f.device, lpae((tcr_4k_48 & ~std::uint64_t{0x3f}) | t0sz), f.ram, status::range,
                          "T0SZ out of range");
        }
        check_refused(f.device, lpae(tcr_of(53, 1, 6)), f.ram, status::range, "T0SZ out of range");  // 64k, IAS 53
        CHECK(check_accepted(f.device, lpae(tcr_of(52, 1, 6)), f.ram) == "arm-lpae-s1");
        CHECK(check_accepted(f.device, lpae(tcr_of(32, 0, 0)), f.ram) == "arm-lpae-s1");
    }
    SECTION("IPS 0b111 is reserved: INVAL; 52 bits needs 64k: UNSUPP") {
        check_refused(f.device, lpae(tcr_of(48, 0, 7)), f.ram, status::inval, "IPS reserved");
        check_refused(f.device, lpae(tcr_of(48, 0, 6)), f.ram, status::unsupp, "IPS not supported by this granule");
        check_refused(f.device, lpae(tcr_of(48, 2, 6)), f.ram, status::unsupp, "IPS not supported by this granule");
    }
    SECTION("MAIR attributes 0..2 must be ours: INVAL") {
        for (unsigned idx = 0; idx < 3; ++idx) {
            INFO("MAIR attribute " << idx);
            const std::uint64_t mair = 0xf404ff44ull ^ (std::uint64_t{0x10} << (8 * idx));
            check_refused(f.device, lpae(tcr_4k_48, mair), f.ram, status::inval, "MAIR attribute 0..2 not 0x44/0xff/0x04");
        }
        // Attributes 3..7 are not used by our leaves.
        CHECK(check_accepted(f.device, lpae(tcr_4k_48, 0xffeeddccf404ff44ull), f.ram) == "arm-lpae-s1");
    }
    SECTION("EPD0 (TTBR0 walks disabled): INVAL") {
        check_refused(f.device, lpae(tcr_4k_48 | (1u << 7)), f.ram, status::inval, "EPD0 set (walks disabled)");
    }
    SECTION("walk attributes we never produce: UNSUPP") {
        check_refused(f.device, lpae(tcr_4k_48 ^ (3u << 8)), f.ram, status::unsupp,
                      "IRGN0/ORGN0/SH0 combination not supported");  // IRGN0 0b10
        // Non-coherent (IRGN0 0, ORGN0 0 or 1, SH0 outer) is accepted.
        CHECK(check_accepted(f.device, lpae((tcr_4k_48 & ~std::uint64_t{0x3f00}) | 0x2000), f.ram) == "arm-lpae-s1");
        CHECK(check_accepted(f.device, lpae((tcr_4k_48 & ~std::uint64_t{0x3f00}) | 0x2400), f.ram) == "arm-lpae-s1");
    }
}

TEST_CASE("attach refusal: v7s TTBCR, PRRR and NMRR", "[sharing]") {
    fixture f;
    auto v7s = [&](std::uint32_t tcr, std::uint32_t prrr = 0x800b8204, std::uint32_t nmrr = 0x40004000) {
        return with_config(f.v7s, v7s_blob(tcr, prrr, nmrr));
    };
    for (std::uint32_t n = 1; n < 8; ++n) {
        INFO("TTBCR.N " << n);
        check_refused(f.device, v7s(n), f.ram, status::unsupp, "TTBCR.N must be 0 (TTBR0 covers the whole 32-bit space)");
    }
    check_refused(f.device, v7s(1u << 31), f.ram, status::inval, "TTBCR.EAE set (long-descriptor format)");
    check_refused(f.device, v7s(1u << 4), f.ram, status::inval, "TTBCR.PD0 set (walks disabled)");
    // PRRR: TR1 (bits 3:2), TR4 (9:8), TR7 (15:14), DS0 (16), DS1 (17), NS1 (19), NOS7 (31).
    for (unsigned bit : {2u, 3u, 8u, 9u, 14u, 15u, 16u, 17u, 19u, 31u}) {
        INFO("PRRR bit " << bit);
        check_refused(f.device, v7s(0, 0x800b8204u ^ (1u << bit)), f.ram, status::inval,
                      "PRRR does not map TEX-remap indices 1/4/7");
    }
    // NMRR: IR4 (9:8), IR7 (15:14), OR4 (25:24), OR7 (31:30).
    for (unsigned bit : {8u, 9u, 14u, 15u, 24u, 25u, 30u, 31u}) {
        INFO("NMRR bit " << bit);
        check_refused(f.device, v7s(0, 0x800b8204u, 0x40004000u ^ (1u << bit)), f.ram, status::inval,
                      "NMRR does not give index 4 NC and 7 WB-WA");
    }
    // Remap entries of indices our leaves never use are free.
    CHECK(check_accepted(f.device, v7s(0, 0x800b8204u ^ 0x3u, 0x40004000u ^ 0x3u), f.ram) == "arm-v7s");
}

TEST_CASE("attach refusal: VT-d address width other than 48/57 is INVAL", "[sharing]") {
    fixture f;
    for (std::uint32_t aw : {0u, 39u, 47u, 50u, 52u, 56u, 58u, 64u, 0xffffffffu}) {
        INFO("address width " << aw);
        check_refused(f.device, with_config(f.vtd, vtd_blob(aw)), f.ram, status::inval, "config.address_width");
    }
    CHECK(check_accepted(f.device, with_config(f.vtd, vtd_blob(57)), f.ram) == "vtd-fl");
}

// ---------------------------------------------------------------- the device's limits

TEST_CASE("attach refusal: IAS or OAS above the device's is RANGE", "[sharing]") {
    guest_ram ram{ram_size, pa_t{ram_base}};
    const auto narrow = hana::make_tuple(sharing::device_format<arm_lpae_s1_4k>{lpae_config{40, 44}, 16},
                                         sharing::device_format<vtd_fl>{vtd_fl_config{4}, 16});
    auto lpae = [&](unsigned ias, std::uint64_t ips) { return attach_request(1, lpae_blob(tcr_of(ias, 0, ips)), ram_base); };
    CHECK(check_accepted(narrow, lpae(40, 4), ram) == "arm-lpae-s1");  // IAS 40, OAS 44
    check_refused(narrow, lpae(41, 4), ram, status::range, "config: input size above the device's");
    check_refused(narrow, lpae(40, 5), ram, status::range, "config: output size above the device's");
    // A 5-level VT-d table on a 4-level walker: its IAS (56) is above the device's (47).
    CHECK(check_accepted(narrow, attach_request(2, vtd_blob(48), ram_base), ram) == "vtd-fl");
    check_refused(narrow, attach_request(2, vtd_blob(57), ram_base), ram, status::range,
                  "config: input size above the device's");
}

TEST_CASE("attach refusal: a tag wider than the device's tag bits is RANGE", "[sharing]") {
    fixture f;
    check_refused(f.device, with_config(f.lpae, lpae_blob(tcr_4k_48, 0xf404ff44, 0x10000)), f.ram, status::range, "config.tag");
    check_refused(f.device, with_config(f.v7s, v7s_blob(0, 0x800b8204, 0x40004000, 0x80000000)), f.ram, status::range,
                  "config.tag");
    check_refused(f.device, with_config(f.vtd, vtd_blob(48, 0x10000)), f.ram, status::range, "config.tag");
    CHECK(check_accepted(f.device, with_config(f.lpae, lpae_blob(tcr_4k_48, 0xf404ff44, 0xffff)), f.ram) == "arm-lpae-s1");
    const auto bits8 = full_device(8);
    check_refused(bits8, with_config(f.vtd, vtd_blob(48, 0x100)), f.ram, status::range, "config.tag");
    CHECK(check_accepted(bits8, with_config(f.vtd, vtd_blob(48, 0xff)), f.ram) == "vtd-fl");
    const auto bits0 = full_device(0);
    check_refused(bits0, with_config(f.vtd, vtd_blob(48, 1)), f.ram, status::range, "config.tag");
    CHECK(check_accepted(bits0, f.vtd, f.ram) == "vtd-fl");
    const auto bits32 = full_device(32);
    CHECK(check_accepted(bits32, with_config(f.vtd, vtd_blob(48, 0xffffffff)), f.ram) == "vtd-fl");
}

TEST_CASE("attach refusal: hardware dirty state the device lacks is UNSUPP", "[sharing]") {
    guest_ram ram{ram_size, pa_t{ram_base}};
    const auto clean = hana::make_tuple(sharing::device_format<arm_lpae_s1_4k>{lpae_config{}, 16});
    auto dirty = attach_request(1, lpae_blob(tcr_4k_48 | tcr_ha_hd), ram_base);
    check_refused(clean, dirty, ram, status::unsupp, "config: hardware dirty state");
    lpae_config hd{};
    hd.quirks = lpae_quirk::hd;
    const auto with_hd = hana::make_tuple(sharing::device_format<arm_lpae_s1_4k>{hd, 16});
    CHECK(check_accepted(with_hd, dirty, ram) == "arm-lpae-s1");
    // The offered entry says so: access flag and dirty bits only on the device that has them.
    CHECK(sharing::decode_format(sharing::offered_formats(clean)[0])->flags == 0);
    CHECK(sharing::decode_format(sharing::offered_formats(with_hd)[0])->flags ==
          (sharing::cap_access_flag | sharing::cap_dirty));
}

// ---------------------------------------------------------------- the table pointer

TEST_CASE("attach refusal: a misaligned table is INVAL", "[sharing]") {
    fixture f;
    auto at = [](virtio::req_attach_table req, std::uint64_t table) {
        req.table = table;
        return req;
    };
    // 4k/IAS 48: a 4 KiB top table; v7s: 16 KiB; 64k/IAS 52: 8 KiB; VT-d: 4 KiB.
    check_refused(f.device, at(f.lpae, ram_base + 0x800), f.ram, status::inval, "table: misaligned");
    check_refused(f.device, at(f.v7s, ram_base + 0x1000), f.ram, status::inval, "table: misaligned");
    CHECK(check_accepted(f.device, at(f.v7s, ram_base + 0x4000), f.ram) == "arm-v7s");
    const auto req64 = with_config(f.lpae, lpae_blob(tcr_of(52, 1, 6)));
    check_refused(f.device, at(req64, ram_base + 0x1000), f.ram, status::inval, "table: misaligned");
    CHECK(check_accepted(f.device, at(req64, ram_base + 0x2000), f.ram) == "arm-lpae-s1");
    check_refused(f.device, at(f.vtd, ram_base + 8), f.ram, status::inval, "table: misaligned");
    // Tables under 64 bytes are 64-byte aligned (4k, IAS 32: 4 entries).
    const auto req32 = with_config(f.lpae, lpae_blob(tcr_of(32, 0, 0)));
    check_refused(f.device, at(req32, ram_base + 32), f.ram, status::inval, "table: misaligned");
    CHECK(check_accepted(f.device, at(req32, ram_base + 64), f.ram) == "arm-lpae-s1");
    // A context table is 64-byte aligned.
    auto indirect = at(f.lpae, ram_base + 8);
    indirect.flags = virtio::table_f_indirect;
    indirect.nr_contexts = 2;
    check_refused(f.device, indirect, f.ram, status::inval, "table: misaligned");
    CHECK(check_accepted(f.device, at(indirect, ram_base + 64), f.ram) == "arm-lpae-s1");
    // Misaligned is reported before outside RAM.
    check_refused(f.device, at(f.lpae, 0x800), f.ram, status::inval, "table: misaligned");
}

TEST_CASE("attach refusal: a table outside guest RAM is RANGE", "[sharing]") {
    fixture f;
    auto at = [](virtio::req_attach_table req, std::uint64_t table) {
        req.table = table;
        return req;
    };
    const std::uint64_t end = ram_base + ram_size;
    for (std::uint64_t t : {std::uint64_t{0}, ram_base - 0x4000, end, end + 0x4000, ~std::uint64_t{0} << 14}) {
        INFO("table 0x" << std::hex << t);
        check_refused(f.device, at(f.lpae, t), f.ram, status::range, "table: outside guest RAM");
        check_refused(f.device, at(f.v7s, t), f.ram, status::range, "table: outside guest RAM");
    }
    CHECK(check_accepted(f.device, at(f.lpae, end - 0x1000), f.ram) == "arm-lpae-s1");
    CHECK(check_accepted(f.device, at(f.v7s, end - 0x4000), f.ram) == "arm-v7s");
    // A context table of 64 slots (512 bytes) that runs past the end.
    auto indirect = at(f.lpae, end - 256);
    indirect.flags = virtio::table_f_indirect;
    indirect.nr_contexts = 64;
    check_refused(f.device, indirect, f.ram, status::range, "table: outside guest RAM");
    indirect.nr_contexts = 32;
    CHECK(check_accepted(f.device, indirect, f.ram) == "arm-lpae-s1");
}

// ---------------------------------------------------------------- F_INDIRECT context tables

TEST_CASE("F_INDIRECT: each valid slot is its context's table; bad slots are refused per walk", "[sharing]") {
    device_t device = full_device();
    guest_ram ram{ram_size, pa_t{ram_base}};
    ram.set_table_pool(pa_t{ram_base + 0x10000}, ram_size - 0x10000);  // the context table lives below
    using F = arm_lpae_s1_4k;
    const lpae_config cfg{};
    auto a = page_table<F, guest_ram>::create(cfg, ram);
    auto b = page_table<F, guest_ram>::create(cfg, ram);
    REQUIRE(a);
    REQUIRE(b);
    const auto maps_a = map_sample(*a, 0);
    const auto maps_b = map_sample(*b, 1);
    const std::uint64_t end = ram_base + ram_size;
    const std::uint64_t slots[9] = {
        a->root().value | 1,        // 0: A
        b->root().value | 1,        // 1: B
        0,                          // 2: invalid
        a->root().value,            // 3: A's address, valid bit clear
        end | 1,                    // 4: outside RAM
        (a->root().value + 8) | 1,  // 5: misaligned
        (end - 0x1000) | 1,         // 6: an empty table at the end of RAM
        (std::uint64_t{1} << 63) | 1,  // 7: far outside
        (ram_base - 0x1000) | 1,    // 8: just below RAM
    };
    for (unsigned i = 0; i < 9; ++i) {
        const le64 v{slots[i]};
        REQUIRE(ram.write(pa_t{ram_base + 8 * i}, v.bytes.data(), 8));
    }
    auto req = sharing::make_attach_table<F>(cfg, pa_t{ram_base}, 5, virtio::table_f_indirect, 9);
    REQUIRE(req);
    auto bound = sharing::validate_attach(device, *req, ram);
    REQUIRE(bound);
    CHECK(bound->indirect());
    CHECK(bound->nr_contexts() == 9);
    CHECK(bound->table() == pa_t{ram_base});

    for (std::uint64_t va : probe_addresses(maps_a, a->geo())) CHECK(translation_difference(*a, *bound, ram, 0, va) == "");
    for (std::uint64_t va : probe_addresses(maps_b, b->geo())) CHECK(translation_difference(*b, *bound, ram, 1, va) == "");
    // The two contexts really differ: A's first mapping goes elsewhere in B.
    CHECK(bound->translate(ram, 0, maps_a[0].iova)->oa != bound->translate(ram, 1, maps_a[0].iova)->oa);
    auto seen = bound->with_table(ram, 1, [&](auto& t) { return dump_difference(leaves_of(t), leaves_of(*b)); });
    REQUIRE(seen);
    CHECK(*seen == "");

    auto expect = [&](std::uint32_t context, status code, std::string_view field) {
        INFO("context " << context);
        auto t = bound->translate(ram, context, maps_a[0].iova);
        REQUIRE_FALSE(t.ok());
        CHECK(std::string(virtio::to_string(t.why().code)) == std::string(virtio::to_string(code)));
        CHECK(std::string(t.why().field) == std::string(field));
    };
    expect(2, status::noent, "context slot");
    expect(3, status::noent, "context slot");
    expect(4, status::fault, "context slot address");
    expect(5, status::fault, "context slot address");
    expect(7, status::fault, "context slot address");
    expect(8, status::fault, "context slot address");
    expect(9, status::range, "context");
    expect(0xffffffff, status::range, "context");
    auto empty = bound->translate(ram, 6, maps_a[0].iova);
    REQUIRE(empty);
    CHECK(empty->status == walk_status::unmapped);

    // The guest fills slot 2 later: the next walk uses it.
    const le64 now_b{b->root().value | 1};
    REQUIRE(ram.write(pa_t{ram_base + 16}, now_b.bytes.data(), 8));
    for (std::uint64_t va : probe_addresses(maps_b, b->geo())) CHECK(translation_difference(*b, *bound, ram, 2, va) == "");
}

TEST_CASE("F_INDIRECT: slots are aligned like the format's top table", "[sharing]") {
    device_t device = full_device();
    guest_ram ram{ram_size, pa_t{ram_base}};
    ram.set_table_pool(pa_t{ram_base + 0x10000}, ram_size - 0x10000);
    auto t = page_table<arm_v7s, guest_ram>::create(v7s_config{}, ram);
    REQUIRE(t);
    const std::uint64_t slots[3] = {t->root().value | 1, (t->root().value + 0x400) | 1, (t->root().value + 0x4000) | 1};
    for (unsigned i = 0; i < 3; ++i) {
        const le64 v{slots[i]};
        REQUIRE(ram.write(pa_t{ram_base + 8 * i}, v.bytes.data(), 8));
    }
    auto bound = sharing::validate_attach(device, attach_request(1, v7s_blob(), ram_base, virtio::table_f_indirect, 3), ram);
    REQUIRE(bound);
    CHECK(bound->translate(ram, 0, 0x1000).ok());
    auto misaligned = bound->translate(ram, 1, 0x1000);  // 1 KiB aligned, the first level is 16 KiB
    REQUIRE_FALSE(misaligned.ok());
    CHECK(misaligned.why().code == status::fault);
    CHECK(bound->translate(ram, 2, 0x1000).ok());
    // Without F_INDIRECT there is one context, 0.
    auto direct = sharing::validate_attach(device, attach_request(1, v7s_blob(), t->root().value), ram);
    REQUIRE(direct);
    CHECK(direct->translate(ram, 0, 0x1000).ok());
    auto other = direct->translate(ram, 1, 0x1000);
    REQUIRE_FALSE(other.ok());
    CHECK(other.why().code == status::range);
    CHECK(std::string(other.why().field) == "context");
}

// ---------------------------------------------------------------- INVALIDATE

namespace {

struct invalidate_fixture {
    device_t device = full_device();
    guest_ram ram{ram_size, pa_t{ram_base}};
    binding_t direct = bind(attach_request(1, lpae_blob(tcr_4k_48), ram_base));  // IAS 48, one context
    binding_t indirect = bind(attach_request(1, lpae_blob(tcr_4k_48), ram_base, virtio::table_f_indirect, 4));
    binding_t vtd = bind(attach_request(2, vtd_blob(48), ram_base));  // IAS 47

    binding_t bind(const virtio::req_attach_table& req) {
        auto b = sharing::validate_attach(device, req, ram);
        if (!b) throw std::runtime_error("fixture attach refused");
        return std::move(b.value());
    }
};

void check_invalidate_refused(const binding_t& b, const virtio::req_invalidate& req, status code, std::string_view field) {
    auto r = sharing::decode_invalidate(req, b);
    REQUIRE_FALSE(r.ok());
    CHECK(std::string(virtio::to_string(r.why().code)) == std::string(virtio::to_string(code)));
    CHECK(std::string(r.why().field) == std::string(field));
}

constexpr std::uint32_t vaddr = 0, single = 1, table = 2;

} // namespace

TEST_CASE("INVALIDATE refusals", "[sharing]") {
    invalidate_fixture f;
    SECTION("flag bits above the kind: INVAL flags") {
        for (unsigned bit = 8; bit < 32; ++bit) {
            INFO("bit " << bit);
            check_invalidate_refused(f.direct, invalidate_request((1u << bit) | single, 0, 0, 0), status::inval, "flags");
        }
    }
    SECTION("unknown kinds: INVAL flags.kind") {
        for (std::uint32_t kind : {3u, 4u, 0x80u, 0xffu})
            check_invalidate_refused(f.direct, invalidate_request(kind, 0, 0x1000, 0x1000), status::inval, "flags.kind");
    }
    SECTION("TABLE without F_INDIRECT: INVAL") {
        check_invalidate_refused(f.direct, invalidate_request(table, 0, 0, 0), status::inval,
                                 "flags.kind: TABLE without F_INDIRECT");
    }
    SECTION("a context beyond the table's: RANGE") {
        check_invalidate_refused(f.direct, invalidate_request(vaddr, 1, 0x1000, 0x1000), status::range, "context");
        check_invalidate_refused(f.direct, invalidate_request(single, 1, 0, 0), status::range, "context");
        check_invalidate_refused(f.indirect, invalidate_request(vaddr, 4, 0x1000, 0x1000), status::range, "context");
        check_invalidate_refused(f.indirect, invalidate_request(single, 0xffffffff, 0, 0), status::range, "context");
    }
    SECTION("VADDR of size 0: INVAL range_size") {
        check_invalidate_refused(f.direct, invalidate_request(vaddr, 0, 0x1000, 0), status::inval, "range_size");
    }
    SECTION("a range that wraps: RANGE") {
        check_invalidate_refused(f.direct, invalidate_request(vaddr, 0, ~std::uint64_t{0} - 0xfff, 0x2000), status::range,
                                 "range: wraps");
        check_invalidate_refused(f.direct, invalidate_request(vaddr, 0, 0x1000, ~std::uint64_t{0}), status::range,
                                 "range: wraps");
    }
    SECTION("a range beyond the input address size: RANGE") {
        const std::uint64_t ias48 = std::uint64_t{1} << 48;
        check_invalidate_refused(f.direct, invalidate_request(vaddr, 0, ias48 - 0x1000, 0x2000), status::range,
                                 "range: beyond the input address size");
        check_invalidate_refused(f.direct, invalidate_request(vaddr, 0, ias48, 1), status::range,
                                 "range: beyond the input address size");
        check_invalidate_refused(f.direct, invalidate_request(vaddr, 0, 0, ~std::uint64_t{0}), status::range,
                                 "range: beyond the input address size");
        // VT-d first stage, 4 levels: the lower canonical half, 47 bits.
        check_invalidate_refused(f.vtd, invalidate_request(vaddr, 0, (std::uint64_t{1} << 47) - 1, 2), status::range,
                                 "range: beyond the input address size");
    }
}

TEST_CASE("INVALIDATE accepted forms", "[sharing]") {
    invalidate_fixture f;
    auto accepted = [](const binding_t& b, const virtio::req_invalidate& req) {
        auto r = sharing::decode_invalidate(req, b);
        if (!r) FAIL("refused: " << virtio::to_string(r.why().code) << " " << std::string(r.why().field));
        return *r;
    };
    auto v = accepted(f.direct, invalidate_request(vaddr, 0, 0x1000, 0x2000));
    CHECK(v.kind == virtio::invalidate_kind::vaddr);
    CHECK(v.context == 0);
    CHECK(v.first == 0x1000);
    CHECK(v.last == 0x2fff);
    // The whole input space, and its last byte alone.
    const std::uint64_t ias48 = std::uint64_t{1} << 48;
    auto all = accepted(f.direct, invalidate_request(vaddr, 0, 0, ias48));
    CHECK(all.first == 0);
    CHECK(all.last == ias48 - 1);
    auto last = accepted(f.direct, invalidate_request(vaddr, 0, ias48 - 1, 1));
    CHECK(last.first == ias48 - 1);
    CHECK(last.last == ias48 - 1);
    CHECK(accepted(f.vtd, invalidate_request(vaddr, 0, (std::uint64_t{1} << 47) - 1, 1)).last == (std::uint64_t{1} << 47) - 1);
    // Another context of a context table.
    auto ctx = accepted(f.indirect, invalidate_request(vaddr, 3, 0x200000, 0x200000));
    CHECK(ctx.context == 3);
    CHECK(ctx.last == 0x3fffff);
    // SINGLE: the address and size are not looked at.
    auto s = accepted(f.direct, invalidate_request(single, 0, ~std::uint64_t{0}, 0));
    CHECK(s.kind == virtio::invalidate_kind::single);
    CHECK(s.context == 0);
    CHECK(accepted(f.indirect, invalidate_request(single, 2, 0, 0)).context == 2);
    // TABLE on a context table.
    CHECK(accepted(f.indirect, invalidate_request(table, 0, 0, 0)).kind == virtio::invalidate_kind::table);
    // The architecture-specific opaque bytes are ignored.
    auto with_opaque = invalidate_request(vaddr, 0, 0x1000, 0x1000);
    std::fill(std::begin(with_opaque.opaque), std::end(with_opaque.opaque), std::uint8_t{0xff});
    CHECK(accepted(f.direct, with_opaque).last == 0x1fff);
}
