"""Paper reproductions: each module defines its rows, the published numbers, and ``run()``."""
