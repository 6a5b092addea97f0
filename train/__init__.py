"""Server-side self-supervised pretraining (needs torch: `pip install edgessl[train]`)."""
