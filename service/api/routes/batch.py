"""POST /batch-match: a Kaggle test.csv in, the submission CSV out."""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import StreamingResponse

from index.errors import CatalogueError, ImageError
from service.config import Settings
from service.deps import EngineDep, SettingsDep
from service.errors import PayloadTooLargeError
from service.limits import read_upload
from service.schemas import ERRORS

router = APIRouter(tags=["matching"])


def extract_images(data: bytes, dest: Path, limit: int) -> int:
    """Unpack a zip's files into `dest` by base name (folders flattened); returns the count.

    Raises:
        ImageError: not a zip file.
        PayloadTooLargeError: its content is over `limit` bytes (zip bomb guard).
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise ImageError("images: not a zip file") from e
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        if sum(i.file_size for i in members) > limit:
            raise PayloadTooLargeError(
                f"images: the zip holds over {limit / (1 << 20):g} MB once unpacked"
            )
        n, written = 0, 0
        for info in members:
            name = PurePosixPath(info.filename.replace("\\", "/")).name
            if not name or name.startswith("."):
                continue
            with zf.open(info) as src, open(dest / name, "wb") as dst:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > limit:  # sizes in the directory can lie
                        raise PayloadTooLargeError(
                            f"images: the zip holds over {limit / (1 << 20):g} MB once unpacked"
                        )
                    dst.write(chunk)
            n += 1
        return n


def server_images(settings: Settings, subdir: str | None) -> Path | None:
    """The configured images folder (or a folder inside it), if any."""
    root = settings.images_dir
    if root is None:
        if subdir:
            raise CatalogueError("images_subdir given but the server has no images folder")
        return None
    folder = (root / (subdir or "")).resolve()
    if not folder.is_relative_to(root.resolve()):
        raise CatalogueError("images_subdir must be a folder inside the server's images folder")
    if not folder.is_dir():
        raise CatalogueError(f"images_subdir {subdir!r} not found in the server's images folder")
    return folder


def submission_rows(ids: list[str], matches: list[list[str]]) -> Iterator[str]:
    """The Kaggle submission CSV (as `index.catalogue.write_submission`), in chunks."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["posting_id", "matches"])
    for i, (p, m) in enumerate(zip(ids, matches, strict=True)):
        w.writerow([p, " ".join(m)])
        if i % 2000 == 1999:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


@router.post(
    "/batch-match",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {"example": "posting_id,matches\ntest_1,test_1 test_7\n"}}},
        **ERRORS,
    },
    summary="match the rows of a CSV among themselves (Kaggle submission)",
    description="Upload a `test.csv` (posting_id,title[,image,image_phash]) and optionally a zip "
    "of its images; without a zip, image names are resolved under the server's images folder "
    "(`PRICEMATCH_IMAGES_DIR`, optionally `images_subdir` inside it) when one is configured. "
    "The result is exactly what `pricematch match` writes for the same CSV and model.",
)
async def batch_match(
    engine: EngineDep,
    settings: SettingsDep,
    csv_file: Annotated[UploadFile, File(alias="csv", description="the listings CSV")],
    images: Annotated[UploadFile | None, File(description="zip of the image files")] = None,
    images_subdir: Annotated[str | None, Form(description="folder in the server's")] = None,
) -> StreamingResponse:
    data = await read_upload(csv_file, settings.limit(settings.max_upload_mb), "the CSV")
    archive = (
        await read_upload(images, settings.limit(settings.max_upload_mb), "the images zip")
        if images is not None and images.filename
        else None
    )
    async with engine.batch_slots:  # one heavy job at a time; others wait their turn
        tmp = Path(tempfile.mkdtemp(prefix="pricematch-batch-"))
        try:
            if archive is not None:
                limit = settings.limit(settings.max_unzipped_mb)
                await anyio.to_thread.run_sync(extract_images, archive, tmp, limit)
                folder: Path | None = tmp
            else:
                folder = server_images(settings, images_subdir)
            ids, matches = await anyio.to_thread.run_sync(engine.batch_match, data, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return StreamingResponse(
        submission_rows(ids, matches),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="submission.csv"'},
    )
