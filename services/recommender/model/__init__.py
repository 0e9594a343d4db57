"""Model maths: collaborative filtering (implicit ALS), TF-IDF content similarity, and their blend."""
