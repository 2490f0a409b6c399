"""HTML reports of mvit's results: self-contained files that open from disk, offline, in any browser.

One module per concern: `page` (the HTML document, escaping, its Content-Security-Policy, embedded images),
`charts` (inline SVG charts), `calibration` (reliability bins and the expected calibration error),
`classify_report` (the grid of `classify --report`), `eval_report` (the accuracy report of `eval --report`).

Library code: nothing here prints or names a CLI flag; the CLI gathers the run's facts and hands them over.
"""
