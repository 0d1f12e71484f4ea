"""Zero-shot Rouge-L eval: batched greedy generation (`generate`), scoring (`rouge`), suites, CLI."""
