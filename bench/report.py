"""Tables on the terminal, ratios, the JSON file and the PNG plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.measure import Phase

BASELINES = ("naive", "postfix")


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def table(phases: list[Phase]) -> str:
    head = ("system", "size", "msgs", "ok/lost", "acc/s", "dlv/s", "p50 ms", "p99 ms",
            "CPU ms/msg", "(db)", "RSS MB", "PSS MB", "harness", "other")
    rows = [head]
    for p in phases:
        rows.append((p.system, p.size, str(p.messages),
                     f"{p.delivered}/{p.messages - p.delivered}",
                     _f(p.accepted_per_s), _f(p.delivered_per_s), _f(p.latency_p50_ms),
                     _f(p.latency_p99_ms), _f(p.cpu_ms_per_msg, 2),
                     _f(p.db_cpu_s * 1000 / max(p.delivered, 1), 2), _f(p.peak_rss_mb, 0),
                     _f(p.peak_pss_mb, 0), _f(p.harness_cpu_ms_per_msg, 2),
                     _f(p.other_load_cores, 2)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def ratios(phases: list[Phase]) -> list[dict[str, Any]]:
    """Each mailveil system against each baseline, per size: throughput and costs."""
    out = []
    by = {(p.system, p.size): p for p in phases}
    for p in phases:
        if "mailveil" not in p.system:
            continue
        for base in BASELINES:
            b = by.get((base, p.size))
            if b is None or not b.delivered_per_s or not b.cpu_ms_per_msg:
                continue
            out.append({
                "system": p.system, "vs": base, "size": p.size,
                "delivered_per_s": p.delivered_per_s / b.delivered_per_s,
                "accepted_per_s": p.accepted_per_s / max(b.accepted_per_s, 1e-9),
                "cpu_per_msg": p.cpu_ms_per_msg / b.cpu_ms_per_msg,
                "peak_rss": p.peak_rss_mb / max(b.peak_rss_mb, 1e-9),
                "peak_pss": p.peak_pss_mb / max(b.peak_pss_mb, 1e-9),
            })
    return out


def on_top_of_postfix(phases: list[Phase]) -> list[str]:
    """What Postfix in front of mailveil costs beside plain Postfix, per size: the operator's
    question when the MX is already Postfix."""
    by = {(p.system, p.size): p for p in phases}
    out = []
    for p in phases:
        b = by.get(("postfix", p.size))
        if not p.system.startswith("postfix-mailveil") or b is None or not b.delivered_per_s:
            continue
        out.append(f"{p.system} [{p.size}]: {p.delivered_per_s / b.delivered_per_s:.2f}x "
                   f"Postfix's delivered/s, +{p.cpu_ms_per_msg - b.cpu_ms_per_msg:.2f} ms CPU "
                   f"per message ({p.cpu_ms_per_msg:.2f} against {b.cpu_ms_per_msg:.2f}), "
                   f"+{p.peak_pss_mb - b.peak_pss_mb:.0f} MB peak PSS")
    return out


def fill_ratios(phases: list[Phase]) -> list[dict[str, Any]]:
    """A filled database's delivered msg/s against the same system on an empty one."""
    by = {(p.system, p.size): p for p in phases}
    out = []
    for p in phases:
        base_name, plus, _ = p.system.partition("+")
        empty = by.get((base_name, p.size)) if plus else None
        if empty is not None and empty.delivered_per_s:
            out.append({"system": p.system, "size": p.size,
                        "delivered_per_s": p.delivered_per_s / empty.delivered_per_s,
                        "cpu_per_msg": p.cpu_ms_per_msg / max(empty.cpu_ms_per_msg, 1e-9)})
    return out


def ratio_table(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
    lines = []
    for r in rows:
        vs = f" vs {r['vs']}" if "vs" in r else " vs empty"
        figures = "  ".join(f"{k}={r[k]:.2f}x" for k in keys)
        lines.append(f"{r['system']}{vs} [{r['size']}]: {figures}")
    return "\n".join(lines)


def write_json(path: Path, meta: dict[str, Any], phases: list[Phase]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**meta, "phases": [asdict(p) for p in phases], "ratios": ratios(phases),
           "on_top_of_postfix": on_top_of_postfix(phases), "fill_ratios": fill_ratios(phases)}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def plot(path: Path, phases: list[Phase]) -> bool:
    """Delivered msg/s and CPU ms per message, one group of bars per size; False when
    matplotlib is missing (``pip install matplotlib``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = list(dict.fromkeys(p.size for p in phases))
    systems = list(dict.fromkeys(p.system for p in phases))
    by = {(p.system, p.size): p for p in phases}
    fig, axes = plt.subplots(2, len(sizes), figsize=(3.2 * len(sizes) + 1, 6), squeeze=False)
    for col, size in enumerate(sizes):
        for row, (attr, label) in enumerate((("delivered_per_s", "delivered msg/s"),
                                             ("cpu_ms_per_msg", "CPU ms / msg"))):
            ax = axes[row][col]
            values = [getattr(by[(s, size)], attr) if (s, size) in by else 0.0 for s in systems]
            ax.bar(range(len(systems)), values, color=[f"C{i}" for i in range(len(systems))])
            ax.set_xticks(range(len(systems)), systems, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{size}: {label}", fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
