"""Request and response models, named by role."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from index.data.listings import POSTING_ID_PATTERN, POSTING_ID_RULE, check_posting_id
from index.matching.fusion import SignalName


def _unicode(s: str) -> str:
    """Refuse text that cannot be stored as UTF-8 (lone surrogates such as "\\ud800")."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text (lone surrogate at character {e.start})") from e
    return s


def _posting_id(s: str) -> str:
    problem = check_posting_id(s)
    if problem:
        raise ValueError(f"posting_id {problem} ({POSTING_ID_RULE})")
    return s


def _whole(v: object) -> object:
    """JSON's 1.0 is the integer 1 (JSON Schema says so); strict parsing would refuse it."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


Text = Annotated[str, AfterValidator(_unicode)]
PostingId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        examples=["train_129225211"],
        json_schema_extra={"pattern": POSTING_ID_PATTERN},
    ),
    AfterValidator(_unicode),
    AfterValidator(_posting_id),
]
Phash = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{16}$", examples=["94974f937d4c2433"])]
Threshold = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False, strict=True)]

EXAMPLE_TITLE = "Paper Bag Victoria Secret"


class ListingFields(BaseModel):
    """A listing as the Kaggle CSV has it; the image as base64 bytes."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    title: Text = Field("", max_length=5000, description="the listing's title")
    image: str | None = Field(
        None,
        json_schema_extra={"minLength": 1},  # checked by the routes: "" is a 400 that says so
        description="the photo as base64 (JPEG, PNG, WebP...); a data: URL is accepted; "
        "an empty string is an error",
    )
    image_phash: Phash | None = Field(
        None,
        description="the photo's 64-bit phash as 16 hex digits (computed from `image` when absent)",
    )


class MatchRequest(ListingFields):
    """One listing to match against the catalogue."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"title": EXAMPLE_TITLE, "image_phash": "94974f937d4c2433", "max_matches": 10},
            ]
        },
    )
    posting_id: PostingId | None = Field(
        None,
        description="the listing's id; if it is in the catalogue it is that listing (listed "
        "as its own match, as in Kaggle), otherwise it is left out of the matches",
    )
    threshold: dict[SignalName, Threshold] | None = Field(
        None,
        description="per-signal similarity thresholds overriding the served ones, e.g. "
        '{"tfidf": 0.5}; phash similarity is 1 - hamming/64',
        examples=[{"tfidf": 0.5, "text": 0.9}],
    )
    max_matches: Annotated[int, BeforeValidator(_whole)] = Field(
        50, ge=1, le=50, description="most matches returned"
    )


class MatchItem(BaseModel):
    posting_id: str
    title: str
    score: float = Field(description="best similarity over the signals that matched (1: itself)")
    signals: list[str] = Field(
        description="signals whose threshold it passed; `nearest:<signal>` when it was added "
        "by the at-least-one-match rule; `self` for the query's own listing"
    )
    similarities: dict[str, float] = Field(
        description="similarity per signal where it was among the query's neighbours"
    )
    is_self: bool = False


class MatchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "posting_id": None,
                    "count": 1,
                    "matches": [
                        {
                            "posting_id": "train_129225211",
                            "title": EXAMPLE_TITLE,
                            "score": 0.97,
                            "signals": ["tfidf", "phash"],
                            "similarities": {"tfidf": 0.97, "phash": 1.0},
                            "is_self": False,
                        }
                    ],
                    "thresholds": {"tfidf": 0.625, "phash": 0.906},
                }
            ]
        }
    )
    posting_id: str | None
    count: int
    matches: list[MatchItem]
    thresholds: dict[str, float]


class ListingCreate(ListingFields):
    """A listing to add to the catalogue (replacing one with the same posting_id)."""

    posting_id: PostingId = Field(description=POSTING_ID_RULE)


class ListingsCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "listings": [
                        {"posting_id": "p1", "title": "Wardah lipstick matte 3gr"},
                        {
                            "posting_id": "p2",
                            "title": "WARDAH Lipstick Matte ORIGINAL",
                            "image_phash": "94974f937d4c2433",
                        },
                    ]
                }
            ]
        },
    )
    listings: list[ListingCreate] = Field(min_length=1)


class ListingsWritten(BaseModel):
    added: int
    replaced: int
    total: int


class ListingOut(BaseModel):
    posting_id: str
    title: str
    image: str = Field(description="the image's file name, if one was given")
    image_phash: str
    signals: list[str] = Field(description="signals this listing can be matched on")


class Deleted(BaseModel):
    posting_id: str
    total: int


class Health(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    ready: bool
    detail: dict[str, Any] = {}


class ErrorOut(BaseModel):
    """The body of every 4xx/5xx answer."""

    detail: str = Field(description="what is wrong, for a person")
    error: str = Field(description="the kind of error, for a program (e.g. `ValidationError`)")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can return."""
    return {c: {"model": ErrorOut, "description": ERROR_WHEN[c]} for c in codes}


ERROR_WHEN = {
    400: "bad input (named in `detail`)",
    401: "missing or wrong X-API-Key (only when the server has a key)",
    404: "unknown posting_id",
    409: "the catalogue is read-only (several Ray Serve replicas)",
    413: "upload or image over the limit",
    415: "a body that is neither JSON nor multipart/form-data",
    422: "a field missing, out of range or of the wrong type",
    500: "internal error (logged; the body says nothing more)",
    503: "starting, stopping, or the server's own model, data or vector store cannot serve it",
}
