"""Dataset loader for charter_tiny: the JSONL next to this file, split by its `split` field.

lm-evaluation-harness calls ``custom_dataset`` with the task metadata as keyword arguments; we ignore
them. Loading from this file's folder (not the working directory) lets the task run from anywhere.
"""

import json
from pathlib import Path


def load(**_ignored):
    import datasets

    rows = [json.loads(line) for line in (Path(__file__).parent / "charter_tiny.jsonl").read_text().splitlines()
            if line.strip()]
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list([{k: r[k] for k in ("id", "question", "choices", "answer")}
                                           for r in rows if r["split"] == split])
        for split in ("train", "test")
    })
