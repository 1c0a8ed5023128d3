"""Cold starts: how long `qvec search STORE "a text"` takes in a new process, at each model
precision, beside `qvec info` (which embeds nothing), and what each imports.

    python bench/cold_start.py     # writes bench/results/cold_start.{json,md}

Two stores of 200 Debian fortunes (python bench/prepare.py fortunes), built with the model at
FP32 and at INT8 (the INT8 export is made once, into $QVEC_CACHE, before timing). Each
command runs 7 times in a fresh interpreter; the median wall time is reported, with whether
torch and sentence-transformers were imported (python -X importtime).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import RESULTS

import qvec
from qvec.bench import machine

HERE = Path(__file__).parent
RUNS = 7


def docs() -> list[str]:
    rows = [json.loads(line) for line in (HERE / "data" / "fortunes" / "docs.jsonl").open()]
    return [r["text"] for r in rows[:200]]


def timed(args: list[str]) -> dict:
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    walls = []
    for _ in range(RUNS):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "qvec", *args], capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t)
        if r.returncode:
            raise SystemExit(r.stderr)
    imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "qvec", *args], capture_output=True,
                             text=True, env=env).stderr
    names = {line.split("|")[-1].strip() for line in imports.splitlines() if "|" in line}
    return {"median_s": round(statistics.median(walls), 2), "min_s": round(min(walls), 2),
            "imports_torch": "torch" in names, "imports_sentence_transformers": "sentence_transformers" in names}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="qvec-cold-"))
    texts = docs()
    rows = []
    for precision in ("int8", "fp32"):
        path = tmp / f"{precision}.qvec"
        with qvec.open(path, model_precision=precision) as s:
            s.add(texts, ids=[str(i) for i in range(len(texts))])
        rows.append({"command": f"qvec search STORE TEXT ({precision} model)",
                     **timed(["search", str(path), "a fortune about computers and luck", "-k", "3"])})
    rows.append({"command": "qvec info STORE", **timed(["info", str(path)])})
    shutil.rmtree(tmp, ignore_errors=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "runs": RUNS, "rows": rows}
    (RESULTS / "cold_start.json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = ["# Cold starts: a command in a new process", "",
             f"Median of {RUNS} runs, wall time including the interpreter's start. Machine: {m['cpu']}, "
             f"{m['cores']} cores; faiss {m['faiss']}, qvec {m['qvec']}. Run {result['date']}. "
             "Script: bench/cold_start.py.", "",
             "| command | median s | min s | imports torch | imports sentence-transformers |", "|---|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['median_s']} | {r['min_s']} | {r['imports_torch']} | "
              f"{r['imports_sentence_transformers']} |" for r in rows]
    (RESULTS / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
