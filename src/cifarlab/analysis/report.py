"""report.md and a self-contained report.html, rendered from the same section data.

A report is a list of `Section`s, each a title and blocks: `Text`, `Bullets`, `Table`, `Code`, `Image`.
Images are paths relative to the run directory (`plots/curves.png`): linked from the markdown,
embedded as base64 in the HTML so the file can be mailed or attached on its own.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from cifarlab.atomic import atomic_write_text
from cifarlab.run.layout import REPORT_HTML, REPORT_MD

# The sections a full run report has, in order (`analyze_run` builds them).
SECTION_TITLES = (
    "Summary", "Configuration", "Environment", "Training curves", "Learning rate", "LR range test",
    "Model summary", "Per-class accuracy", "Confusion", "Precision, recall and F1", "Calibration",
    "Misclassified images", "Grad-CAM",
    "Augmentation preview",
)


@dataclass
class Text:
    text: str


@dataclass
class Bullets:
    items: Sequence[str]


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[object]]


@dataclass
class Code:
    text: str
    language: str = ""


@dataclass
class Image:
    path: str  # relative to the run directory, forward slashes
    caption: str


@dataclass
class Collapsed:
    """Blocks folded away under a one-line summary: <details> in both the HTML and the markdown."""
    summary: str
    blocks: list = field(default_factory=list)


Block = Union[Text, Bullets, Table, Code, Image, Collapsed]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def write_report(run_dir: str | Path, sections: Sequence[Section], title: str | None = None) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `run_dir`; every linked image must exist there."""
    run_dir = Path(run_dir)
    title = title or f"Run report: {run_dir.parent.name}/{run_dir.name}"
    for section in sections:
        for block in _flat_blocks(section.blocks):
            if isinstance(block, Image) and not (run_dir / block.path).is_file():
                raise FileNotFoundError(f"report section {section.title!r} links {block.path}, missing in {run_dir}")
    md_path = run_dir / REPORT_MD
    html_path = run_dir / REPORT_HTML
    atomic_write_text(md_path, render_markdown(title, sections))
    atomic_write_text(html_path, render_html(title, sections, run_dir))
    return md_path, html_path


def _flat_blocks(blocks) -> list:
    """The blocks, with those inside Collapsed ones."""
    flat = []
    for block in blocks:
        flat += _flat_blocks(block.blocks) if isinstance(block, Collapsed) else [block]
    return flat


# ---------------------------------------------------------------- markdown

def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- [{s.title}](#{anchor(s.title)})" for s in sections]
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        for block in section.blocks:
            lines += _markdown_block(block) + [""]
    return "\n".join(lines).rstrip() + "\n"


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; `|` inside a cell is escaped."""
    def cells(values):
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"
    return "\n".join([cells(header), "|" + "|".join("---" for _ in header) + "|", *map(cells, rows)]) + "\n"


def _markdown_block(block: Block) -> list[str]:
    if isinstance(block, Text):
        return [block.text]
    if isinstance(block, Bullets):
        return [f"- {item}" for item in block.items]
    if isinstance(block, Code):
        fence = "````" if "```" in block.text else "```"
        return [fence + block.language, block.text.rstrip("\n"), fence]
    if isinstance(block, Image):
        return [f"![{block.caption}]({block.path})"]
    if isinstance(block, Table):
        return markdown_table(block.header, block.rows).splitlines()
    if isinstance(block, Collapsed):  # GitHub renders markdown inside <details> after a blank line
        inner = [line for child in block.blocks for line in _markdown_block(child) + [""]]
        return ["<details>", f"<summary>{html.escape(block.summary)}</summary>", "", *inner, "</details>"]
    raise TypeError(f"unknown report block {type(block).__name__}")


# ---------------------------------------------------------------- html

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12px; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
figcaption { color: #555; font-size: .9em; }
"""


def render_html(title: str, sections: Sequence[Section], run_dir: str | Path) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
             f"<style>{_CSS}</style>", "</head><body>", f"<h1>{esc(title)}</h1>", "<ul>"]
    parts += [f'<li><a href="#{anchor(s.title)}">{esc(s.title)}</a></li>' for s in sections]
    parts.append("</ul>")
    for section in sections:
        parts.append(f'<h2 id="{anchor(section.title)}">{esc(section.title)}</h2>')
        parts += [_html_block(block, Path(run_dir)) for block in section.blocks]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_block(block: Block, run_dir: Path) -> str:
    esc = html.escape
    if isinstance(block, Text):
        return "\n".join(f"<p>{esc(paragraph)}</p>" for paragraph in block.text.split("\n\n"))
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Code):
        return f"<pre><code>{esc(block.text)}</code></pre>"
    if isinstance(block, Image):
        data = base64.b64encode((run_dir / block.path).read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.caption)}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>")
    if isinstance(block, Table):
        head = "".join(f"<th>{esc(str(h))}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Collapsed):
        inner = "\n".join(_html_block(child, run_dir) for child in block.blocks)
        return f"<details><summary>{esc(block.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown report block {type(block).__name__}")
