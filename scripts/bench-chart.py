"""Draws the Rust/Go ratios of BENCHMARKS.md as a bar chart (docs/bench-ratios.png).

Usage: python3 scripts/bench-chart.py BENCHMARKS.md docs/bench-ratios.png
Every table row whose fourth cell is a number is a ratio (Rust median / Go median).
"""
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def ratios(markdown):
    section, rows = "", []
    for line in open(markdown, encoding="utf-8"):
        if line.startswith("## "):
            section = "host" if "Host role" in line else "plugin" if "Plugin role" in line else ""
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if section and len(cells) >= 4 and re.fullmatch(r"\d+(\.\d+)?", cells[3]):
            name = re.sub(r"\s*\(.*?\)", "", cells[0].replace("**", ""))
            rows.append((f"{section}: {name}", float(cells[3])))
    return rows


def main(markdown, png):
    rows = ratios(markdown)
    if not rows:
        sys.exit(f"no ratio rows in {markdown}")
    labels = [r[0] for r in rows][::-1]
    values = [r[1] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.2))
    colors = ["#2e7d32" if v <= 1.0 else "#c62828" for v in values]
    ax.barh(labels, values, color=colors)
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    for i, v in enumerate(values):
        ax.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=8)
    ax.set_xlabel("Rust / Go (median); below 1.0 the Rust side is faster or smaller")
    ax.set_xlim(0, max(1.2, max(values) + 0.15))
    ax.set_title("goplugin vs go-plugin v1.8.0: Rust / Go, one run")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
