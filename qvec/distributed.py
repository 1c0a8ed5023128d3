"""qvec on Ray (``pip install "qvec[ray]"``): sharded builds and fan-out search.

A build (``build``, ``qvec build STORE INPUT --shards N --ray [ADDRESS]``) runs the shape
Lance, autofaiss and the Qdrant/Milvus writers share:

1. Ray Data reads the inputs (JSONL, CSV, plain text and .npy/.fvecs with their side file
   through qvec's own readers, a task per file or block; Parquet through Ray's reader) into
   rows of id, text, metadata (JSON) and, for vector inputs, the vector.
2. Texts are embedded by ``map_batches`` over a pool of actors, each loading the model once.
3. The codes are trained once, on a random sample, in the driver, written to
   ``codes.qvec-codes`` and broadcast: every shard gets the same scales, codebooks,
   rotations and centroids (``TrainedCodes``), so shard scores compare.
4. One writer actor per shard encodes and commits its rows (``shard_of(id)``) into a complete
   qvec store. A writer that dies is restarted by Ray and its call retried; a write is
   idempotent (ids already stored are skipped), so a retry never stores a row twice.
5. The manifest ``shards.json`` is written last, atomically. Until then ``qvec.open`` says the
   build is unfinished, and running the same build again resumes it: the trained codes
   are read back, stored ids are dropped before they are embedded, the rest is written.

Searching through Ray (``qvec.open(STORE, ray=ADDRESS)``) puts one actor on each shard; a
query goes to all of them and their top k merge in the caller (``qvec.shards``).

The store directory must be reachable at the same path by every node (a shared file
system), as a Lance or Parquet dataset's would be.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Requested
from .errors import InputFileError, InvalidInput, SettingsConflict
from .formats import VECTOR_SUFFIXES
from .index import TrainedCodes, VectorIndex, empty_index
from .inputs import normalised
from .shards import (
    BUILD_STATE,
    CODES_FILE,
    MANIFEST,
    RayShards,
    _unwrap,
    _write_atomic,
    connect,
    read_manifest,
    shard_dirs,
    shard_of,
    write_manifest,
)

__all__ = ["build", "BuildResult", "RayShards", "connect"]

VECTOR_BLOCK = 65_536  # rows of a vector file one read task makes
IN_FLIGHT = 2  # write calls queued per shard writer: backpressure on the driver


# -- reading -------------------------------------------------------------------------------------
def _read_text_file(item: dict, text_field: str, id_field: str, metadata_fields: str | None):
    from .sources import read_records
    for rid, text, meta, vector in read_records(item["path"], text_field, id_field, metadata_fields):
        if vector is not None:
            raise InputFileError(f"{Path(item['path']).name}: records with their own vectors are read by single-store "
                                 "builds (no --shards); for a sharded build, save the vectors as .npy with a .jsonl "
                                 "side file")
        yield {"id": rid, "text": text, "meta": json.dumps(meta) if meta else ""}


def _read_vector_block(item: dict):
    from .formats import read_vectors
    path = Path(item["path"])
    x = np.load(path, mmap_mode="r", allow_pickle=False) if path.suffix == ".npy" else read_vectors(path)
    a, b = item["start"], item["stop"]
    side = path.with_suffix(".jsonl")
    rows = None
    if side.exists():
        from .sources import read_jsonl
        with side.open(encoding="utf-8") as f:
            rows = [r for i, (_, r) in enumerate(read_jsonl(f, side.name)) if a <= i < b]
    for j, i in enumerate(range(a, min(b, len(x)))):
        r = rows[j] if rows else {}
        meta = r.get("metadata") or {}
        yield {"id": str(r.get("id", f"{path.name}:{i}")), "text": r.get("text") or "",
               "meta": json.dumps(meta) if meta else "", "vector": np.asarray(x[i], dtype=np.float32), "own": True}


def _vector_rows(path: str) -> int:
    from .formats import read_vectors
    p = Path(path)
    try:
        x = np.load(p, mmap_mode="r", allow_pickle=False) if p.suffix == ".npy" else read_vectors(p)
    except (OSError, ValueError, InvalidInput) as e:
        raise InputFileError(f"not a readable vector file: {e}") from None
    if x.ndim != 2:
        raise InputFileError(f"{p.name}: expected a 2-D array of vectors, got shape {x.shape}")
    side = p.with_suffix(".jsonl")
    if side.exists():
        with side.open(encoding="utf-8") as f:
            n_side = sum(1 for line in f if line.strip())
        if n_side != len(x):
            raise InputFileError(f"{side.name} has {n_side} rows for {len(x)} vectors in {p.name}")
    return len(x)


def _dataset(ray, inputs: Sequence[str], text_field: str, id_field: str, metadata_fields: str | None):
    """(dataset of rows, whether they carry vectors, rows in total or None)."""
    vec = [p for p in inputs if p.lower().endswith(VECTOR_SUFFIXES)]
    parquet = [p for p in inputs if p.lower().endswith(".parquet")]
    text = [p for p in inputs if p not in vec and p not in parquet]
    if vec and (text or parquet):
        raise InvalidInput("a sharded build reads vectors or texts, not both in one run: build them one after another")
    if any(p.lower().endswith((".hdf5", ".h5")) for p in vec):
        raise InvalidInput("a sharded build reads .npy, .fvecs and .bvecs vectors: save the HDF5 train set as .npy")
    if vec:
        blocks = []
        total = 0
        for p in vec:
            n = _vector_rows(p)
            total += n
            blocks += [{"path": str(Path(p).resolve()), "start": a, "stop": min(a + VECTOR_BLOCK, n)}
                       for a in range(0, n, VECTOR_BLOCK)]
        return ray.data.from_items(blocks, override_num_blocks=len(blocks)).flat_map(_read_vector_block, num_cpus=0), \
            True, total
    parts = []
    if text:
        items = [{"path": str(Path(p).resolve())} for p in text]
        parts.append(ray.data.from_items(items, override_num_blocks=len(items)).flat_map(
            _read_text_file, num_cpus=0, fn_kwargs={"text_field": text_field, "id_field": id_field,
                                                    "metadata_fields": metadata_fields}))
    if parquet:
        # read like the text files: a task per file that reserves no CPU. Ray Data's own Parquet
        # reader waits for a CPU the embedding actors hold, and would wait for ever
        items = [{"path": str(Path(p).resolve())} for p in parquet]
        parts.append(ray.data.from_items(items, override_num_blocks=len(items)).flat_map(
            _read_parquet_file, num_cpus=0, fn_kwargs={"text_field": text_field, "id_field": id_field,
                                                       "metadata_fields": metadata_fields}))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    total = None
    if not parquet:
        total = 0
        for p in text:
            with open(p, "rb") as f:
                total += sum(1 for _ in f) - p.lower().endswith(".csv")
    return ds, False, total


def _read_parquet_file(item: dict, text_field: str, id_field: str, metadata_fields: str | None):
    import pyarrow.parquet as pq
    try:
        f = pq.ParquetFile(item["path"])
    except (OSError, ValueError) as e:
        raise InputFileError(f"{item['path']}: not a readable Parquet file ({e})") from None
    for batch in f.iter_batches(batch_size=4096):
        yield from _parquet_rows(batch.to_pandas(), text_field, id_field, metadata_fields).to_dict("records")


def _parquet_rows(df, text_field: str, id_field: str, metadata_fields: str | None):
    import pandas as pd
    if text_field not in df.columns:
        raise InputFileError(f"Parquet input has no column {text_field!r} (it has {', '.join(map(str, df.columns))}): "
                             "use --text-field")
    ids = df[id_field].astype(str) if id_field in df.columns else None
    if ids is None:
        raise InputFileError(f"Parquet input has no column {id_field!r}: give each row an id (--id-field); a sharded "
                             "build must know a row's id to resume")
    if metadata_fields == "all":
        keep = [c for c in df.columns if c not in (text_field, id_field)]
    else:
        keep = [c for c in (metadata_fields.split(",") if metadata_fields else []) if c in df.columns]
    metas = [json.dumps({c: _plain(v) for c, v in zip(keep, row)}) if keep else ""
             for row in df[keep].itertuples(index=False)] if keep else [""] * len(df)
    return pd.DataFrame({"id": ids, "text": df[text_field].astype(str), "meta": metas})


def _plain(v):
    return v.item() if hasattr(v, "item") else v


# -- stages ----------------------------------------------------------------------------------------
class SkipStored:
    """Drops rows whose id its shard stores already (a resumed build): before embedding them."""

    def __init__(self, path: str, n: int):
        self.path, self.n = Path(path), n
        self._stores: dict = {}

    def _stored(self, shard: int, ids: list[str]) -> set[str]:
        """Ids a shard held when this build began: a snapshot, read beside its writer."""
        from .journal import DB_FILE
        from .store import open as open_store
        d = self.path / shard_dirs(self.n)[shard]
        if shard not in self._stores:
            self._stores[shard] = open_store(d, create=False, read_only=True) if (d / DB_FILE).exists() else None
        s = self._stores[shard]
        return s.existing(ids) if s is not None else set()

    def __call__(self, batch: dict) -> dict:
        ids = [str(i) for i in batch["id"]]
        by: dict[int, list[str]] = {}
        for i in ids:
            by.setdefault(shard_of(i, self.n), []).append(i)
        stored = set().union(set(), *(self._stored(s, part) for s, part in by.items()))
        keep = np.array([i not in stored for i in ids], dtype=bool)
        return {k: np.asarray(v)[keep] for k, v in batch.items()}


class Embed:
    """The embedding model, loaded once per actor."""

    def __init__(self, model: str, precision: str, threads: int):
        from .embedder import SentenceTransformerEmbedder
        if precision == "fp32":
            import torch
            torch.set_num_threads(max(1, threads))
        self.embedder = SentenceTransformerEmbedder(model, precision)

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        batch["vector"] = self.embedder.embed(texts) if texts else np.zeros((0, 0), np.float32)
        return batch


class ShardWriter:
    """One shard's writer: opens (or creates) the shard with the shared codes and commits
    batches to it. Its calls are idempotent: ids already stored are skipped."""

    def __init__(self, path: str, codes: bytes):
        from .store import open as open_store
        c = TrainedCodes.from_bytes(codes, "the broadcast codes")
        # a killed writer's lock goes with its process: its restart waits for nothing else
        self.store = open_store(path, lock_timeout=60)
        if self.store.settings is None or not self.store.is_trained:
            self.store.train(codes=c)  # the shared codes, and the settings they were trained for
        elif self.store.settings != c.settings:
            raise SettingsConflict(f"{path} holds other codes than the build's: it is not a shard of this store")

    def write(self, batch: dict) -> tuple[int, int]:
        ids = [str(i) for i in batch["id"]]
        have = self.store.existing(ids)
        seen: set[str] = set()
        keep = [j for j, i in enumerate(ids) if i not in have and i not in seen and not seen.add(i)]
        if keep:
            texts = [str(batch["text"][j]) for j in keep]
            metas = [json.loads(batch["meta"][j]) if batch["meta"][j] else {} for j in keep]
            # vector files' rows are the caller's vectors; text rows were embedded by the build
            own = [bool(batch["own"][j]) for j in keep] if "own" in batch else [False] * len(keep)
            self.store._write(texts if all(texts) else None, np.asarray(batch["vector"])[keep], [ids[j] for j in keep],
                              metas, own, upsert=False)
        return len(ids), len(keep)

    def pid(self) -> int:
        return os.getpid()

    def finish(self) -> int:
        n = len(self.store)
        self.store.close()
        return n


# -- the build ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildResult:
    path: str
    shards: int
    count: int
    added: int
    skipped: int
    seconds: float
    bytes_per_vector: float | None

    @property
    def docs_per_s(self) -> float:
        return self.added / self.seconds if self.seconds else 0.0


def build(store: str | os.PathLike, inputs: Sequence[str], *, shards: int, address: str | None = None,
          quantization: str | None = None, index: str | None = None, metric: str | None = None,
          model: str | None = None, model_precision: str | None = None, rescore=None, text_field: str = "text",
          id_field: str = "id", metadata_fields: str | None = None, batch_size: int = 256,
          workers: int | None = None, train_size: int | None = None, progress: bool = True) -> BuildResult:
    """Build (or extend, or resume) the sharded store ``store`` from ``inputs`` on Ray (see
    the module docstring). ``workers``: embedding actors (default: one per 2 CPUs of the
    cluster, at least 1); ``train_size``: vectors the codes train on (default: as many as
    one store's training reads, ``index.TRAIN_SAMPLE``)."""
    from .embedder import DEFAULT_MODEL, check_model_precision
    from .index import TRAIN_SAMPLE

    t0 = time.perf_counter()
    path = Path(store)
    if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= 4096:
        raise InvalidInput(f"shards must be an integer from 1 to 4096, got {shards!r}")
    if not inputs:
        raise InvalidInput("nothing to build from: name one or more input files")
    for p in inputs:
        if not Path(p).is_file():
            hint = " (a sharded build reads files, not stdin)" if p == "-" else ""
            raise InputFileError(f"{p}: no such file{hint}")
    if model_precision is not None:
        check_model_precision(model_precision)
    requested = Requested.parse(quantization=quantization, index=index, metric=metric, rescore=rescore, model=model,
                                dim=None, range_stat=None)
    if (path / "qvec.sqlite").exists():
        raise SettingsConflict(f"{path} is a single store: a sharded build needs a new directory")
    codes = _existing_codes(path, shards, requested)
    ray, started = connect(address)
    try:
        from ray.data import ActorPoolStrategy, DataContext
        for name in ("ray", "ray.data"):  # configured by ray.data's import; its errors reach us as QvecErrors
            logging.getLogger(name).setLevel(logging.CRITICAL)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # one bar for the whole build, below
        ctx.print_on_execution_start = False
        path.mkdir(parents=True, exist_ok=True)
        if not (path / MANIFEST).exists() and not (path / BUILD_STATE).exists():
            _write_atomic(path / BUILD_STATE, json.dumps({"shards": shards, "requested": requested.given}).encode())
        ds, has_vectors, total = _dataset(ray, list(inputs), text_field, id_field, metadata_fields)
        resuming = any((path / d).exists() for d in shard_dirs(shards))
        if resuming:
            ds = ds.map_batches(SkipStored, fn_constructor_kwargs={"path": str(path), "n": shards},
                                compute=ActorPoolStrategy(size=1), batch_format="numpy", num_cpus=0)
        precision = model_precision or (codes.settings.model_precision if codes else "fp32")
        model_name = codes.settings.model if codes else requested.given.get("model", DEFAULT_MODEL)
        if not has_vectors:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            pool = workers or max(1, cpus // 2)
            threads = max(1, cpus // pool)
            ds = ds.map_batches(Embed, fn_constructor_kwargs={"model": model_name, "precision": precision,
                                                              "threads": threads},
                                batch_size=batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=pool),
                                num_cpus=threads)
        if codes is None:
            if not has_vectors:
                ds = ds.materialize()  # embedded once; Ray spills what its memory cannot hold
            codes = _train(ds, requested, precision, model_name if not has_vectors else requested.given.get("model"),
                           train_size or TRAIN_SAMPLE)
            _write_atomic(path / CODES_FILE, codes.to_bytes())
        added, skipped, count = _write_shards(ray, ds, path, shards, codes, batch_size, total if not resuming else None,
                                              progress)
        if resuming and total is not None:  # rows SkipStored dropped never reached a writer
            skipped = total - added
        write_manifest(path, codes.settings, shards, codes)
        (path / BUILD_STATE).unlink(missing_ok=True)
    except ray.exceptions.RayError as e:
        raise _unwrap(e) from None
    finally:
        if started:
            ray.shutdown()
    bpv = _bytes_per_vector(path)
    return BuildResult(str(path), shards, count, added, skipped, time.perf_counter() - t0, bpv)


def _existing_codes(path: Path, shards: int, requested: Requested) -> TrainedCodes | None:
    """The codes a finished or interrupted build trained (its shard count checked), or None."""
    if (path / MANIFEST).exists():
        m = read_manifest(path)
        if len(m["shards"]) != shards:
            raise SettingsConflict(f"{path} has {len(m['shards'])} shards, not {shards}: build with --shards "
                                   f"{len(m['shards'])}, or into a new directory")
    elif (path / BUILD_STATE).exists():
        state = json.loads((path / BUILD_STATE).read_text())
        if state.get("shards") != shards:
            raise SettingsConflict(f"{path} is an unfinished build of {state.get('shards')} shards, not {shards}: "
                                   f"resume it with --shards {state.get('shards')}, or delete it")
    if not (path / CODES_FILE).exists():
        return None
    codes = TrainedCodes.from_bytes((path / CODES_FILE).read_bytes(), str(path / CODES_FILE))
    diffs = requested.conflicts(codes.settings)
    if diffs:
        raise SettingsConflict(f"{path} was built with other settings: {', '.join(diffs)}; build without them")
    return codes


def _train(ds, requested: Requested, precision: str, model: str | None, want: int) -> TrainedCodes:
    """Codes trained once, on a random sample of the (embedded) rows."""
    n = ds.count()
    if n == 0:
        raise InvalidInput("the inputs hold no rows to build from")
    sample = ds.random_sample(min(1.0, 1.5 * want / n), seed=0) if n > want else ds
    x = np.concatenate([np.asarray(b["vector"], np.float32) for b in sample.select_columns(["vector"])
                        .iter_batches(batch_size=65_536, batch_format="numpy")])[:want]
    settings = requested.settings(x.shape[1], precision, model)
    x = normalised(x, settings.metric)
    index = VectorIndex.trained(settings, x) if settings.needs_training else empty_index(settings)
    return TrainedCodes.of(index)


def _write_shards(ray, ds, path: Path, n: int, codes: TrainedCodes, batch_size: int, total: int | None,
                  progress: bool) -> tuple[int, int, int]:
    from tqdm import tqdm

    writer = ray.remote(max_restarts=5, max_task_retries=5, num_cpus=0)(ShardWriter)
    blob = codes.to_bytes()
    writers = [writer.options(name=f"qvec-writer-{os.getpid()}-{i}").remote(str(path / d), blob)
               for i, d in enumerate(shard_dirs(n))]
    added = read = 0
    pending: list = []
    bar = tqdm(total=total, unit="doc", desc=f"{path.name} ({n} shards)", file=sys.stderr,
               disable=not progress or not sys.stderr.isatty())

    def settle(refs) -> None:
        nonlocal added, read
        for r, a in ray.get(refs):
            read, added = read + r, added + a
            bar.update(r)

    with bar:
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            ids = [str(i) for i in batch["id"]]
            by: dict[int, list[int]] = {}
            for j, i in enumerate(ids):
                by.setdefault(shard_of(i, n), []).append(j)
            for s, rows in by.items():
                pending.append(writers[s].write.remote({k: np.asarray(v)[rows] for k, v in batch.items()}))
            while len(pending) > IN_FLIGHT * n:
                done, pending = ray.wait(pending, num_returns=len(pending) - IN_FLIGHT * n)
                settle(done)
        settle(pending)
        count = sum(ray.get([w.finish.remote() for w in writers]))
    for w in writers:
        ray.kill(w)
    return added, read - added, count


def _bytes_per_vector(path: Path) -> float | None:
    from .store import open as open_store
    with open_store(path, read_only=True) as s:
        return s.stats().bytes_per_vector
