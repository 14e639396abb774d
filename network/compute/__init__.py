"""compute: how products and random numbers are made (precision, BLAS, streams), not what a layer means."""
