"""Collection on the device: crops worth learning from, kept for a server to harvest, and a
drift signal per camera (the closed loop: the server continues self-supervised training on the
site's own footage and ships a better model back).

    crop + embedding + scores + decision -> sampler (rate limits, "worth keeping": unknown, low
    margin, novel; no near-duplicates) -> store (SQLite, bounded by a byte quota) -> harvest
    over the HTTP API (archive, then ack by sha256: deleted only once the server has it)
    embeddings of each camera -> drift monitor (reference centroid vs running mean) -> events

numpy, SQLite and OpenCV only: nothing here imports torch, onnx or the daemon.
"""
