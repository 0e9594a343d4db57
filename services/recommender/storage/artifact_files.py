"""One model version's files: arrays in .npy/.npz files (no pickle), text (titles, authors, the TF-IDF vocabulary)
as one UTF-8 blob with offsets, and manifest.json written last with a SHA-256 per file; read back verified (every
checksum, every number finite) or refused."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import zipfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recommender.model.catalogue import Catalogue
from recommender.model.cf import CFModel
from recommender.model.content import ContentModel, TextEncoder
from recommender.model.hybrid import HybridModel, ModelMeta
from recommender.model.index import CatalogueIndex, Cells, restore
from recommender.model.learned import Ranker
from recommender.model.params import TrainingParams
from recommender.model.series import series_in_title
from recommender.model.trees import TreesError

FORMAT = 2
MANIFEST = "manifest.json"
INDEX = "index.npz"  # the catalogue index's Faiss parts (model/index.py), for versions that have one
RANKER = "ranker.npz"  # the learned second stage (model/learned.py), for versions that have one


class ArtifactError(Exception):
    """A version cannot be served from this store."""


class ArtifactMissing(ArtifactError):
    """The version's files are not here (never written, pruned, or half-written when a process died)."""


class ArtifactCorrupt(ArtifactError):
    """The version's files are here but wrong: a checksum that does not match, a file that does not parse, values
    that are not finite. It must never serve."""


def read_version(folder: Path, version: str) -> HybridModel:
    """The version in `folder`, its files verified against the manifest's checksums and every number checked
    finite; ArtifactMissing or ArtifactCorrupt otherwise."""
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactMissing(f"version {version} is not here (pruned, or never completed)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactCorrupt(f"version {version}: {MANIFEST} cannot be read: {exc}") from exc
    try:
        manifest: dict[str, Any] = json.loads(text)
        if manifest.get("format") != FORMAT:
            raise ArtifactCorrupt(f"version {version} has format {manifest.get('format')}, this release reads {FORMAT}")
        _verify(folder, manifest["files"])
        return _read_files(folder, manifest)
    except ArtifactError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile) as exc:
        raise ArtifactCorrupt(f"version {version} cannot be read: {type(exc).__name__}: {exc}") from exc


_TEXT = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]


def _pack_text(values: Sequence[str]) -> _TEXT:
    """Strings as one UTF-8 blob and n + 1 offsets: the size is the total text, whatever the longest string."""
    encoded = [value.encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpack_text(blob: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64]) -> list[str]:
    if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 0):
        raise ArtifactCorrupt("text offsets do not match the text")
    data = blob.tobytes()
    return [data[start:end].decode("utf-8") for start, end in itertools.pairwise(offsets)]


def write_version(folder: Path, model: HybridModel) -> None:
    _write_catalogue(folder / "catalogue.npz", model.catalogue)
    np.savez(
        folder / "cf.npz",
        user_ids=model.cf.user_ids,
        item_ids=model.cf.item_ids,
        user_factors=model.cf.user_factors,
        item_factors=model.cf.item_factors,
    )
    # Uncompressed: zlib took 0.9 s of a 1M-interaction save, for files the disk holds easily.
    sp.save_npz(folder / "cf_user_items.npz", model.cf.user_items, compressed=False)
    sp.save_npz(folder / "content_features.npz", model.content.features, compressed=False)
    np.save(folder / "content_vectors.npy", model.content.vectors)
    encoder = model.content.encoder
    if encoder is not None:
        vocabulary, vocabulary_offsets = _pack_text(encoder.vocabulary)
        arrays: dict[str, npt.NDArray[Any]] = {
            "vocabulary": vocabulary,
            "vocabulary_offsets": vocabulary_offsets,
            "idf": encoder.idf,
        }
        if encoder.components is not None:
            arrays["components"] = encoder.components
        np.savez(folder / "content_encoder.npz", **arrays)  # type: ignore[arg-type]
    if model.index is not None:
        index = model.index
        cells = {"book_ids": index.book_ids, "content": index.content.to_bytes()}
        if index.book_cf is not None:
            cells["book_cf"] = index.book_cf.to_bytes()
        np.savez(folder / INDEX, **cells)  # type: ignore[arg-type]
    if model.ranker is not None:
        np.savez(folder / RANKER, **model.ranker.arrays())  # type: ignore[arg-type]
    files = {path.name: _describe(path) for path in sorted(folder.iterdir())}
    manifest = {
        "format": FORMAT,
        "version": model.meta.version,
        "trained_at": model.meta.trained_at.isoformat(),
        "training_seconds": model.meta.training_seconds,
        "num_users": model.cf.num_users,
        "num_items": model.cf.num_items,
        "matrix_nnz": model.cf.nnz,
        "num_books": model.content.num_books,
        "feature_dim": model.content.feature_dim,
        "params": model.meta.params.as_dict(),
        "metrics": model.meta.metrics,
        "snapshot": model.meta.snapshot,
        "files": files,
    }
    write_atomically(folder / MANIFEST, json.dumps(manifest, indent=2))  # last: it marks the version complete


def _write_catalogue(path: Path, catalogue: Catalogue) -> None:
    """Ids, titles, authors and each book's series and place (nan and "": none), as `_read_files` reads them."""
    titles, title_offsets = _pack_text(catalogue.titles)
    authors, author_offsets = _pack_text(catalogue.authors)
    series, series_offsets = _pack_text([found[0] if found else "" for found in catalogue.series])
    places = np.array([found[1] if found else np.nan for found in catalogue.series], dtype=np.float64)
    np.savez(
        path,
        book_ids=catalogue.book_ids,
        titles=titles,
        title_offsets=title_offsets,
        authors=authors,
        author_offsets=author_offsets,
        series=series,
        series_offsets=series_offsets,
        series_positions=places,
    )


def _describe(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    for name, expected in files.items():
        path = folder / Path(name).name
        if not path.is_file():
            raise ArtifactCorrupt(f"{folder.name}: {name} is missing")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise ArtifactCorrupt(f"{folder.name}: {name} does not match its checksum")


def _finite(name: str, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ArtifactCorrupt(f"{name} holds values that are not finite")
    return values


def _read_series(arrays: Any, titles: list[str]) -> list[tuple[str, float] | None]:
    """Each book's series and place; a version written before they were kept reads them from its titles."""
    if "series" not in arrays:
        return [series_in_title(title) for title in titles]
    names = _unpack_text(arrays["series"], arrays["series_offsets"])
    places = arrays["series_positions"]
    if len(names) != len(titles) or len(places) != len(titles):
        raise ArtifactCorrupt("the series do not match the catalogue")
    return [(name, float(place)) if name else None for name, place in zip(names, places.tolist(), strict=True)]


def _read_files(folder: Path, manifest: dict[str, Any]) -> HybridModel:
    with np.load(folder / "catalogue.npz", allow_pickle=False) as arrays:
        titles = _unpack_text(arrays["titles"], arrays["title_offsets"])
        catalogue = Catalogue(
            arrays["book_ids"],
            titles,
            _unpack_text(arrays["authors"], arrays["author_offsets"]),
            _read_series(arrays, titles),
        )
    params = TrainingParams().with_values(manifest["params"])
    with np.load(folder / "cf.npz", allow_pickle=False) as arrays:
        user_items = sp.csr_matrix(sp.load_npz(folder / "cf_user_items.npz"))
        cf = CFModel(
            user_ids=arrays["user_ids"],
            item_ids=arrays["item_ids"],
            user_factors=_finite("user factors", arrays["user_factors"]),
            item_factors=_finite("item factors", arrays["item_factors"]),
            user_items=user_items,
            params=params.als,
        )
    _finite("interaction weights", cf.user_items.data)
    features = sp.csr_matrix(sp.load_npz(folder / "content_features.npz"))
    _finite("TF-IDF features", features.data)
    vectors = _finite("content vectors", np.load(folder / "content_vectors.npy", allow_pickle=False))
    content = ContentModel(features, vectors, _read_encoder(folder / "content_encoder.npz"))
    shapes_agree = (
        len(catalogue.book_ids) == len(catalogue.titles) == content.num_books == len(vectors)
        and len(catalogue.authors) == len(catalogue.book_ids)
        and cf.user_factors.shape[0] == cf.num_users == cf.user_items.shape[0]
        and cf.item_factors.shape[0] == cf.num_items == cf.user_items.shape[1]
    )
    if not shapes_agree:
        raise ArtifactCorrupt("the arrays' sizes do not agree with each other")
    meta = ModelMeta(
        manifest["version"],
        datetime.fromisoformat(manifest["trained_at"]),
        float(manifest["training_seconds"]),
        params,
        {name: float(value) for name, value in manifest.get("metrics", {}).items()},
        str(manifest.get("snapshot", "")),
    )
    model = HybridModel.assemble(meta, catalogue, cf, content)
    if (folder / INDEX).exists():
        model = dataclasses.replace(model, index=_read_index(folder / INDEX, model))
    if (folder / RANKER).exists():
        model = model.with_ranker(_read_ranker(folder / RANKER))
    return model


def _read_ranker(path: Path) -> Ranker:
    with np.load(path, allow_pickle=False) as arrays:
        try:
            return Ranker.of_arrays({name: arrays[name] for name in arrays.files})
        except TreesError as exc:
            raise ArtifactCorrupt(f"the ranker's trees: {exc}") from exc


def _read_index(path: Path, model: HybridModel) -> CatalogueIndex:
    with np.load(path, allow_pickle=False) as arrays:
        params = model.meta.params.index
        book_cf = Cells.from_bytes(arrays["book_cf"], params) if "book_cf" in arrays.files else None
        book_ids = arrays["book_ids"]
        if not np.array_equal(book_ids, model.catalogue.book_ids):
            raise ArtifactCorrupt("the index's books are not the catalogue's")
        return restore(book_ids, model.rows, Cells.from_bytes(arrays["content"], params), book_cf)


def _read_encoder(path: Path) -> TextEncoder | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        components = _finite("SVD components", arrays["components"]) if "components" in arrays.files else None
        vocabulary = _unpack_text(arrays["vocabulary"], arrays["vocabulary_offsets"])
        return TextEncoder(vocabulary, _finite("IDF weights", arrays["idf"]), components)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
