"""Tables as Markdown, CSV, LaTeX and HTML, and the one self-contained HTML page `medminds report` writes.

A `Table` holds raw values (numbers stay numbers for the CSV) and, per column, how a person reads them (for
Markdown, LaTeX and HTML). Every output is a pure function of the table: the same runs give the same bytes.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


def plain(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Column:
    header: str  # what a reader sees
    key: str  # the CSV header
    fmt: Callable[[Any], str] = plain
    shown: bool = True  # False: CSV only (e.g. the lower and upper bounds a shown column combines)
    in_csv: bool = True  # False: display only (a column the CSV has as separate raw values)


@dataclass
class Table:
    name: str  # file stem: summary -> summary.md, summary.csv, summary.tex
    title: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def shown(self) -> tuple[list[str], list[list[str]]]:
        """Headers and formatted cells of the columns a reader sees."""
        keep = [i for i, c in enumerate(self.columns) if c.shown]
        return ([self.columns[i].header for i in keep],
                [[self.columns[i].fmt(row[i]) for i in keep] for row in self.rows])


def markdown(table: Table, level: int = 2) -> str:
    headers, cells = table.shown()

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|").replace("\n", " ") for v in values) + " |"

    out = [f"{'#' * level} {table.title}", ""]
    if cells:
        out += [line(headers), "|" + "|".join("---" for _ in headers) + "|", *(line(r) for r in cells)]
    else:
        out.append("(no rows)")
    if table.notes:
        out += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(out) + "\n"


def _csv_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, (list, tuple)):
        return ";".join(_csv_value(v) for v in value)
    return plain(value)


def csv_text(table: Table) -> str:
    keep = [i for i, c in enumerate(table.columns) if c.in_csv]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([table.columns[i].key for i in keep])
    for row in table.rows:
        writer.writerow([_csv_value(row[i]) for i in keep])
    return buf.getvalue()


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    text = "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("†", r"$^\dagger$").replace("–", "--")


def latex(table: Table) -> str:
    """A booktabs table (\\usepackage{booktabs}); notes go below it as a footnote-sized paragraph."""
    headers, cells = table.shown()
    out = [f"% {table.title}", "\\begin{table}[ht]", "\\centering", "\\small",
           f"\\caption{{{latex_escape(table.title)}}}", f"\\label{{tab:medminds-{table.name}}}",
           f"\\begin{{tabular}}{{{'l' * len(headers)}}}", "\\toprule",
           " & ".join(latex_escape(h) for h in headers) + r" \\", "\\midrule"]
    out += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in cells]
    out += ["\\bottomrule", "\\end{tabular}"]
    if table.notes:
        out += ["", "\\par\\footnotesize " + " ".join(latex_escape(n) for n in table.notes)]
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def html_table(table: Table) -> str:
    headers, cells = table.shown()
    out = [f"<h2 id=\"{table.name}\">{html.escape(table.title)}</h2>"]
    if cells:
        out += ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
        out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells]
        out += ["</tbody>", "</table>"]
    else:
        out.append("<p>(no rows)</p>")
    if table.notes:
        out.append("<ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in table.notes) + "</ul>")
    return "\n".join(out)


def html_image(png: bytes, caption: str) -> str:
    """An image inside the page itself (a data URI), so the file alone shows it, from any shared filesystem."""
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.85em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;white-space:nowrap}
thead th{background:#f2f2f2}
figure{display:inline-block;margin:.5em;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.8em;color:#555}
.notes{font-size:.85em;color:#444}"""


def html_page(title: str, sections: Sequence[str], intro: str = "") -> str:
    """One page, no external resources: styles inline, images as data URIs."""
    body = [f"<h1>{html.escape(title)}</h1>"] + ([f"<p>{html.escape(intro)}</p>"] if intro else []) + list(sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
