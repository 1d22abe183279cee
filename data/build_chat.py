"""Build the course's conversational data set, ``data/chat/{train,test}.jsonl``.

Each line is one conversation in the ``messages`` format that trl's ``SFTTrainer`` and transformers' chat
templates read: a system turn in some conversations, then one to three user/assistant exchanges about one date.
Each user turn names the date in words and asks for one form of it, another form at each turn. The forms have
answers of different lengths, from one word to a sentence, so a model that does not stop where the answer ends
(or stops too early) fails an exact match:

    {"messages": [
      {"role": "system", "content": "Rewrite the date as asked."},
      {"role": "user", "content": "March 3, 1821. ISO?"},
      {"role": "assistant", "content": "1821-03-03"},
      {"role": "user", "content": "March 3, 1821. Parts?"},
      {"role": "assistant", "content": "year 1821, month 03, day 03"}]}

Dates are distinct and drawn uniformly from 1600-2099 with a fixed seed; no test date occurs in training.
The last assistant turn of a test conversation is what the notebook scores (exact match).

    python data/build_chat.py
"""
from __future__ import annotations

import calendar
import random
from datetime import date
from pathlib import Path

from build_dataset import write_splits  # data/, beside this script

OUT = Path(__file__).resolve().parent / "chat"
SEED = 0
N_TRAIN, N_TEST = 1200, 200
YEARS = (1600, 2099)
MAX_EXCHANGES = 3
SYSTEM = "Rewrite the date as asked."
SYSTEM_SHARE = 0.3  # conversations that open with the system turn

# the question for each form, and its answer for a date
FORMS = {
    "Year?": lambda d: str(d.year),
    "ISO?": lambda d: d.isoformat(),
    "Month?": lambda d: calendar.month_name[d.month],
    "Day and month?": lambda d: f"{d.day} {calendar.month_name[d.month]}",
    "Parts?": lambda d: f"year {d.year}, month {d.month:02d}, day {d.day:02d}",
}


def conversation(d: date, rng: random.Random) -> dict[str, list[dict[str, str]]]:
    """A conversation about the date ``d``: the system turn (sometimes), then 1 to MAX_EXCHANGES questions on
    distinct forms."""
    questions = rng.sample(list(FORMS), rng.randint(1, MAX_EXCHANGES))
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < SYSTEM_SHARE else []
    for question in questions:
        asked = f"{calendar.month_name[d.month]} {d.day}, {d.year}. {question}"
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": FORMS[question](d)}]
    return {"messages": messages}


def main() -> None:
    rng = random.Random(SEED)  # draws the dates, then each conversation's questions
    write_splits(OUT, rng, lambda d: conversation(d, rng), N_TRAIN, N_TEST, YEARS, noun="conversations")


if __name__ == "__main__":
    main()
