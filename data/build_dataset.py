"""Build the course's fine-tuning data set, ``data/dates/{train,test}.jsonl``.

The task: rewrite a date written in words as an ISO 8601 date.

    {"prompt": "Date: March 3, 1821\\nISO:", "completion": " 1821-03-03"}

The bundled model, pretrained on the King James Version, has never seen the task: its corpus
holds digits only in verse references (``Genesis 1:3``), never a date. A LoRA adapter learns it in
a few minutes of CPU training. It is scored
by exact match of the greedy completion on the held-out split. The prompt/completion columns are
the format trl's ``SFTTrainer`` trains on with the loss on the completion only.

    python data/build_dataset.py
"""
from __future__ import annotations

import calendar
import json
import random
from datetime import date
from pathlib import Path
from typing import Callable

OUT = Path(__file__).resolve().parent / "dates"
SEED = 0
N_TRAIN, N_TEST = 2000, 200
YEARS = (1600, 2099)


def example(d: date) -> dict[str, str]:
    """One prompt/completion pair for the date ``d``."""
    return {
        "prompt": f"Date: {calendar.month_name[d.month]} {d.day}, {d.year}\nISO:",
        "completion": f" {d.isoformat()}",
    }


def write_splits(out: Path, rng: random.Random, make: Callable[[date], dict], n_train: int, n_test: int,
                 years: tuple[int, int] = YEARS, noun: str = "examples") -> None:
    """Draw ``n_train + n_test`` distinct dates in ``years`` with ``rng`` and write ``make(date)`` for each, one JSON
    object a line, to ``out/train.jsonl`` and ``out/test.jsonl``: no test date is trained on."""
    first, last = date(years[0], 1, 1).toordinal(), date(years[1], 12, 31).toordinal()
    days = rng.sample(range(first, last + 1), n_train + n_test)
    out.mkdir(exist_ok=True)
    for name, chunk in (("train", days[:n_train]), ("test", days[n_train:])):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for o in chunk:
                f.write(json.dumps(make(date.fromordinal(o))) + "\n")
        print(f"{len(chunk)} {noun} -> {out / name}.jsonl")


def main() -> None:
    write_splits(OUT, random.Random(SEED), example, N_TRAIN, N_TEST)


if __name__ == "__main__":
    main()
