"""POST /batch-match: a Kaggle test.csv in, the submission CSV out.

The job runs as a `service.jobs.Job`: a client that disconnects, or a server stopping
(SIGTERM past `shutdown_grace_s`), stops it at its next step and frees its batch slot; its
temporary folder is removed either way.
"""

from __future__ import annotations

import csv
import io
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from index.errors import CatalogueError, ImageError
from index.progress import check_cancelled
from service.config import MB, Settings
from service.deps import EngineDep, SettingsDep
from service.errors import PayloadTooLargeError
from service.jobs import cancel_on_disconnect
from service.limits import read_upload
from service.schemas import errors

router = APIRouter(tags=["matching"])
log = logging.getLogger("pricematch.service")


@dataclass(frozen=True)
class ZipLimits:
    """What an images zip may hold (`Settings.max_unzipped_mb`, `max_zip_files`...)."""

    total_bytes: int
    files: int
    member_bytes: int
    ratio: float


def zip_limits(settings: Settings) -> ZipLimits:
    return ZipLimits(
        total_bytes=settings.limit(settings.max_unzipped_mb),
        files=settings.max_zip_files,
        member_bytes=settings.limit(settings.max_image_mb),
        ratio=settings.max_zip_ratio,
    )


def _member_name(filename: str) -> str | None:
    """The base name a zip member is unpacked under; None for names it is not unpacked
    under (folders, hidden files, NULs, names too long for a file system)."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    if not name or name.startswith(".") or "\x00" in name or len(name.encode()) > 255:
        return None
    return name


def extract_images(archive: IO[bytes] | bytes, dest: Path, limits: ZipLimits) -> int:
    """Unpack a zip's files into `dest` by base name (folders flattened); returns the count.

    Every file lands directly in `dest` (no member path is followed), so nothing is written
    outside it; the limits are checked on the directory first and again while unpacking
    (a directory can lie).

    Raises:
        ImageError: not a zip file, a corrupt member, two files of the same name.
        PayloadTooLargeError: over a limit of `limits` (zip bomb guard).
    """
    src = io.BytesIO(archive) if isinstance(archive, bytes) else archive
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ImageError("images: not a zip file") from e
    total_mb = f"{limits.total_bytes / MB:g} MB"
    with zf:
        members = [
            (i, n) for i in zf.infolist() if not i.is_dir() and (n := _member_name(i.filename))
        ]
        if len(members) > limits.files:
            raise PayloadTooLargeError(
                f"images: the zip holds {len(members):,} files; the limit is {limits.files:,}"
            )
        if sum(i.file_size for i, _ in members) > limits.total_bytes:
            raise PayloadTooLargeError(f"images: the zip holds over {total_mb} once unpacked")
        seen: set[str] = set()
        written = 0
        for info, name in members:
            check_cancelled()
            if name in seen:
                raise ImageError(f"images: two files named {name!r} in the zip")
            seen.add(name)
            cap = min(limits.member_bytes, int(max(info.compress_size, 1) * limits.ratio))
            if info.file_size > cap:
                raise PayloadTooLargeError(_member_too_large(name, limits))
            size = 0
            try:
                with zf.open(info) as f, open(dest / name, "xb") as out:
                    while chunk := f.read(MB):
                        size += len(chunk)
                        written += len(chunk)
                        if size > cap:  # sizes in the directory can lie
                            raise PayloadTooLargeError(_member_too_large(name, limits))
                        if written > limits.total_bytes:
                            raise PayloadTooLargeError(
                                f"images: the zip holds over {total_mb} once unpacked"
                            )
                        out.write(chunk)
            except FileExistsError as e:  # names that differ only where the disk ignores it
                raise ImageError(f"images: two files named {name!r} in the zip") from e
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
                raise ImageError(f"images: cannot unpack {name!r} ({type(e).__name__})") from e
            except NotImplementedError as e:  # an unsupported compression method
                raise ImageError(f"images: cannot unpack {name!r} ({e})") from e
        return len(members)


def _member_too_large(name: str, limits: ZipLimits) -> str:
    return (
        f"images: {name!r} unpacks to over {limits.member_bytes / MB:g} MB or over "
        f"{limits.ratio:g} times its packed size (zip bomb guard)"
    )


def server_images(settings: Settings, subdir: str | None) -> Path | None:
    """The configured images folder (or a folder inside it), if any."""
    root = settings.images_dir
    if root is None:
        if subdir:
            raise CatalogueError("images_subdir given but the server has no images folder")
        return None
    if not subdir:
        return root.resolve()
    if "\x00" in subdir or PurePosixPath(subdir).is_absolute() or ".." in Path(subdir).parts:
        raise CatalogueError("images_subdir must be a folder inside the server's images folder")
    folder = (root / subdir).resolve()
    if not folder.is_relative_to(root.resolve()):
        raise CatalogueError("images_subdir must be a folder inside the server's images folder")
    if not folder.is_dir():
        raise CatalogueError("images_subdir: no such folder in the server's images folder")
    return folder


def submission_rows(ids: list[str], matches: list[list[str]]) -> Iterator[str]:
    """The Kaggle submission CSV (as `index.data.listings.write_submission`), in chunks."""
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
        **errors(400, 413, 422, 500, 503),
    },
    summary="match the rows of a CSV among themselves (Kaggle submission)",
    description="Upload a `test.csv` (posting_id,title[,image,image_phash]) and optionally a zip "
    "of its images; the `image` column names files of that zip (by base name). Without a "
    "zip, image names are resolved under the server's images folder (`PRICEMATCH_IMAGES_DIR`, "
    "optionally `images_subdir` inside it) when one is configured, and name nothing "
    "otherwise; a name leaving its folder is ignored. The result is exactly what "
    "`pricematch match` writes for the same CSV and model. A client that disconnects "
    "cancels its job.",
)
async def batch_match(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    csv_file: Annotated[UploadFile, File(alias="csv", description="the listings CSV")],
    images: Annotated[UploadFile | None, File(description="zip of the image files")] = None,
    images_subdir: Annotated[
        str | None, Form(description="a folder inside the server's images folder")
    ] = None,
) -> StreamingResponse:
    data = await read_upload(csv_file, settings.limit(settings.max_csv_mb), "the CSV")
    archive = images.file if images is not None and images.filename else None
    if archive is not None and images_subdir:
        raise CatalogueError("give either an images zip or images_subdir, not both")
    folder = None if archive is not None else server_images(settings, images_subdir)
    async with cancel_on_disconnect(request) as cancel, engine.batch_slots:
        with engine.jobs.open(cancel) as job:

            def work() -> tuple[list[str], list[list[str]]]:
                where = folder
                if archive is not None:
                    extract_images(archive, job.folder, zip_limits(settings))
                    where = job.folder
                return engine.batch_match(data, where)

            metrics = engine.metrics
            metrics.batch_running.inc()
            try:
                ids, matches = await engine.jobs.run(job, work)
            except BaseException:
                if cancel.is_set():
                    metrics.batch_cancelled.inc()
                    log.info("batch-match cancelled (client gone or server stopping)")
                raise
            finally:
                metrics.batch_running.dec()
    return StreamingResponse(
        submission_rows(ids, matches),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="submission.csv"'},
    )
