-- Ratings as the numbers clients send: a real (float4) column read 2.7 back as 2.7000000476837158. Through text,
-- so that the stored 2.7 becomes 2.7, not float4's nearest neighbour widened.
ALTER TABLE interactions ALTER COLUMN rating TYPE double precision USING rating::text::double precision;
