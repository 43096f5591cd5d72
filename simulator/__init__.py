"""sparsesim's simulator: replays activation traces against edge hardware profiles (no torch)."""

__version__ = "0.1.0"
