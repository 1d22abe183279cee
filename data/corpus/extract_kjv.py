"""Extract the King James Version from Debian's ``bible-kjv`` package into ``kjv.tsv.gz``.

The shipped ``kjv.tsv.gz`` was made with this script; you only need to rerun it to check that.
Requires Debian's packages ``bible-kjv`` and ``bible-kjv-text`` (``apt-get install bible-kjv``),
whose ``bible`` command prints the text. One verse a line: ``book<TAB>chapter<TAB>verse<TAB>text``.

    python data/corpus/extract_kjv.py
"""
from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

OUT = Path(__file__).with_name("kjv.tsv.gz")
HEADING = re.compile(r"^(?P<book>\S.*?) (?P<chapter>\d+)$")
VERSE = re.compile(r"^\s+(?P<verse>\d+) (?P<text>.+)$")


def main() -> None:
    text = subprocess.run(
        ["bible", "-l", "100000", "gen1:1-rev22:21"], check=True, capture_output=True, text=True
    ).stdout
    rows, book, chapter = [], None, None
    for line in text.splitlines():
        if m := HEADING.match(line):
            book, chapter = m["book"], m["chapter"]
        elif m := VERSE.match(line):
            rows.append(f"{book}\t{chapter}\t{m['verse']}\t{m['text'].strip()}")
    # mtime=0 keeps the gzip bytes identical from run to run.
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:
        f.write(("\n".join(rows) + "\n").encode())
    print(f"{len(rows)} verses -> {OUT}")


if __name__ == "__main__":
    main()
