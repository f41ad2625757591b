"""`make bench`: run the benchmarks BENCHMARKS.md names and rewrite their tables in place.

A table in BENCHMARKS.md sits between two markers that name the commands making its rows:

    <!-- bench: loop_overhead.py; loop_overhead.py --model resnet18 -->
    | machine | ... |
    <!-- /bench -->

Each command runs once; the header comes from the first command's table, the rows from all of
them, and a line under the table says when. The prose around the markers is never touched. A
block is replaced only when all its commands succeeded, and the file is rewritten atomically
after each block, so an interrupted `make bench` keeps every figure it had.

    python benchmarks/_run.py [--file BENCHMARKS.md] [--tiny] [SCRIPT ...]
"""

import argparse
import datetime
import re
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLOCK = re.compile(r"<!-- bench: (?P<commands>[^>]*?) -->\n(?P<body>.*?)<!-- /bench -->", re.S)


def table_of(command: str, stdout: str) -> list[str]:
    """The markdown table a benchmark printed: header, rule, rows."""
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    if len(table) < 3:
        raise SystemExit(f"benchmark {command!r} printed no table")
    return table


def run_command(command: str, tiny: bool) -> list[str]:
    script, *args = shlex.split(command)
    if not (HERE / script).is_file():
        raise SystemExit(f"BENCHMARKS.md names {script!r}, which is not a script in {HERE}")
    argv = [sys.executable, str(HERE / script), *args, *(["--tiny"] if tiny else [])]
    print(f"$ {shlex.join(argv[1:])}", flush=True)
    run = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    print(run.stdout, end="", flush=True)
    if run.returncode:
        raise SystemExit(f"benchmark {command!r} exited with {run.returncode}")
    return table_of(command, run.stdout)


def block_body(commands: list[str], tiny: bool) -> str:
    tables = [run_command(command, tiny) for command in commands]
    rows = [row for table in tables for row in table[2:]]
    when = datetime.date.today().isoformat()
    return "\n".join([*tables[0][:2], *rows, "", f"Run {when}: `{'`, `'.join(commands)}`.", ""])


def rewrite(path: Path, only: list[str], tiny: bool) -> int:
    """Re-run every block (or those naming a script in `only`); the number re-run."""
    done = 0
    for match in list(BLOCK.finditer(path.read_text())):
        commands = [c.strip() for c in match["commands"].split(";") if c.strip()]
        if only and not any(shlex.split(c)[0] in only for c in commands):
            continue
        body = block_body(commands, tiny)
        text = path.read_text()  # the file as it is now: earlier blocks already rewritten
        start = text.index(match.group(0))
        text = (
            text[:start]
            + f"<!-- bench: {match['commands']} -->\n{body}<!-- /bench -->"
            + text[start + len(match.group(0)) :]
        )
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        temporary.replace(path)
        done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=HERE.parent / "BENCHMARKS.md")
    parser.add_argument("--tiny", action="store_true", help="every script in its tiny mode (for the tests)")
    parser.add_argument("only", nargs="*", help="re-run only the tables these scripts make")
    args = parser.parse_args()
    if not args.file.is_file():
        raise SystemExit(f"{args.file} does not exist")
    done = rewrite(args.file, args.only, args.tiny)
    if not done:
        raise SystemExit(f"{args.file} has no bench block for {args.only or 'any script'}")
    print(f"rewrote {done} table(s) in {args.file}")


if __name__ == "__main__":
    main()
