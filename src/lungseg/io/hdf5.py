"""One CT volume per HDF5 file: int16 HU image, label-map mask, geometry attributes.

Layout (the contract in docs/architecture.md): datasets ``image`` (int16 HU, ``(z, y, x)``, z
ascending) and ``mask`` (uint8, or uint16 beyond 255 labels; 0 background, k = nodule label k),
both chunked and compressed; file attributes hold the geometry and provenance. Files are written
through :func:`lungseg.core.atomic.atomic_path`, so a crash never leaves a half-written volume.

Importing this module registers the hdf5plugin filters (Blosc with LZ4 or Zstd); read volumes
through it (or ``import hdf5plugin`` first) so that h5py can decode them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from lungseg.core.atomic import atomic_path
from lungseg.core.errors import InputError, MissingFileError
from lungseg.core.settings import schema_defaults

#: How to rebuild each kind of HDF5 file of the workflow (named in the errors below).
REBUILD_VOLUME = (
    "`snakemake --forcerun crops` or `snakemake --force {path}` (or `snakemake volumes`)"
)
REBUILD_CROPS = "`snakemake crops` (the crops are made again from the volumes)"

#: Compression codecs (benchmarked in docs/ingestion.md: Blosc/Zstd-1 writes ~8x faster than
#: gzip-4 at a slightly better ratio; Blosc/LZ4 writes ~2x faster again at a ~20 % worse ratio).
COMPRESSIONS = ("blosc-lz4", "blosc-zstd", "gzip", "lzf", "none")
#: The schema's ingest.compression (blosc-lz4: conversion speed first, twice Blosc/Zstd-1's write
#: and read speed for ~23 % larger files; docs/ingestion.md); crops.compression's is blosc-zstd
#: (small, written once, read every epoch: ratio first). Read from the schema, not repeated:
#: the default of write_volume for callers without settings (tests, benchmarks).
DEFAULT_VOLUME_COMPRESSION: str = schema_defaults("ingest")["compression"]
#: Chunk shape (z, y, x): a 64^3 crop touches few chunks; 256 KiB of int16 per chunk.
DEFAULT_CHUNKS = (16, 128, 64)


def compression_options(compression: str, level: int | None = None) -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a codec name in :data:`COMPRESSIONS`."""
    if compression in ("blosc-zstd", "blosc-lz4"):
        return dict(
            hdf5plugin.Blosc(
                cname=compression.removeprefix("blosc-"),
                clevel=1 if level is None else level,
                shuffle=hdf5plugin.Blosc.SHUFFLE,
            )
        )
    if compression == "gzip":
        return {
            "compression": "gzip",
            "compression_opts": 4 if level is None else level,
            "shuffle": True,
        }
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "none":
        return {}
    raise ValueError(
        f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}"
    )


def _chunks_for(shape: tuple[int, ...], chunks: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(max(1, min(c, s)) for c, s in zip(chunks, shape, strict=True))


def _attr_value(value: Any) -> Any:
    """HDF5-storable form of an attribute value (mappings become JSON text)."""
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    if value is None:
        return ""
    return value


def _python_value(value: Any) -> Any:
    """Plain Python form of a stored attribute (arrays -> tuples, JSON objects -> dicts)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        if value.startswith("{"):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value
    if isinstance(value, np.ndarray):
        return tuple(v.item() if isinstance(v, np.generic) else v for v in value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def mask_dtype(mask: np.ndarray) -> np.dtype:
    """uint8 while labels fit, else uint16."""
    if mask.dtype == np.uint8:  # fits as it is: spare two passes over the whole mask
        return mask.dtype
    top = int(mask.max()) if mask.size else 0
    if int(mask.min() if mask.size else 0) < 0 or top > np.iinfo(np.uint16).max:
        raise ValueError(f"mask labels must lie in 0..65535, got {mask.min()}..{top}")
    return np.dtype(np.uint8) if top <= np.iinfo(np.uint8).max else np.dtype(np.uint16)


def write_volume(
    path: str | os.PathLike[str],
    image: np.ndarray,
    mask: np.ndarray,
    attrs: Mapping[str, Any],
    compression: str = DEFAULT_VOLUME_COMPRESSION,
    level: int | None = None,
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
) -> None:
    """Write ``image`` (int16 HU) and ``mask`` (label map) with ``attrs`` to ``path`` atomically.

    ``image`` must already be int16 (the caller decides how HU are clipped); ``mask`` is stored as
    uint8 or uint16, whichever holds its largest label.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3:
        raise ValueError(f"{path}: image must be 3-D (z, y, x), got shape {image.shape}")
    if image.dtype != np.int16:
        raise ValueError(f"{path}: image must be int16 HU, got {image.dtype}")
    if mask.shape != image.shape:
        raise ValueError(f"{path}: mask shape {mask.shape} differs from image shape {image.shape}")
    options = compression_options(compression, level)
    # No chunk cache: every chunk is written once, whole (a cache would only add a copy of
    # each; ~10 % of the write time, docs/ingestion.md).
    with atomic_path(path) as tmp, h5py.File(tmp, "w", rdcc_nbytes=0) as f:
        chunk_shape = _chunks_for(image.shape, chunks)
        dset = f.create_dataset("image", data=image, chunks=chunk_shape, **options)
        dset.attrs["units"] = "HU"
        labels = f.create_dataset(
            "mask",
            shape=mask.shape,
            dtype=mask_dtype(mask),
            chunks=chunk_shape,
            fillvalue=0,
            **options,
        )
        _write_nonzero_slabs(labels, mask)
        for key, value in attrs.items():
            f.attrs[key] = _attr_value(value)
        f.attrs["compression"] = compression


def _write_nonzero_slabs(dataset: h5py.Dataset, array: np.ndarray) -> None:
    """Write only the parts of ``array`` that hold labels, slab of chunks by slab of chunks.

    A nodule mask is almost all background: chunks never written stay unallocated and read as
    the fill value 0, so the background costs neither compression time nor disk space.
    """
    step = dataset.chunks[0]
    for z0 in range(0, array.shape[0], step):
        slab = array[z0 : z0 + step]
        if not slab.any():
            continue
        ys = np.flatnonzero(slab.any(axis=(0, 2)))
        xs = np.flatnonzero(slab.any(axis=(0, 1)))
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        dataset[z0 : z0 + len(slab), y0:y1, x0:x1] = slab[:, y0:y1, x0:x1]


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike[str], rebuild: str = REBUILD_VOLUME) -> Iterator[h5py.File]:
    """``h5py.File(path, "r")``; a missing, truncated or corrupt file raises :class:`InputError`
    naming the file and how to rebuild it (``rebuild``, may hold ``{path}``), also when the
    damage shows only while reading a dataset inside the ``with`` block."""
    path = Path(path)
    hint = rebuild.format(path=path)
    if not path.is_file():
        raise MissingFileError(f"{path}: file not found; rebuild it: {hint}")
    try:
        with h5py.File(path, "r") as f:
            yield f
    except (OSError, KeyError, RuntimeError) as error:  # h5py's errors for damaged files
        if isinstance(error, InputError):
            raise
        raise InputError(
            f"{path}: unreadable HDF5 file, truncated or corrupt ({error}); "
            f"delete it and rebuild it: {hint}"
        ) from error


def write_failed_volume(
    path: str | os.PathLike[str], patient_id: str, series_uid: str, reason: str
) -> None:
    """The placeholder a failed ``convert`` job leaves: no datasets, attrs saying why."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"patient_id": patient_id, "series_uid": series_uid, "conversion": "failed"})
        f.attrs["reason"] = reason


def check_volume(f: h5py.File, path: Path) -> None:
    """:class:`InputError` unless ``f`` holds a volume (naming a failed conversion as such)."""
    if f.attrs.get("conversion") == "failed":
        raise InputError(
            f"{path}: no volume: the conversion of series {f.attrs.get('series_uid')} failed "
            f"({f.attrs.get('reason')}); see results/index/conversion.csv. Fix or remove the "
            f"bad files, then run `snakemake --force {path}`"
        )
    missing = [name for name in ("image", "mask") if name not in f]
    if missing:
        raise InputError(
            f"{path}: not a lungseg volume (missing dataset(s) {missing}); "
            f"delete it and rebuild it: {REBUILD_VOLUME.format(path=path)}"
        )


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file attributes of a volume as plain Python values."""
    with open_hdf5(path) as f:
        return {key: _python_value(value) for key, value in f.attrs.items()}


def read_volume(
    path: str | os.PathLike[str],
    region: tuple[slice, slice, slice] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read ``(image, mask, attrs)``; ``region`` (z, y, x slices) reads only that box.

    A missing, truncated or corrupt file, or the placeholder of a failed conversion, raises
    :class:`InputError` naming the file and how to rebuild it.
    """
    path = Path(path)
    selection = region if region is not None else np.s_[...]
    with open_hdf5(path) as f:
        check_volume(f, path)
        image = f["image"][selection]
        mask = f["mask"][selection]
        attrs = {key: _python_value(value) for key, value in f.attrs.items()}
    return image, mask, attrs
