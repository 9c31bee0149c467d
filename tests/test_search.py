import numpy as np
import pytest
import scipy.sparse as sp

from index.search.knn import hamming_self_knn, knn, knn_numpy, l2_normalize, self_knn, sparse_knn
from index.search.stores import FaissFlatStore


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, d)))


def test_faiss_matches_bruteforce() -> None:
    xb, xq = _data(500, 32), _data(40, 32, seed=1)
    D, I = knn(xq, xb, 51, device="cpu")
    Dr, Ir = knn_numpy(xq, xb, 51)
    assert D.shape == I.shape == (40, 51)
    np.testing.assert_allclose(D, Dr, atol=1e-5)
    # ids agree wherever the similarity is not tied with a neighbour
    untied = np.abs(np.diff(Dr, axis=1, append=-2)) > 1e-5
    assert (Ir == I)[untied].mean() > 0.99


def test_knn_pads_when_fewer_than_k() -> None:
    D, I = knn(_data(3, 8), _data(5, 8, 2), 51, device="cpu")
    assert (I[:, 5:] == -1).all() and np.isneginf(D[:, 5:]).all()
    assert (I[:, :5] >= 0).all()


def test_store_upsert_and_remove() -> None:
    x = _data(10, 8)
    s = FaissFlatStore(8, device="cpu")
    s.add(np.arange(10), x)
    s.add(np.array([3]), x[[7]])  # replace id 3 with 7's vector
    assert len(s) == 10
    _, I = s.search(x[[7]], 2)
    assert set(I[0].tolist()) == {3, 7}
    assert s.remove(np.array([3, 99])) == 1
    _, I = s.search(x[[7]], 1)
    assert I[0, 0] == 7 and len(s) == 9
    assert s.contains(np.array([3, 7, 99])).tolist() == [False, True, False]
    assert FaissFlatStore(8, device="cpu").contains(np.array([0])).tolist() == [False]


def test_self_knn_masks_invalid_rows() -> None:
    x = _data(20, 8)
    valid = np.ones(20, bool)
    valid[[2, 5]] = False
    _, I = self_knn(x, valid, k=51, device="cpu")
    assert (I[[2, 5]] == -1).all()
    assert not np.isin(I, [2, 5]).any()
    assert (I[valid, 0] == np.flatnonzero(valid)).all()  # nearest is itself


def test_hamming_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(200, 8), dtype=np.uint8)
    codes[10] = codes[11]
    D, I = hamming_self_knn(codes, k=5)
    bits = np.unpackbits(codes, axis=1).astype(int)
    ham = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    ref = np.sort(ham, axis=1)[:, :5]
    np.testing.assert_allclose(D, 1 - ref / 64)
    assert set(I[10, :2].tolist()) == {10, 11}


@pytest.mark.parametrize("join", [True, False], ids=["sparse-top-k-join", "dense-chunks"])
def test_sparse_knn_matches_dense(join: bool) -> None:
    if join:
        pytest.importorskip("sparse_dot_topn")
    X = sp.random(300, 100, density=0.05, random_state=0, format="csr", dtype=np.float32)
    X = sp.csr_matrix(X.multiply(1 / np.maximum(np.sqrt(X.multiply(X).sum(1)), 1e-12)))
    X = sp.csr_matrix(sp.vstack([X, X[:7], sp.csr_matrix((2, 100), dtype=np.float32)]))
    D, I = sparse_knn(X, X, k=10, chunk=64, join=join)  # with exact duplicates, empty rows
    S = (X @ X.T).toarray()
    ref = -np.sort(-S, axis=1)[:, :10]
    ref = np.where(ref > 0, ref, -np.inf)
    np.testing.assert_allclose(D, ref, atol=1e-5)
    ok = I >= 0
    np.testing.assert_allclose(S[np.nonzero(ok)[0], I[ok]], D[ok], atol=1e-5)
    assert (I[-2:] == -1).all() and np.isneginf(D[-2:]).all()  # a zero row has no neighbour
    assert all(len(set(r[r >= 0].tolist())) == (r >= 0).sum() for r in I)  # no id twice
    if join:  # equal scores in column order: a row and its duplicate
        for r in range(7):
            pos = [j for j in range(10) if I[r, j] in (r, 300 + r)]
            assert I[r, pos].tolist() == [r, 300 + r] and D[r, pos[0]] == D[r, pos[1]]


def test_sparse_knn_without_sparse_dot_topn_uses_the_dense_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from index.search.knn import sparse_topk_join

    X = sp.csr_matrix(np.eye(4, dtype=np.float32))
    monkeypatch.setitem(sys.modules, "sparse_dot_topn", None)  # not installed
    assert sparse_topk_join(X, X, 2) is None
    D, I = sparse_knn(X, X, k=2)
    assert I[:, 0].tolist() == [0, 1, 2, 3] and (I[:, 1] == -1).all()
    np.testing.assert_allclose(D[:, 0], 1.0)


def test_order_ties_sorts_equal_scores_by_id_and_padding_last() -> None:
    from index.search.knn import order_ties

    D = np.array([[0.9, 0.5, 0.9, -np.inf, 0.5], [1.0, 1.0, 0.2, 0.2, -np.inf]], np.float32)
    I = np.array([[7, 4, 3, -1, 2], [5, 1, 9, 0, -1]], np.int64)
    D2, I2 = order_ties(D, I)
    assert I2.tolist() == [[3, 7, 2, 4, -1], [1, 5, 0, 9, -1]]
    np.testing.assert_allclose(D2[:, :4], [[0.9, 0.9, 0.5, 0.5], [1.0, 1.0, 0.2, 0.2]], rtol=1e-6)


def test_self_neighbours_give_equal_scores_in_id_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact duplicate titles tie on every signal; whatever order a search returns them in,
    the single process orders them as the Ray engine's merged shards do (by row number), so
    the at-least-one-match pick agrees."""
    import index.matching.selfmatch as pipeline
    from index.data.listings import Catalogue

    titles = ["tas ransel hitam", "sepatu lari pria", "tas ransel hitam", "kopi bubuk 200gr"]
    titles += ["tas ransel hitam", "sepatu lari pria"]
    n = len(titles)
    cat = Catalogue(
        posting_id=[f"p{i}" for i in range(n)],
        title=titles,
        image=[""] * n,
        image_phash=["0" * 16] * n,
    )

    def reversed_(search):  # the search's columns in reverse: ties (and scores) out of order
        def run(*a, **kw):
            D, I = search(*a, **kw)
            return D[:, ::-1].copy(), I[:, ::-1].copy()

        return run

    monkeypatch.setattr(pipeline, "sparse_knn", reversed_(pipeline.sparse_knn))
    monkeypatch.setattr(pipeline, "hamming_self_knn", reversed_(pipeline.hamming_self_knn))
    nb = pipeline.self_neighbours(pipeline.embed(cat), k=n, device="cpu")
    for name, (D, I) in nb.items():
        for i in range(n):
            d, ids = D[i][I[i] >= 0], I[i][I[i] >= 0]
            assert (np.diff(d) <= 0).all(), (name, i, d.tolist())
            for a in range(len(ids) - 1):
                if d[a] == d[a + 1]:
                    assert ids[a] < ids[a + 1], (name, i, ids.tolist(), d.tolist())
    assert nb["tfidf"][1][4][:3].tolist() == [0, 2, 4]  # the three copies, by id
    assert nb["phash"][1][3].tolist() == list(range(n))  # one phash: all tie, by id


def test_faiss_store_add_replaces_stored_ids_and_appends_new_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from index.search.stores import FaissFlatStore

    e = np.eye(4, dtype=np.float32)
    s = FaissFlatStore(4, device="cpu")
    s.add(np.array([5, 9]), e[:2])
    s.add(np.array([10]), e[2:3])  # above every stored id: appended
    assert len(s) == 3
    s.add(np.array([5]), e[3:4])  # a stored id: replaced, not duplicated
    assert len(s) == 3 and np.allclose(s.vectors(np.array([5])), e[3:4])
    s.add(np.array([7]), e[0:1])  # below the largest id, not stored: added
    assert len(s) == 4
    s.save(tmp_path / "x.faiss")
    back = FaissFlatStore.load(tmp_path / "x.faiss", device="cpu")
    back.add(np.array([9]), e[3:4])  # after a load, the bound comes from the file
    assert len(back) == 4 and np.allclose(back.vectors(np.array([9])), e[3:4])
    c = back.clone()
    c.add(np.array([10]), e[0:1])
    assert len(c) == 4 and np.allclose(back.vectors(np.array([10])), e[2:3])  # independent


def test_faiss_store_removals_are_tombstones_until_purged_and_searches_stay_exact(
    tmp_path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import index.search.stores as stores

    monkeypatch.setattr(stores, "TOMBSTONES", 5)
    xb, xq = _data(60, 8, seed=1), _data(7, 8, seed=2)
    s = FaissFlatStore(8, device="cpu")
    ids = np.arange(100, 160, dtype=np.int64)
    s.add(ids, xb)
    live = np.ones(60, bool)
    rng = np.random.default_rng(3)
    for step, r in enumerate(rng.permutation(60)[:40].tolist()):
        assert s.remove(np.array([ids[r], ids[r], 999])) == 1  # duplicates, unknown: once
        live[r] = False
        assert s.remove(np.array([ids[r]])) == 0  # already gone
        ghosts = s._cpu.ntotal - len(s)  # tombstoned, still in the FAISS index
        assert ghosts == (step + 1) % 6 and 0 <= ghosts <= 5  # purged past 5 marks
        assert len(s) == live.sum()
        assert s.contains(ids).tolist() == live.tolist()
        assert s.contains(np.concatenate([ids, ids])).tolist() == live.tolist() * 2  # >64 path
        for k in (1, 4, 25):  # against exact search over what is left
            D, I = s.search(xq, k)
            De, Ie = knn_numpy(xq, xb[live], k)
            kk = min(k, int(live.sum()))
            np.testing.assert_allclose(D[:, :kk], De[:, :kk], atol=1e-5)
            assert (I[:, :kk] == ids[live][Ie[:, :kk]]).all()
            assert (I[:, kk:] == -1).all() and np.isneginf(D[:, kk:]).all()
    gone = ids[~live]
    for g in gone:  # tombstoned or purged: unknown either way
        with pytest.raises(RuntimeError, match="removed|not found"):
            s.vectors(np.array([g]))
    c = s.clone()  # tombstones travel with a copy; a save purges them
    s.save(tmp_path / "t.faiss")
    back = FaissFlatStore.load(tmp_path / "t.faiss", device="cpu")
    assert back._cpu.ntotal == len(back) == len(c) == 20
    assert not back.contains(gone).any() and not c.contains(gone).any()
    s.add(gone[:1], xb[:1])  # a removed id added again: stored once, with the new vector
    assert len(s) == 21 and np.allclose(s.vectors(gone[:1]), xb[:1])


@pytest.mark.parametrize("k", [1, 5, 51])
def test_hamming_self_knn_buckets_match_brute_force(k: int) -> None:
    from index.search.knn import hamming_knn

    rng = np.random.default_rng(k)
    base = rng.integers(0, 256, size=(40, 8), dtype=np.uint8)
    codes = base[rng.integers(0, 40, size=300)]  # many exact duplicates
    flip = rng.random((300, 64)) < 0.03  # and near ones
    codes = np.packbits(np.unpackbits(codes, axis=1) ^ flip, axis=1)
    valid = rng.random(300) > 0.1
    D, I = hamming_self_knn(codes, valid, k)
    bits = np.unpackbits(codes, axis=1).astype(np.int16)
    ham = (bits[:, None, :] != bits[None, :, :]).sum(-1)  # (300, 300) brute force
    ham[:, ~valid] = 99
    for r in range(300):
        if not valid[r]:
            assert (I[r] == -1).all() and np.isneginf(D[r]).all()
            continue
        want = np.sort(ham[r][valid])[:k]
        got = I[r][I[r] >= 0]
        assert len(got) == len(want) == min(k, valid.sum()) and len(set(got)) == len(got)
        np.testing.assert_allclose(D[r, : len(want)], 1 - want / 64)
        assert (ham[r, got] == want).all()  # each row at the distance its score says
        assert valid[got].all()
    Df, _ = hamming_knn(codes, valid, codes, valid, k)  # FAISS over every row
    np.testing.assert_allclose(D, Df)
