"""What every figure shares: the display window of CT slices, resolution, colours."""

from __future__ import annotations

#: HU range shown in grey from black to white (display only; training applies its own window).
HU_WINDOW = (-1000.0, 400.0)
DPI = 200
ANNOTATION_COLOUR = "tab:red"
PREDICTION_COLOUR = "tab:cyan"
