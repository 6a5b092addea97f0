"""Server-side export: checkpoint -> verified bundle (needs `pip install edgessl[export]`)."""
