// SPDX-License-Identifier: MIT
// A consumer program: maps one 4 KiB page through iopgtable::iopgtable and translates it.
// Exits non-zero when any step does not behave as documented.
#include <iopgtable/iopgtable.hpp>

#include <cstdio>

using namespace iopgtable;
using namespace iopgtable::literals;

int main() {
    host_heap heap;
    auto table = page_table<arm_lpae_s1_4k, host_heap>::create(lpae_config{}, heap);
    if (!table) {
        std::fprintf(stderr, "create: %s\n", to_string(table.error()).data());
        return 1;
    }
    if (auto r = table->map(iova_t{0x1234'5000}, pa_t{0xabc'd000}, 4_KiB, prot::read | prot::write); !r) {
        std::fprintf(stderr, "map: %s\n", to_string(r.error()).data());
        return 1;
    }
    auto pa = table->iova_to_phys(iova_t{0x1234'5678});
    if (!pa || pa->value != 0xabc'd678) {
        std::fprintf(stderr, "iova_to_phys: wrong translation\n");
        return 1;
    }
    std::printf("consumer: iova 0x12345678 -> pa %#llx\n", static_cast<unsigned long long>(pa->value));
    return 0;
}
