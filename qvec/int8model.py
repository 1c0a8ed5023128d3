"""The embedding model with INT8 weights: a local ONNX export, dynamically quantized, run by
ONNX Runtime.

The same idea that shrinks the vectors shrinks the model. On first use for a model, the
transformer is exported to ONNX from the sentence-transformers copy already on disk (no
network), its weights are quantized to INT8 per output channel, and the result is cached
under ``$QVEC_CACHE`` (default ``~/.cache/qvec``). Tokenizing, pooling and normalising are
the model's own, so an INT8 embedding is directly comparable with an FP32 one.

Why ONNX Runtime rather than torch's dynamic quantization: on the default model torch's x86
INT8 kernels (7-bit activations) kept a mean cosine of 0.976 to the FP32 embeddings against
ONNX Runtime's 0.992, and embedded 183 documents/s against 221 (bench/results/ingest.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import EmbedderError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def cache_dir() -> Path:
    return Path(os.environ.get("QVEC_CACHE") or Path.home() / ".cache" / "qvec") / "models"


EXPORT_VERSION = 2  # bump when _export changes: older exports in the cache are then ignored


def _fingerprint(model_path: str) -> str:
    """Changes when the model's files or the export change (so a stale export is never used)."""
    h = hashlib.sha256(f"{EXPORT_VERSION}:{Path(model_path).resolve()}".encode())
    root = Path(model_path)
    if root.is_dir():
        for f in sorted(root.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _pooling(st) -> tuple[str, bool]:
    """(mean|cls, normalize) from the sentence-transformers modules, or EmbedderError."""
    modules = list(st)
    kinds = [type(m).__name__ for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Normalize",) for k in kinds[2:]):
        raise EmbedderError(f"model_precision='int8' supports Transformer + Pooling (+ Normalize) models, "
                            f"this one is {' + '.join(kinds)}: use model_precision='fp32'")
    mode = getattr(modules[1], "pooling_mode", None)
    if mode is None:  # older sentence-transformers: one flag per mode
        mode = "cls" if getattr(modules[1], "pooling_mode_cls_token", False) else "mean"
    mode = mode[0] if isinstance(mode, (list, tuple)) else mode
    if mode not in ("mean", "cls"):
        raise EmbedderError(f"model_precision='int8' supports mean or cls pooling, this model uses {mode!r}")
    return mode, "Normalize" in kinds


def _export(st, out: Path) -> None:
    """ONNX export of the transformer, then INT8 weights (per channel), written atomically."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    bert = st[0].auto_model
    # Plain ("eager") attention exports to MatMul/Softmax nodes that ONNX Runtime runs well;
    # the SDPA export was 1.5x slower there (bench/results/ingest.md). Restored afterwards:
    # the FP32 model object is shared with this process's FP32 embedder.
    attn = getattr(bert.config, "_attn_implementation", None)
    if attn and hasattr(bert, "set_attn_implementation"):
        bert.set_attn_implementation("eager")

    class Encoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    enc = st.tokenizer(["an example sentence", "another, longer example sentence"], padding=True,
                       return_tensors="pt", return_token_type_ids=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        fp32 = Path(tmp) / "model-fp32.onnx"
        axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")}
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's advice on shapes it fixes (none matter here)
                torch.onnx.export(Encoder(bert).eval(), tuple(enc[k] for k in INPUTS), str(fp32),
                                  input_names=list(INPUTS), output_names=["last_hidden_state"], dynamic_axes=axes,
                                  opset_version=17, dynamo=False)
        finally:
            if attn and hasattr(bert, "set_attn_implementation"):
                bert.set_attn_implementation(attn)
        int8 = Path(tmp) / "model-int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime logs advice on the root logger
        try:
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)
        os.replace(int8, out)


def export_dir(model_path: str) -> Path:
    """Where the INT8 export of the model at ``model_path`` is cached."""
    return cache_dir() / f"{Path(model_path).name}-{_fingerprint(model_path)}"


MODEL, TOKENIZER, CONFIG = "model-int8.onnx", "tokenizer.json", "qvec-model.json"


def exported(model_path: str) -> Path | None:
    """The export's directory if it holds everything a run needs, without the FP32 model."""
    d = export_dir(model_path)
    return d if all((d / f).exists() for f in (MODEL, TOKENIZER, CONFIG)) else None


def export(st, model_path: str) -> Path:
    """Export the sentence-transformers model ``st`` (loaded from ``model_path``) once: the
    INT8 ONNX transformer, its fast tokenizer, and how it pools, each written atomically."""
    d = export_dir(model_path)
    pooling, normalize = _pooling(st)
    tok = st.tokenizer
    if not getattr(tok, "is_fast", False):
        raise EmbedderError("model_precision='int8' needs a model with a fast (Rust) tokenizer: use "
                            "model_precision='fp32'")
    try:
        if not (d / MODEL).exists():
            _export(st, d / MODEL)
        config = {"pooling": pooling, "normalize": normalize, "max_length": int(st.max_seq_length),
                  "pad_token": tok.pad_token, "pad_id": int(tok.pad_token_id)}
        for name, write in ((TOKENIZER, tok.backend_tokenizer.save),
                            (CONFIG, lambda f: Path(f).write_text(json.dumps(config)))):
            tmp = d / (name + ".tmp")
            write(str(tmp))
            os.replace(tmp, d / name)
    except Exception as e:  # export failures come in many types
        raise EmbedderError(f"cannot build the INT8 model in {d} ({type(e).__name__}: {e}); "
                            "use model_precision='fp32'") from e
    return d


class OnnxInt8Encoder:
    """``encode(texts) -> (n, dim) float32`` with the INT8 model; one per process and model.
    Runs from the export alone (ONNX Runtime and the ``tokenizers`` library): neither torch
    nor sentence-transformers is imported, so a text search starts in about a second."""

    def __init__(self, directory: Path, threads: int | None = None):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:
            raise EmbedderError("model_precision='int8' needs onnxruntime: pip install onnxruntime onnx") from e
        try:
            config = json.loads((directory / CONFIG).read_text())
            self.pooling, self.normalize = config["pooling"], config["normalize"]
            self.max_length = int(config["max_length"])
            self.counter = Tokenizer.from_file(str(directory / TOKENIZER))  # whole texts: how long they are
            self.counter.no_truncation()
            self.counter.no_padding()
            self.tokenizer = Tokenizer.from_file(str(directory / TOKENIZER))
            self.tokenizer.enable_truncation(self.max_length)
            self.tokenizer.enable_padding(pad_id=config["pad_id"], pad_token=config["pad_token"])
            self.path = directory / MODEL
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads or os.cpu_count() or 1  # every core
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # a damaged cache fails in JSON, the tokenizers library or ONNX Runtime
            raise EmbedderError(f"the INT8 model cached in {directory} is damaged ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}): delete that directory, and qvec "
                                "exports the model again") from None
        width = self.session.get_outputs()[0].shape[-1]
        self.dim = width if isinstance(width, int) else int(self.encode(["dimension"]).shape[1])

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self.counter.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths pad least
        out = np.empty((len(texts), 0), np.float32)
        for lo in range(0, len(texts), batch_size):
            rows = order[lo : lo + batch_size]
            enc = self.tokenizer.encode_batch([texts[i] for i in rows])
            feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
            (hidden,) = self.session.run(None, feed)
            if self.pooling == "cls":
                v = hidden[:, 0]
            else:
                mask = feed["attention_mask"][..., None].astype(np.float32)
                v = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            if self.normalize:
                v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            if not out.shape[1]:
                out = np.empty((len(texts), v.shape[1]), np.float32)
            out[rows] = v
        return out
