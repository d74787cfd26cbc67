"""Side-by-side benchmarks of the LungJEPA pipeline: `python -m benchmarks.run` (`make bench`)."""
