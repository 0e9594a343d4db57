-- A book's series and its place in it, as the catalogue states them (NULL: as its title says, "Catching Fire
-- (The Hunger Games, #2)"). Both or neither.
ALTER TABLE books ADD COLUMN series text, ADD COLUMN series_position double precision,
    ADD CONSTRAINT books_series_whole CHECK ((series IS NULL) = (series_position IS NULL));
