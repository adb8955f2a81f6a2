"""`ResultsGrid`: one clickable, sortable table of Hub results, made of plain ipywidgets.

No grid package: a header of sort buttons and rows whose cells are buttons, so it works wherever ipywidgets does
(JupyterLab, Notebook 7, Colab). The row widgets are made once and reused for every page, so a new search only
changes their text; clicking any cell of a row selects it, and the selected row is highlighted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets

from .common import explain_disabled

SELECTED, STRIPE, PLAIN = "#cfe3fb", "#f6f7f9", "#ffffff"
# Buttons centre their text by default; a grid reads better left-aligned and flat. Where a frontend drops the
# <style> tag the grid still works, only centred.
CSS = """<style>
.wb-grid .wb-grid-cell, .wb-grid .wb-grid-head { text-align: left; margin: 0; border-radius: 0; padding: 0 6px; }
.wb-grid .wb-grid-head { font-weight: bold; }
.wb-grid .wb-grid-label { margin: 0; padding: 0 6px; display: flex; align-items: center;
  background: var(--jp-layout-color2, #eee); }
.wb-grid .wb-grid-cell { box-shadow: none; border-bottom: 1px solid #e5e5e5; }
.wb-grid .wb-grid-row-selected .wb-grid-cell { font-weight: bold; }
.wb-grid .wb-grid-tail { direction: rtl; }  /* the ellipsis cuts the start; the end of the id stays visible */
</style>"""


@dataclass(frozen=True)
class Column:
    """One column: its title, width (CSS), how a result shows in it, and the search's sort key (None: not sortable)."""

    title: str
    width: str
    text: Callable[[object], str]
    sort: str | None = None
    tail: bool = False  # too long for the column: cut at the start, since ids of one organisation differ at the end


class ResultsGrid(widgets.VBox):
    """The results of one page: click a header to sort (again to reverse), click a row to select it.

    `on_select(index)` and `on_sort(key, descending)` are called with what the user chose; `show()` fills it."""

    def __init__(
        self,
        columns: list[Column],
        page_size: int,
        on_select: Callable[[int], None],
        on_sort: Callable[[str, bool], None],
        numeric_sorts: tuple[str, ...] = (),
    ):
        self.columns, self.on_select, self.on_sort = columns, on_select, on_sort
        self.numeric_sorts = numeric_sorts
        self.sort_key: str | None = None
        self.descending = True
        self.selected: int | None = None
        self.count = 0
        self.sort_buttons: dict[str, widgets.Button] = {}
        heads = [self._head(column) for column in columns]
        self._cell_layouts = [widgets.Layout(width=column.width, flex="0 0 auto") for column in columns]
        self.rows = [self._row(index) for index in range(page_size)]
        self.empty = widgets.HTML("<i>No adapters match; change the search or the filters.</i>")
        self.empty.layout.display = "none"
        header = widgets.HBox(heads, layout=widgets.Layout(border_bottom="2px solid #999"))
        super().__init__([widgets.HTML(CSS), header, *self.rows, self.empty])
        self.add_class("wb-grid")

    def _head(self, column: Column) -> widgets.Widget:
        layout = widgets.Layout(width=column.width, flex="0 0 auto")
        if column.sort is None:
            label = widgets.HTML(f"<b>{column.title}</b>", layout=layout)
            label.add_class("wb-grid-label")
            return label
        button = widgets.Button(description=column.title, layout=layout, tooltip=f"sort by {column.title}")
        button.add_class("wb-grid-head")
        button.add_class(f"wb-grid-sort-{column.sort}")
        button.on_click(lambda _b, key=column.sort: self.sort_by(key))
        self.sort_buttons[column.sort] = button
        return button

    def _row(self, index: int) -> widgets.HBox:
        cells = []
        for column, layout in zip(self.columns, self._cell_layouts, strict=True):
            cell = widgets.Button(layout=layout)  # one shared Layout per column: fewer widgets for the page to make
            cell.add_class("wb-grid-cell")
            if column.tail:
                cell.add_class("wb-grid-tail")
            cell.on_click(lambda _b, i=index: self.select(i))
            cells.append(cell)
        row = widgets.HBox(cells, layout=widgets.Layout(display="none"))
        row.add_class("wb-hub-row")
        return row

    # --- filling -----------------------------------------------------------------------------------------

    def show(
        self,
        items: list,
        sort_key: str,
        descending: bool,
        unsortable: dict[str, str] | None = None,
        selected: int | None = None,
    ) -> None:
        """Show `items` (one page), sorted by `sort_key`; `unsortable` maps sort keys to why they cannot be used;
        `selected`: the row to highlight (the adapter chosen before, when this page still shows it)."""
        self.sort_key, self.descending = sort_key, descending
        self.selected, self.count = selected, len(items)
        for index, row in enumerate(self.rows):
            if index >= len(items):
                row.layout.display = "none"
                continue
            for column, cell in zip(self.columns, row.children, strict=True):
                text = column.text(items[index])
                cell.description, cell.tooltip = text, text
            row.layout.display = "flex"
        self.empty.layout.display = "block" if not items else "none"
        self._paint()
        for key, button in self.sort_buttons.items():
            explain_disabled(button, (unsortable or {}).get(key))
            title = next(c.title for c in self.columns if c.sort == key)
            arrow = (" \u25bc" if descending else " \u25b2") if key == sort_key else ""
            button.description = title + arrow
            button.button_style = "info" if key == sort_key else ""
            if not button.disabled:
                button.tooltip = f"sort by {title}" + (", click again to reverse" if key == sort_key else "")

    def select(self, index: int | None) -> None:
        """Select (and highlight) row `index` of the page; tell `on_select`."""
        if index is not None and not 0 <= index < self.count:
            raise IndexError(f"there is no result {index} on this page ({self.count} shown)")
        self.selected = index
        self._paint()
        if index is not None:
            self.on_select(index)

    def sort_by(self, key: str) -> None:
        """Sort by `key`: numbers largest first and text A to Z; the same key again reverses the order."""
        descending = (not self.descending) if key == self.sort_key else key in self.numeric_sorts
        self.on_sort(key, descending)

    def _paint(self) -> None:
        for index, row in enumerate(self.rows[: max(self.count, 0)]):
            chosen = index == self.selected
            colour = SELECTED if chosen else (STRIPE if index % 2 else PLAIN)
            for cell in row.children:
                cell.style.button_color = colour
            if chosen:
                row.add_class("wb-grid-row-selected")
            else:
                row.remove_class("wb-grid-row-selected")

    def texts(self) -> list[list[str]]:
        """What the visible rows show, cell by cell (for summaries and tests)."""
        return [[cell.description for cell in row.children] for row in self.rows[: self.count]]
