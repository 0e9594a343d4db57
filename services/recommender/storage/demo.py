"""A synthetic but learnable demo catalogue: users have latent genre tastes, and both what they read and what
the books say follow from those tastes, so collaborative filtering and content similarity both find signal.
Deterministic for a given seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class DemoCatalogue:
    books: list[Book]
    interactions: list[Interaction]


def generate(seed: int, num_books: int, num_users: int, num_interactions: int) -> DemoCatalogue:
    rng = np.random.default_rng(seed)
    genre_names = list(GENRES)
    book_genre = rng.integers(0, len(genre_names), size=num_books)
    books = [_book(rng, book_id, genre_names[g], genre_names) for book_id, g in enumerate(book_genre, start=1)]

    # Popularity follows a long tail; each user likes two or three genres strongly.
    popularity = rng.pareto(1.5, size=num_books) + 1.0
    tastes = rng.dirichlet(np.full(len(genre_names), 0.15), size=num_users)
    per_user = np.maximum(5, rng.poisson(num_interactions / max(num_users, 1), size=num_users))
    per_user = np.minimum(per_user, num_books)

    interactions: list[Interaction] = []
    start = 1_700_000_000.0
    for user_index in range(num_users):
        affinity = tastes[user_index][book_genre]
        weights = popularity * (affinity + 0.005)
        chosen = rng.choice(num_books, size=int(per_user[user_index]), replace=False, p=weights / weights.sum())
        for book_index in chosen:
            rating: float | None = None
            if rng.random() < 0.7:  # the rest are reads or clicks without a rating
                match = affinity[book_index] / tastes[user_index].max()
                rating = float(np.clip(np.round(2.0 + 3.0 * match + rng.normal(0, 0.7)), 1, 5))
            timestamp = start + float(rng.integers(0, 365 * 86_400))
            interactions.append(Interaction(user_index + 1, int(book_index) + 1, rating, timestamp))
    return DemoCatalogue(books=books, interactions=interactions)


def _book(rng: np.random.Generator, book_id: int, genre: str, genre_names: list[str]) -> Book:
    words = GENRES[genre]
    second = genre_names[int(rng.integers(0, len(genre_names)))] if rng.random() < 0.3 else genre
    title = f"The {rng.choice(COMMON_WORDS).title()} of the {rng.choice(words).title()}"
    if rng.random() < 0.5:
        title = f"{rng.choice(words).title()} {rng.choice(COMMON_WORDS).title()}"
    # Authors write mostly in one genre: the surname is tied to the genre.
    surname = LAST_NAMES[(genre_names.index(genre) * 3 + int(rng.integers(0, 3))) % len(LAST_NAMES)]
    authors = f"{rng.choice(FIRST_NAMES)} {surname}"
    vocabulary = np.array(words + GENRES[second] + COMMON_WORDS)
    topical = len(words) + len(GENRES[second])
    probabilities = np.where(np.arange(len(vocabulary)) < topical, 3.0, 1.0)
    description_words = rng.choice(vocabulary, size=int(rng.integers(20, 40)), p=probabilities / probabilities.sum())
    description = f"A {genre.replace('-', ' ')} book. " + " ".join(description_words) + "."
    genres = (genre,) if second == genre else (genre, second)
    return Book(book_id, title, authors, description, genres, int(rng.integers(1850, 2025)))
