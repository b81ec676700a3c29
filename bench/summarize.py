#!/usr/bin/env python3
"""Turns iopgtable_bench JSON output into the Markdown tables of bench/README.md.

Usage: summarize.py results.json > tables.md

Reads Google Benchmark's JSON (--benchmark_out=FILE --benchmark_out_format=json). With
repetitions, the median aggregate is used; otherwise the single run. Prints: ns per call for
every op and format (fastest batch, and mean), ns per page and the ratio to the store baseline
for the 256-leaf ops, and the goals (single map <= 27 ns, batched map <= 0.75 ns/page, batched
map within 3x of the store baseline) per format, judged on the fastest batch.
"""
import json
import re
import sys

# Linux generic_pt (Jason Gunthorpe's figures, reference/semantics.md section 11) and our goals.
LINUX_MAP_1_NS = 55.0
LINUX_MAP_256_NS_PER_PAGE = 1.5
GOAL_MAP_1_NS = 27.0
GOAL_MAP_256_NS_PER_PAGE = 0.75
GOAL_STORE_RATIO = 3.0

OPS = [
    "store_256",
    "map_1", "unmap_1",
    "map_pages_256", "map_256", "unmap_256",
    "map_block_1", "unmap_block_1",
    "map_pages_block_256", "map_block_256", "unmap_block_256",
    "iova_to_phys_seq", "iova_to_phys_rand",
]
BATCHED = ["store_256", "map_pages_256", "map_256", "unmap_256",
           "map_pages_block_256", "map_block_256", "unmap_block_256"]


def load(path):
    """{format: {op: {"call": ns, "page": ns, "label": str, "block": "2M"}}} and the context."""
    with open(path) as f:
        data = json.load(f)
    has_median = any(b.get("aggregate_name") == "median" for b in data["benchmarks"])
    rows = {}
    for b in data["benchmarks"]:
        if has_median and b.get("aggregate_name") != "median":
            continue
        if b.get("error_occurred"):
            continue
        name = b.get("run_name", b["name"]).replace("/manual_time", "")
        fmt, variant, op = name.rsplit("/", 2)
        block = re.search(r"block(\d+[kMGTP])", op)
        op = re.sub(r"block\d+[kMGTP]", "block", op)
        rows.setdefault(f"{fmt}/{variant}", {})[op] = {
            "call": b["ns_per_call"], "page": b["ns_per_page"],
            "min_call": b["min_ns_per_call"], "min_page": b["min_ns_per_page"], "label": b.get("label", ""),
            "block": block.group(1) if block else None,
        }
    return rows, data.get("context", {})


def fmt_ns(v):
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def main():
    rows, ctx = load(sys.argv[1])
    formats = list(rows)
    print(f"Run: {ctx.get('date', '?')}, {ctx.get('num_cpus', '?')} CPUs at "
          f"{ctx.get('mhz_per_cpu', '?')} MHz, library build: {ctx.get('library_build_type', '?')}.\n")

    print("Configurations (the representative configuration of each format):\n")
    for f in formats:
        label = next(iter(rows[f].values()))["label"]
        blocks = {r["block"] for r in rows[f].values() if r["block"]}
        print(f"- `{f}`: {label}" + (f", block = {', '.join(sorted(blocks))}" if blocks else ""))
    print()

    print("**ns per call: fastest batch (mean)** (block = the format's second page size):\n")
    print("| op | " + " | ".join(formats) + " |")
    print("|---|" + "---:|" * len(formats))
    for op in OPS:
        cells = [f"{fmt_ns(rows[f][op]['min_call'])} ({fmt_ns(rows[f][op]['call'])})" if op in rows[f] else "—"
                 for f in formats]
        print(f"| {op} | " + " | ".join(cells) + " |")
    print()

    print("**ns per page (leaf), fastest batch, and its ratio to the store baseline's fastest batch** "
          "(store_256 = 256 plain stores):\n")
    print("| op | " + " | ".join(formats) + " |")
    print("|---|" + "---:|" * len(formats))
    for op in BATCHED:
        cells = []
        for f in formats:
            if op not in rows[f]:
                cells.append("—")
                continue
            page = rows[f][op]["min_page"]
            store = rows[f].get("store_256")
            cells.append(f"{fmt_ns(page)} ({page / store['min_page']:.1f}×)" if store else fmt_ns(page))
        print(f"| {op} | " + " | ".join(cells) + " |")
    print()

    print(f"**Goals**, on the fastest batch (Linux: {LINUX_MAP_1_NS:.0f} ns per single 4K map, "
          f"{LINUX_MAP_256_NS_PER_PAGE} ns/page for 256×4K in one call):\n")
    print("| format | map_1 ≤ 27 ns | map_pages_256 ≤ 0.75 ns/page | map_256 ≤ 0.75 ns/page | "
          "batched maps ≤ 3× store |")
    print("|---|---|---|---|---|")
    for f in formats:
        r = rows[f]
        if not all(k in r for k in ("store_256", "map_1", "map_pages_256", "map_256")):
            print(f"| {f} | (missing results) | | | |")
            continue
        store = r["store_256"]["min_page"]

        def check(ok, text):
            return ("met " if ok else "**missed** ") + text

        m1 = r["map_1"]["min_call"]
        mp = r["map_pages_256"]["min_page"]
        mr = r["map_256"]["min_page"]
        worst = max(mp, mr) / store
        print(f"| {f} | {check(m1 <= GOAL_MAP_1_NS, f'{m1:.1f} ns ({LINUX_MAP_1_NS / m1:.2f}× Linux)')} "
              f"| {check(mp <= GOAL_MAP_256_NS_PER_PAGE, f'{mp:.2f} ({LINUX_MAP_256_NS_PER_PAGE / mp:.2f}× Linux)')} "
              f"| {check(mr <= GOAL_MAP_256_NS_PER_PAGE, f'{mr:.2f} ({LINUX_MAP_256_NS_PER_PAGE / mr:.2f}× Linux)')} "
              f"| {check(worst <= GOAL_STORE_RATIO, f'{worst:.1f}×')} |")
    print("\n(\"N× Linux\" > 1 means faster than Linux's figure; the goal is ≥ 2×.)")


if __name__ == "__main__":
    main()
