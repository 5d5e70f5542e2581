"""Plain-text rendering for the CLI: tables and byte sizes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A markdown-compatible table, columns sized to their content."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)]
        return "| " + " | ".join(parts) + " |"

    print(line(cells[0]))
    print(
        "|"
        + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric))
        + "|"
    )
    for row in cells[1:]:
        print(line(row))


def _is_number(text: str) -> bool:
    try:
        float(text.replace("±", "").split()[0]) if text else None
    except ValueError:
        return False
    return bool(text)
