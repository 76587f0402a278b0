"""A signal's own page (its `Page`, drawn by code in its folder): the title and caption, the run chooser, then the
signal's drawing, handed Streamlit and the widgets below. app.py lists one per signal that has a page."""
from types import SimpleNamespace

import streamlit as st

from analysis.reporting.exhibits import signal_exhibits
from analysis.signals.registry import all_signals
from views.shared.widgets import chart, choose_run, pick, show

# What a signal's page may draw with, besides Streamlit itself.
KIT = SimpleNamespace(pick=pick, show=show, chart=chart, exhibits=signal_exhibits)


def draw_signal_page(name: str) -> None:
    page = all_signals()[name].page
    st.title(page.title)
    st.caption(page.caption)
    names = [name, *page.shows]
    run = choose_run(set(names), f"No {page.results} results yet: run an analysis with the {' and '.join(names)} "
                                 f"signal{'s' if len(names) > 1 else ''} on the Setup page, or "
                                 f"`python -m analysis run --signals {','.join(names)}`.")
    page.draw(st, KIT, run)


def signal_pages() -> list:
    """One st.Page per signal with a page, in registry order, at /<signal name>."""
    pages = []
    for name, signal in all_signals().items():
        if signal.page is not None:
            def draw(name=name):
                draw_signal_page(name)
            pages.append(st.Page(draw, title=signal.page.title, icon=signal.page.icon, url_path=name))
    return pages
