"""The ``qvec`` command line: thin click commands over ``qvec.open`` and the Store.

Library errors become one line on stderr: exit 2 for a usage problem (bad spec, bad
filter, bad input file), 1 for anything else; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import textwrap
import time
import warnings
from pathlib import Path

import click
import numpy as np

from . import __version__
from . import open as open_store
from .config import ORIGINALS
from .embedder import MODEL_PRECISIONS
from .errors import (
    InputFileError,
    InvalidFilter,
    InvalidInput,
    InvalidSpec,
    QvecError,
    StorageFull,
    TextTruncated,
)
from .formats import VECTOR_SUFFIXES, read_ann_hdf5, read_vectors
from .guard import FULL_DISK
from .sources import read_jsonl, read_records

USAGE_ERRORS = (InvalidSpec, InvalidFilter, InputFileError)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the CLI prints it: its category and message, not the source line that raised it."""
    return f"warning: {message}\n" if category is UserWarning else f"{category.__name__}: {message}\n"


class QvecGroup(click.Group):
    """The one place library errors become CLI errors: a ``QvecError`` from any command is
    one line on stderr (exit 2 for a usage problem, 1 otherwise), its traceback only with --debug."""

    def invoke(self, ctx: click.Context):
        warnings.formatwarning = _one_line_warning
        try:
            return super().invoke(ctx)
        except QvecError as e:
            if ctx.params.get("debug"):
                raise
            if isinstance(e, USAGE_ERRORS):
                raise click.UsageError(str(e)) from None
            raise click.ClickException(str(e)) from None


@click.group(cls=QvecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qvec")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--verbose", "-v", is_flag=True, help="Show what FAISS says while training (k-means advice).")
def main(debug, verbose):
    """qvec: a compressed vector store. Quantized codes in FAISS, metadata in SQLite.

    \b
    Example:
      qvec build docs.qvec corpus.jsonl --quantization int8
      qvec search docs.qvec "how do I open a file?" -k 5
      qvec info docs.qvec
    """
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("faiss: %(message)s"))
        faiss_log = logging.getLogger("qvec.faiss")
        faiss_log.addHandler(handler)
        faiss_log.setLevel(logging.INFO)


@main.command()
@click.argument("store", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--quantization", "-q", default=None,
              help="fp32, fp16, bf16, int8 (default), int4, pq{M}, opq{M}, pq{M}x4fs, rabitq, rabitq{bits}, binary")
@click.option("--index", default=None, help="flat (default), ivf{nlist}, hnsw{M}")
@click.option("--metric", default=None, help="cosine (default), ip or l2, for a new store")
@click.option("--model", default=None, help="sentence-transformers name or path (default all-MiniLM-L6-v2)")
@click.option("--model-precision", type=click.Choice(MODEL_PRECISIONS), default=None,
              help="run the embedding model with fp32 (default) or int8 weights (faster, see the README)")
@click.option("--text-field", default="text", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--metadata-fields", default=None, help="comma-separated fields to keep as metadata, or 'all'")
@click.option("--vector-field", default="vector", show_default=True,
              help="a JSONL field holding the record's own embedding (a list of numbers): used as it is, not "
                   "embedded again (qvec export --vectors writes it)")
@click.option("--batch-size", default=256, show_default=True, help="documents per atomic batch")
@click.option("--rescore", is_flag=False, flag_value="on", default=None, type=click.Choice(("on", *ORIGINALS)),
              help="keep the original vectors on disk for exact re-ranking: --rescore alone at FP32 (or the "
                   "store's precision), --rescore fp16 or int8 at half or a quarter of the disk")
@click.option("--no-rescore", is_flag=True, help="keep no originals (the default for a new store)")
@click.option("--upsert", is_flag=True, help="replace rows whose id exists (default: skip them)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--shards", type=click.IntRange(1, 4096), default=None,
              help="build a sharded store of N shards on Ray (qvec[ray]): embedded by a pool of workers, codes "
                   "trained once and shared by every shard")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="the Ray cluster for --shards: --ray alone (or no --ray) starts one on this machine; "
                   "--ray auto, --ray ray://host:10001 join one")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="embedding workers for --shards (default: one per 2 CPUs of the cluster)")
def build(store, inputs, quantization, index, metric, model, model_precision, text_field, id_field, metadata_fields,
          vector_field, batch_size, rescore, no_rescore, upsert, quiet, shards, ray_address, workers):
    """Build or extend STORE from text files (JSONL, CSV, plain text, - for stdin) or
    vectors (.npy, .fvecs, .bvecs, or the train set of an ann-benchmarks .hdf5; ids and
    metadata optionally from a .jsonl beside it as NAME.jsonl).

    Re-running with the same input adds only ids not yet stored (and resumes a sharded
    build that did not finish).

    \b
    Example:
      qvec build docs.qvec corpus.jsonl --quantization int8 --metadata-fields lang,year
      qvec build big.qvec part-*.parquet --shards 4 --ray auto
    """
    t0 = time.perf_counter()
    for path in inputs:
        if path != "-" and not Path(path).is_file():
            raise InputFileError(f"{path}: no such file")
    rescore = False if no_rescore else True if rescore == "on" else rescore
    if shards is not None or ray_address is not None:
        if upsert:
            raise click.UsageError("--upsert is for single stores: a sharded build adds ids not yet stored")
        return _build_sharded(store, inputs, shards, ray_address, workers, quiet, quantization=quantization,
                              index=index, metric=metric, model=model, model_precision=model_precision, rescore=rescore,
                              text_field=text_field, id_field=id_field, metadata_fields=metadata_fields,
                              batch_size=batch_size)
    created = not Path(store).exists()
    s = open_store(store, quantization=quantization, index=index, metric=metric, model=model, rescore=rescore,
                   model_precision=model_precision)
    added = skipped = 0
    try:
        for path in inputs:
            if path.lower().endswith(VECTOR_SUFFIXES):
                a, k = _build_vectors(s, path, upsert)
            else:
                a, k = _build_texts(s, path, text_field, id_field, metadata_fields, vector_field, batch_size, upsert,
                                    quiet)
            added, skipped = added + a, skipped + k
        if created and not len(s):
            names = ", ".join("stdin" if p == "-" else p for p in inputs)
            raise InputFileError(f"{names}: no records read, so {store} was not created: check the input "
                                 "(and --text-field)")
        st = s.stats().to_dict()
    except BaseException:
        empty = len(s) == 0
        s.close()
        if created and empty:  # a failed first build leaves no empty store behind
            shutil.rmtree(store, ignore_errors=True)
        raise
    s.close()
    bpv = st.get("bytes_per_vector")
    if bpv:
        mem = f"{bpv:.1f} bytes/vector in RAM, {st['compression']:.1f}x smaller than FP32"
    elif st.get("dim"):  # codes learn from as many vectors as the Python API waits for
        mem = (f"{st['quantization']}/{st['index']} codes not trained yet: {st['pending_untrained']} vectors searched "
               f"exactly until {s.settings.train_size} arrive (`qvec retrain` trains on what is there now)")
    else:
        mem = "empty"
    seconds = time.perf_counter() - t0
    click.echo(f"{st['count']} vectors in {store} (+{added} added, {skipped} already stored): {mem}; "
               f"{seconds:.1f}s, {added / seconds:,.1f} documents/s")


def _build_sharded(store, inputs, shards, address, workers, quiet, **spec):
    from .distributed import build as build_sharded
    from .shards import MANIFEST, read_manifest

    if shards is None:  # --ray alone: an existing sharded store's own count
        if not (Path(store) / MANIFEST).exists():
            raise click.UsageError("--ray needs --shards N for a new store")
        shards = len(read_manifest(Path(store))["shards"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncated)
        r = build_sharded(store, list(inputs), shards=shards, address=address, workers=workers, progress=not quiet,
                          **spec)
    mem = f"{r.bytes_per_vector:.1f} bytes/vector in RAM" if r.bytes_per_vector else "no vectors"
    click.echo(f"{r.count} vectors in {store} over {r.shards} shards (+{r.added} added, {r.skipped} already stored): "
               f"{mem}; {r.seconds:.1f}s, {r.docs_per_s:,.1f} documents/s")


def _build_texts(s, path, text_field, id_field, metadata_fields, vector_field, batch_size, upsert, quiet):
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
    with bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncated)  # one summary line below instead of one per batch
        rows = read_records(path, text_field, id_field, metadata_fields, vector_field)
        added, skipped = s.ingest(rows, batch_size=batch_size, upsert=upsert, skip_existing=not upsert,
                                  on_batch=lambda n_read, _: bar.update(n_read))
    emb = s.loaded_embedder  # only if texts were embedded; never loads the model
    if emb is not None and emb.truncated:
        window = emb.window
        click.echo(f"note: {emb.truncated} of the texts in {Path(path).name} are longer than {emb.name}'s "
                   f"{window}-token window; only their first {window} tokens were embedded "
                   "(split long documents into passages to make all of their text searchable)", err=True)
        emb.truncated = 0
    return added, skipped


def _build_vectors(s, path, upsert):
    try:
        x = read_ann_hdf5(path).train if path.endswith((".hdf5", ".h5")) else read_vectors(path)
    except InvalidInput as e:
        raise InputFileError(f"not a readable vector file: {e}") from None
    side = Path(path).with_suffix(".jsonl")
    rows = None
    if side.exists():
        with side.open(encoding="utf-8") as f:
            rows = [r for _, r in read_jsonl(f, side.name)]
    if rows is not None and len(rows) != len(x):
        raise InputFileError(f"{side.name} has {len(rows)} rows for {len(x)} vectors in {Path(path).name}")
    ids = [str(r.get("id", f"{Path(path).name}:{i}")) for i, r in enumerate(rows)] if rows else \
        [f"{Path(path).name}:{i}" for i in range(len(x))]
    metas = [r.get("metadata", {}) for r in rows] if rows else None
    keep = list(range(len(x)))
    if not upsert:
        have = s.existing(ids)
        keep = [i for i in keep if ids[i] not in have]
    if keep:
        write = s.upsert if upsert else s.add
        write(vectors=x[keep], ids=[ids[i] for i in keep], metadata=[metas[i] for i in keep] if metas else None)
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
@click.option("--min-score", type=float, default=None,
              help="drop hits scoring below this (for l2 and Hamming scores, above it: lower is closer there)")
@click.option("--like", "like", default=None, help="more like this: search with the stored vector of this id")
@click.option("--mode", type=click.Choice(["vector", "keyword", "hybrid"]), default="vector", show_default=True,
              help="nearest vectors, BM25 over the stored texts, or both fused by reciprocal rank")
@click.option("--model-precision", type=click.Choice(MODEL_PRECISIONS), default=None,
              help="embed the queries at this precision (default: the store's)")
@click.pass_context
def search(ctx, store, queries, k, where, as_json, nprobe, ef_search, oversample, queries_file, model_precision,
           min_score, like, mode):
    """Search STORE for each QUERY (text).

    \b
    Example:
      qvec search docs.qvec "which animal purrs?" -k 5 --where '{"lang": "en"}'
      qvec search docs.qvec "os.fsync durability" --mode hybrid
    """
    queries = list(queries) + ([l.strip() for l in queries_file if l.strip()] if queries_file else [])
    if not queries and like is None:
        raise click.UsageError("give at least one QUERY, --queries-file or --like ID", ctx)
    if like is not None and (queries or mode != "vector"):
        raise click.UsageError("--like searches by a stored vector: give no QUERY, and --mode vector", ctx)
    filt = _where(ctx, where)
    params = {k_: v for k_, v in (("nprobe", nprobe), ("ef_search", ef_search), ("oversample", oversample)) if v}
    with open_store(store, read_only=True, model_precision=model_precision) as s:
        building = mode != "vector" and not s.has_fulltext
    if building:  # a store made before qvec had full text: indexed once, by a writer
        click.echo(f"{store}: building its full-text index (once)", err=True)
        with open_store(store) as w:
            w.enable_fulltext()
    with open_store(store, read_only=True, model_precision=model_precision) as s:
        if like is not None:  # itself first, then its neighbours: one more, and itself dropped
            queries = [f"like {like}"]
            results = [[h for h in s.search(s.vectors([like])[0], k + 1, where=filt, **params) if h.id != like][:k]]
        elif mode == "vector":
            results = s.search_batch(queries, k, where=filt, **params)
        else:
            results = [s.search(q, k, where=filt, mode=mode, **params) for q in queries]
        lower_is_closer = mode == "vector" and s.settings is not None and s.settings.lower_is_closer
    if min_score is not None:
        results = [[h for h in hits if (h.score <= min_score if lower_is_closer else h.score >= min_score)]
                   for hits in results]
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


def _where(ctx, where: str | None):
    try:
        return json.loads(where) if where else None
    except json.JSONDecodeError as e:
        raise click.UsageError(f"--where is not valid JSON ({e.msg}): e.g. '{{\"lang\": \"en\"}}'", ctx) from None


@main.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="the full stats() as JSON")
@click.option("--scales", is_flag=True, help="with --json: include the trained scales (a float per dimension, twice)")
def info(store, as_json, scales):
    """Settings, count, memory and disk use, compression and trained parameters of STORE.

    \b
    Example:
      qvec info docs.qvec --json | python -m json.tool
    """
    with open_store(store, read_only=True) as s:
        st = s.stats().to_dict()
    if as_json:
        if not scales and "scales" in st.get("trained_parameters", {}):
            sc = st["trained_parameters"]["scales"]
            st["trained_parameters"]["scales"] = {"dims": len(sc["vmin"]), "range_stat": sc.get("range_stat"),
                                                  "omitted": "pass --scales for vmin and vdiff"}
        click.echo(json.dumps(st, indent=1))
        return
    params = st.get("trained_parameters", {})
    lines = [f"store        {st['path']}", f"count        {st['count']}"]
    if st.get("shards", 1) > 1:
        lines.append(f"shards       {st['shards']} (sizes and bytes added up over them)")
    if st.get("dim"):
        rescore = f"from {st['originals']} originals" if st["rescore"] else "off"
        lines += [
            f"settings     {st['quantization']} / {st['index']} / {st['metric']}, dim {st['dim']}, "
            f"model {st['model']} at {st['model_precision']}, rescore {rescore}",
        ]
        if st["bytes_per_vector"]:
            lines.append(f"memory       {st['bytes_per_vector']:.1f} bytes/vector "
                         f"(FP32: {st['fp32_bytes_per_vector']}), "
                         f"{st['compression']:.2f}x compression, {st['fixed_bytes']} fixed bytes")
        d = st["disk_bytes"]
        lines.append(f"disk         index {d['index']:,} B, originals {d['originals']:,} B, "
                     f"sqlite {d['sqlite']:,} B, total {d['total']:,} B")
        if st["dead_ids"]:
            lines.append(f"dead ids     {st['dead_ids']:,} (deleted or replaced rows: {st['dead_original_bytes']:,} B "
                         "of originals stay on disk until `qvec compact`, or until a fifth of the ids are dead)")
        shapes = {k: (f"{len(v['vmin'])} dims, {v['range_stat']}" if k == "scales" else v) for k, v in params.items()}
        what = f": {', '.join(f'{k} {v}' for k, v in shapes.items())}" if shapes else ""
        lines.insert(3 + (st.get("shards", 1) > 1), "trained      " + (
            f"yes{what}" if st["trained"] else f"no ({st['pending_untrained']} vectors wait)"))
    click.echo("\n".join(lines))


def _tune_queries(path: str | None):
    """--queries FILE: an .npy of vectors, else one text per line."""
    if path is None:
        return None
    if not Path(path).exists():
        raise InputFileError(f"--queries {path}: no such file")
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputFileError(f"--queries {path} is not a readable .npy array ({e})") from None
    texts = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    if not texts:
        raise InputFileError(f"--queries {path} holds no queries (one text per line, or an .npy of vectors)")
    return texts


@main.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="the whole report as JSON")
@click.option("--queries", "queries_path", default=None, help="texts (one per line) or an .npy of vectors to measure "
              "with (default: 400 of the store's own vectors, each held out of its answer)")
def report(store, as_json, queries_path):
    """What STORE's codes cost and keep: bytes per vector by part, recall@1/10/100 against
    exact search, calibration health, and a verdict.

    \b
    Example:
      qvec report docs.qvec --json | python -m json.tool
    """
    with open_store(store, read_only=True) as s:
        r = s.report(_tune_queries(queries_path))
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    b = r["bytes"]
    lines = [f"store        {r['path']} ({r['count']:,} vectors, {r['quantization']}/{r['index']}"
             + (f", rescored x{r['oversample']})" if r["rescore"] else ")"),
             f"RAM          {r['bytes_per_vector']:.1f} B/vector: codes {b['codes']}, ids {b['ids']}, links/lists "
             f"{b['links_or_lists']}, fixed {r['fixed_bytes']:,} B in all (FP32: {r['fp32_bytes_per_vector']} B)",
             "disk         " + ", ".join(f"{k} {v:,} B" for k, v in r["disk_bytes"].items())
             + "; dead " + ", ".join(f"{k} {v:,} B" for k, v in r["dead_bytes"].items())]
    if r.get("recall_at_10") is not None:
        lines.append("recall       " + ", ".join(f"@{k} {r[f'recall_at_{k}']:.4f}" for k in (1, 10, 100)
                                                if r.get(f"recall_at_{k}") is not None)
                     + f" ({r['queries']}; against {r['reference']})")
    lines += ["", textwrap.fill(r["verdict"], 100)]
    click.echo("\n".join(lines))


@main.command()
@click.argument("store", type=click.Path())
@click.option("--recall", "target", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="recall@10 to reach (its lower 95% bound on held-out queries)")
@click.option("--max-bytes", type=float, default=None, help="RAM bytes per vector allowed")
@click.option("--queries", "queries_path", default=None, help="texts (one per line) or an .npy of vectors")
@click.option("--apply", "do_apply", is_flag=True, help="re-encode the store with the chosen codes, checked and "
              "swapped in atomically (the old codes kept for --rollback)")
@click.option("--rollback", is_flag=True, help="restore the codes the last --apply replaced")
@click.option("--plot", "plot_path", type=click.Path(), default=None, help="write the Pareto plot to this PNG")
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True, help="no progress bar")
def tune(store, target, max_bytes, queries_path, do_apply, rollback, plot_path, as_json, quiet):
    """Measure every code STORE's index can hold on its own data against exact search, and
    choose the cheapest meeting --recall (or the best under --max-bytes).

    \b
    Example:
      qvec tune docs.qvec --recall 0.95 --plot tune.png
      qvec tune docs.qvec --recall 0.95 --apply
    """
    from tqdm import tqdm

    if rollback:
        with open_store(store) as s:
            out = s.rollback_tuning()
        click.echo(json.dumps(out) if as_json else f"restored {out['quantization']} codes (replacing "
                   f"{out['previous']}; {out['rows_added']} rows written since were added)")
        return
    bar = tqdm(total=1, unit="config", disable=quiet or as_json, desc="measuring")

    def progress(what, n, total):
        bar.total = total
        bar.n = n
        bar.set_postfix_str(what)
        bar.refresh()

    with open_store(store, read_only=not do_apply) as s:
        result = s.tune(target, max_bytes=max_bytes, queries=_tune_queries(queries_path), progress=progress)
        bar.close()
        if plot_path:
            _tune_plot(result, s, plot_path)
        if do_apply and result.chosen is not None and result.chosen.meets:
            bar = tqdm(total=2, disable=quiet or as_json, desc="re-encoding")
            result.applied = s.apply_tuning(result.chosen, target, progress=progress)
            bar.close()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
        return
    cols = ("config", "RAM B/vec", "disk B/vec", "recall@10", "low 95%", "ms/query", "")
    rows = [(c.label, f"{c.ram_bytes:.1f}", f"{c.disk_bytes:.1f}", f"{c.recall_at_10:.4f}", f"{c.recall_low95:.4f}",
             f"{c.ms_per_query:.3f}", ("◀ chosen" if c is result.chosen else "★" if c.pareto else ""))
            for c in sorted(result.candidates, key=lambda c: (c.ram_bytes, c.recall_at_10))]
    widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]
    click.echo("\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in [cols, *rows]))
    click.echo(f"\n{result.rows_measured:,} rows, {result.queries}; against {result.reference}; {result.seconds} s")
    for note in result.notes:
        click.echo(f"note: {note}")
    c = result.chosen
    if c is not None and c.meets:
        click.echo(f"chosen: {c.label} ({c.ram_bytes:.1f} B/vector, recall@10 {c.recall_at_10:.4f})"
                   + ("" if do_apply else f"; apply with: qvec tune {store} --recall {target} --apply"))
    if result.applied:
        a = result.applied
        check = a["shadow_check"]
        click.echo(f"applied: {a['previous']} -> {a['quantization']}"
                   + (f", recall@10 {check['recall_at_10']:.4f} on other held-out queries" if check else "")
                   + f"; undo with: qvec tune {store} --rollback")
    elif do_apply:
        raise QvecError("nothing applied: no configuration met the target")


def _tune_plot(result, store, path: str) -> None:
    from .bench import plot

    records = [{"config": c.label + (" (chosen)" if c is result.chosen else ""), "bytes_per_vector": c.ram_bytes,
                "recall_at_10": c.recall_at_10, "rescore": bool(c.oversample), "pareto": c.pareto,
                "pareto_codes_only": False} for c in result.candidates]
    ds = {"name": f"qvec tune {Path(store.path).name}", "n_docs": result.rows_measured, "dim": store.settings.dim,
          "n_queries": result.n_queries}
    plot({"records": records, "dataset": ds}, Path(path))


@main.command()
@click.argument("store", type=click.Path())
@click.argument("ids", nargs=-1, required=True)
def get(store, ids):
    """Print the rows with these IDS as JSON lines.

    \b
    Example:
      qvec get docs.qvec pydoc.txt:12 pydoc.txt:13
    """
    with open_store(store, read_only=True) as s:
        for item in s.get(list(ids)):
            click.echo(json.dumps({"id": item.id, "text": item.text, "metadata": item.metadata}, ensure_ascii=False))


@main.command()
@click.argument("store", type=click.Path())
@click.argument("ids", nargs=-1)
@click.option("--where", default=None, help="delete the rows this JSON filter matches (as search --where)")
@click.pass_context
def delete(ctx, store, ids, where):
    """Delete the rows with these IDS, or those --where matches (all or none: an unknown id
    deletes nothing).

    \b
    Example:
      qvec delete docs.qvec pydoc.txt:12
      qvec delete docs.qvec --where '{"lang": "fr"}'
    """
    if bool(ids) == bool(where):
        raise click.UsageError("give IDS or --where, not both and not neither", ctx)
    with open_store(store, create=False) as s:
        if where:
            ids = s.ids(where=_where(ctx, where))
        n = s.delete(list(ids)) if ids else 0
    click.echo(f"deleted {n}")


@main.command()
@click.argument("store", type=click.Path())
def retrain(store):
    """Learn STORE's codes (scales, codebooks, centroids) again from every stored vector and
    re-encode it: from the originals when kept (--rescore), else by embedding the stored
    texts again. Atomic: until it commits, the store keeps its old codes.

    \b
    Example:
      qvec retrain docs.qvec
    """
    t0 = time.perf_counter()
    with open_store(store, create=False) as s:
        s.retrain()
        st = s.stats().to_dict()
    click.echo(f"retrained {st['quantization']}/{st['index']} on {st['count']} vectors in "
               f"{time.perf_counter() - t0:.1f}s")


@main.command()
@click.argument("store", type=click.Path())
def compact(store):
    """Renumber STORE's rows densely: reclaim the originals and filter bits of deleted or
    replaced rows, and rebuild an HNSW graph without its deleted nodes (also done
    automatically once a fifth of the ids are dead). Crash-safe; readers keep their snapshot.

    \b
    Example:
      qvec compact docs.qvec
    """
    with open_store(store, create=False) as s:
        before = s.stats()
        s.checkpoint(compact=True)
        after = s.stats()
    click.echo(f"{after.count} rows; {before.dead_ids:,} dead ids reclaimed "
               f"({before.disk_bytes.get('total', 0) - after.disk_bytes.get('total', 0):,} bytes on disk)")


@main.command()
@click.argument("store", type=click.Path())
@click.argument("out", type=click.File("w", encoding="utf-8"), default="-")
@click.option("--vectors", "with_vectors", is_flag=True,
              help="add each vector: the original if kept (rescore), else decoded from its codes; `qvec build` "
                   "uses it instead of embedding the text again")
@click.option("--where", default=None, help="export only the rows this JSON filter matches")
@click.pass_context
def export(ctx, store, out, with_vectors, where):
    """Write the rows of STORE as JSONL to OUT (default: stdout): one
    {"id", "text", "metadata", "vector"} object per line, the shape `qvec build` reads.

    \b
    Copy a store without embedding its texts again:
      qvec export docs.qvec --vectors | qvec build copy.qvec - --quantization pq48
    """
    with open_store(store, read_only=True) as s:
        ids = s.ids(where=_where(ctx, where))
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            vecs = s.vectors(chunk) if with_vectors else None
            lines = []
            for j, item in enumerate(s.get(chunk)):
                row = {"id": item.id, "text": item.text, "metadata": item.metadata}
                if vecs is not None:
                    row["vector"] = _short_floats(vecs[j])
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            _write_out(out, "".join(lines), i)


def _write_out(out, text: str, done: int) -> None:
    """One block of an export written; a full disk is one line naming how far it got."""
    try:
        out.write(text)
        out.flush()
    except OSError as e:
        if e.errno not in FULL_DISK:
            raise
        raise StorageFull(f"{out.name}: {os.strerror(e.errno)} after {done:,} rows: the export stopped part-way "
                          "(the store is unchanged); free space and run it again") from None


def _short_floats(v: np.ndarray) -> list[float]:
    """A float32 vector in 9 significant digits, which always read back to the same float32
    values, instead of the 17 a float64 needs: export lines a third shorter."""
    return [float(f"{x:.9g}") for x in v.tolist()]


@main.command()
@click.option("--vectors", type=click.Path(dir_okay=False),
              help="base vectors: .npy, .fvecs, .bvecs, or an ann-benchmarks .hdf5 (train, test, neighbors)")
@click.option("--corpus", type=click.Path(dir_okay=False),
              help="base texts instead: JSONL (id, text) or plain text; embedded once, cached as .npy")
@click.option("--queries", type=click.Path(dir_okay=False),
              help="query vectors (.npy/.fvecs/.bvecs) or texts (JSONL: text, optional relevant id or ids; "
                   "or plain text); default: the test set of an .hdf5")
@click.option("--ground-truth", type=click.Path(dir_okay=False),
              help="true neighbour row numbers (.ivecs/.npy); default: exact FP32 search")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory for the results")
@click.option("--config", "configs", multiple=True,
              help="QUANT/INDEX[/rescore[=N]][/nprobe=N][/ef=N], repeatable; default: a sweep from fp32 to binary")
@click.option("--quick", is_flag=True,
              help="a shorter sweep: one configuration per step, no OPQ or IVF (minutes of training at 100K+)")
@click.option("--metric", default=None, help="cosine (default), ip or l2; an .hdf5 names its own")
@click.option("--model", default=None, help="model that embeds texts (default all-MiniLM-L6-v2)")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="embedding cache (default OUT/cache)")
@click.option("--limit", type=int, default=None, help="use only the first N base vectors")
@click.option("--n-queries", type=int, default=None, help="use only the first N queries")
@click.option("--repeat", default=3, show_default=True, help="timings are the best of this many runs")
@click.option("--rounds", type=click.IntRange(min=0), default=0, show_default=True,
              help="then time every configuration's batch again in this many rounds, all in turn, to compare "
                   "them with each other (keeps every store on disk until the end)")
@click.option("--name", default=None, help="data set name in the report")
@click.pass_context
def bench(ctx, vectors, corpus, queries, ground_truth, out, configs, quick, metric, model, cache_dir, limit,
          n_queries, repeat, rounds, name):
    """Measure recall against memory for a sweep of configurations; write OUT/results.json,
    OUT/results.md and OUT/recall_vs_memory.png.

    Each configuration is built as a real store; recall@1/10/100 is against exact FP32 search,
    MRR@10 and hit@10 use queries that name their relevant documents.

    \b
    Examples:
      qvec bench --vectors docs.npy --queries queries.npy --out results/
      qvec bench --vectors docs.npy --queries queries.npy --out results/ --quick
      qvec bench --vectors glove-100-angular.hdf5 --limit 100000 --out glove/
      qvec bench --corpus docs.jsonl --queries queries.jsonl --out gcide/ --config int8/flat --config pq48/flat/rescore
    """
    from . import bench as qbench

    if bool(vectors) == bool(corpus):
        raise click.UsageError("give the base data as --vectors FILE or --corpus FILE (one of them)", ctx)
    if quick and configs:
        raise click.UsageError("--quick chooses the configurations: drop it or the --config options", ctx)
    configs = [qbench.Config.parse(c) for c in configs]
    cache_dir = cache_dir or str(Path(out) / "cache")
    embedder = None

    def embed(texts, what):
        nonlocal embedder
        if embedder is None:
            from .embedder import DEFAULT_MODEL, SentenceTransformerEmbedder

            embedder = SentenceTransformerEmbedder(model or DEFAULT_MODEL)
        click.echo(f"embedding {len(texts):,} {what} (cached in {cache_dir})", err=True)
        return qbench.embed_cached(texts, embedder, cache_dir, show_progress=sys.stderr.isatty())

    gt = None
    doc_ids: list[str] | None = None
    if vectors:
        _must_exist(ctx, vectors, "--vectors")
        if vectors.lower().endswith((".hdf5", ".h5")):
            ann = read_ann_hdf5(vectors)
            xb, xq, gt, metric = ann.train, ann.test, ann.neighbors, metric or ann.metric
        else:
            xb, xq = read_vectors(vectors), None
    else:
        _must_exist(ctx, corpus, "--corpus")
        rows = list(read_records(corpus, "text", "id", None, vector_field=None))
        doc_ids = [r[0] for r in rows]
        xb = embed([r[1] for r in rows], "documents")
    relevant = None
    if queries:
        _must_exist(ctx, queries, "--queries")
        if queries.lower().endswith(VECTOR_SUFFIXES):
            xq, gt = read_vectors(queries), None
        else:
            qrows = list(read_records(queries, "text", "id", "relevant", vector_field=None))
            xq, gt = embed([r[1] for r in qrows], "queries"), None
            relevant = _relevant_rows(queries, qrows, doc_ids if doc_ids is not None else len(xb))
    if xq is None:
        raise click.UsageError("give --queries FILE (or an .hdf5 with a test set)", ctx)
    if ground_truth:
        _must_exist(ctx, ground_truth, "--ground-truth")
        gt = read_vectors(ground_truth).astype(np.int64)
    if limit:
        xb, gt = xb[:limit], None  # true neighbours of the full set no longer hold
        if relevant is not None:  # a label beyond the limit cannot be found
            relevant = [(frozenset(i for i in r if i < limit) or None) if r else None for r in relevant]
    if n_queries:
        xq = xq[:n_queries]
        gt = gt[:n_queries] if gt is not None else None
        relevant = relevant[:n_queries] if relevant is not None else None
    if gt is not None and len(gt) != len(xq):
        raise click.UsageError(f"--ground-truth has {len(gt)} rows for {len(xq)} queries", ctx)
    if xq.shape[1] != xb.shape[1]:
        raise click.UsageError(f"queries have dimension {xq.shape[1]}, base vectors {xb.shape[1]}: "
                               "embed both with the same model", ctx)
    ds = qbench.Dataset(name=name or Path(vectors or corpus).stem, xb=xb, xq=xq, metric=metric or "cosine", gt=gt,
                        relevant=relevant)
    configs = configs or qbench.default_sweep(xb.shape[1], len(xb), quick=quick)
    click.echo(f"{len(xb):,} base vectors × {xb.shape[1]} dims, {len(xq):,} queries, {len(configs)} configurations",
               err=True)

    def report(r):
        task = f", MRR@10 {r['mrr_at_10']}" if "mrr_at_10" in r else ""
        click.echo(f"  {r['config']:<34} {r['bytes_per_vector']:>8.1f} B/vec  R@10 {r['recall_at_10']:.4f}{task}  "
                   f"{r['qps']:>9,.0f} q/s", err=True)

    records = qbench.run(ds, configs, progress=report, repeat=repeat, rounds=rounds)
    qbench.write_results(out, ds, records, gt_from_file=gt is not None, extra={"rounds": rounds} if rounds else None)
    click.echo(f"wrote {Path(out) / 'results.json'}, results.md and recall_vs_memory.png")


def _must_exist(ctx, path: str, option: str) -> None:
    if not Path(path).is_file():
        raise click.UsageError(f"{option} {path}: no such file", ctx)


def _relevant_rows(path: str, qrows, docs) -> list[frozenset[int] | None] | None:
    """Each query's ``relevant`` (an id or a list of ids) as base row numbers. ``docs`` is the
    list of document ids, or the number of base vectors (then ids are row numbers)."""
    row_of = {d: i for i, d in enumerate(docs)} if isinstance(docs, list) else {str(i): i for i in range(docs)}
    out: list[frozenset[int] | None] = []
    for qid, _, meta, _ in qrows:
        rel = meta.get("relevant")
        if rel is None:
            out.append(None)
            continue
        rel = rel if isinstance(rel, list) else [rel]
        unknown = [r for r in rel if str(r) not in row_of]
        if unknown:
            raise InputFileError(f"{Path(path).name}: query {qid} names relevant id {unknown[0]!r}, "
                                 "which is not in the base data")
        out.append(frozenset(row_of[str(r)] for r in rel))
    return out if any(r is not None for r in out) else None
