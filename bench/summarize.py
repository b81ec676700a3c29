#!/usr/bin/env python3
"""Turns iopgtable_bench JSON output into the Markdown tables of bench/README.md, and a chart.

Usage: summarize.py results.json > tables.md
       summarize.py results.json --chart bench/results.svg [--date DATE] [--commit COMMIT]

Reads Google Benchmark's JSON (--benchmark_out=FILE --benchmark_out_format=json). With
repetitions, the median aggregate is used; otherwise the single run. Prints: ns per call for
every op and format (fastest batch, and mean), ns per page and the ratio to the store baseline
for the 256-leaf ops, then one table per other group in the file (nested/..., virtio/...).

--chart FILE also draws one grouped bar chart of the per-format ops (fastest batch; ns per call,
ns per page for the 256-leaf ops), one group per op and one bar per format, log y axis, as SVG.
It needs matplotlib (Debian: python3-matplotlib); the tables do not. The title names the run's
date and commit: --date / --commit, else the JSON context's "date" / "commit" (the run adds the
commit with --benchmark_context=commit=...).
"""
import argparse
import datetime
import json
import re
import sys

OPS = [
    "store_256",
    "map_1", "unmap_1",
    "map_pages_256", "map_256", "unmap_256",
    "map_block_1", "unmap_block_1",
    "map_pages_block_256", "map_block_256", "unmap_block_256",
    "iova_to_phys_seq", "iova_to_phys_rand",
]
# Ops that handle 256 leaves per call: the page figures and the chart use ns per page for them.
BATCHED = ["store_256", "map_pages_256", "map_256", "unmap_256",
           "map_pages_block_256", "map_block_256", "unmap_block_256"]


def load(path):
    """{group: {op: {"call", "page", "min_call", "min_page", "pages", "label", "block",
    "counters"}}} in the file's order, and the JSON context. A group is `<format>/<variant>`
    (e.g. arm-lpae-s1/4k) or `<family>/<variant>` (nested/vtd, virtio/arm)."""
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
        group, variant, op = name.rsplit("/", 2)
        block = re.search(r"block(\d+[kMGTP])", op)
        op = re.sub(r"block\d+[kMGTP]", "block", op)
        rows.setdefault(f"{group}/{variant}", {})[op] = {
            "call": b["ns_per_call"], "page": b["ns_per_page"],
            "min_call": b["min_ns_per_call"], "min_page": b["min_ns_per_page"],
            "pages": b.get("pages_per_call", 1), "label": b.get("label", ""),
            "block": block.group(1) if block else None,
            "counters": {k: b[k] for k in ("accesses_per_walk", "iotlb_hit_rate") if k in b},
        }
    return rows, data.get("context", {})


def split_groups(rows):
    """The page-table formats (every format has store_256), then the other families in order."""
    formats = [g for g in rows if "store_256" in rows[g]]
    others = {}
    for g in rows:
        if g not in formats:
            others.setdefault(g.split("/")[0], []).append(g)
    return formats, others


def fmt_ns(v):
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def run_date(ctx, override):
    """The run's date as "YYYY-MM-DD HH:MM UTC" (or the text given / found, unchanged)."""
    if override:
        return override
    text = ctx.get("date")
    if not text:
        return "date unknown"
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return text
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def print_tables(rows, ctx, date, commit):
    formats, others = split_groups(rows)
    load_avg = ctx.get("load_avg")
    print(f"Run: {date}" + (f", commit {commit}" if commit else "")
          + f", {ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz"
          + (f", load average {' '.join(f'{x:.2f}' for x in load_avg)} at the start" if load_avg else "")
          + f"; libbenchmark built as {ctx.get('library_build_type', '?')}.\n")

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

    for family, groups in others.items():
        columns = [g.split("/", 1)[1] for g in groups]
        ops = list(dict.fromkeys(op for g in groups for op in rows[g]))
        print(f"\n**{family}/: ns per call, per page where a call handles several pages; "
              "fastest batch (mean)**:\n")
        print("| op | " + " | ".join(columns) + " |")
        print("|---|" + "---:|" * len(columns))
        for op in ops:
            first = next(rows[g][op] for g in groups if op in rows[g])
            notes = []
            if first["pages"] > 1:
                notes.append(f"per page, {first['pages']:.0f} per call")
            if "accesses_per_walk" in first["counters"]:
                notes.append(f"{first['counters']['accesses_per_walk']:.0f} accesses")
            rates = [rows[g][op]["counters"]["iotlb_hit_rate"] for g in groups
                     if op in rows[g] and "iotlb_hit_rate" in rows[g][op]["counters"]]
            if rates and max(rates) < 1:
                shown = list(dict.fromkeys(f"{r:.0%}" for r in rates))
                notes.append("IOTLB hit rate " + " / ".join(shown))
            cells = []
            for g in groups:
                r = rows[g].get(op)
                key = "page" if r and r["pages"] > 1 else "call"
                cells.append(f"{fmt_ns(r['min_' + key])} ({fmt_ns(r[key])})" if r else "—")
            print(f"| {op}" + (f" ({'; '.join(notes)})" if notes else "") + " | " + " | ".join(cells) + " |")


def import_pyplot():
    """matplotlib.pyplot on the Agg backend, or exits with a message naming the package."""
    try:
        import matplotlib
    except ImportError:
        sys.exit(f"summarize.py: --chart needs matplotlib, which {sys.executable} cannot import.\n"
                 "On Debian install the package python3-matplotlib (bash scripts/deps.sh "
                 "python3-matplotlib) and run this with Debian's /usr/bin/python3; the tables "
                 "work without --chart.")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (draw_chart uses matplotlib.ticker)
    return matplotlib, plt


def draw_chart(rows, path, date, commit, matplotlib, plt):
    formats, _ = split_groups(rows)
    ops = [op for op in OPS if any(op in rows[f] for f in formats)]
    matplotlib.rcParams["svg.hashsalt"] = "iopgtable"  # stable element ids: small diffs in git
    fig, ax = plt.subplots(figsize=(15, 6.5))
    width = 0.85 / len(formats)
    colors = plt.get_cmap("tab10").colors
    for i, f in enumerate(formats):
        xs, ys = [], []
        for j, op in enumerate(ops):
            if op in rows[f]:
                xs.append(j - 0.425 + (i + 0.5) * width)
                ys.append(rows[f][op]["min_page" if op in BATCHED else "min_call"])
        ax.bar(xs, ys, width, label=f, color=colors[i % len(colors)],
               hatch="//" if i >= len(colors) else None)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(range(len(ops)))
    ax.set_xticklabels([op + ("\nper page" if op in BATCHED else "\nper call") for op in ops],
                       rotation=35, ha="right", rotation_mode="anchor", fontsize=9)
    ax.set_xlim(-0.6, len(ops) - 0.4)
    ax.set_ylabel("ns, fastest batch (log scale):\nper call; per page for the 256-leaf ops (…_256)")
    ax.grid(axis="y", which="both", linewidth=0.4, alpha=0.5)
    ax.set_axisbelow(True)
    ax.legend(ncol=3, fontsize=9, loc="upper left")
    ax.set_title("iopgtable_bench, fastest batch per format: " + date + (f", commit {commit}" if commit else ""))
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description="Markdown tables (and a chart) from iopgtable_bench JSON.")
    parser.add_argument("results", help="Google Benchmark JSON (--benchmark_out_format=json)")
    parser.add_argument("--chart", metavar="FILE", help="also write the grouped bar chart as SVG to FILE")
    parser.add_argument("--date", help="the run's date for the output (default: the JSON context's date)")
    parser.add_argument("--commit", help="the commit measured (default: the JSON context's commit)")
    args = parser.parse_args()

    plotting = import_pyplot() if args.chart else None  # fail before printing anything
    rows, ctx = load(args.results)
    date = run_date(ctx, args.date)
    commit = args.commit or ctx.get("commit")
    print_tables(rows, ctx, date, commit)
    if plotting:
        draw_chart(rows, args.chart, date, commit, *plotting)


if __name__ == "__main__":
    main()
