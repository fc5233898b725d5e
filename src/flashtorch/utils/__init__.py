"""flashtorch.utils."""
