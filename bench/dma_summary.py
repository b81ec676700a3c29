#!/usr/bin/env python3
"""The DMA-workload table of bench/README.md ("DMA workloads: the fast protocol"), and its chart.

Usage: iopgtable_bench --benchmark_filter='^dma/' --benchmark_out=dma.json --benchmark_out_format=json
       dma_summary.py dma.json [--chart bench/dma.svg]

One row per shape and mode: requests, descriptors and IOTLB invalidations per DMA page, ns per
DMA page (fastest batch, then the mean), and the fastest batch's speed-up over strict MAP/UNMAP
of the same shape (strict ns / mode ns). --chart needs matplotlib (python3-matplotlib).
"""
import argparse
import json

MODES = ["strict", "relaxed", "map_sg", "grouped", "relaxed_map_sg"]


def load(path):
    with open(path) as f:
        doc = json.load(f)
    rows = {}
    for b in doc["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        parts = b["name"].split("/")
        if len(parts) < 3 or parts[0] != "dma":
            continue
        rows[(parts[1], parts[2])] = b
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--chart")
    a = ap.parse_args()
    rows = load(a.json)
    shapes = []
    for shape, _ in rows:
        if shape not in shapes:
            shapes.append(shape)
    print("| shape | mode | requests / page | descriptors / page | invalidations / page | ns / page, fastest (mean) | × strict |")
    print("|---|---|---:|---:|---:|---:|---:|")
    speed = {}
    for shape in shapes:
        strict = rows.get((shape, "strict"))
        for mode in MODES:
            b = rows.get((shape, mode))
            if b is None:
                continue
            x = strict["min_ns_per_page"] / b["min_ns_per_page"] if strict else float("nan")
            speed[(shape, mode)] = b["min_ns_per_page"]
            print(f"| {shape} | {mode} | {b['requests']:.3g} | {b['descriptors']:.3g} | {b['invalidations']:.3g} | "
                  f"{b['min_ns_per_page']:.0f} ({b['ns_per_page']:.0f}) | {x:.2f} |")
    if a.chart:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / len(MODES)
        for i, mode in enumerate(MODES):
            xs = [j + i * width for j in range(len(shapes))]
            ys = [speed.get((s, mode), 0) for s in shapes]
            ax.bar(xs, ys, width, label=mode)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
        ax.set_xticklabels(shapes)
        ax.set_ylabel("ns per DMA page (fastest batch)")
        ax.set_title("DMA through the virtio-iommu requestq: strict vs the fast protocol")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.chart)


if __name__ == "__main__":
    main()
