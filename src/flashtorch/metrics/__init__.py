"""flashtorch.metrics."""
