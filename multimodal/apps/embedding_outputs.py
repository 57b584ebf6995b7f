"""What ``multimodal embed`` writes, and reading it back: embeddings with their keys and metadata.

Shapes: N rows, E embedding width.

Output formats, chosen by the file suffix (or the ``format`` of shard parts):

* ``.npy``: float32 (N, E), with two sidecar JSON files named after it: the keys in
  row order as a list (``emb.npy`` -> ``emb.keys.json``), and what the other formats
  keep in their metadata as an object of strings (``emb.meta.json``: modality, width,
  dtype, checkpoint id and, for a shard part, its shard). Both are written before the
  ``.npy``, so a complete ``.npy`` always has them; outputs of earlier versions have
  no ``.meta.json`` and read with empty metadata;
* ``.safetensors``: tensor ``"embeddings"`` float32 (N, E) and the metadata entry
  ``"keys"`` (a JSON list), in one file;
* ``.parquet``: columns ``key`` (string) and ``embedding`` (fixed-size list of
  float32, E per row), one row per input, readable by pandas, Spark, DuckDB...
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy_file
from safetensors.numpy import save_file as save_numpy_file

from multimodal.data.atomic_files import write_atomically
from multimodal.errors import ArgumentNeeded

OUTPUT_FORMATS = ("npy", "safetensors", "parquet")


def output_format(path: str | os.PathLike) -> str:
    """The format of an output file from its suffix; raises ValueError for others."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"output {path} must end in .npy, .safetensors or .parquet (the format is read from it)")
    check_format(suffix)
    return suffix


def check_new_output(path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuses an output file that exists already, unless ``overwrite`` (ArgumentNeeded naming the argument)."""
    if Path(path).exists() and not overwrite:
        raise ArgumentNeeded(f"output {path} exists; pass {{overwrite}} to replace it",
                             overwrite=("overwrite=True", "--overwrite"))


def check_format(format: str) -> None:
    if format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {format!r}; expected one of {OUTPUT_FORMATS}")


def _sidecar(npy_path: str | os.PathLike, suffix: str) -> Path:
    path = Path(npy_path)
    return path.with_name((path.name[: -len(path.suffix)] if path.suffix else path.name) + suffix)


def keys_path(npy_path: str | os.PathLike) -> Path:
    """``emb.npy`` -> ``emb.keys.json``: where the keys of an .npy output are."""
    return _sidecar(npy_path, ".keys.json")


def metadata_path(npy_path: str | os.PathLike) -> Path:
    """``emb.npy`` -> ``emb.meta.json``: what an .npy output records of how it was made."""
    return _sidecar(npy_path, ".meta.json")


def write_embeddings(
    path: str | os.PathLike, embeddings: np.ndarray, keys: Sequence[str], *, metadata: dict[str, str] | None = None
) -> Path:
    """Writes float32 (N, E) ``embeddings``, their ``keys`` and ``metadata`` to ``path``, atomically.

    The format follows the suffix (see the module's docstring for where each keeps the
    keys and the metadata).
    """
    path = Path(path)
    format = output_format(path)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(keys):
        raise ValueError(f"embeddings {embeddings.shape} must be (N, E) with N = {len(keys)} keys")
    if format == "npy":
        # Sidecars first: a complete .npy then always has its keys and metadata beside it. The
        # metadata is written even when empty, so none left by an earlier output survives.
        record = json.dumps(dict(metadata or {}), sort_keys=True) + "\n"
        write_atomically(metadata_path(path), lambda tmp: tmp.write_text(record, encoding="utf-8"))
        write_atomically(keys_path(path), lambda tmp: tmp.write_text(json.dumps(list(keys)) + "\n", encoding="utf-8"))
        def write_npy(temporary: Path) -> None:
            with open(temporary, "wb") as handle:  # a file object: np.save would add ".npy" to a name
                np.save(handle, embeddings)

        write_atomically(path, write_npy)
    elif format == "parquet":
        write_atomically(path, lambda tmp: _write_parquet(tmp, embeddings, keys, metadata))
    else:
        header = {"keys": json.dumps(list(keys)), **(metadata or {})}
        write_atomically(path, lambda tmp: save_numpy_file({"embeddings": embeddings}, str(tmp), metadata=header))
    return path


def read_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """An output of :func:`write_embeddings` -> (float32 (N, E), keys)."""
    path = Path(path)
    format = output_format(path)
    if format == "npy":
        embeddings = np.load(path)
        keys = json.loads(keys_path(path).read_text(encoding="utf-8"))
    elif format == "parquet":
        embeddings, keys = _read_parquet(path)
    else:
        with safe_open(str(path), framework="numpy") as handle:
            keys = json.loads(handle.metadata()["keys"])
        embeddings = load_numpy_file(str(path))["embeddings"]
    if embeddings.shape[0] != len(keys):
        raise ValueError(f"{path}: {embeddings.shape[0]} rows but {len(keys)} keys")
    return embeddings, keys


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """What an output of :func:`write_embeddings` records of how it was made (its ``metadata``).

    ``.npy``: its ``.meta.json`` ({} for outputs of earlier versions, which have none);
    ``.safetensors``: the file's metadata but the keys; ``.parquet``: the schema's metadata.
    Raises ValueError for a ``.meta.json`` that is not a JSON object of strings.
    """
    path = Path(path)
    format = output_format(path)
    if format == "npy":
        sidecar = metadata_path(path)
        if not sidecar.is_file():
            return {}
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError(f"{sidecar} must hold a JSON object of strings, as multimodal embed writes it; "
                             "embed the inputs again")
        return metadata
    if format == "parquet":
        import pyarrow.parquet as pq

        schema_metadata = pq.read_schema(str(path)).metadata or {}
        return {k.decode(): v.decode() for k, v in schema_metadata.items() if not k.startswith(b"ARROW:")}
    with safe_open(str(path), framework="numpy") as handle:
        metadata = dict(handle.metadata() or {})
    metadata.pop("keys", None)
    return metadata


def _write_parquet(path: Path, embeddings: np.ndarray, keys: Sequence[str], metadata: dict[str, str] | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = embeddings.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), type=pa.float32()), dim)
    table = pa.table({"key": pa.array(list(keys), type=pa.string()), "embedding": vectors})
    if metadata:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    pq.write_table(table, str(path))


def _read_parquet(path: Path) -> tuple[np.ndarray, list[str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    keys = table.column("key").to_pylist()
    vectors = table.column("embedding").combine_chunks()
    dim = vectors.type.list_size
    embeddings = vectors.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(keys), dim)
    return embeddings, keys


def is_complete(path: Path) -> bool:
    """A part already written by an earlier run: present, readable (metadata too), as many rows as keys."""
    if not path.is_file():
        return False
    try:
        read_embeddings(path)
        read_metadata(path)
    except (ValueError, OSError, KeyError, json.JSONDecodeError):
        return False
    return True


__all__ = [
    "OUTPUT_FORMATS",
    "check_new_output",
    "check_format",
    "is_complete",
    "keys_path",
    "metadata_path",
    "output_format",
    "read_embeddings",
    "read_metadata",
    "write_embeddings",
]
