"""flashtorch.cam."""
