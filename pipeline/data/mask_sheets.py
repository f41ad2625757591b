"""The three ways a segmentation competition lays its run-length codes out in a sheet (the
training CSV, the sample submission, the solution, a submission):

  wide     the image id, then a code column per class (TGS's `id,rle_mask`)
  long     a row per image and class, the class in its own column, data.class_column
           (Severstal's `ImageId,EncodedPixels,ClassId`)
  joined   a row per image and class keyed `<image><separator><class>`, data.class_separator
           (Severstal 2019's `ImageId_ClassId,EncodedPixels`, Clouds' `Image_Label,EncodedPixels`)

A Sheet reads which from the data config and writes a submission in it from a code per image
and class.
"""

from dataclasses import dataclass

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.tables import line

CODE_COLUMN = "EncodedPixels"  # a long or joined submission's code column where there is no sample to name it


@dataclass(frozen=True)
class Sheet:
    class_column: str | None = None
    separator: str | None = None

    @classmethod
    def of(cls, data) -> "Sheet":
        """The sheet a data config (or layout) describes."""
        return cls(getattr(data, "class_column", None), getattr(data, "class_separator", None))

    def joined(self, sample: pd.DataFrame | None) -> bool:
        """Keys `<image><separator><class>`: as the data config says, where the sample has two columns."""
        return self.separator is not None and (sample is None or len(sample.columns) == 2)

    def long(self, sample: pd.DataFrame | None) -> bool:
        """The class in its own column: as the data config says, where the sample has that column."""
        named = self.class_column is not None and (sample is None or self.class_column in sample.columns)
        return named and not self.joined(sample)

    def split(self, keys: pd.Series, where: str) -> tuple[pd.Series, pd.Series]:
        """Joined keys -> (image ids, classes), cut at the separator's last occurrence."""
        keys = keys.astype(str)
        bad = ~keys.str.contains(self.separator, regex=False)
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise PipelineError(
                f"{where} line {line(i)}: {keys.iloc[i]!r} is not <image>{self.separator}<class>"
                f" (data.class_separator={self.separator!r})"
            )
        parts = keys.str.rsplit(self.separator, n=1)
        return parts.str[0], parts.str[1]

    def image_ids(self, sample: pd.DataFrame, where: str) -> pd.Series:
        """The images a sample lists, each once, in its order."""
        ids = sample.iloc[:, 0].astype(str)
        if self.joined(sample):
            ids = self.split(ids, where)[0]
        return ids.drop_duplicates().reset_index(drop=True)

    def written(self, codes: dict[str, list[str]], ids, sample: pd.DataFrame | None) -> pd.DataFrame:
        """`codes` (class -> a code per image of `ids`) as this sheet's rows, named as the sample
        names its columns: a long or joined sheet holds a row per image and class, by image."""
        classes = list(codes)
        if not (self.joined(sample) or self.long(sample)):
            columns = list(sample.columns) if sample is not None else ["id", *classes]
            if len(columns) - 1 != len(classes):
                raise PipelineError(
                    f"the sample submission has {len(columns) - 1} column(s) beside the id, {columns[1:]}; a code "
                    f"column per mask class needs {len(classes)}: {classes}"
                )
            return pd.DataFrame({columns[0]: ids, **dict(zip(columns[1:], codes.values(), strict=True))})
        rows = pd.DataFrame({"image": [i for i in ids for _ in classes], "class": classes * len(ids)}).assign(
            code=[codes[c][i] for i in range(len(ids)) for c in classes]
        )
        if self.joined(sample):
            columns = list(sample.columns) if sample is not None else ["id", CODE_COLUMN]
            return pd.DataFrame({columns[0]: rows["image"] + self.separator + rows["class"], columns[1]: rows["code"]})
        columns = list(sample.columns) if sample is not None else ["id", CODE_COLUMN, self.class_column]
        if len(columns) != 3:
            raise PipelineError(
                f"the sample submission has columns {columns}; a row per image and class has three: the id, the code"
                f" and the class (data.class_column={self.class_column!r})"
            )
        numeric = sample is not None and pd.api.types.is_numeric_dtype(sample[self.class_column])
        classes_as = pd.to_numeric(rows["class"]) if numeric else rows["class"]
        named = {columns[0]: rows["image"], self.class_column: classes_as}
        code_column = next(c for c in columns if c not in named)
        return pd.DataFrame({**named, code_column: rows["code"]})[columns]
