"""Request and response models, named by role."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from index.fusion import SignalName

Phash = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{16}$", examples=["94974f937d4c2433"])]
Threshold = Annotated[float, Field(ge=-1.0, le=1.0)]

EXAMPLE_TITLE = "Paper Bag Victoria Secret"


class ListingFields(BaseModel):
    """A listing as the Kaggle CSV has it; the image as base64 bytes."""

    model_config = ConfigDict(extra="forbid")
    title: str = Field("", max_length=5000, description="the listing's title")
    image: str | None = Field(
        None, description="the photo as base64 (JPEG, PNG, WebP...); a data: URL is accepted"
    )
    image_phash: Phash | None = Field(
        None,
        description="the photo's 64-bit phash as 16 hex digits (computed from `image` when absent)",
    )


class MatchRequest(ListingFields):
    """One listing to match against the catalogue."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"title": EXAMPLE_TITLE, "image_phash": "94974f937d4c2433", "max_matches": 10},
                {"posting_id": "train_129225211", "title": EXAMPLE_TITLE, "image": "<base64>"},
            ]
        },
    )
    posting_id: str | None = Field(
        None,
        max_length=200,
        description="the listing's id; if it is in the catalogue it is that listing (listed "
        "as its own match, as in Kaggle), otherwise it is left out of the matches",
    )
    threshold: dict[SignalName, Threshold] | None = Field(
        None,
        description="per-signal similarity thresholds overriding the served ones, e.g. "
        '{"tfidf": 0.5}; phash similarity is 1 - hamming/64',
        examples=[{"tfidf": 0.5, "text": 0.9}],
    )
    max_matches: int = Field(50, ge=1, le=50, description="most matches returned")


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

    posting_id: str = Field(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")


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
    detail: str
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad input (named in `detail`)"},
    413: {"model": ErrorOut, "description": "upload or image over the limit"},
}
