"""A synthetic but learnable demo catalogue: users have latent genre tastes, and both what they read and what
the books say follow from those tastes, so collaborative filtering and content similarity both find signal.
Popularity has a long tail (a Pareto law): at a million books most are never read. Deterministic for a given seed,
and vectorised, so that a million books with their text take about a minute (bench/scale.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recommender.model.dataset import Book, Interaction

GENRES: dict[str, tuple[str, ...]] = {
    "fantasy": ("dragon", "kingdom", "sorcerer", "quest", "sword", "prophecy", "elven", "throne", "magic", "realm"),
    "science-fiction": ("starship", "galaxy", "android", "colony", "quantum", "orbit", "alien", "cyborg", "warp"),
    "mystery": ("detective", "murder", "clue", "alibi", "inspector", "suspect", "manor", "poison", "witness"),
    "romance": ("love", "heart", "wedding", "kiss", "passion", "courtship", "longing", "summer", "letters"),
    "history": ("empire", "revolution", "dynasty", "war", "treaty", "medieval", "ancient", "republic", "siege"),
    "biography": ("life", "memoir", "childhood", "career", "legacy", "portrait", "journey", "founder", "diary"),
    "horror": ("haunted", "ghost", "curse", "shadow", "blood", "crypt", "nightmare", "ritual", "demon"),
    "thriller": ("conspiracy", "agent", "hostage", "escape", "assassin", "spy", "betrayal", "chase", "code"),
    "poetry": ("verse", "sonnet", "rhyme", "elegy", "ode", "stanza", "lyric", "muse", "ballad"),
    "philosophy": ("ethics", "reason", "virtue", "existence", "truth", "mind", "freedom", "logic", "being"),
    "cooking": ("recipe", "kitchen", "bread", "spice", "feast", "baking", "flavour", "harvest", "garden"),
    "travel": ("voyage", "island", "mountain", "road", "desert", "river", "map", "border", "compass"),
    "economics": ("market", "capital", "trade", "money", "growth", "labour", "debt", "price", "bank"),
    "psychology": ("habit", "memory", "emotion", "behaviour", "brain", "anxiety", "happiness", "bias", "therapy"),
    "young-adult": ("school", "friendship", "rebel", "secret", "academy", "summer", "first", "chosen", "trial"),
    "classics": ("society", "estate", "fortune", "duty", "virtue", "provincial", "inheritance", "manners", "era"),
}
COMMON_WORDS = (
    "story", "world", "people", "night", "time", "house", "city", "book", "years", "family", "truth", "home",
    "stranger", "promise", "winter", "light", "edge", "return", "last", "new", "old", "great", "small", "long",
)  # fmt: skip
FIRST_NAMES = (
    "Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farah", "Gus", "Hana", "Ivan", "Jun", "Kemi", "Luca", "Mara", "Nils",
    "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tove", "Uma", "Viktor", "Wen", "Xavier", "Yara", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Abara", "Berg", "Castillo", "Dumont", "Eriksen", "Fischer", "Garcia", "Haddad", "Ishikawa", "Jensen", "Kowalski",
    "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quist", "Rossi", "Sato", "Tanaka", "Underwood", "Vasquez",
)  # fmt: skip
DESCRIPTION_WORDS = (20, 40)  # words per description, at random in this range
START = 1_700_000_000.0  # interactions fall within the year after this (Unix seconds)


@dataclass(frozen=True)
class DemoCatalogue:
    books: list[Book]
    interactions: list[Interaction]


def generate(seed: int, num_books: int, num_users: int, num_interactions: int) -> DemoCatalogue:
    rng = np.random.default_rng(seed)
    names = list(GENRES)
    genre = rng.integers(0, len(names), size=num_books)
    second = np.where(rng.random(num_books) < 0.3, rng.integers(0, len(names), size=num_books), genre)
    books = _books(rng, names, genre, second)
    popularity = rng.pareto(1.5, size=num_books) + 1.0
    tastes = rng.dirichlet(np.full(len(names), 0.15), size=num_users)
    return DemoCatalogue(books, _interactions(rng, genre, popularity, tastes, num_interactions))


def _books(
    rng: np.random.Generator, names: list[str], genre: npt.NDArray[np.int64], second: npt.NDArray[np.int64]
) -> list[Book]:
    n = len(genre)
    common = np.array(COMMON_WORDS)
    topical = [np.array(GENRES[name]) for name in names]
    word_of = np.stack([rng.choice(topical[g], size=n) for g in range(len(names))])[genre, np.arange(n)]
    first_title = np.char.title(word_of.astype(str))
    other_title = np.char.title(rng.choice(common, size=n))
    short = rng.random(n) < 0.5
    # Authors write mostly in one genre: the surname is tied to the genre.
    surnames = np.array(LAST_NAMES)[(genre * 3 + rng.integers(0, 3, size=n)) % len(LAST_NAMES)]
    firsts = rng.choice(np.array(FIRST_NAMES), size=n)
    years = rng.integers(1850, 2025, size=n)
    counts = rng.integers(*DESCRIPTION_WORDS, size=n)
    words = _description_words(rng, names, genre, second, counts)
    books = []
    for i in range(n):
        title = f"{first_title[i]} {other_title[i]}" if short[i] else f"The {other_title[i]} of the {first_title[i]}"
        kind = names[genre[i]]
        genres = (kind,) if second[i] == genre[i] else (kind, names[second[i]])
        description = f"A {kind.replace('-', ' ')} book. {words[i]}."
        books.append(Book(i + 1, title, f"{firsts[i]} {surnames[i]}", description, genres, int(years[i])))
    return books


def _description_words(
    rng: np.random.Generator,
    names: list[str],
    genre: npt.NDArray[np.int64],
    second: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
) -> list[str]:
    """Each book's description words: a word of its genre or of its second genre three times as likely as a
    common word."""
    vocabularies = [GENRES[name] for name in names]
    words = np.array([word for vocabulary in vocabularies for word in vocabulary] + list(COMMON_WORDS))
    sizes = np.array([len(vocabulary) for vocabulary in vocabularies])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    owner = np.repeat(np.arange(len(genre)), counts)
    own, other = sizes[genre[owner]], sizes[second[owner]]
    draw = rng.random(len(owner)) * (3 * own + 3 * other + len(COMMON_WORDS))
    from_own, from_other = draw < 3 * own, draw < 3 * (own + other)
    index = np.where(
        from_own,
        offsets[genre[owner]] + (draw / 3).astype(np.int64),
        np.where(
            from_other,
            offsets[second[owner]] + ((draw - 3 * own) / 3).astype(np.int64),
            offsets[-1] + (draw - 3 * (own + other)).astype(np.int64),
        ),
    )
    chosen = words[np.minimum(index, len(words) - 1)].tolist()
    ends = np.cumsum(counts).tolist()
    return [" ".join(chosen[end - count : end]) for end, count in zip(ends, counts.tolist(), strict=True)]


def _interactions(
    rng: np.random.Generator,
    genre: npt.NDArray[np.int64],
    popularity: npt.NDArray[np.float64],
    tastes: npt.NDArray[np.float64],
    num_interactions: int,
) -> list[Interaction]:
    """Each user reads about num_interactions / num_users books (at least 5), a book with a chance in proportion to
    its popularity times the user's taste for its genre: a genre by taste and its books' popularity, then a book of
    it by popularity. A book drawn twice for a user is drawn again (a few rounds), so that the counts hold."""
    num_users, num_genres = tastes.shape
    wanted = np.minimum(np.maximum(5, rng.poisson(num_interactions / max(num_users, 1), size=num_users)), len(genre))
    by_genre = [np.flatnonzero(genre == g) for g in range(num_genres)]
    mass = np.array([popularity[books].sum() for books in by_genre])
    genre_weights = (tastes + 0.005) * mass
    genre_cumulative = np.cumsum(genre_weights / genre_weights.sum(axis=1, keepdims=True), axis=1)
    book_cumulative = [np.cumsum(popularity[books]) for books in by_genre]
    pairs = np.zeros((0, 2), dtype=np.int64)
    for _round in range(4):
        have = np.bincount(pairs[:, 0], minlength=num_users) if len(pairs) else np.zeros(num_users, dtype=np.int64)
        users = np.repeat(np.arange(num_users), np.maximum(wanted - have, 0))
        if not len(users):
            break
        chosen = np.minimum((genre_cumulative[users] < rng.random(len(users))[:, None]).sum(axis=1), num_genres - 1)
        book = np.zeros(len(users), dtype=np.int64)
        for g, books in enumerate(by_genre):
            mine = np.flatnonzero(chosen == g)
            if len(mine) and len(books):
                picked = np.searchsorted(book_cumulative[g], rng.random(len(mine)) * book_cumulative[g][-1], "right")
                book[mine] = books[np.minimum(picked, len(books) - 1)]
        pairs = np.unique(np.concatenate([pairs, np.stack([users, book], axis=1)]), axis=0)
    users, book = pairs[:, 0], pairs[:, 1]
    affinity = tastes[users, genre[book]] / tastes[users].max(axis=1)
    rated = rng.random(len(users)) < 0.7  # the rest are reads or clicks without a rating
    ratings = np.clip(np.round(2.0 + 3.0 * affinity + rng.normal(0, 0.7, size=len(users))), 1, 5)
    times = START + rng.integers(0, 365 * 86_400, size=len(users)).astype(np.float64)
    return [
        Interaction(int(u) + 1, int(b) + 1, float(r) if is_rated else None, float(t))
        for u, b, r, is_rated, t in zip(users.tolist(), book.tolist(), ratings, rated, times, strict=True)
    ]
