"""A version's size on disk, by file, on the Goodreads sample (and with one long title added): text stored as one
UTF-8 blob with offsets against the fixed-width string arrays of the earlier format (books x the longest title).

    python -m bench.artifact_size        (converts ../shared/data's Goodreads sample first)
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from pathlib import Path

import numpy as np

from bench import convert
from bench.harness import write_results
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import TrainingParams
from recommender.storage.artifacts import LocalArtifactStore


def fixed_width_text_bytes(model: HybridModel) -> int:
    """What the earlier format's text arrays took: catalogue titles and authors, and the TF-IDF vocabulary."""
    buffer = io.BytesIO()
    arrays = {
        "titles": np.array(model.catalogue.titles, dtype=str),
        "authors": np.array(model.catalogue.authors, dtype=str),
    }
    if model.content.encoder is not None:
        arrays["vocabulary"] = np.array(model.content.encoder.vocabulary, dtype=str)
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return len(buffer.getvalue())


def blob_text_bytes(folder: Path) -> int:
    """The same text in this format: the blobs and offsets inside catalogue.npz and content_encoder.npz."""
    total = 0
    for name, keys in (
        ("catalogue.npz", ("titles", "title_offsets", "authors", "author_offsets")),
        ("content_encoder.npz", ("vocabulary", "vocabulary_offsets")),
    ):
        with np.load(folder / name) as arrays:
            total += sum(arrays[key].nbytes for key in keys if key in arrays.files)
    return total


def main() -> None:
    rows: list[list[object]] = []
    data = convert.training_data("goodbooks")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        long_title = dataclasses.replace(data.books[0], title="x" * 500)  # the longest title the API accepts
        for name, catalogue in (
            ("Goodreads sample", data.books),
            ("with one 500-character title", [long_title, *data.books[1:]]),
        ):
            model = train(dataclasses.replace(data, books=catalogue), TrainingParams())
            folder = LocalArtifactStore(out / name.replace(" ", "-")).write(model)
            files = {path.name: path.stat().st_size for path in folder.iterdir()}
            total = sum(files.values())
            before = total - blob_text_bytes(folder) + fixed_width_text_bytes(model)
            rows.append([name, len(catalogue), round(before / 2**20, 2), round(total / 2**20, 2)])
    write_results(
        "artifact_size",
        "A version's size on disk: fixed-width text arrays (before) and text blobs (now)",
        ["catalogue", "books", "before MiB", "now MiB"],
        rows,
        notes="Before: titles, authors and the TF-IDF vocabulary as NumPy fixed-width unicode arrays (4 bytes x the "
        "longest string, per entry). Now: one UTF-8 blob and offsets each. The other files are the same.",
    )


if __name__ == "__main__":
    main()
