"""The demo page works behind a reverse proxy that serves the app under a path prefix
(e.g. https://host/faces/): it names its assets and the API relative to itself."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin

import service

STATIC = Path(service.__file__).parent / "static"
URL_IN_PAGE = re.compile(r"""(?:fetch\(|href=|src=)\s*["']([^"']+)["']""")


def test_page_urls_resolve_under_a_path_prefix(client):
    urls = [url for name in ("index.html", "app.js") for url in URL_IN_PAGE.findall((STATIC / name).read_text())
            if not url.startswith("data:")]  # inline (the empty favicon)
    assert {"static/app.js", "static/style.css", "model", "landmarks"} <= set(urls), urls
    for url in urls:
        assert not url.startswith(("/", "http:", "https:")), f"{url} would leave the prefix"
        # What a browser at https://host/faces/ asks the proxy for, with the prefix stripped,
        # is what this app serves.
        behind_proxy = urljoin("https://host/faces/", url)
        assert behind_proxy.startswith("https://host/faces/")
        path = "/" + behind_proxy.removeprefix("https://host/faces/")
        if url.startswith("static/"):
            assert client.get(path).status_code == 200, path
        else:
            assert client.get(path).status_code in (200, 405), path  # /landmarks is POST-only
