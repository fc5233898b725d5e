"""flashtorch.activmax."""
