"""What checking each original vector's checksum costs when rescoring reads it.

100,000 random 384-d rows written through ``Originals.write`` (rows + checksums), then read
warm (page cache) with ``verify=True`` and ``verify=False``, alternating, best of many:
40 scattered rows (one query's candidates at k=10, oversample 4), 4,000 scattered rows
(a batch's, read run by run) and 33,000 rows (a big batch's, read through the memory map).
Writes results/originals_checksum.{json,md}.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from qvec.bench import machine
from qvec.originals import Originals, row_sums

RESULTS = Path(__file__).parent / "results"


def best(fn, repeat: int) -> float:
    b = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        b = min(b, time.perf_counter() - t)
    return b


def main():
    n, dim = 100_000, 384
    rng = np.random.default_rng(0)
    path = Path(tempfile.mkdtemp()) / "originals.f32"
    for a in range(0, n, 10_000):
        Originals(path, dim).write(a, rng.standard_normal((10_000, dim)).astype(np.float32))
    checked, unchecked = Originals(path, dim), Originals(path, dim, verify=False)
    cases = {"40 scattered rows": (rng.choice(n, 40, replace=False), 2000),
             "4,000 scattered rows": (rng.choice(n, 4000, replace=False), 200),
             "33,000 rows (memory map)": (rng.choice(n, 33_000, replace=False), 20)}
    rows = []
    for name, (fids, repeat) in cases.items():
        on = off = float("inf")
        for _ in range(3):  # alternate, so that a noisy moment hits both
            off = min(off, best(lambda f=fids: unchecked.read(f), repeat))
            on = min(on, best(lambda f=fids: checked.read(f), repeat))
        rows.append({"read": name, "unchecked_ms": round(1000 * off, 4), "checked_ms": round(1000 * on, 4),
                     "overhead": round(on / off - 1, 3)})
    x = rng.standard_normal((10_000, dim)).astype(np.float32)
    sums_ms = round(1000 * best(lambda: row_sums(x), 50), 3)
    shutil.rmtree(path.parent, ignore_errors=True)
    out = {"machine": machine(), "n": n, "dim": dim, "reads": rows, "row_sums_10k_rows_ms": sums_ms}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "originals_checksum.json").write_text(json.dumps(out, indent=1))
    md = ["# Checking originals' checksums on read", "",
          f"{n:,} × {dim} FP32 rows, warm page cache. Machine: {json.dumps(out['machine'])}", "",
          "| read | unchecked ms | checked ms | overhead |", "|---|---|---|---|"]
    md += [f"| {r['read']} | {r['unchecked_ms']} | {r['checked_ms']} | {100 * r['overhead']:+.0f}% |" for r in rows]
    md += ["", f"Computing the checksums of 10,000 rows (done once per write): {sums_ms} ms.", ""]
    (RESULTS / "originals_checksum.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
