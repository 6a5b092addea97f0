"""A constant-velocity Kalman filter of one box, over time in seconds (not frames).

State (cx, cy, w, h) and their velocities per second. Noise scales with the box's size, as in
SORT/ByteTrack, so a small and a large object are followed alike. Time steps come from the
frames' capture times: a camera whose frames are dropped under load (the daemon keeps the
newest) is predicted over the real gap.
"""

from __future__ import annotations

import numpy as np

from edgessl.edge_runtime.objects.boxes import to_cxcywh, to_xyxy

# Standard deviations in box sizes (the longer side): ByteTrack's per-frame figures at 30 fps
# (1/20 and 1/160 of the height per frame), per square-root second.
POSITION_NOISE = 0.27  # random drift of the centre and size, per sqrt(s)
VELOCITY_NOISE = 1.0  # random change of the velocity, per sqrt(s)
MEASUREMENT_NOISE = 0.05  # a proposal's box against the object's


class BoxKalman:
    def __init__(self, box: np.ndarray, t: float) -> None:
        z = to_cxcywh(box)
        self.x = np.concatenate([z, np.zeros(4)])
        s = self._scale()
        self.P = np.diag(np.r_[np.full(4, (2 * MEASUREMENT_NOISE * s) ** 2), np.full(4, (2 * s) ** 2)])
        self.t = t

    def _scale(self) -> float:
        return max(1.0, float(max(self.x[2], self.x[3])))

    @property
    def box(self) -> np.ndarray:
        """The current estimate as (x0, y0, x1, y1)."""
        return to_xyxy(self.x[:4])

    @property
    def speed(self) -> float:
        """Speed of the centre in box sizes per second."""
        return float(np.hypot(self.x[4], self.x[5]) / self._scale())

    def predict(self, t: float) -> np.ndarray:
        """Advance the state to time `t`; returns the predicted box."""
        dt = max(0.0, t - self.t)
        if dt > 0:
            f = np.eye(8)
            f[:4, 4:] = np.eye(4) * dt
            s = self._scale()
            q = np.diag(np.r_[np.full(4, (POSITION_NOISE * s) ** 2 * dt), np.full(4, (VELOCITY_NOISE * s) ** 2 * dt)])
            self.x = f @ self.x
            self.x[2:4] = np.maximum(self.x[2:4], 1.0)  # a size never goes below a pixel
            self.P = f @ self.P @ f.T + q
            self.t = t
        return self.box

    def update(self, box: np.ndarray) -> None:
        """Correct the state with an observed box (at the time of the last predict)."""
        z = to_cxcywh(box)
        h = np.zeros((4, 8))
        h[:, :4] = np.eye(4)
        r = np.eye(4) * (MEASUREMENT_NOISE * self._scale()) ** 2
        s = h @ self.P @ h.T + r
        k = self.P @ h.T @ np.linalg.inv(s)
        self.x = self.x + k @ (z - h @ self.x)
        self.P = (np.eye(8) - k @ h) @ self.P

    def hold(self, box: np.ndarray | None = None) -> None:
        """Stop the box (a stationary object): no velocity, optionally at `box`."""
        if box is not None:
            self.x[:4] = to_cxcywh(box)
        self.x[4:] = 0.0
        self.P[4:, 4:] = np.eye(4) * (0.1 * self._scale()) ** 2
