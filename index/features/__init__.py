"""Title text, images and phash, encoders, TF-IDF, and `embed` (listings -> features)."""
