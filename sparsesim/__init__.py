"""sparsesim: trace-driven memory and cache simulation of LLM activation sparsity on edge devices.

One import namespace over the repository's top-level folders (``pyproject.toml`` maps them with
``package-dir``): ``sparsesim.tracing`` (the only part that imports torch), ``sparsesim.simulator``,
``sparsesim.experiments`` and ``sparsesim.hw_profiles``. This package itself holds what every part
needs and so sits below all of them: errors (:mod:`sparsesim.errors`), atomic writes
(:mod:`sparsesim.atomic`) and the trace format (:mod:`sparsesim.tracefile`). Nothing here imports
a part.
"""

from pathlib import Path as _Path

__version__ = "0.2.0"

# In a source checkout the parts are this folder's siblings, not its children: let them resolve
# as sparsesim.<part> from the checkout itself (an installed wheel has them as children already).
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "simulator" / "__init__.py").is_file() and not (_Path(__file__).parent / "simulator").exists():
    __path__.append(str(_checkout))
