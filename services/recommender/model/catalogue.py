"""The books a version knows, in the row order of its content model: their sorted ids, titles and authors, and how
an id is looked up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recommender.model.cf import IntArray
from recommender.model.content import ContentModel
from recommender.model.dataset import Book, lookup


@dataclass(frozen=True)
class Catalogue:
    book_ids: IntArray  # sorted; the row order of the content model
    titles: list[str]
    authors: list[str]
    series: list[tuple[str, float] | None]  # each book's series and place in it (`Book.in_series`)

    @classmethod
    def from_books(cls, books: Sequence[Book]) -> Catalogue:
        """`books` sorted by id."""
        return cls(
            np.array([b.book_id for b in books], dtype=np.int32),
            [b.title for b in books],
            [b.authors for b in books],
            [b.in_series() for b in books],
        )

    def position(self, book_id: int) -> int | None:
        found = self.positions([book_id])
        return int(found[0]) if len(found) else None

    def positions(self, book_ids: npt.ArrayLike) -> IntArray:
        """Catalogue rows of the given ids; ids not in the catalogue are dropped."""
        rows, known = self.lookup(book_ids)
        return rows[known]

    def lookup(self, book_ids: npt.ArrayLike) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """For each id, its catalogue row and whether it is in the catalogue (the row is meaningless where not)."""
        return lookup(self.book_ids, book_ids)


def grown(
    catalogue: Catalogue, content: ContentModel, books: Sequence[Book]
) -> tuple[Catalogue, ContentModel, list[int]] | None:
    """The catalogue and its content model with `books` added or updated (content vectors from the text encoder,
    zero for versions without one; a book whose text is unchanged keeps its trained rows), and the ids of the
    books that changed; None when none did."""
    if not books:
        return None
    latest = {book.book_id: book for book in books}
    incoming = [latest[book_id] for book_id in sorted(latest)]
    if content.encoder is not None:
        features, vectors = content.encoder.encode([book.text() for book in incoming])
    else:
        features = sp.csr_matrix((len(incoming), content.feature_dim), dtype=np.float32)
        vectors = np.zeros((len(incoming), content.vectors.shape[1]), dtype=np.float32)
    rows, known = catalogue.lookup([book.book_id for book in incoming])
    same_text = known.copy()
    if content.encoder is not None and known.any():  # a re-encoding differs in the last float bits: compare
        difference = abs(content.features[rows[known]] - features[np.flatnonzero(known)])
        same_text[known] = np.asarray(difference.max(axis=1).todense()).ravel() < 1e-5
    same_name = known & np.array(
        [
            (b.title, b.authors, b.in_series()) == (catalogue.titles[r], catalogue.authors[r], catalogue.series[r])
            for b, r in zip(incoming, rows, strict=True)
        ]
    )
    changed = np.flatnonzero(~(same_text & same_name))
    if len(changed) == 0:
        return None
    incoming = [incoming[i] for i in changed]
    features = sp.vstack(  # books whose text is unchanged keep their trained rows
        [content.features[rows[i]] if same_text[i] else features[i] for i in changed], format="csr"
    )
    vectors = np.stack([content.vectors[rows[i]] if same_text[i] else vectors[i] for i in changed])
    keep = np.setdiff1d(np.arange(len(catalogue.book_ids)), rows[changed][known[changed]])
    ids = np.concatenate([catalogue.book_ids[keep], [book.book_id for book in incoming]]).astype(np.int32)
    order = np.argsort(ids, kind="stable")
    titles = [catalogue.titles[p] for p in keep] + [b.title for b in incoming]
    authors = [catalogue.authors[p] for p in keep] + [b.authors for b in incoming]
    series = [catalogue.series[p] for p in keep] + [b.in_series() for b in incoming]
    merged = ContentModel(
        sp.csr_matrix(sp.vstack([content.features[keep], features], format="csr")[order]),
        np.vstack([content.vectors[keep], vectors])[order].astype(np.float32),
        content.encoder,
    )
    ordered = Catalogue(ids[order], [titles[i] for i in order], [authors[i] for i in order], [series[i] for i in order])
    return ordered, merged, [book.book_id for book in incoming]
