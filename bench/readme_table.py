"""Print the README's benchmark table from bench/results/core.json.

    python bench/readme_table.py     # paste the output under "What each byte saved costs"
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    d = json.loads((RESULTS / "core.json").read_text())
    print("| configuration | RAM bytes/vector (measured) | of FP32 | recall@10 vs exact FP32 | batch queries/s "
          "| × raw FAISS | 1-query p50 / p99 ms | 1-query ms: no filter / 10% filter |")
    print("|---|---|---|---|---|---|---|---|")
    for r in d["records"]:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        cfg = f"{r['quantization']} / {r['index']}" + (" + rescore" if r["rescore"] else "")
        if params and not r["rescore"]:
            cfg += f" ({params})"
        print(f"| {cfg} | {r['bytes_per_vector']:g} | {100 * r['fp32_fraction']:.1f}% | {r['recall_at_10']:.3f} "
              f"| {r['qps']:,.0f} | {r['qvec_vs_faiss']:.2f} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} "
              f"| {r['single_query_ms_unfiltered']:.2f} / {r['single_query_ms_filter_10pct']:.2f} |")


if __name__ == "__main__":
    main()
