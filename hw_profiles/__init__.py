"""Hardware profiles shipped with sparsesim (YAML files in this directory)."""
