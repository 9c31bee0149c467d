from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.data.listings import read_catalogue, write_submission
from index.errors import CatalogueError, ImageError
from index.features.embed import Encoders, embed, embed_images

HEADER = "posting_id,image,image_phash,title,label_group\n"


def write(tmp_path: Path, text: str | bytes, name: str = "x.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_reads_valid_csv(tmp_path: Path) -> None:
    p = write(
        tmp_path, HEADER + 'a,a.jpg,94974f937d4c2433,"Paper  Bag, Victoria",1\nb,b.jpg,,Tas,2\n'
    )
    cat = read_catalogue(p)
    assert cat.posting_id == ["a", "b"]
    assert cat.title == ["Paper Bag, Victoria", "Tas"]
    assert cat.image_phash == ["94974f937d4c2433", ""]
    assert cat.labels.tolist() == [0, 1]
    assert not cat.issues


def test_missing_required_column(tmp_path: Path) -> None:
    p = write(tmp_path, "posting_id,image\na,a.jpg\n")
    with pytest.raises(CatalogueError, match="missing required column.*title"):
        read_catalogue(p)


def test_duplicate_posting_ids(tmp_path: Path) -> None:
    p = write(tmp_path, "posting_id,title\na,x\na,y\n")
    with pytest.raises(CatalogueError, match="duplicate posting_id.*a"):
        read_catalogue(p)


def test_not_utf8_names_line(tmp_path: Path) -> None:
    p = write(tmp_path, b"posting_id,title\na,ok\nb,caf\xe9\n")
    with pytest.raises(CatalogueError, match=r"not UTF-8.*0xe9 on line 3"):
        read_catalogue(p)


def test_wrong_field_count_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="line 3 has 3 field"):
        read_catalogue(write(tmp_path, "posting_id,title\na,x\nb,y,z\n"))
    with pytest.raises(CatalogueError, match="malformed CSV"):
        read_catalogue(write(tmp_path, 'posting_id,title\na,"unclosed\n'))
    with pytest.raises(CatalogueError, match="empty"):
        read_catalogue(write(tmp_path, ""))
    with pytest.raises(CatalogueError, match="no rows"):
        read_catalogue(write(tmp_path, "posting_id,title\n"))
    with pytest.raises(CatalogueError, match="cannot read"):
        read_catalogue(tmp_path / "absent.csv")


def test_soft_problems_are_counted_not_dropped(tmp_path: Path) -> None:
    img = tmp_path / "img"
    img.mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(img / "ok.jpg")
    (img / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    p = write(
        tmp_path,
        HEADER
        + "a,ok.jpg,,Tas kulit,1\n"
        + "b,corrupt.jpg,,,1\n"
        + "c,missing.jpg,zz,Tas kulit,2\n",
    )
    cat = read_catalogue(p, images_dir=img)
    assert len(cat) == 3
    assert cat.issues["empty title (no title signal)"] == 1
    assert cat.issues["image file missing (no image signal)"] == 1
    assert cat.issues["image_phash not 16 hex digits (ignored)"] == 1
    feats = embed(cat, Encoders())
    assert feats.phash_valid.tolist() == [True, False, False]  # phash computed for a only
    assert feats.issues["image unreadable for phash (no phash signal)"] == 2
    assert len(feats) == 3


def test_embed_images_skips_unreadable(tmp_path: Path, model_dir: Path) -> None:
    from index.features.encoders import load_encoder

    Image.new("RGB", (50, 30), (0, 100, 200)).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    enc = load_encoder(model_dir / "image")
    x, valid = embed_images(enc, [str(tmp_path / "ok.png"), str(tmp_path / "bad.jpg"), ""])
    assert valid.tolist() == [True, False, False]
    assert np.allclose(np.linalg.norm(x[0]), 1.0) and not x[1:].any()
    with pytest.raises(ImageError, match="not a readable image"):
        enc.encode([str(tmp_path / "bad.jpg")])


def test_images_dir_must_exist(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + "a,a.jpg,,t,1\n")
    with pytest.raises(CatalogueError, match="images folder not found"):
        read_catalogue(p, images_dir=tmp_path / "nope")


def test_write_submission_format(tmp_path: Path) -> None:
    out = tmp_path / "sub.csv"
    write_submission(out, ["a", "b"], [["a", "b"], ["b"]])
    assert out.read_text() == "posting_id,matches\na,a b\nb,b\n"


def test_first_groups_keeps_whole_groups(tmp_path: Path) -> None:
    p = write(tmp_path, "posting_id,title,label_group\na,x,g1\nb,y,g2\nc,z,g1\nd,w,g3\n")
    cat = read_catalogue(p).first_groups(2)
    assert cat.posting_id == ["a", "b", "c"] and cat.label_group == ["g1", "g2", "g1"]
    with pytest.raises(CatalogueError, match="no label_group"):
        read_catalogue(write(tmp_path, "posting_id,title\na,x\n")).first_groups(1)
