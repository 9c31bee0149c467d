"""index.store.milvus.MilvusStore on milvus-lite (a local .db file, in-process server on 127.0.0.1):
the same neighbours and scores as the FAISS flat store, upserts and deletes seen by the next
search, exact duplicates kept, and a catalogue that matches the same on either store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="MilvusStore needs pymilvus (pip install -e '.[scale]')")
pytest.importorskip("milvus_lite", reason="local Milvus tests need milvus-lite ('.[scale]')")

from milvus_lite.server_manager import server_manager_instance

from index.data.listings import read_catalogue
from index.features.embed import Features, QueryFeatures, embed
from index.matching.fusion import FusionConfig
from index.search.knn import K, l2_normalize
from index.search.stores import FaissFlatStore, VectorStore
from index.store.live import LiveCatalogue
from index.store.live_match import search_queries
from index.store.milvus import MilvusStore, drop_index_cache
from index.store.model import load_encoders

TIE = 1e-5


@pytest.fixture(scope="module")
def feats(synth: Path, model_dir: Path) -> tuple[list[str], list[str], Features]:
    cat = read_catalogue(synth / "listings.csv", images_dir=synth / "images")
    return cat.posting_id, cat.title, embed(cat, load_encoders(model_dir, device="cpu"))


def _stores(tmp_path: Path, dim: int, name: str = "v") -> tuple[FaissFlatStore, MilvusStore]:
    return FaissFlatStore(dim, device="cpu"), MilvusStore(dim, tmp_path / "m.db", collection=name)


def assert_same_neighbours(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]):
    """Scores equal within 1e-5 rank by rank; ids equal, as sets among tied scores (a tie at
    the k-th score may also bring in different ids)."""
    (Da, Ia), (Db, Ib) = a, b
    assert Da.shape == Db.shape == Ia.shape == Ib.shape
    np.testing.assert_allclose(Da, Db, atol=TIE, rtol=0)
    np.testing.assert_array_equal(Ia < 0, Ib < 0)
    for j in range(Da.shape[0]):
        sa = dict(zip(Ia[j].tolist(), Da[j].tolist(), strict=True))
        sb = dict(zip(Ib[j].tolist(), Db[j].tolist(), strict=True))
        last = Da[j][Ia[j] >= 0].min(initial=np.inf)
        for i in set(sa) ^ set(sb):  # in one list only: tied with the cut-off
            assert abs(sa.get(i, sb.get(i)) - last) <= TIE, (j, i)
        for i in set(sa) & set(sb):
            assert abs(sa[i] - sb[i]) <= TIE, (j, i)


def test_milvus_same_neighbours_as_faiss_flat_on_a_catalogue(
    tmp_path: Path, feats: tuple[list[str], list[str], Features]
) -> None:
    _, _, f = feats
    for m in ("text", "image"):
        x, valid = getattr(f, m), getattr(f, f"{m}_valid")
        rows = np.flatnonzero(valid)
        fs, ms = _stores(tmp_path, x.shape[1], name=m)
        assert isinstance(ms, VectorStore)
        ids = 1000 + 3 * rows  # ids unrelated to positions
        fs.add(ids, x[rows])
        ms.add(ids, x[rows])
        assert len(ms) == len(fs) == rows.size
        got = ms.search(x, K)
        assert_same_neighbours(fs.search(x, K), got)
        assert (got[1] >= 0).sum() == x.shape[0] * min(K, rows.size)
        # duplicate titles give identical text vectors: all of them kept, at score 1
        if m == "text":
            assert ((got[0] > 1 - TIE).sum(axis=1) > 1).any()


def test_milvus_same_neighbours_on_random_vectors_with_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = l2_normalize(rng.normal(size=(1500, 32)))
    x[100:110] = x[7]  # ten exact copies of row 7 (eleven with it)
    fs, ms = _stores(tmp_path, 32)
    ids = np.arange(1500, dtype=np.int64)
    fs.add(ids, x)
    ms.add(ids, x)
    xq = np.vstack([x[:60], l2_normalize(rng.normal(size=(20, 32)))])
    D, I = ms.search(xq, K)
    assert_same_neighbours(fs.search(xq, K), (D, I))
    assert set(I[7, :11].tolist()) == {7, *range(100, 110)}
    assert (D[7, :11] >= 1 - 1e-6).all()  # a "score >= threshold" client filter keeps them


def test_milvus_upsert_and_delete_seen_by_the_next_search(tmp_path: Path) -> None:
    x = l2_normalize(np.random.default_rng(1).normal(size=(20, 8)))
    s = MilvusStore(8, tmp_path / "m.db")
    s.add(np.arange(20), x)
    D, I = s.search(x[[7]], 3)
    assert I[0, 0] == 7 and I[0, 1] != 3
    s.add(np.array([3]), x[[7]])  # replace id 3's vector with 7's: an upsert
    assert len(s) == 20
    D, I = s.search(x[[7]], 3)
    assert set(I[0, :2].tolist()) == {3, 7} and (D[0, :2] > 1 - TIE).all()
    np.testing.assert_allclose(s.vectors(np.array([3, 7])), x[[7, 7]], atol=1e-7)
    assert s.remove(np.array([7, 99])) == 1  # 99 was never there
    assert len(s) == 19
    assert s.contains(np.array([7, 3, 99])).tolist() == [False, True, False]
    D, I = s.search(x[[7]], 3)
    assert I[0, 0] == 3 and 7 not in I[0]
    D, I = s.search(x[:2], 51)  # fewer stored than k: padded as FAISS pads
    assert (I[:, 19:] == -1).all() and np.isneginf(D[:, 19:]).all()
    with pytest.raises(KeyError):
        s.vectors(np.array([7]))


def test_milvus_persists_and_reopens(tmp_path: Path) -> None:
    x = l2_normalize(np.random.default_rng(2).normal(size=(30, 8)))
    s = MilvusStore(8, tmp_path / "new" / "m.db", collection="text")  # folder made
    s.add(np.arange(30), x)
    s.remove(np.array([4]))
    before = s.search(x, 5)
    s.save(tmp_path / "text.ref")
    s.close()
    back = MilvusStore.load(tmp_path / "text.ref")
    assert len(back) == 29
    assert_same_neighbours(before, back.search(x, 5))
    with pytest.raises(ValueError, match="dimension"):
        MilvusStore(16, tmp_path / "new" / "m.db", collection="text")
    with pytest.raises(ValueError, match=r"\.db"):
        MilvusStore(8, tmp_path / "m.sqlite")


def test_milvus_lite_reopens_after_a_kill_cut_its_index_file(tmp_path: Path) -> None:
    """milvus-lite writes a segment's index file in place; a kill -9 mid-write leaves it
    truncated. The store drops the index files (a cache of the segments) and loads."""
    x = l2_normalize(np.random.default_rng(3).normal(size=(46, 16)))
    db = tmp_path / "m.db"
    s = MilvusStore(16, db, collection="text")
    s.add(np.arange(46), x)
    s.flush()
    before = s.search(x, 5)
    s.close()
    server_manager_instance.release_server(str(db))  # what the end of the process does
    (idx,) = db.glob("collections/text/partitions/*/indexes/*.idx")
    idx.write_bytes(idx.read_bytes()[:128])  # the header and none of the vectors
    back = MilvusStore(16, db, collection="text")
    assert len(back) == 46
    assert_same_neighbours(before, back.search(x, 5))
    back.close()
    assert drop_index_cache(db, "text") and not drop_index_cache(db, "absent")


def test_catalogue_matches_the_same_on_milvus_stores(
    tmp_path: Path, feats: tuple[list[str], list[str], Features]
) -> None:
    """LiveCatalogue with its dense signals in Milvus gives the matches it gives on FAISS."""
    ids, titles, f = feats
    assert f.text is not None and f.image is not None
    hexes = [bytes(c).hex() if v else "" for c, v in zip(f.phash, f.phash_valid, strict=True)]
    q = QueryFeatures.build(titles, hexes, text=f.text, image=f.image, image_valid=f.image_valid)
    dims = {"text": f.text.shape[1], "image": f.image.shape[1]}
    milvus = {m: MilvusStore(d, tmp_path / "cat.db", collection=m) for m, d in dims.items()}
    config = FusionConfig(thresholds={"tfidf": 0.6, "phash": 0.85, "text": 0.95, "image": 0.9})
    out = []
    for stores in ({}, milvus):
        live = LiveCatalogue(dims=dims, tfidf=f.tfidf, device="cpu", stores=dict(stores))
        live.upsert(ids, [""] * len(ids), q)
        live.remove(ids[5])
        out.append(search_queries(live, q, config, ids)[0])
        assert live.get(ids[0])["signals"][-2:] == ["text", "image"]
    for a, b in zip(*out, strict=True):  # equal scores may come in another order
        assert a[0] == b[0] and set(a.tolist()) == set(b.tolist())
    assert (out[1] >= 0).sum() > len(ids) * 1.5
