"""Objects on the frame path: find what moves, track it, name it from a few examples.

    frame -> proposals (plug-ins: `proposals/`, motion now) -> tracker (Kalman + IoU, with an
    appearance term) -> track crops (square, with context, sampled a few per second, sharpest
    first) -> the same embed -> gallery scores chain as regions -> evidence per track ->
    label (or `unknown`) -> object events

`stage.ObjectStage` runs this for one camera; the daemon's pipeline embeds its crops in the
same backend batch as the regions' crops. Nothing here imports the daemon (it imports this).
"""
