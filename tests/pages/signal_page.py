"""A signal's own page (drawn by the code in its folder) under AppTest, as app.py's navigation draws it."""
from streamlit.testing.v1 import AppTest


def _draw(name):
    from views.shared.signal_page import draw_signal_page
    draw_signal_page(name)


def signal_page(name: str, timeout: float = 120) -> AppTest:
    """The page of signal `name`, not yet run."""
    return AppTest.from_function(_draw, args=(name,), default_timeout=timeout)
