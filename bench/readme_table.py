"""Print the README's benchmark tables from the committed results.

    python bench/readme_table.py     # paste under "What each byte saved costs" and "Growth"
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def recall_memory(name: str) -> None:
    d = json.loads((RESULTS / name / "results.json").read_text())
    labelled = bool(d["dataset"]["n_labelled"])
    head = "| configuration | RAM B/vector | saved vs FP32 | recall@1 | recall@10 | recall@100 |"
    head += " MRR@10 |" if labelled else ""
    print(head + " batch q/s | × raw FAISS | 1-query p50 ms |")
    print("|---|" + "---|" * (head.count("|") - 2 + 3))
    for r in d["records"]:
        mark = " ★" if r["pareto"] else (" ☆" if r["pareto_codes_only"] else "")
        row = (f"| `{r['config']}`{mark} | {r['bytes_per_vector']:g} | {100 * r['saved']:.1f}% "
               f"| {r['recall_at_1']:.3f} | {r['recall_at_10']:.3f} | {r['recall_at_100']:.3f} |")
        row += f" {r['mrr_at_10']:.3f} |" if labelled else ""
        print(row + f" {r['qps']:,.0f} | {r['qvec_vs_faiss']:.2f} | {r['p50_ms']:.2f} |")
    print()


def growth() -> None:
    d = json.loads((RESULTS / "growth.json").read_text())
    print("| vectors | configuration | build s | RAM B/vector | index RAM MB | recall@10 | batch q/s "
          "| 1-query p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in d["records"]:
        n = f"{r['count']:,}" + (" (synthetic)" if "synthetic" in r["data"] else "")
        print(f"| {n} | `{r['config']}` | {r['build_s']:.1f} | {r['bytes_per_vector']:g} "
              f"| {r['ram_index_bytes'] / 1e6:,.1f} | {r['recall_at_10']:.3f} | {r['qps']:,.0f} | {r['p50_ms']:.2f} |")


if __name__ == "__main__":
    recall_memory("gcide")
    if (RESULTS / "growth.json").exists():
        growth()
