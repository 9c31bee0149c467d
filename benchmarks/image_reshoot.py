"""Image training benchmark on real photos re-shot by augmentation.

Each photo in IMAGES (e.g. the 37 real Shopee train photos) becomes a group of 4-6
listings: crops, rotations, recolouring, overlay text and JPEG re-encoding of it
(`index.data.synthetic.reshoot`). Out-of-fold mean F1 (GroupKFold, thresholds tuned on the
folds) of: phash alone, the untrained backbone, the fine-tuned backbone.

    python benchmarks/image_reshoot.py ../shared/data/images --out out/reshoot
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image


def make_groups(images: Path, out: Path, seed: int) -> Path:
    """Write out/listings.csv + out/images/: each source photo re-shot 4-6 times."""
    from index.data.synthetic import reshoot

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for g, src in enumerate(
        sorted(p for p in images.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    ):
        img = Image.open(src).convert("RGB").resize((256, 256))
        for k in range(int(rng.integers(4, 7))):
            shot = reshoot(rng, img)
            name = f"{src.stem}_{k}.jpg"
            shot.save(out / "images" / name, quality=90)
            rows.append([f"p{g}_{k}", name, str(imagehash.phash(shot)), "", str(g)])
    path = out / "listings.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["posting_id", "image", "image_phash", "title", "label_group"])
        w.writerows(rows)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("images", type=Path, help="folder of source photos")
    ap.add_argument("--out", type=Path, default=Path("out/reshoot"))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from index.data.listings import read_catalogue
    from index.matching.fusion import FusionConfig, phash_similarity
    from index.tuning.grids import tune_pools
    from training.config import CVConfig, ImageModelConfig, TrainConfig
    from training.recipe import cross_validate, pool_signals
    from training.tasks import ImageTask

    t0 = time.perf_counter()
    listings = make_groups(args.images, args.out, args.seed)
    cat = read_catalogue(listings, images_dir=args.out / "images")
    labels = cat.labels
    assert cat.image is not None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = (args.input_size, args.input_size)
    task = ImageTask(cat.image, ImageModelConfig(input_size=size), device)
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=16,
        lr=3e-4,
        head_lr=3e-3,
        scale=16.0,
        margin=0.3,
        seed=args.seed,
    )
    res = cross_validate(task, labels, train, CVConfig(folds=args.folds), args.out / "work")
    base = task.baseline(np.arange(len(cat)))
    results = {}
    for name, dense, start in [
        ("phash alone", {}, FusionConfig(thresholds={"phash": phash_similarity(8)}, min2=False)),
        (
            "untrained backbone",
            {"image": base},
            FusionConfig(thresholds={"image": 0.8}, min2=False),
        ),
        (
            "fine-tuned (OOF)",
            {"image": res.oof},
            FusionConfig(thresholds={"image": 0.5}, min2=False),
        ),
    ]:
        pools = [(pool_signals(cat, va, dense), labels[va]) for _, va in res.folds]
        cfg, f1 = tune_pools(pools, start, tune_min2=False)
        results[name] = {"f1": f1, "thresholds": cfg.thresholds}
        print(f"{name:<22} OOF mean F1 {f1:.4f}  {cfg.thresholds}")
    summary = {
        "rows": len(cat),
        "groups": len(np.unique(labels)),
        "device": str(device),
        "epochs": args.epochs,
        "folds": args.folds,
        "input_size": args.input_size,
        "results": results,
        "cv_logs": res.logs,
        "seconds": time.perf_counter() - t0,
    }
    (args.out / "report.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"{len(cat)} rows in {summary['groups']} groups; {summary['seconds']:.0f}s on {device}")


if __name__ == "__main__":
    main()
