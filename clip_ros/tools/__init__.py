"""Command-line tools: demos, benchmarks, evaluation, training, dataset and weight fetching."""
