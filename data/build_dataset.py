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


def main() -> None:
    rng = random.Random(SEED)
    first, last = date(YEARS[0], 1, 1).toordinal(), date(YEARS[1], 12, 31).toordinal()
    days = rng.sample(range(first, last + 1), N_TRAIN + N_TEST)  # distinct dates: no test date is trained on
    OUT.mkdir(exist_ok=True)
    for name, chunk in (("train", days[:N_TRAIN]), ("test", days[N_TRAIN:])):
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for o in chunk:
                f.write(json.dumps(example(date.fromordinal(o))) + "\n")
        print(f"{len(chunk)} examples -> {OUT / name}.jsonl")


if __name__ == "__main__":
    main()
