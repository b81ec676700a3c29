#include <catch2/catch.hpp>
#include <iopgtable/iopgtable.hpp>

using namespace iopgtable;

TEST_CASE("a block, a page and a split translate", "[smoke]") {
    host_heap heap;
    lpae_config c;
    auto pt = page_table<arm_lpae_s1_4k, host_heap>::create(c, heap);
    REQUIRE(pt.ok());
    REQUIRE(pt->map(iova_t{0x40000000}, pa_t{0x80000000}, length_t{0x40201000}, prot::read | prot::write).ok());
    CHECK(pt->iova_to_phys(iova_t{0x80200123})->value == 0xc0200123);
    CHECK(pt->unmap(iova_t{0x80000000}, length_t{0x1000}).error() == errc::partial);
    CHECK(pt->unmap(iova_t{0x80000000}, length_t{0x1000}, unmap_mode::split)->value == 0x1000);
    CHECK(!pt->iova_to_phys(iova_t{0x80000000}));
    CHECK(pt->iova_to_phys(iova_t{0x80001008})->value == 0xc0001008);
}
