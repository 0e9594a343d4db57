-- Books of the catalogue, the users, and what users did with books.
CREATE TABLE books (
    book_id        integer PRIMARY KEY CHECK (book_id > 0),
    title          text NOT NULL CHECK (title <> ''),
    authors        text NOT NULL DEFAULT '',
    description    text NOT NULL DEFAULT '',
    genres         text[] NOT NULL DEFAULT '{}',
    published_year integer,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    user_id    integer PRIMARY KEY CHECK (user_id > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per event (a rating, a read, a click); the CF matrix sums a user's weights per book.
-- rating is the explicit 0-5 rating when there is one; weight is what training uses (the rating, else 1).
CREATE TABLE interactions (
    interaction_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        integer NOT NULL REFERENCES users (user_id),
    book_id        integer NOT NULL REFERENCES books (book_id),
    rating         real CHECK (rating >= 0 AND rating <= 5),
    weight         real NOT NULL DEFAULT 1 CHECK (weight > 0),
    occurred_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX interactions_user_idx ON interactions (user_id);
CREATE INDEX interactions_book_idx ON interactions (book_id);
