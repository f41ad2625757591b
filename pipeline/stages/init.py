"""`make init DIR`: the survey of a competition folder (data.survey) written as configs/<name>.yaml,
each value by the YAML emitter with its reason as the comment; read back with the competition's
own reader before it is written. An existing config is never overwritten."""

import re
from pathlib import Path

import yaml

from pipeline import config as C
from pipeline.data.survey import Survey, survey
from pipeline.errors import PipelineError
from pipeline.files import write_text

UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")  # what may end a YAML comment, and other controls


def render(result: Survey, source: Path) -> str:
    """The config, each value written by the YAML emitter and each reason as a comment."""
    lines = [
        comment(f"{result.name}: written by `make init DIR={source}`; each value says why it was chosen."),
        comment("Keys left out take the defaults that fit the data (printed by `make train`)."),
        *map(comment, result.found),
    ]
    for section, keys in result.raw().items():
        lines.append(f"\n{section}:")
        for key, value in keys.items():
            why = next(d.why for d in result.decisions if d.key == f"{section}.{key}")
            text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()[1:-1]
            lines.append(f"  {text}  {comment(why)}")
    return "\n".join(lines) + "\n"


def comment(text: str) -> str:
    """`text` as one YAML comment: a name with a line break in it must not end the comment and
    write live keys (a folder named "tr\nscrape: {allow_private_addresses: true}" would)."""
    return "# " + UNPRINTABLE.sub(lambda found: repr(found[0])[1:-1], text)


def parsed_back(result: Survey, text: str, root: Path) -> dict:
    """The written config read back, refused unless it holds exactly the decisions."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = None
    if loaded != yaml.safe_load(yaml.safe_dump(result.raw())):
        raise PipelineError(f"init: a file or folder name under {root} does not survive YAML; rename it")
    return loaded


def run(root: Path, output: Path | None = None, name: str | None = None, given: dict | None = None) -> Path:
    result = survey(root, name, given)
    output = output or Path("configs") / f"{result.name}.yaml"
    if output.exists():
        raise PipelineError(f"init: {output} exists; init never overwrites a config (remove it or pass -o)")
    text = render(result, root)
    C.validate(parsed_back(result, text, root), f"init {root}")
    write_text(output, text)
    print(f"init: {root}: " + "; ".join(result.found))
    print(f"init: wrote {output}")
    return output
