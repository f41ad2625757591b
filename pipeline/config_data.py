"""The config sections that say what the competition is and where its data lives: competition,
data (one model per layout), folds and scrape."""

import re
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from pipeline.config_section import NonNegative, Section

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm", ".dicom")


class LayoutBase(Section):
    dir: Path | None = None  # default data/<competition.name>
    # `make data` builds a demo competition here: MNIST digits (pixel_columns), hands or cells (image_csv)
    demo: Literal["none", "digits", "hands", "cells"] = "none"
    use_extra: bool = True  # scraped images join training with fold -1
    cache: Literal["auto", "always", "never"] = "auto"
    cache_limit_gb: PositiveFloat = 4.0  # "auto" caches decoded images up to this size
    sample_submission: str | None = None
    solution: str | None = None  # held-out answers (the demo has them): `make score` reads only this


class PixelLayout(LayoutBase):
    image_shape: tuple[PositiveInt, PositiveInt] | None = None  # (height, width); inferred when square
    pixel_max: Literal["auto"] | PositiveFloat = "auto"  # inferred as 1, 16 or 255


class PixelColumns(PixelLayout):
    layout: Literal["pixel_columns"]
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"
    sample_submission: str | None = "sample_submission.csv"
    label_column: str = "label"
    id_column: str | None = None  # None: ids are 1-based row numbers, as Digit Recognizer's ImageId
    pixel_prefix: str = "pixel"


class PixelString(PixelLayout):
    layout: Literal["pixel_string"]
    train_csv: str = "training.csv"
    test_csv: str = "test.csv"
    sample_submission: str | None = "SampleSubmission.csv"
    lookup_table: str | None = "IdLookupTable.csv"
    image_column: str = "Image"
    id_column: str = "ImageId"  # of the test CSV; train rows are numbered from 1
    keypoint_columns: list[str] | None = None  # None: every column ending in _x or _y


class FileLayout(LayoutBase):
    channels: Literal[1, 3] = 3
    extensions: list[str] = list(IMAGE_EXTENSIONS)
    # DICOM files' (center, width) in modality units, e.g. [40, 80] for a CT brain window;
    # None: each file's own window, else its own range
    dicom_window: tuple[float, Annotated[float, Field(ge=1.0)]] | None = None

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, extensions: list[str]) -> list[str]:
        return ["." + e.lower().lstrip(".") for e in extensions]


class ImageCsv(FileLayout):
    layout: Literal["image_csv"]
    train_csv: str = "train.csv"
    test_csv: str | None = "test.csv"  # None: test ids are the sample submission's first column
    sample_submission: str | None = "sample_submission.csv"
    id_column: str = "id"
    label_columns: list[str] = ["label"]
    # tabular columns of both CSVs beside the images (age, site, camera): `make blend METHOD=stack` reads them
    feature_columns: list[str] = []
    # masks (segmentation): run-length codes in label_columns, one column per class, or one row per
    # image and class named by class_column (Severstal), or one mask image per id in mask_dir
    class_column: str | None = None
    # or the id column holds <image><separator><class> (Severstal 2019's ImageId_ClassId: "_")
    class_separator: str | None = None
    mask_dir: str | None = None  # e.g. train/masks: <id>.png, nonzero pixels in the mask
    rle_order: Literal["column", "row"] = "column"  # Kaggle's: pixels numbered top to bottom, then left to right
    train_dir: str = "train"
    test_dir: str = "test"
    image_ext: str | None = None  # None: found among `extensions`

    @model_validator(mode="after")
    def _one_place_for_the_class(self) -> "ImageCsv":
        if self.class_column is not None and self.class_separator is not None:
            raise ValueError(
                f"class_column={self.class_column!r} and class_separator={self.class_separator!r} both say where a"
                " row's mask class is: set one"
            )
        return self


class ClassFolders(FileLayout):
    layout: Literal["class_folders"]
    train_dir: str = "train"
    test_dir: str | None = "test"
    sample_submission: str | None = "sample_submission.csv"


class FilenameRegex(FileLayout):
    layout: Literal["filename_regex"]
    train_dir: str = "images"
    test_dir: str | None = None
    pattern: str = r"^(?P<label>.+)_\d+$"  # matched against the file stem; needs a `label` group

    @field_validator("pattern")
    @classmethod
    def _has_label_group(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if "label" not in compiled.groupindex:
            raise ValueError("needs a named group (?P<label>...) for the class")
        return pattern


Layout = Annotated[
    Union[PixelColumns, PixelString, ImageCsv, ClassFolders, FilenameRegex],  # noqa: UP007
    Field(discriminator="layout"),
]


class Folds(Section):
    n_splits: Annotated[int, Field(ge=2)] = 5
    kind: Literal["auto", "stratified", "group", "stratified_binned", "multilabel", "kfold"] = "auto"
    seed: int = 42
    group_column: str | None = None  # for kind=group
    # stratified_binned: missing_pattern, target_mean or a column; auto: the task's
    # (keypoints: missing_pattern, regression: target_mean)
    stratify_on: str = "auto"
    n_bins: Annotated[int, Field(ge=2)] = 5


class ScrapeSource(Section):
    """Where one label's images are: result pages, and/or a search URL template with queries."""

    pages: list[str] = []  # "{gallery}" stands for the demo gallery served on loopback
    search: str | None = None  # e.g. "https://example.com/search?q={query}"
    queries: list[str] = []

    @model_validator(mode="after")
    def _search_needs_queries(self) -> "ScrapeSource":
        if bool(self.search) != bool(self.queries):
            raise ValueError("search and queries go together: a URL template with {query}, and the queries")
        if self.search and "{query}" not in self.search:
            raise ValueError(f"search {self.search!r} has no {{query}} placeholder")
        return self


class Scrape(Section):
    sources: dict[str, ScrapeSource] = {}  # label -> where its images are
    serve_gallery: bool = False  # the demo: serve data/<name>/gallery on loopback for the stage
    max_pages: PositiveInt = 20  # per label
    max_images: PositiveInt = 500  # image links followed per label
    timeout: PositiveFloat = 10.0  # seconds, connect and read
    retries: Annotated[int, Field(ge=0)] = 3  # on 429 and 5xx, with exponential backoff
    backoff: NonNegative = 0.5
    rate_limit: PositiveFloat = 2.0  # requests per second per host
    workers: PositiveInt = 8  # parallel downloads
    max_bytes: PositiveInt = 10_000_000
    max_pixels: PositiveInt = 40_000_000  # larger is a decompression bomb
    min_side: PositiveInt = 32
    near_duplicate_distance: Annotated[int, Field(ge=0, le=256)] = 20  # bits of a 256-bit perceptual hash
    allowed_domains: list[str] = []  # empty: any; checked at every redirect hop
    # loopback, private and link-local hosts (the demo's served gallery is trusted by its origin)
    allow_private_addresses: bool = False
    max_redirects: Annotated[int, Field(ge=0)] = 5
    download_s: PositiveFloat = 60.0  # the most one image may take, however slowly it drips
    user_agent: str = "Mozilla/5.0 (compatible; pipeline-scraper/0.1)"
    # http(s)://host:port every fetch but the demo gallery's goes through; the environment's
    # HTTP(S)_PROXY is refused unless named here (through a proxy, a target's address is checked
    # before the request, as the connection's peer is the proxy)
    proxy: Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")] | None = None
