"""`fedkseed compare`: a grid of methods x seeds (x scenarios), one run per cell, summarised.

    fedkseed compare -c recipes/compare/smoke.yaml --out runs/compare-smoke

`grid` reads the grid YAML into cells, `runner` runs each cell as its own `fedkseed fit` process
(skipping finished ones), `table` turns the cells' `summary.json` files into `comparison.csv`,
`comparison.md` and `comparison.png`.
"""
