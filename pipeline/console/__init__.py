"""The operators' and analysts' console (issue 15): the three monitoring tiers as web pages, served
by the sink process beside /views/<tier> (it owns the embedded ClickHouse data).

- pages.py   a tier's dict (pipeline.clickhouse.tiers, the one implementation of every figure)
             to a page; templates/ and static/ hold the HTML, the stylesheet and the script
- format.py  money (integer minor units, never float sums), counts, times in the viewer's zone
- charts.py  server-side SVG: nothing is loaded from a CDN or the internet
- labels.py  Chinese and English labels
- auth.py    the principals and tokens (pipeline.credentials), under the console's older name
- signin.py  a browser's sign-in: a token becomes a session cookie; the 401 page is its form
- tracking.py the buyers' tracking page, served by the public surface (pipeline.public_site)
- actions.py approve / reject a held order, re-drive a dead letter: checked, published once, recorded
- routes.py  the routes, added to the sink's operator surface by `setup_console`, each with its role
"""
from .routes import CONSOLE, Console, setup_console

__all__ = ["CONSOLE", "Console", "setup_console"]
