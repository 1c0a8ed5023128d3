"""The ``qvec`` command line: thin click commands over ``qvec.open`` and the Store.

Library errors become one line on stderr: exit 2 for a usage problem (bad spec, bad
filter, bad input file), 1 for anything else; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from . import __version__
from . import open as open_store
from .errors import InvalidFilter, InvalidSpec, QvecError

USAGE_ERRORS = (InvalidSpec, InvalidFilter)


class InputLineError(click.ClickException):
    """A bad line in an input file: names file:line."""

    exit_code = 2


def _run(ctx: click.Context, fn, *args, **kwargs):
    """Call the library; turn its errors into one-line CLI errors."""
    try:
        return fn(*args, **kwargs)
    except QvecError as e:
        if ctx.find_root().params.get("debug"):
            raise
        if isinstance(e, USAGE_ERRORS):
            raise click.UsageError(str(e), ctx) from None
        raise click.ClickException(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qvec")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug):
    """qvec: a compressed vector store. Quantized codes in FAISS, metadata in SQLite.

    \b
    Example:
      qvec build docs.qvec corpus.jsonl --quantization int8
      qvec search docs.qvec "how do I open a file?" -k 5
      qvec info docs.qvec
    """


# -- reading inputs ------------------------------------------------------------------------
def _records(path: str, text_field: str, id_field: str, metadata_fields: str | None):
    """Yield (id, text, metadata) from JSONL, CSV or plain text (one document per line)."""
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    name = "stdin" if path == "-" else Path(path).name
    suffix = "" if path == "-" else Path(path).suffix.lower()
    with stream:
        if suffix == ".csv":
            rows = ((i + 2, r) for i, r in enumerate(csv.DictReader(stream)))
        elif suffix in (".jsonl", ".ndjson", ".json"):
            rows = _jsonl(stream, name)
        else:
            rows = ((i + 1, {text_field: line.rstrip("\n")}) for i, line in enumerate(stream))
        for lineno, row in rows:
            text = row.get(text_field)
            if not isinstance(text, str) or not text.strip():
                if suffix in ("", ".txt"):
                    continue  # blank lines in plain text are separators, not documents
                raise InputLineError(f"{name}:{lineno}: no text in field {text_field!r}; use --text-field")
            rid = row.get(id_field)
            rid = f"{name}:{lineno}" if rid in (None, "") else str(rid)
            if metadata_fields == "all":
                meta = {k: v for k, v in row.items() if k not in (text_field, id_field)}
            elif metadata_fields:
                meta = {k: row[k] for k in metadata_fields.split(",") if k in row}
            else:
                meta = {}
            yield rid, text, meta


def _jsonl(stream, name):
    for i, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputLineError(f"{name}:{i}: not valid JSON ({e.msg}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise InputLineError(f"{name}:{i}: expected a JSON object per line")
        yield i, row


def _batches(it, n):
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


@main.command()
@click.argument("store", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--quantization", "-q", default=None,
              help="fp32, fp16, bf16, int8 (default), int4, pq{M}, opq{M}, binary")
@click.option("--index", default=None, help="flat (default), ivf{nlist}, hnsw{M}")
@click.option("--model", default=None, help="sentence-transformers name or path (default all-MiniLM-L6-v2)")
@click.option("--text-field", default="text", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--metadata-fields", default=None, help="comma-separated fields to keep as metadata, or 'all'")
@click.option("--batch-size", default=256, show_default=True, help="documents per atomic batch")
@click.option("--rescore/--no-rescore", default=None, help="keep FP32 originals on disk for exact re-ranking")
@click.option("--upsert", is_flag=True, help="replace rows whose id exists (default: skip them)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.pass_context
def build(ctx, store, inputs, quantization, index, model, text_field, id_field, metadata_fields, batch_size,
          rescore, upsert, quiet):
    """Build or extend STORE from text files (JSONL, CSV, plain text, - for stdin) or
    vectors (.npy, with an optional .jsonl of ids/metadata beside it as NAME.jsonl).

    Re-running with the same input adds only ids not yet stored.

    \b
    Example:
      qvec build docs.qvec corpus.jsonl --quantization int8 --metadata-fields lang,year
    """
    t0 = time.perf_counter()
    s = _run(ctx, open_store, store, quantization=quantization, index=index, model=model, rescore=rescore)
    added = skipped = 0
    try:
        for path in inputs:
            if path.endswith((".npy", ".fvecs")):
                a, k = _build_vectors(ctx, s, path, upsert)
            else:
                a, k = _build_texts(ctx, s, path, text_field, id_field, metadata_fields, batch_size, upsert, quiet)
            added, skipped = added + a, skipped + k
        if not s.is_trained and s.settings and len(s) >= s.settings.min_train_size:
            _run(ctx, s.train)  # a built store searches its codes, not the waiting vectors
        st = _run(ctx, s.stats)
    finally:
        s.close()
    bpv = st.get("bytes_per_vector")
    mem = f"{bpv:.1f} bytes/vector in RAM, {st['compression']:.1f}x smaller than FP32" if bpv else "not trained yet"
    click.echo(f"{st['count']} vectors in {store} (+{added} added, {skipped} already stored): {mem}; "
               f"{time.perf_counter() - t0:.1f}s")


def _build_texts(ctx, s, path, text_field, id_field, metadata_fields, batch_size, upsert, quiet):
    from tqdm import tqdm  # a rate and an ETA on stderr; silent when stderr is not a terminal

    added = skipped = 0
    show = not quiet and sys.stderr.isatty()
    # A total (lines, counted in a fraction of the time embedding takes) gives the bar its ETA;
    # stdin can only be read once, so it shows a rate alone.
    total = None
    if show and path != "-":
        with open(path, "rb") as f:
            total = sum(1 for _ in f) - (Path(path).suffix.lower() == ".csv")
    bar = tqdm(desc=Path(path).name if path != "-" else "stdin", unit="doc", total=total,
               disable=not show, file=sys.stderr)
    with bar:
        for batch in _batches(_records(path, text_field, id_field, metadata_fields), batch_size):
            ids = [b[0] for b in batch]
            if not upsert:
                have = set(s.db.fids_of(ids))
                batch = [b for b in batch if b[0] not in have]
                skipped += len(ids) - len(batch)
            if batch:
                write = s.upsert if upsert else s.add
                _run(ctx, write, [b[1] for b in batch], ids=[b[0] for b in batch], metadata=[b[2] for b in batch])
                added += len(batch)
            bar.update(len(ids))
    return added, skipped


def _read_fvecs(path: str) -> np.ndarray:
    """The TEXMEX .fvecs layout: per vector, an int32 dimension then that many float32."""
    raw = np.fromfile(path, dtype=np.int32)
    if not len(raw):
        raise ValueError("empty file")
    d = int(raw[0])
    if d <= 0 or len(raw) % (d + 1) or not (raw.reshape(-1, d + 1)[:, 0] == d).all():
        raise ValueError("rows do not all start with the same dimension: not .fvecs")
    return raw.reshape(-1, d + 1)[:, 1:].view(np.float32).copy()


def _build_vectors(ctx, s, path, upsert):
    try:
        x = _read_fvecs(path) if path.endswith(".fvecs") else np.load(path, allow_pickle=False)  # never unpickle
    except (OSError, ValueError) as e:
        raise InputLineError(f"{path}: not a readable vector file ({e})") from None
    side = Path(path).with_suffix(".jsonl")
    rows = [r for _, r in _jsonl(side.open(), side.name)] if side.exists() else None
    if rows is not None and len(rows) != len(x):
        raise InputLineError(f"{side.name} has {len(rows)} rows for {len(x)} vectors in {Path(path).name}")
    ids = [str(r.get("id", f"{Path(path).name}:{i}")) for i, r in enumerate(rows)] if rows else \
        [f"{Path(path).name}:{i}" for i in range(len(x))]
    metas = [r.get("metadata", {}) for r in rows] if rows else None
    keep = list(range(len(x)))
    if not upsert:
        have = set(s.db.fids_of(ids))
        keep = [i for i in keep if ids[i] not in have]
    if keep:
        write = s.upsert if upsert else s.add
        _run(ctx, write, vectors=x[keep], ids=[ids[i] for i in keep],
             metadata=[metas[i] for i in keep] if metas else None)
    return len(keep), len(x) - len(keep)


@main.command()
@click.argument("store", type=click.Path())
@click.argument("queries", nargs=-1)
@click.option("-k", default=10, show_default=True, help="hits per query")
@click.option("--where", default=None, help='JSON filter, e.g. \'{"lang": "en", "year": {"$gte": 2000}}\'')
@click.option("--json", "as_json", is_flag=True, help="one JSON object per hit (JSON lines)")
@click.option("--nprobe", type=int, default=None, help="IVF lists to probe")
@click.option("--ef-search", type=int, default=None, help="HNSW search breadth")
@click.option("--oversample", type=int, default=None, help="candidates per hit to rescore")
@click.option("--queries-file", type=click.File(), default=None, help="one query per line ('-' for stdin)")
@click.pass_context
def search(ctx, store, queries, k, where, as_json, nprobe, ef_search, oversample, queries_file):
    """Search STORE for each QUERY (text).

    \b
    Example:
      qvec search docs.qvec "which animal purrs?" -k 5 --where '{"lang": "en"}'
    """
    queries = list(queries) + ([l.strip() for l in queries_file if l.strip()] if queries_file else [])
    if not queries:
        raise click.UsageError("give at least one QUERY, or --queries-file", ctx)
    try:
        filt = json.loads(where) if where else None
    except json.JSONDecodeError as e:
        raise click.UsageError(f"--where is not valid JSON ({e.msg}): e.g. '{{\"lang\": \"en\"}}'", ctx) from None
    params = {k_: v for k_, v in (("nprobe", nprobe), ("ef_search", ef_search), ("oversample", oversample)) if v}
    with _run(ctx, open_store, store, read_only=True) as s:
        results = _run(ctx, s.search_batch, queries, k, where=filt, **params)
    out = io.StringIO()
    for q, hits in zip(queries, results):
        if as_json:
            for rank, h in enumerate(hits, 1):
                out.write(json.dumps({"query": q, "rank": rank, "id": h.id, "score": h.score,
                                      "text": h.text, "metadata": h.metadata}, ensure_ascii=False) + "\n")
            continue
        out.write(f"query: {q}\n")
        for rank, h in enumerate(hits, 1):
            text = (h.text or "").replace("\n", " ")
            out.write(f"{rank:>3}  {h.score:7.4f}  {h.id:<20}  {text[:90]}\n")
        if not hits:
            out.write("  (no hits)\n")
    click.echo(out.getvalue(), nl=False)


@main.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="the full stats() as JSON")
@click.pass_context
def info(ctx, store, as_json):
    """Settings, count, memory and disk use, compression and trained parameters of STORE.

    \b
    Example:
      qvec info docs.qvec --json | python -m json.tool
    """
    with _run(ctx, open_store, store, read_only=True) as s:
        st = _run(ctx, s.stats)
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    params = st.get("trained_parameters", {})
    lines = [f"store        {st['path']}", f"count        {st['count']}"]
    if st.get("dim"):
        lines += [
            f"settings     {st['quantization']} / {st['index']} / {st['metric']}, dim {st['dim']}, "
            f"model {st['model']}, rescore {'on' if st['rescore'] else 'off'}",
            "trained      " + ("yes" if st["trained"] else f"no ({st['pending_untrained']} vectors wait)"),
        ]
        if st["bytes_per_vector"]:
            lines.append(f"memory       {st['bytes_per_vector']:.1f} bytes/vector "
                         f"(FP32: {st['fp32_bytes_per_vector']}), "
                         f"{st['compression']:.2f}x compression, {st['fixed_bytes']} fixed bytes")
        d = st["disk_bytes"]
        lines.append(f"disk         index {d['index']:,} B, originals {d['originals']:,} B, "
                     f"sqlite {d['sqlite']:,} B, total {d['total']:,} B")
        shapes = {k: (f"{len(v['vmin'])} dims, {v['range_stat']}" if k == "scales" else v) for k, v in params.items()}
        if shapes:
            lines.append("trained      " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    click.echo("\n".join(lines))


@main.command()
@click.argument("store", type=click.Path())
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def get(ctx, store, ids):
    """Print the rows with these IDS as JSON lines.

    \b
    Example:
      qvec get docs.qvec pydoc.txt:12 pydoc.txt:13
    """
    with _run(ctx, open_store, store, read_only=True) as s:
        for item in _run(ctx, s.get, list(ids)):
            click.echo(json.dumps({"id": item.id, "text": item.text, "metadata": item.metadata}, ensure_ascii=False))


@main.command()
@click.argument("store", type=click.Path())
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def delete(ctx, store, ids):
    """Delete the rows with these IDS (all or none: an unknown id deletes nothing).

    \b
    Example:
      qvec delete docs.qvec pydoc.txt:12
    """
    with _run(ctx, open_store, store, create=False) as s:
        n = _run(ctx, s.delete, list(ids))
    click.echo(f"deleted {n}")


@main.command()
@click.argument("store", type=click.Path())
@click.argument("out", type=click.File("w"))
@click.option("--vectors", "with_vectors", is_flag=True,
              help="add each vector: the FP32 original if kept (rescore), else decoded from its codes")
@click.pass_context
def export(ctx, store, out, with_vectors):
    """Write every row of STORE as JSONL (id, text and metadata fields).

    \b
    Re-import:
      qvec export docs.qvec rows.jsonl && qvec build copy.qvec rows.jsonl --metadata-fields all
    """
    with _run(ctx, open_store, store, read_only=True) as s:
        ids = s.ids()
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            vecs = _run(ctx, s.vectors, chunk) if with_vectors else None
            for j, item in enumerate(s.get(chunk)):
                # metadata fields at top level: `qvec build --metadata-fields all` reads them back
                row = {**item.metadata, "id": item.id, "text": item.text}
                if vecs is not None:
                    row["vector"] = vecs[j].tolist()
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
