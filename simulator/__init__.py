"""sparsesim's simulator: replays activation traces against edge hardware profiles (no torch)."""
