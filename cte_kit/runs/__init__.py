"""Runs: the one loop over models and images, its result store and its local and Dask backends."""
