"""ModelShip: an auto-labeling platform served by Ray Serve (docs/layout.md)."""

import os

# gcsfs (gs:// URLs) takes the gRPC path for zonal and hierarchical-namespace buckets by
# default since 2026.10: an experimental one that first asks Storage Control over gRPC for
# each bucket's type. We use its stable JSON API path, which the tests run against a GCS
# emulator. Set here, before fsspec first imports gcsfs in any process of ours; an operator
# may still turn it on.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
