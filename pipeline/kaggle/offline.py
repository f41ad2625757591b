"""What the packaged notebook runs on Kaggle, with the internet off: the bundle's models on the
competition's test images, combined as `make predict` combined them, checked against the
sample submission and written where Kaggle collects it.

    from pipeline.kaggle import offline
    offline.submit(Path("/kaggle/input/<dataset>"), Path("/kaggle/input/<competition>"), out)
"""

from pathlib import Path

from pipeline import config as C
from pipeline.files import write_csv
from pipeline.kaggle import submission
from pipeline.learn.inference import PredictionsOnTest
from pipeline.learn.selection import Part, Plan, combine
from pipeline.paths import DatasetFiles, FitFiles, Paths
from pipeline.records import Bundle


def submit(dataset: Path, competition: Path, out: Path) -> Path:
    """The submission of the models in `dataset` (a folder `make package` made) on the test
    images in `competition` (the competition's files as it ships them) -> `out`."""
    files = DatasetFiles(dataset)
    bundle = Bundle.load(files.bundle)
    cfg = C.load(files.config, [f"data.dir={competition}", "data.cache=never"])
    test = PredictionsOnTest(cfg, Paths.of(cfg), keep=False)
    parts = [
        Part(p["weight"], p["space"], [(FitFiles(dataset / m["folder"]), m["weight"]) for m in p["models"]])
        for p in bundle.parts
    ]
    second_level = dataset / bundle.second_level if bundle.second_level else None
    plan = Plan(cfg, parts, bundle.stated, bundle.decision, second_level, tuple(bundle.features))
    frame = submission.validated(cfg, test.table, *combine(test, plan), sizes=test.sizes)
    write_csv(out, frame)
    stated = bundle.stated
    print(f"{out}: {len(frame)} rows, {stated.models} models; stated CV {stated.metric} {stated.score:.5f}")
    return out
