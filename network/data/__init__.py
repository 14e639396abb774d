"""data: where batches come from: loaders, data sets and their preprocessing."""
