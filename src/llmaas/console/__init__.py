"""The web console: server-rendered pages (Jinja2 + htmx, Chart.js) under /console, over the same serving
handlers and control-plane services as the API, with the same roles. `mount(app)` adds it to an app."""

from llmaas.console.app import mount

__all__ = ["mount"]
