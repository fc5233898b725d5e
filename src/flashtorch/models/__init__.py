"""flashtorch.models."""
