"""Keep committed notebooks readable on GitHub and quiet in diffs.

    python tools/notebook_tools.py clean notebooks/*.ipynb   # strip churning metadata, keep outputs
    python tools/notebook_tools.py check notebooks/*.ipynb   # list what a learner would trip over
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

CELL_METADATA_DROPPED = ("execution", "ExecuteTime", "collapsed", "scrolled")


def clean(path: str | Path) -> None:
    """Drop per-cell execution timestamps, widget state and the exact Python version; keep outputs."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        for key in CELL_METADATA_DROPPED:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                # widget views (tqdm.auto in a live kernel) cannot render without their state
                if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                    out["data"].pop("application/vnd.jupyter.widget-view+json")
    nbformat.write(nb, path)


def problems(path: str | Path) -> list[str]:
    """What is wrong with a committed notebook: unexecuted code cells, stored errors, churning metadata."""
    nb = nbformat.read(path, as_version=4)
    found = []
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    if unexecuted := sum(c.execution_count is None for c in code):
        found.append(f"{unexecuted} code cells never executed")
    if errors := sum(o.get("output_type") == "error" for c in code for o in c.outputs):
        found.append(f"{errors} stored errors")
    if "widgets" in nb.metadata:
        found.append("widget state in metadata")
    if any(k in c.metadata for c in nb.cells for k in CELL_METADATA_DROPPED):
        found.append("execution metadata in cells")
    if "version" in nb.metadata.get("language_info", {}):
        found.append("Python version in metadata")
    return found


if __name__ == "__main__":
    cmd, *paths = sys.argv[1:]
    if cmd == "clean":
        for p in paths:
            clean(p)
    elif cmd == "check":
        bad = {p: problems(p) for p in paths}
        for p, found in bad.items():
            print(f"{p}: {'; '.join(found) or 'OK'}")
        sys.exit(any(bad.values()))
    else:
        sys.exit(f"unknown command {cmd!r}: use clean or check")
