"""CSV tables the command line and the batch runner write (one definition for both)."""
from __future__ import annotations

import csv
import io


def csv_text(rows: list[dict]) -> str:
    """Rows (dicts with the same keys) as CSV text with a header line."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def volume_rows(stem: str, volumes) -> list[dict]:
    """Rows of the volumes table (``spatialseg segment --volumes``) from [(label, name, mm^3)]."""
    return [{"subject": stem, "label": v, "name": n, "volume_mm3": f"{mm3:.1f}"} for v, n, mm3 in volumes]
