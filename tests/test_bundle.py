from pathlib import Path

import numpy as np
import pytest

from index.data.listings import read_catalogue
from index.errors import BundleError
from index.features.embed import embed
from index.matching.fusion import FusionConfig
from index.store.atomic import write_atomic
from index.store.bundle import load_bundle, save_bundle, verify_bundle
from index.store.model import load_encoders


@pytest.fixture(scope="module")
def built(synth: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    cat = read_catalogue(synth / "listings.csv", images_dir=synth / "images")
    enc = load_encoders(model_dir, device="cpu")
    feats = embed(cat, enc)
    cfg = FusionConfig(thresholds={"tfidf": 0.6, "text": 0.9}, tuned_rows=len(cat))
    out = tmp_path_factory.mktemp("b") / "bundle"
    save_bundle(out, cat, feats, cfg, enc)
    return cat, feats, cfg, out


def test_round_trip_is_identical(built) -> None:
    cat, feats, cfg, out = built
    b = load_bundle(out, device="cpu")
    assert b.fusion == cfg
    assert b.catalogue.posting_id == cat.posting_id and b.catalogue.title == cat.title
    assert b.catalogue.label_group == cat.label_group
    assert (b.X != feats.X).nnz == 0
    np.testing.assert_array_equal(b.phash, feats.phash)
    np.testing.assert_array_equal(b.masks["phash"], feats.phash_valid)
    for m in ("text", "image"):
        x = getattr(feats, m)
        rows = np.flatnonzero(b.masks[m])
        np.testing.assert_array_equal(b.stores[m].vectors(rows), x[rows])
    # the saved TF-IDF vocabulary transforms new titles exactly like the fitted one
    titles = ["Wardah lipstick matte 2pcs", "kabel data"]
    assert (b.tfidf.transform(titles) != feats.tfidf.transform(titles)).nnz == 0
    # encoders travel with the bundle and give the same embeddings
    assert b.encoders.text is not None
    np.testing.assert_allclose(b.encoders.text.encode(cat.title), feats.text, atol=1e-6)
    m = b.manifest
    assert m["rows"] == len(cat) and m["dims"]["text"] == 16 and m["dims"]["image"] == 8
    assert set(m["signals"]) == {"tfidf", "phash", "text", "image"}


def test_tampered_bundle_is_refused(built, tmp_path: Path) -> None:
    import shutil

    _, _, _, out = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "phash.npy", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    with pytest.raises(BundleError, match="checksum mismatch for phash.npy"):
        verify_bundle(copy)
    (copy / "fusion.json").unlink()
    with pytest.raises(BundleError, match="fusion.json listed in the manifest is missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)


def test_atomic_write_keeps_old_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "b"
    write_atomic(out, lambda d: (d / "v").write_text("1"))

    def boom(d: Path) -> None:
        (d / "v").write_text("2")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(out, boom)
    assert (out / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temp folder left
    write_atomic(out, lambda d: (d / "v").write_text("3"))
    assert (out / "v").read_text() == "3"
