"""Draws the Rust/Go ratios of BENCHMARKS.md as a bar chart (docs/bench-ratios.png).

Usage: python3 scripts/bench-chart.py BENCHMARKS.md docs/bench-ratios.png

Every table row whose fourth cell is a number is a ratio (Rust median / Go median; for the
logmon "relative to cat" row, Rust / cat). Rows come from the plugin-role, host-role, executor
and logmon sections; an executor or logmon section is labelled with the Nomad version in its
heading. A bar is green when the row's Met cell says yes, red when it says no, grey otherwise
(host role: green at or below 1.0); the row's target (Target cell, "≤ X" or "≥ X") is drawn as a
black tick on its bar.
"""
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def section_of(heading):
    if "Host role" in heading:
        return "host"
    if "Plugin role" in heading:
        return "plugin"
    for helper in ("executor", "logmon"):
        if heading.startswith(f"## {helper}"):
            version = re.search(r"v\d+\.\d+\.\d+", heading)
            return f"{helper} {version.group(0)}" if version else helper
    return ""


def ratios(markdown):
    section, rows = "", []
    for line in open(markdown, encoding="utf-8"):
        if line.startswith("## "):
            section = section_of(line)
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not section or len(cells) < 4 or not re.fullmatch(r"\d+(\.\d+)?", cells[3]):
            continue
        name = re.sub(r"\s*\(.*?\)", "", cells[0].replace("**", "").replace("`", ""))
        name = re.sub(r", median of \d+", "", name)
        value = float(cells[3])
        target = None
        met = None
        if len(cells) >= 6:
            m = re.search(r"([≤≥])\s*(\d+(\.\d+)?)", cells[4])
            if m:
                target = (m.group(1), float(m.group(2)))
            met = cells[5]
        rows.append((f"{section}: {name}", value, target, met))
    return rows


def main(markdown, png):
    rows = ratios(markdown)
    if not rows:
        sys.exit(f"no ratio rows in {markdown}")
    rows = rows[::-1]
    labels = [r[0] for r in rows]
    values = [r[1] for r in rows]
    colors = []
    for _, v, _, met in rows:
        if met is None:
            colors.append("#2e7d32" if v <= 1.0 else "#c62828")
        elif met.startswith("yes"):
            colors.append("#2e7d32")
        elif met.startswith("no") or met.startswith("within"):
            colors.append("#c62828")
        else:
            colors.append("#9e9e9e")
    fig, ax = plt.subplots(figsize=(11, 0.3 * len(rows) + 1.4))
    ax.barh(range(len(rows)), values, color=colors, height=0.7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    # Past 2.0 the bars are cut at the edge (their figures are still printed).
    xmax = min(max(1.2, max(values) + 0.2), 2.0)
    for i, (_, v, target, _) in enumerate(rows):
        text = f"{v:.3f}" if v < 0.2 else f"{v:.2f}"
        ax.text(min(v, xmax - 0.15) + 0.01, i, text, va="center", fontsize=7)
        if target:
            ax.plot([target[1], target[1]], [i - 0.4, i + 0.4], color="black", linewidth=1.5)
    ax.set_xlabel(
        "Rust / Go (median); green: target met, red: missed, grey: no target; tick: the target"
    )
    ax.set_xlim(0, xmax)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_title("goplugin vs go-plugin v1.8.0 and Nomad's Go helpers: Rust / Go, one run")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
