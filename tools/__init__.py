"""Developer scripts (never imported by the package): tiny-model maker, benchmarks."""
