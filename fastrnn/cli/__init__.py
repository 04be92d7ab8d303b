"""The command line (``fastrnn ...``, main), the demo, and the benchmarks (bench, peers). No
module of the engine imports this package."""
