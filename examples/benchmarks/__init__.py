"""Speed benchmarks that compare mpiprop with reference implementations, side by side."""
