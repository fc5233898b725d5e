"""flashtorch.saliency."""
