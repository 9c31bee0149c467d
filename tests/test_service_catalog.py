"""index.store.live: query-vs-catalogue search and fusion against exact/self-match references,
and the atomic snapshot persistence the service relies on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from index.data.listings import read_catalogue
from index.errors import BundleError, NotFoundError
from index.features.embed import Features, QueryFeatures, embed
from index.matching.fusion import FusionConfig, fuse
from index.matching.selfmatch import self_neighbours
from index.search.knn import hamming_knn, knn_numpy
from index.search.stores import FaissFlatStore
from index.store.live import LiveCatalogue, store_knn
from index.store.live_match import fuse_against, search_queries
from index.store.model import load_encoders
from index.store.snapshots import current_snapshot, load_snapshot, save_snapshot


def test_hamming_knn_matches_exact_distances() -> None:
    rng = np.random.default_rng(0)
    cb = rng.integers(0, 256, (40, 8), dtype=np.uint8)
    cq = rng.integers(0, 256, (7, 8), dtype=np.uint8)
    vb = rng.random(40) > 0.2
    vq = np.array([True, True, False, True, True, True, True])
    D, I = hamming_knn(cq, vq, cb, vb, k=5)
    bits = np.unpackbits(cq[:, None, :] ^ cb[None, :, :], axis=2).sum(axis=2)  # (7, 40)
    sim = np.where(vb[None, :], 1 - bits / 64, -np.inf)
    assert (I[2] == -1).all() and np.isneginf(D[2]).all()
    for j in np.flatnonzero(vq):
        assert vb[I[j]].all()
        np.testing.assert_allclose(D[j], np.sort(sim[j])[::-1][:5], rtol=1e-6)
        np.testing.assert_allclose(D[j], sim[j, I[j]], rtol=1e-6)


def test_store_knn_maps_ids_to_rows_like_exact_search() -> None:
    rng = np.random.default_rng(1)
    xb = rng.normal(size=(30, 6)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(100, 130, dtype=np.int64)  # rows 0..29 have ids 100..129
    store = FaissFlatStore(6, device="cpu")
    keep = np.flatnonzero(np.arange(30) % 4 != 0)  # rows without a vector are never found
    store.add(ids[keep], xb[keep])
    xq = rng.normal(size=(5, 6)).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    valid = np.array([True, False, True, True, True])
    D, I = store_knn(xq, valid, store, ids, k=8)
    Dr, Ir = knn_numpy(xq, xb[keep], 8)
    assert (I[1] == -1).all()
    for j in np.flatnonzero(valid):
        np.testing.assert_array_equal(I[j], keep[Ir[j]])
        np.testing.assert_allclose(D[j], Dr[j], rtol=1e-5, atol=1e-6)


def _live(feats: Features, ids: list[str], rows: np.ndarray | None = None) -> LiveCatalogue:
    rows = np.arange(len(ids)) if rows is None else rows
    dims = {
        m: getattr(feats, m).shape[1] for m in ("text", "image") if getattr(feats, m) is not None
    }
    live = LiveCatalogue(dims=dims, tfidf=feats.tfidf, device="cpu")
    live.upsert([ids[i] for i in rows], [""] * len(rows), _query(feats, ids, rows))
    return live


def _query(feats: Features, ids: list[str], rows: np.ndarray) -> QueryFeatures:
    titles = [feats.tfidf_titles[i] for i in rows]  # type: ignore[attr-defined]
    hexes = [
        bytes(c).hex() if v else "" for c, v in zip(feats.phash, feats.phash_valid, strict=True)
    ]
    q = QueryFeatures.build(
        titles,
        [hexes[i] for i in rows],
        text=feats.text[rows] if feats.text is not None else None,
        image=feats.image[rows] if feats.image is not None else None,
        image_valid=feats.image_valid[rows] if feats.image_valid is not None else None,
    )
    if feats.text_valid is not None:
        q.text_valid = feats.text_valid[rows]
    return q


@pytest.fixture(scope="module")
def pool(synth: Path, model_dir: Path) -> tuple[list[str], Features, dict]:
    cat = read_catalogue(synth / "listings.csv", images_dir=synth / "images")
    feats = embed(cat, load_encoders(model_dir, device="cpu"))
    feats.tfidf_titles = cat.title  # type: ignore[attr-defined]
    return cat.posting_id, feats, self_neighbours(feats, device="cpu")


CONFIG = FusionConfig(thresholds={"tfidf": 0.6, "phash": 0.85, "text": 0.95, "image": 0.9})


def test_members_match_as_in_the_self_match(pool: tuple[list[str], Features, dict]) -> None:
    """Every catalogue row queried by its posting_id gets exactly its `fuse` row."""
    ids, feats, nb = pool
    want, _ = fuse(nb, CONFIG, len(ids))
    live = _live(feats, ids)
    rows = np.arange(len(ids))
    I, S, _ = search_queries(live, _query(feats, ids, rows), CONFIG, ids)
    for r in rows:
        got = [int(x) for x in I[r] if x >= 0]
        assert got[0] == r and np.isposinf(S[r, 0])
        assert set(got) == {int(x) for x in want[r] if x >= 0}, r
    assert (I >= 0).sum() > len(ids) * 1.5  # groups were found, not only the rows themselves


def test_outsider_matches_as_if_it_were_in_the_pool(
    pool: tuple[list[str], Features, dict],
) -> None:
    """A query not in the catalogue gets its self-match row of (catalogue + query), minus itself."""
    ids, feats, nb = pool
    want, _ = fuse(nb, CONFIG, len(ids))
    checked = 0
    for r in range(0, len(ids), 7):
        rest = np.array([i for i in range(len(ids)) if i != r])
        live = _live(feats, ids, rest)
        I, _, _ = search_queries(live, _query(feats, ids, np.array([r])), CONFIG, [None])
        got = {ids[rest[x]] for x in I[0] if x >= 0}
        assert got == {ids[x] for x in want[r] if x >= 0 and x != r}, r
        checked += len(got) > 0
    assert checked > 3


def test_fuse_against_drops_an_outsider_and_keeps_a_member() -> None:
    D = np.array([[0.9, 0.7, 0.2], [0.95, 0.3, -np.inf]], np.float32)
    I = np.array([[4, 2, 0], [1, 3, -1]], np.int64)
    cfg = FusionConfig(thresholds={"tfidf": 0.5}, min2_floor=0.5)
    Iq, Sq = fuse_against({"tfidf": (D, I)}, cfg, np.array([-1, 1]))
    assert Iq.shape == (2, 50)
    assert [x for x in Iq[0] if x >= 0] == [4, 2]  # the outsider is not listed
    assert [x for x in Iq[1] if x >= 0] == [1]  # itself; row 3 is under the threshold...
    assert np.isposinf(Sq[1, 0])
    cfg2 = cfg.with_(thresholds={"tfidf": 0.99}, min2_floor=0.1)
    Iq, _ = fuse_against({"tfidf": (D, I)}, cfg2, np.array([-1, 1]))
    assert [x for x in Iq[0] if x >= 0] == [4]  # ... but min2 gives a lone row its nearest
    assert [x for x in Iq[1] if x >= 0] == [1, 3]


def test_upsert_replace_remove_and_refit(pool: tuple[list[str], Features, dict]) -> None:
    live = LiveCatalogue(dims={}, device="cpu")  # refits its TF-IDF on its own titles
    q = QueryFeatures.build(["wardah lipstick matte", "indomie goreng"], ["", "ffff000000000000"])
    assert live.upsert(["a", "b"], ["", ""], q) == (2, 0)
    q2 = QueryFeatures.build(["wardah lipstick matte 3gr", "kaos polos"], ["", ""])
    assert live.upsert(["a", "c"], ["", ""], q2) == (1, 1)
    assert live.posting_id == ["b", "a", "c"] and live.get("a")["title"].endswith("3gr")
    q3 = QueryFeatures.build(["lipstick wardah matte 3gr"], [""])
    I, _, _ = search_queries(live, q3, CONFIG, [None])
    assert [live.posting_id[x] for x in I[0] if x >= 0] == ["a"]
    live.remove("a")
    with pytest.raises(NotFoundError):
        live.remove("a")
    q4 = QueryFeatures.build(["indomie goreng"], ["ffff000000000001"])
    I, _, _ = search_queries(live, q4, CONFIG, [None])
    assert [live.posting_id[x] for x in I[0] if x >= 0] == ["b"]


def test_snapshot_round_trip_and_crash_leaves_old_state(
    tmp_path: Path, pool: tuple[list[str], Features, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, feats, _ = pool
    live = _live(feats, ids, np.arange(10))
    meta = {"encoders": "x"}
    save_snapshot(tmp_path, live, meta)
    back = load_snapshot(tmp_path, meta, tfidf=feats.tfidf, device="cpu")
    assert back is not None and back.posting_id == live.posting_id and back.title == live.title
    assert back.image_phash == live.image_phash and back.next_id == live.next_id
    q = _query(feats, ids, np.arange(10))
    np.testing.assert_array_equal(
        search_queries(back, q, CONFIG, ids[:10])[0], search_queries(live, q, CONFIG, ids[:10])[0]
    )
    with pytest.raises(BundleError, match="other encoders"):
        load_snapshot(tmp_path, {"encoders": "y"})

    live.remove(ids[0])
    real_replace = os.replace

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)  # dies right before the commit point
    with pytest.raises(OSError):
        save_snapshot(tmp_path, live, meta)
    monkeypatch.setattr(os, "replace", real_replace)
    old = load_snapshot(tmp_path, meta, tfidf=feats.tfidf)
    assert old is not None and len(old) == 10 and ids[0] in old  # the old state, whole
    save_snapshot(tmp_path, live, meta)  # the next save commits and cleans up the leftovers
    new = load_snapshot(tmp_path, meta, tfidf=feats.tfidf)
    assert new is not None and len(new) == 9 and ids[0] not in new
    snaps = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert snaps == [current_snapshot(tmp_path).name]  # type: ignore[union-attr]


def test_sparse_topk_equals_sparse_knn() -> None:
    import scipy.sparse as sp

    from index.features.tfidf import TitleTfidf
    from index.search.knn import sparse_knn, sparse_topk

    titles = [f"wardah lipstick {i % 7} matte {i % 3}" for i in range(80)] + ["", "kaos polos"]
    tf = TitleTfidf().fit(titles)
    Xb = tf.transform(titles)
    Xq = tf.transform(["lipstick matte 3", "", "polos kaos hitam", "zzz"])
    S = (Xq @ Xb.T).toarray()
    for k in (5, 51, 200):
        D, I = sparse_topk(Xq, sp.csr_matrix(Xb.T), k)
        Dr, Ir = sparse_knn(Xq, Xb, k)
        np.testing.assert_allclose(D, Dr, rtol=1e-6)
        for j in range(I.shape[0]):  # the same neighbours, up to which of the
            a, b = I[j][I[j] >= 0], Ir[j][Ir[j] >= 0]  # scores tied with the k-th a cut keeps
            last = D[j][I[j] >= 0].min() if a.size else 0.0
            assert set(a[S[j, a] > last]) == set(b[S[j, b] > last])
            np.testing.assert_allclose(S[j, b], Dr[j][Ir[j] >= 0], rtol=1e-6)
