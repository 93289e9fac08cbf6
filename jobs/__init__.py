"""Ray jobs: batch work on a Ray cluster with the predictors the Serve replicas use."""
