"""The data card as a rich table: what `medminds prepare` prints, one line per output file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table


def _dropped(section: dict[str, Any] | None) -> str:
    if not section:
        return ""
    parts = [f"{reason} {n:,}" for reason, n in section.get("dropped", {}).items()]
    if section.get("trimmed_to_4"):
        parts.append(f"trimmed to 4 options {section['trimmed_to_4']:,}")
    return "; ".join(parts)


def arc_parts(section: dict[str, Any] | None) -> str:
    """ "ARC-Challenge train 1,119, validation 299, test 1,172; ARC-Easy ...": questions kept per config and split."""
    parts = (section or {}).get("parts", {})
    return "; ".join(f"{config} " + ", ".join(f"{split} {counts['kept']:,}" for split, counts in by_split.items())
                     for config, by_split in parts.items())


def card_table(card: dict[str, Any]) -> "Table":
    """One row per output: rows kept (and asked), label balance A/B/C/D, subjects or sources, rows dropped and why."""
    from rich.markup import escape
    from rich.table import Table

    title = f"{card.get('dataset_size', '?')} data  (source: {card.get('source', '?')}, split: {card.get('options', {}).get('split', '?')})"
    table = Table(title=escape(title), title_justify="left", show_lines=False)
    table.add_column("file")
    table.add_column("rows", justify="right")
    table.add_column("asked", justify="right")
    table.add_column("A / B / C / D %", justify="right")
    table.add_column("subjects / sources")
    table.add_column("dropped at load")
    sections = {"medmcqa_train": "medmcqa", "medmcqa_validation": "medmcqa", "arc_train": "arc", "instruct_train": "instruct"}
    shown: set[str] = set()
    for name, info in card.get("splits", {}).items():
        asked = info.get("asked")
        share = info.get("label_share")
        balance = " / ".join(f"{100 * share[k]:.1f}" for k in ("A", "B", "C", "D")) if share else ""
        groups = info.get("subjects") or info.get("sources") or {}
        if "subjects" in info:
            top = ", ".join(f"{k} {v:,}" for k, v in list(groups.items())[:3])
            what = f"{len(groups)} subject{'s' if len(groups) != 1 else ''} ({top}{', ...' if len(groups) > 3 else ''})"
        else:
            what = ", ".join(f"{k} {v:,}" for k, v in groups.items())
        section = sections.get(name, "")
        dropped = "" if section in shown else _dropped(card.get(section))
        shown.add(section)
        table.add_row(f"{name}.parquet", f"{info['rows']:,}", f"{asked:,}" if isinstance(asked, int) else str(asked),
                      balance, escape(what), escape(dropped))
    lines = []
    for label, convention in card.get("medmcqa", {}).get("conventions", {}).items():
        lines.append(escape(f"MedMCQA cop convention of {label}: {convention}"))
    if arc_parts(card.get("arc")):
        lines.append(escape(f"ARC questions kept: {arc_parts(card.get('arc'))}"))
    lines += [f"[yellow]warning:[/] {escape(w)}" for w in card.get("warnings", [])]
    lines += [escape(f"note: {n}") for n in card.get("notes", [])]
    if lines:
        table.caption = "\n".join(lines)
        table.caption_justify = "left"
    return table
